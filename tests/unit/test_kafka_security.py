"""Kafka security settings -> Faust credentials -> aiokafka arguments, the configuration errors, and the start-up
check's verdicts. No Kafka: the check's connection is faked at its port, or meets a real local TLS server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import errors as kafka_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.kafka_check import bootstrap_hosts, check_kafka_connection
from app.kafka_security import aiokafka_security_kwargs, broker_credentials, credentials_or_exit
from core.errors import ConfigError
from core.settings import Settings, load_settings

SECRET = "s3cret-Pa55word"


# --- test certificates ------------------------------------------------------------------------------------------


class Pki:
    """A CA and certificates it signs, written as PEM files under ``folder``."""

    def __init__(self, folder: Path, name: str = "test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, subject, self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, issuer: x509.Name, key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )

    def issue(
        self, name: str, *, sans: tuple[str, ...] = (), client: bool = False, password: str | None = None
    ) -> tuple[Path, Path]:
        """(certificate file, key file) for ``name``; the key encrypted when ``password`` is given."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt = [x509.IPAddress(ipaddress.ip_address(s)) if s[0].isdigit() else x509.DNSName(s) for s in sans]
        builder = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), self.cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        encryption: Any = (
            serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
        )
        key_file.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        )
        return cert_file, key_file


def _key_usage(cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def settings(clean_env: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings from keyword arguments only (no faust.yml, no VECTORIZE_WORKER_* variables)."""
    return lambda **kw: load_settings(**kw)


def _error(make: Callable[[], Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        make()
    return str(caught.value)


# --- settings -> credentials -> aiokafka ----------------------------------------------------------------------


def test_plaintext_needs_no_credentials(settings: Callable[..., Settings]) -> None:
    s = settings()
    assert broker_credentials(s) is None
    assert aiokafka_security_kwargs(s) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram_512_and_a_ca_file(settings: Callable[..., Settings], pki: Pki) -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="vw",
        kafka_sasl_password=SECRET,
        kafka_ssl_cafile=str(pki.ca_file),
    )
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (creds.username, creds.password) == ("vw", SECRET)
    assert SECRET not in repr(creds)
    context = creds.ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]
    kwargs = aiokafka_security_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("vw", SECRET)
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_has_no_tls(settings: Callable[..., Settings], mechanism: str) -> None:
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="vw",
        kafka_sasl_password=SECRET,
    )
    kwargs = aiokafka_security_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT" and kwargs["sasl_mechanism"] == mechanism
    assert kwargs["ssl_context"] is None


def test_the_password_can_come_from_a_file(
    settings: Callable[..., Settings], clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    clean_env.setenv("VECTORIZE_WORKER_KAFKA_SASL_PASSWORD_FILE", str(secret_file))
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="vw")
    assert broker_credentials(s).password == SECRET


def test_ssl_without_sasl_uses_the_system_cas_when_no_ca_file_is_set(settings: Callable[..., Settings]) -> None:
    creds = broker_credentials(settings(kafka_security_protocol="SSL"))
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol.value == "SSL"
    assert creds.context.verify_mode == ssl.CERT_REQUIRED and creds.context.check_hostname


async def test_mtls_client_certificate_with_an_encrypted_key_is_presented(
    settings: Callable[..., Settings], pki: Pki
) -> None:
    """A real TLS handshake with a server that requires a client certificate from the same CA."""
    client_cert, client_key = pki.issue("client", client=True, password=SECRET)
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(pki.ca_file),
        kafka_ssl_certfile=str(client_cert),
        kafka_ssl_keyfile=str(client_key),
        kafka_ssl_key_password=SECRET,
        kafka_ssl_check_hostname=False,
    )
    kwargs = aiokafka_security_kwargs(s)
    assert kwargs == {"security_protocol": "SSL", "ssl_context": kwargs["ssl_context"]}
    assert not kwargs["ssl_context"].check_hostname and kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    peer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    async with tls_server(pki, require_client_cert=True, on_peer=peer.set_result) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=kwargs["ssl_context"])
        seen = await asyncio.wait_for(peer, 30)
        writer.close()
    assert dict(x[0] for x in seen["subject"])["commonName"] == "client"


# --- configuration errors -----------------------------------------------------------------------------------


def test_sasl_without_user_and_password_names_both(settings: Callable[..., Settings]) -> None:
    message = _error(lambda: broker_credentials(settings(kafka_security_protocol="SASL_SSL")))
    assert "VECTORIZE_WORKER_KAFKA_SASL_USERNAME" in message
    assert "VECTORIZE_WORKER_KAFKA_SASL_PASSWORD or VECTORIZE_WORKER_KAFKA_SASL_PASSWORD_FILE" in message


def test_settings_the_protocol_ignores_are_errors(settings: Callable[..., Settings], pki: Pki) -> None:
    message = _error(
        lambda: broker_credentials(
            settings(kafka_ssl_cafile=str(pki.ca_file), kafka_sasl_username="vw", kafka_sasl_password=SECRET)
        )
    )
    assert "VECTORIZE_WORKER_KAFKA_SSL_CAFILE is set but VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in message
    assert "VECTORIZE_WORKER_KAFKA_SASL_PASSWORD is set" in message and SECRET not in message
    message = _error(lambda: broker_credentials(settings(kafka_security_protocol="SSL", kafka_sasl_username="vw")))
    assert "does not use SASL" in message


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_ca_file_names_the_setting_and_the_path(
    settings: Callable[..., Settings], tmp_path: Path, content: str | None
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content, encoding="utf-8")
    message = _error(lambda: broker_credentials(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(ca_file))))
    assert "VECTORIZE_WORKER_KAFKA_SSL_CAFILE" in message and str(ca_file) in message


def test_a_key_without_its_certificate(settings: Callable[..., Settings], pki: Pki) -> None:
    _, key = pki.issue("client", client=True)
    message = _error(lambda: broker_credentials(settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=str(key))))
    assert "VECTORIZE_WORKER_KAFKA_SSL_KEYFILE" in message and "VECTORIZE_WORKER_KAFKA_SSL_CERTFILE" in message


def test_an_encrypted_key_without_a_password_is_an_error_not_a_prompt(
    settings: Callable[..., Settings], pki: Pki
) -> None:
    cert, key = pki.issue("client", client=True, password=SECRET)
    message = _error(
        lambda: broker_credentials(
            settings(kafka_security_protocol="SSL", kafka_ssl_certfile=str(cert), kafka_ssl_keyfile=str(key))
        )
    )
    assert "is encrypted" in message and "VECTORIZE_WORKER_KAFKA_SSL_KEY_PASSWORD" in message


def test_a_wrong_key_password_is_named_and_not_shown(settings: Callable[..., Settings], pki: Pki) -> None:
    cert, key = pki.issue("client", client=True, password=SECRET)
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=str(cert),
        kafka_ssl_keyfile=str(key),
        kafka_ssl_key_password="not-the-password",
    )
    message = _error(lambda: broker_credentials(s))
    assert "VECTORIZE_WORKER_KAFKA_SSL_KEY_PASSWORD" in message and "not-the-password" not in message


def test_a_key_of_another_certificate(settings: Callable[..., Settings], pki: Pki) -> None:
    cert, _ = pki.issue("client", client=True)
    _, other_key = pki.issue("other", client=True)
    s = settings(kafka_security_protocol="SSL", kafka_ssl_certfile=str(cert), kafka_ssl_keyfile=str(other_key))
    assert "does not belong to the certificate" in _error(lambda: broker_credentials(s))


def test_credentials_or_exit_prints_one_line_and_exits_2(
    settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    s = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password=SECRET)
    with pytest.raises(SystemExit) as exited:
        credentials_or_exit(s)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vectorize-worker: Invalid Kafka security settings") and SECRET not in err


def test_bootstrap_hosts() -> None:
    assert bootstrap_hosts("a:9093, [::1]:9094,b,kafka://c:1") == [("a", 9093), ("::1", 9094), ("b", 9092), ("c", 1)]
    with pytest.raises(ConfigError, match="VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS"):
        bootstrap_hosts("a:port")


# --- the start-up check ---------------------------------------------------------------------------------------


class FakeConnect:
    """The check's connection port: raises the queued outcome of each call (None = connected)."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, int, dict[str, Any]]] = []

    async def __call__(self, host: str, port: int, kwargs: dict[str, Any], timeout: float) -> None:
        self.calls.append((host, port, kwargs))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if outcome is not None:
            raise outcome


@pytest.fixture
def sasl_settings(settings: Callable[..., Settings]) -> Settings:
    return settings(
        kafka_bootstrap_servers="k1:9094,k2:9094",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="vw",
        kafka_sasl_password=SECRET,
    )


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


async def test_check_passes_when_a_broker_lets_us_in(sasl_settings: Settings) -> None:
    connect = FakeConnect(ConnectionRefusedError(111, "refused"), None)
    assert await check_kafka_connection(sasl_settings, connect=connect) is None
    assert [(h, p) for h, p, _ in connect.calls] == [("k1", 9094), ("k2", 9094)]
    assert connect.calls[0][2]["sasl_mechanism"] == "SCRAM-SHA-512"


async def test_check_names_the_password_on_a_refused_login(sasl_settings: Settings) -> None:
    failed = kafka_errors.SaslAuthenticationFailed("Authentication failed due to invalid credentials")
    with pytest.raises(ConfigError) as refused:
        await check_kafka_connection(sasl_settings, connect=FakeConnect(failed))
    message = str(refused.value)
    assert "k1:9094 refused the SASL SCRAM-SHA-512 login of user 'vw'" in message
    assert "VECTORIZE_WORKER_KAFKA_SASL_PASSWORD" in message and SECRET not in message


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (kafka_errors.UnsupportedSaslMechanismError("conn"), "VECTORIZE_WORKER_KAFKA_SASL_MECHANISM"),
        (_verify_error(19, "self-signed certificate in certificate chain"), "VECTORIZE_WORKER_KAFKA_SSL_CAFILE"),
        (_verify_error(62, "Hostname mismatch"), "VECTORIZE_WORKER_KAFKA_SSL_CHECK_HOSTNAME"),
        (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]"), "VECTORIZE_WORKER_KAFKA_SSL_CERTFILE"),
    ],
)
async def test_check_names_the_setting_behind_a_refusal(sasl_settings: Settings, error: Exception, named: str) -> None:
    connect = FakeConnect(error)
    with pytest.raises(ConfigError, match=named):
        await check_kafka_connection(sasl_settings, connect=connect)
    assert len(connect.calls) == 1  # a refusal is not retried


