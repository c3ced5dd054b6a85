"""Kafka transport security for real: a broker with SASL_SSL (SCRAM) and mTLS listeners, started here.

The broker is a separate instance (``scripts/kafka.sh start-secure``: its own
state in .state/kafka-secure, ports 9094-9097) with a CA, certificates and a
SCRAM user made on its first start; the shared plain broker is not touched.
The test clients build their TLS/SASL settings by hand, not through
app/kafka_security.py, so the worker's mapping is checked against an
independent client.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import ROOT, Topics, WorkerProcess, collect, create_topics, produce, run

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "scripts" / "kafka.sh"


@dataclass(frozen=True)
class SecureKafka:
    """Where the secure broker listens and the client material it was made with (from its client.env)."""

    sasl_bootstrap: str
    ssl_bootstrap: str
    username: str
    password_file: str
    ca_file: str
    client_cert: str
    client_key: str
    client_key_password_file: str

    @property
    def password(self) -> str:
        return Path(self.password_file).read_text(encoding="utf-8").strip()

    def sasl_client(self, password: str | None = None) -> dict[str, Any]:
        """aiokafka arguments for SASL_SSL + SCRAM-SHA-512, trusting the test CA."""
        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl.create_default_context(cafile=self.ca_file),
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.username,
            "sasl_plain_password": password if password is not None else self.password,
        }

    def mtls_client(self) -> dict[str, Any]:
        """aiokafka arguments for the SSL listener, which requires a client certificate."""
        context = ssl.create_default_context(cafile=self.ca_file)
        key_password = Path(self.client_key_password_file).read_text(encoding="utf-8").strip()
        context.load_cert_chain(self.client_cert, self.client_key, key_password)
        return {"security_protocol": "SSL", "ssl_context": context}

    def worker_env(self, **overrides: str) -> dict[str, str]:
        """A worker's settings for SASL_SSL + SCRAM-SHA-512, the password given as a file."""
        env = {
            "VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS": self.sasl_bootstrap,
            "VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "VECTORIZE_WORKER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "VECTORIZE_WORKER_KAFKA_SASL_USERNAME": self.username,
            "VECTORIZE_WORKER_KAFKA_SASL_PASSWORD_FILE": self.password_file,
            "VECTORIZE_WORKER_KAFKA_SSL_CAFILE": self.ca_file,
        }
        env.update(overrides)
        return env


def _kafka_sh(verb: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), verb], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def secure_kafka() -> Iterator[SecureKafka]:
    """The secure broker, started for this module (10-20 s) and stopped after it unless it was already running."""
    already = _kafka_sh("status-secure", 30).returncode == 0
    started = _kafka_sh("start-secure", 300)
    if started.returncode != 0:
        pytest.fail(f"`scripts/kafka.sh start-secure` failed:\n{started.stdout[-2000:]}\n{started.stderr[-3000:]}")
    state = Path(os.environ.get("VW_STATE", ROOT / ".state")) / "kafka-secure"
    values = dict(
        line.split("=", 1) for line in (state / "client.env").read_text(encoding="utf-8").splitlines() if "=" in line
    )
    try:
        yield SecureKafka(
            sasl_bootstrap=values["SASL_SSL_BOOTSTRAP"],
            ssl_bootstrap=values["SSL_BOOTSTRAP"],
            username=values["SASL_USERNAME"],
            password_file=values["SASL_PASSWORD_FILE"],
            ca_file=values["CA_FILE"],
            client_cert=values["CLIENT_CERT_FILE"],
            client_key=values["CLIENT_KEY_FILE"],
            client_key_password_file=values["CLIENT_KEY_PASSWORD_FILE"],
        )
    finally:
        if not already:
            stopped = _kafka_sh("stop-secure", 120)
            assert stopped.returncode == 0, stopped.stderr[-2000:]


def _exit_code(worker: WorkerProcess, limit: float = 120) -> tuple[int, float]:
    """The worker's exit code and how long it ran; ``limit`` only guards against a hang."""
    assert worker.proc is not None
    began = time.monotonic()
    try:
        code = worker.proc.wait(limit)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError(f"worker still running after {limit}s:\n{worker.log()[-3000:]}") from None
    return code, time.monotonic() - began


