"""Kafka transport security: settings -> Faust ``broker_credentials`` and aiokafka client arguments.

Faust hands its credentials to aiokafka (``credentials_to_aiokafka_auth`` in
``faust/transport/drivers/aiokafka.py``): ``SSLCredentials`` -> ``security_protocol=SSL``;
``SASLCredentials`` -> ``SASL_SSL`` when it carries an SSL context, else ``SASL_PLAINTEXT``,
with its mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and user/password. So every
protocol of ``kafka.security_protocol`` maps onto one of those two classes, and the
plain clients (the start-up check in :mod:`app.kafka_check`, tools) take the same
mapping from Faust, so they cannot drift apart.

Inconsistent settings (SASL without a password, a CA file with PLAINTEXT, an unreadable
file, an encrypted key without its password) are one :class:`~core.errors.ConfigError`
naming each variable. Secrets are revealed only for the client's constructor; no
message here contains one.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any

from core.errors import ConfigError
from core.secrets import reveal
from core.settings import YAML_KEYS, Settings, env_name

SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
_SECRETS = frozenset({"kafka_sasl_password", "kafka_ssl_key_password"})
_YAML_OF = {field: key for key, field in YAML_KEYS.items()}


def setting(field: str) -> str:
    """How an operator sets ``field``: its env variable (and ``_FILE`` for a secret) and YAML key."""
    env = env_name((field,))
    also = f" or {env}_FILE" if field in _SECRETS else ""
    return f"{env}{also} (YAML {_YAML_OF.get(field, field)})"


def settings_problems(settings: Settings) -> list[str]:
    """Inconsistent security settings, one sentence each; empty when they fit together.

    Settings that the chosen protocol would silently ignore are errors too: an
    operator who set a CA file but left the protocol at PLAINTEXT meant TLS.
    """
    s, protocol = settings, settings.kafka_security_protocol
    where = f"VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL={protocol}"
    problems: list[str] = []
    if protocol in SASL_PROTOCOLS:
        if not s.kafka_sasl_username:
            problems.append(f"{where} needs a user name: set {setting('kafka_sasl_username')}.")
        if s.kafka_sasl_password is None or not reveal(s.kafka_sasl_password):
            problems.append(f"{where} needs a password: set {setting('kafka_sasl_password')}.")
    else:
        for field in ("kafka_sasl_username", "kafka_sasl_password"):
            if getattr(s, field) is not None:
                problems.append(
                    f"{env_name((field,))} is set but {where} does not use SASL: set the protocol to SASL_SSL "
                    "(or SASL_PLAINTEXT), or remove the setting."
                )
    tls_fields = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
    if protocol not in TLS_PROTOCOLS:
        for field in tls_fields:
            if getattr(s, field) is not None:
                problems.append(
                    f"{env_name((field,))} is set but {where} does not use TLS: set the protocol to SSL or SASL_SSL, "
                    "or remove the setting."
                )
        return problems
    if s.kafka_ssl_keyfile and not s.kafka_ssl_certfile:
        problems.append(
            f"{setting('kafka_ssl_keyfile')} is set without {setting('kafka_ssl_certfile')}: "
            "a client key needs its certificate."
        )
    if s.kafka_ssl_key_password is not None and not s.kafka_ssl_certfile:
        problems.append(
            f"{env_name(('kafka_ssl_key_password',))} is set without {setting('kafka_ssl_certfile')}: "
            "it only unlocks the client certificate's key."
        )
    for field in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
        path = getattr(s, field)
        if path:
            problem = _unreadable(path)
            if problem:
                problems.append(f"Cannot read {path} ({setting(field)}): {problem}; fix the path or its permissions.")
    return problems


def _unreadable(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context: the CA file (system CAs when unset), the client certificate, hostname checking.

    An encrypted key is never asked for on a terminal (OpenSSL's default when no
    password is given): it is a configuration error instead.
    """
    s = settings
    cafile = s.kafka_ssl_cafile or None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{cafile} ({setting('kafka_ssl_cafile')}) holds no usable CA certificate ({error_reason(exc)}): "
            "it must be the PEM bundle of the CA(s) that signed the brokers' certificates."
        ) from None
    # verify_mode stays CERT_REQUIRED either way: without hostname checking any certificate of the CA passes
    context.check_hostname = s.kafka_ssl_check_hostname
    if s.kafka_ssl_certfile:
        _load_client_certificate(context, s)
    return context


class _NoKeyPassword(Exception):
    """OpenSSL asked for a key password and none is configured."""


def _load_client_certificate(context: ssl.SSLContext, s: Settings) -> None:
    password = reveal(s.kafka_ssl_key_password)
    asked = False

    def key_password() -> str:
        nonlocal asked
        asked = True
        if password is None:
            raise _NoKeyPassword
        return password

    key = s.kafka_ssl_keyfile or s.kafka_ssl_certfile
    try:
        context.load_cert_chain(s.kafka_ssl_certfile, s.kafka_ssl_keyfile or None, key_password)  # type: ignore[arg-type]
    except _NoKeyPassword:
        raise ConfigError(
            f"The client key {key} ({setting('kafka_ssl_keyfile')}) is encrypted: set "
            f"{setting('kafka_ssl_key_password')}."
        ) from None
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            detail = f"the key {key} does not belong to the certificate {s.kafka_ssl_certfile}"
        elif asked:
            detail = f"the key password does not unlock {key}; check {setting('kafka_ssl_key_password')}"
        else:
            detail = f"no PEM certificate and private key found there ({error_reason(exc)})"
        raise ConfigError(
            f"Cannot load the client certificate {s.kafka_ssl_certfile} ({setting('kafka_ssl_certfile')}, key "
            f"{setting('kafka_ssl_keyfile')}): {detail}."
        ) from None


def broker_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for these settings: None (PLAINTEXT), SSLCredentials or SASLCredentials.

    Raises :class:`ConfigError` naming every inconsistent setting, an unreadable file or a bad key.
    """
    problems = settings_problems(settings)
    if problems:
        raise ConfigError("Invalid Kafka security settings: " + " ".join(problems))
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl_context(settings) if protocol in TLS_PROTOCOLS else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=reveal(settings.kafka_sasl_password),
        ssl_context=context,  # SASL_SSL with a context, SASL_PLAINTEXT without (Faust's rule)
        mechanism=settings.kafka_sasl_mechanism,
    )


def aiokafka_security_kwargs(settings: Settings, credentials: Any = None) -> dict[str, Any]:
    """Keyword arguments for a plain aiokafka client (producer, consumer, admin, connection) with the worker's
    security: the mapping Faust itself applies, so the two cannot disagree."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return dict(credentials_to_aiokafka_auth(credentials or broker_credentials(settings)))


def credentials_or_exit(settings: Settings) -> Any:
    """:func:`broker_credentials`, or the message on stderr and exit code 2 (for building the App)."""
    try:
        return broker_credentials(settings)
    except ConfigError as exc:
        print(f"vectorize-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def error_reason(exc: BaseException) -> str:
    """OpenSSL's reason (``KEY_VALUES_MISMATCH``…), else the OS error's text, else the exception's."""
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
