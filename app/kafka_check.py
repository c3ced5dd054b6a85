"""The worker's start-up check of Kafka's security settings: connect once, exit fast on a refusal.

Why: with a wrong password or an untrusted certificate, Faust and aiokafka log the
failure and retry for ever; a worker would sit there looking alive.
:func:`check_kafka_connection` connects once with the worker's own security
arguments (:func:`app.kafka_security.aiokafka_security_kwargs`), turns a refusal into
a :class:`~core.errors.ConfigError` that names the setting to fix, and the worker
exits with code 2 within seconds (:func:`checked_worker`, Faust's ``App(Worker=...)``,
so only the ``worker`` command runs it). A broker that is merely down is not a
configuration error: the worker starts and Faust waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from app.kafka_security import aiokafka_security_kwargs, error_reason, setting
from core.errors import ConfigError
from core.settings import Settings

log = logging.getLogger("worker.main")

#: OpenSSL verify codes (X509_V_ERR_*) that the message explains differently from "untrusted"
_EXPIRED = 10
_NAME_MISMATCH = frozenset({62, 64})  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH

Connect = Callable[[str, int, dict[str, Any], float], Awaitable[None]]


def bootstrap_hosts(servers: str) -> list[tuple[str, int]]:
    """``"a:9092,[::1]:9093,b"`` -> ``[("a", 9092), ("::1", 9093), ("b", 9092)]``."""
    hosts: list[tuple[str, int]] = []
    for entry in (part.strip() for part in servers.split(",")):
        entry = entry.removeprefix("kafka://")
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or "]" in port:
            host, port = entry, "9092"
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ConfigError(
                f"Bad Kafka address {entry!r} in VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS: use host:port[,host:port]."
            ) from None
    return hosts


async def _connect(host: str, port: int, kwargs: dict[str, Any], timeout: float) -> None:
    """One aiokafka connection (TLS handshake and SASL login included) and one metadata request."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    conn = await create_conn(
        host, port, client_id="vectorize-worker-check", request_timeout_ms=max(1, int(timeout * 1000)), **kwargs
    )
    try:
        # a SASL listener answers ApiVersions before the login; the metadata request shows it let us in
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


async def check_kafka_connection(
    settings: Settings, timeout: float = 15.0, *, connect: Connect = _connect, attempts: int = 3
) -> str | None:
    """Connect to the bootstrap servers once with the worker's security settings.

    Returns None when a broker let us in, or a warning when none could be reached
    (refused, timed out: Faust will keep trying, as it should for a broker that is
    starting). Raises :class:`ConfigError` naming the setting to fix when a broker
    refused us: login failed, SASL mechanism not enabled, certificate not trusted,
    or the connection dropped during the handshake on every one of ``attempts`` tries.
    """
    kwargs = aiokafka_security_kwargs(settings)
    hosts = bootstrap_hosts(settings.kafka_bootstrap_servers)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    dropped: str | None = None
    unreachable: list[str] = []
    for attempt in range(attempts):
        dropped, unreachable = None, []
        for host, port in hosts:
            where = f"{host}:{port}"
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(connect(host, port, kwargs, left), left)
                return None
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                kind, message = diagnose(settings, where, exc)
            if kind == "refused":
                raise ConfigError(message)
            if kind == "dropped":
                dropped = message
            else:
                unreachable.append(message)
        if dropped is None or attempt == attempts - 1 or deadline - loop.time() < 1.0:
            break
        await asyncio.sleep(1.0)  # a broker that drops a connection while starting gets another chance
    if dropped is not None:
        raise ConfigError(dropped)
    return "; ".join(unreachable) or f"no answer from {settings.kafka_bootstrap_servers} within {timeout:.0f}s"