def _new_ca(folder: Path) -> Path:
    """A CA of its own, which never signed the broker's certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2"]
        + ["-subj", "/CN=some other CA", "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder / "ca.pem"


def test_worker_over_sasl_ssl_scram_processes_a_task(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    topics = Topics()
    client = secure_kafka.sasl_client()
    run(create_topics([topics.tasks], partitions=2, bootstrap=secure_kafka.sasl_bootstrap, security=client))
    task = {"task_type": "text_vectorization", "data": "vectors over TLS and SCRAM", "task_id": "secure-1"}
    run(produce(topics.tasks, [json.dumps(task).encode()], bootstrap=secure_kafka.sasl_bootstrap, security=client))

    worker = WorkerProcess(topics, tmp_path / "w", worker_id="worker-secure", **secure_kafka.worker_env()).start()
    try:
        records = run(
            collect(
                [topics.status, topics.results],
                lambda r: any(x["status"] == "completed" for x in r[topics.results]),
                timeout=240,
                bootstrap=secure_kafka.sasl_bootstrap,
                security=secure_kafka.sasl_client(),
            )
        )
        assert worker.stop() == 0
    finally:
        worker.kill()
    [result] = records[topics.results]
    assert result["task_id"] == "secure-1" and result["status"] == "completed"
    assert result["dimension"] == 384 and result["count"] == 1 and result["worker_id"] == "worker-secure"
    assert [s["status"] for s in records[topics.status]] == ["received", "processing", "completed"]
    assert secure_kafka.password not in worker.log()


def test_wrong_password_exits_fast_naming_the_setting(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    password_file = tmp_path / "password"
    password_file.write_text(wrong + "\n", encoding="utf-8")
    env = secure_kafka.worker_env(VECTORIZE_WORKER_KAFKA_SASL_PASSWORD_FILE=str(password_file))
    worker = WorkerProcess(Topics(), tmp_path / "w", worker_id="worker-badpw", **env).start()
    code, seconds = _exit_code(worker)
    print(f"wrong password: worker exited with {code} after {seconds:.1f}s")
    log = worker.log()
    assert code == 2, log[-3000:]
    assert "VECTORIZE_WORKER_KAFKA_SASL_PASSWORD" in log and "refused the SASL SCRAM-SHA-512 login" in log
    assert wrong not in log and secure_kafka.password not in log


def test_untrusted_ca_exits_fast_naming_the_ca_setting(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    other_ca = _new_ca(tmp_path / "other-ca")
    env = secure_kafka.worker_env(VECTORIZE_WORKER_KAFKA_SSL_CAFILE=str(other_ca))
    worker = WorkerProcess(Topics(), tmp_path / "w", worker_id="worker-badca", **env).start()
    code, seconds = _exit_code(worker)
    print(f"untrusted CA: worker exited with {code} after {seconds:.1f}s")
    log = worker.log()
    assert code == 2, log[-3000:]
    assert "VECTORIZE_WORKER_KAFKA_SSL_CAFILE" in log and "certificate verify failed" in log
    assert secure_kafka.password not in log


def test_faust_send_over_mtls_with_an_encrypted_client_key(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    """SSL without SASL, through Faust's own producer: client certificate, encrypted key, password from a file."""
    topic = f"it-mtls-{uuid.uuid4().hex[:8]}"
    run(create_topics([topic], partitions=1, bootstrap=secure_kafka.ssl_bootstrap, security=secure_kafka.mtls_client()))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "VECTORIZE_WORKER_DATA_DIR": str(tmp_path / "cli"),
        "VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS": secure_kafka.ssl_bootstrap,
        "VECTORIZE_WORKER_KAFKA_SECURITY_PROTOCOL": "SSL",
        "VECTORIZE_WORKER_KAFKA_SSL_CAFILE": secure_kafka.ca_file,
        "VECTORIZE_WORKER_KAFKA_SSL_CERTFILE": secure_kafka.client_cert,
        "VECTORIZE_WORKER_KAFKA_SSL_KEYFILE": secure_kafka.client_key,
        "VECTORIZE_WORKER_KAFKA_SSL_KEY_PASSWORD_FILE": secure_kafka.client_key_password_file,
    }
    sent = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "send", topic, json.dumps({"over": "mtls"})],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr[-3000:]
    records = run(
        collect(
            [topic],
            lambda r: bool(r[topic]),
            timeout=60,
            bootstrap=secure_kafka.ssl_bootstrap,
            security=secure_kafka.mtls_client(),
        )
    )
    assert records[topic] == [{"over": "mtls"}]


def test_start_up_check_on_the_mtls_listener(secure_kafka: SecureKafka) -> None:
    """The check lets a client certificate in, and without one names the certificate settings."""
    from app.kafka_check import check_kafka_connection
    from core.errors import ConfigError
    from core.settings import Settings

    base: dict[str, Any] = {
        "kafka_bootstrap_servers": secure_kafka.ssl_bootstrap,
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": secure_kafka.ca_file,
    }
    key_password = Path(secure_kafka.client_key_password_file).read_text(encoding="utf-8").strip()
    with_cert = Settings(
        **base,
        kafka_ssl_certfile=secure_kafka.client_cert,
        kafka_ssl_keyfile=secure_kafka.client_key,
        kafka_ssl_key_password=key_password,
    )
    assert asyncio.run(check_kafka_connection(with_cert, timeout=20)) is None
    with pytest.raises(ConfigError) as refused:
        asyncio.run(check_kafka_connection(Settings(**base), timeout=20))
    assert "closed the connection" in str(refused.value) and "VECTORIZE_WORKER_KAFKA_SSL_CERTFILE" in str(refused.value)