async def test_a_connection_dropped_on_every_try_is_a_protocol_mismatch(settings: Callable[..., Settings]) -> None:
    connect = FakeConnect(kafka_errors.KafkaConnectionError("Connection at k1:9092 closed"))
    with pytest.raises(ConfigError) as dropped:
        await check_kafka_connection(settings(kafka_bootstrap_servers="k1:9092"), connect=connect, attempts=2)
    assert len(connect.calls) == 2
    assert "closed the connection" in str(dropped.value)
    assert "VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in str(dropped.value)


async def test_an_unreachable_broker_is_only_a_warning(sasl_settings: Settings) -> None:
    connect = FakeConnect(ConnectionRefusedError(111, "Connect call failed"))
    warning = await check_kafka_connection(sasl_settings, connect=connect)
    assert warning is not None and "k1:9094 did not answer" in warning and "k2:9094" in warning
    assert len(connect.calls) == 2  # once per broker: Faust keeps trying after start-up


async def test_check_against_a_tls_server_of_another_ca(
    settings: Callable[..., Settings], pki: Pki, tmp_path: Path
) -> None:
    """The real connection code meets a real TLS server whose CA the worker does not trust."""
    other = Pki(tmp_path / "other", name="other CA")
    async with tls_server(pki) as port:
        s = settings(
            kafka_bootstrap_servers=f"127.0.0.1:{port}",
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=str(other.ca_file),
        )
        with pytest.raises(ConfigError) as refused:
            await check_kafka_connection(s, timeout=10)
    assert "certificate verify failed" in str(refused.value)
    assert "VECTORIZE_WORKER_KAFKA_SSL_CAFILE" in str(refused.value)


async def test_check_against_a_tls_server_of_another_name(settings: Callable[..., Settings], pki: Pki) -> None:
    async with tls_server(pki, sans=("kafka.example",)) as port:
        s = settings(
            kafka_bootstrap_servers=f"127.0.0.1:{port}",
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=str(pki.ca_file),
        )
        with pytest.raises(ConfigError) as refused:
            await check_kafka_connection(s, timeout=10)
    assert "mismatch" in str(refused.value) and "VECTORIZE_WORKER_KAFKA_SSL_CHECK_HOSTNAME" in str(refused.value)


@asynccontextmanager
async def tls_server(
    pki: Pki,
    *,
    sans: tuple[str, ...] = ("127.0.0.1", "localhost"),
    require_client_cert: bool = False,
    on_peer: Callable[[Any], None] | None = None,
) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 with a certificate from ``pki``; it never speaks Kafka."""
    cert, key = pki.issue("server", sans=sans)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=pki.ca_file)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if on_peer is not None:
            on_peer(writer.get_extra_info("peercert"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