def diagnose(settings: Settings, where: str, exc: BaseException) -> tuple[str, str]:
    """(kind, message) for a failed connection: ``refused`` (a setting is wrong), ``dropped`` (the broker
    closed the connection during the handshake: probably a protocol mismatch) or ``unreachable``."""
    from aiokafka import errors

    s = settings
    if isinstance(exc, errors.SaslAuthenticationFailed):
        return "refused", (
            f"Kafka at {where} refused the SASL {s.kafka_sasl_mechanism} login of user {s.kafka_sasl_username!r} "
            f"({_broker_says(exc)}): fix {setting('kafka_sasl_password')} or {setting('kafka_sasl_username')}, "
            f"and check the broker has {s.kafka_sasl_mechanism} credentials for that user."
        )
    if isinstance(exc, errors.UnsupportedSaslMechanismError):
        return "refused", (
            f"Kafka at {where} does not enable the SASL mechanism {s.kafka_sasl_mechanism}: set "
            f"{setting('kafka_sasl_mechanism')} to one the broker enables (sasl.enabled.mechanisms)."
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, text = exc.verify_code, exc.verify_message
        if code in _NAME_MISMATCH:
            fix = (
                "connect by a name the certificate holds (VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS) or, for a test "
                f"set-up only, set {setting('kafka_ssl_check_hostname')} to false"
            )
        elif code == _EXPIRED:
            fix = "the broker's certificate has expired: renew it on the broker"
        else:
            fix = (
                f"set {setting('kafka_ssl_cafile')} to the CA bundle that signed the broker's certificate "
                f"(now: {s.kafka_ssl_cafile or 'the system CAs'})"
            )
        return (
            "refused",
            f"The TLS certificate of Kafka at {where} was not accepted (certificate verify failed: {text}): {fix}.",
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "refused", (
            f"The TLS handshake with Kafka at {where} failed ({error_reason(exc)}): check "
            f"VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} (does that port speak TLS?) "
            f"and the client certificate {setting('kafka_ssl_certfile')}."
        )
    if isinstance(exc, errors.KafkaError) and not isinstance(exc, errors.KafkaConnectionError):
        return "refused", (
            f"Kafka at {where} refused the connection ({type(exc).__name__}: {_broker_says(exc)}): check the "
            "VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL and VECTORIZE_WORKER_KAFKA_SASL_* settings."
        )
    closed = isinstance(exc, ConnectionResetError | ssl.SSLEOFError | ssl.SSLZeroReturnError) or (
        isinstance(exc, errors.KafkaConnectionError) and "closed" in str(exc)
    )
    if closed:
        return "dropped", f"Kafka at {where} closed the connection during the handshake: {_dropped_hint(s)}."
    return "unreachable", f"Kafka at {where} did not answer ({type(exc).__name__}: {exc or 'no answer in time'})"


def _dropped_hint(s: Settings) -> str:
    protocol = f"VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}"
    if s.kafka_security_protocol == "PLAINTEXT":
        return f"{protocol}, but that listener probably requires TLS or SASL: set the protocol it uses (SSL, SASL_SSL…)"
    if s.kafka_security_protocol == "SASL_PLAINTEXT":
        return f"{protocol}, but that listener probably requires TLS: set SASL_SSL"
    if s.kafka_security_protocol == "SSL" and not s.kafka_ssl_certfile:
        return (
            f"{protocol}: the broker probably requires a client certificate ({setting('kafka_ssl_certfile')} and "
            "VECTORIZE_WORKER_KAFKA_SSL_KEYFILE) or SASL (SASL_SSL), or that port does not speak TLS (PLAINTEXT)"
        )
    if s.kafka_security_protocol == "SSL":
        return (
            f"{protocol}: the broker probably does not trust the client certificate {s.kafka_ssl_certfile} "
            f"({setting('kafka_ssl_certfile')}), or that port does not speak TLS"
        )
    return f"{protocol}, but that port probably does not speak TLS or SASL: check the protocol and the address"


def _broker_says(exc: BaseException) -> str:
    """The broker's own words (aiokafka puts them in args[0]), else the error's description."""
    if exc.args and isinstance(exc.args[0], str) and exc.args[0]:
        return exc.args[0]
    return str(getattr(exc, "description", None) or type(exc).__name__)


async def exit_unless_kafka_accepts(settings: Settings, timeout: float = 15.0) -> None:
    """Run :func:`check_kafka_connection`; on a refusal log it and exit with code 2 at once.

    ``os._exit``: nothing has started yet (no consumer, table or store), and mode's
    orderly shutdown of services that never started only adds noise and time.
    """
    try:
        warning = await check_kafka_connection(settings, timeout)
    except ConfigError as exc:
        log.critical("vectorize-worker: %s", exc)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    if warning:
        log.warning("Kafka is not reachable yet (%s); the worker keeps trying.", warning)
    elif settings.kafka_security_protocol != "PLAINTEXT":
        sasl = settings.kafka_security_protocol.startswith("SASL")
        login = f" as {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism})" if sasl else ""
        log.info("Kafka accepted the worker's %s connection%s", settings.kafka_security_protocol, login)


def checked_worker(settings: Settings, timeout: float = 15.0) -> type:
    """Faust's Worker class that checks Kafka's security (:func:`exit_unless_kafka_accepts`) before anything starts.

    Only the ``worker`` command uses ``App(Worker=...)``; ``faust send`` and the
    other commands run without the check.
    """
    from faust.worker import Worker

    class CheckedWorker(Worker):
        async def on_execute(self) -> None:
            await super().on_execute()  # logging is set up by now: the message lands in the worker's log
            await exit_unless_kafka_accepts(settings, timeout)

    return CheckedWorker
