"""Real Kafka and real worker processes for integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("VECTORIZE_TEST_KAFKA", "127.0.0.1:9092")


def require_kafka() -> None:
    host, port = BOOTSTRAP.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Kafka is not reachable at {BOOTSTRAP} ({exc}); start it with `make up` (scripts/kafka.sh start).")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Topics:
    """Unique topic names and group per test, so runs never see each other's records."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def tasks(self) -> str:
        return f"it-tasks-{self.suffix}"

    @property
    def status(self) -> str:
        return f"it-status-{self.suffix}"

    @property
    def results(self) -> str:
        return f"it-results-{self.suffix}"

    @property
    def dlq(self) -> str:
        return f"it-dlq-{self.suffix}"

    @property
    def group(self) -> str:
        return f"it-group-{self.suffix}"

    def env(self) -> dict[str, str]:
        return {
            "VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
            "VECTORIZE_WORKER_TASKS_TOPIC": self.tasks,
            "VECTORIZE_WORKER_STATUS_TOPIC": self.status,
            "VECTORIZE_WORKER_RESULTS_TOPIC": self.results,
            "VECTORIZE_WORKER_DLQ_TOPIC": self.dlq,
            "VECTORIZE_WORKER_KAFKA_GROUP_ID": self.group,
            # each test's collections' states apart from other tests' (a state names physical collections)
            "VECTORIZE_WORKER_MIGRATIONS_TOPIC": f"it-migrations-{self.suffix}",
        }


class WorkerProcess:
    """``python -m app worker`` in a subprocess with its own data dir and ports."""

    def __init__(self, topics: Topics, data_dir: Path, worker_id: str = "worker-it", **env: str) -> None:
        self.worker_id = worker_id
        self.data_dir = data_dir
        self.log_path = data_dir / f"{worker_id}.log"
        self.env = {
            **os.environ,
            **topics.env(),
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "VECTORIZE_WORKER_CONFIG": str(ROOT / "faust.yml"),
            "VECTORIZE_WORKER_WORKER_ID": worker_id,
            "VECTORIZE_WORKER_DATA_DIR": str(data_dir),
            "VECTORIZE_WORKER_WEB_PORT": str(free_port()),
            "VECTORIZE_WORKER_WEB_ADVERTISED_HOST": "127.0.0.1",
            "VECTORIZE_WORKER_METRICS_PORT": "0",
            "VECTORIZE_WORKER_DEVICE": "cpu",
            "VECTORIZE_WORKER_MODELS_ALLOW_DOWNLOAD": "false",
            # one engine in every run: `auto` picks the fastest engine measured at load, which depends on how
            # busy the machine is; the engine choice has its own tests (tests/models/test_engine_choice_real.py)
            "VECTORIZE_WORKER_MODELS_BACKEND": "onnx",
            # the embedding cache of each test's workers apart from other tests' (and from earlier runs')
            "VECTORIZE_WORKER_CACHE_KEY_PREFIX": f"it:{topics.suffix}:",
            "VECTORIZE_WORKER_CACHE_TTL_SECONDS": "3600",
            # every status as it happens, so tests can assert received -> processing -> completed whatever the
            # machine's speed; the default delay has its own test (test_worker_e2e.py)
            "VECTORIZE_WORKER_STATUS_DELAY_MS": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "-l", "info"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log()):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker log never matched {pattern!r} in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not stop within {timeout}s of SIGTERM:\n{self.log()[-3000:]}") from None

    @property
    def web_port(self) -> int:
        return int(self.env["VECTORIZE_WORKER_WEB_PORT"])

    def get(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        """GET a JSON view of this worker's web server: (status, body)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=timeout) as r:  # noqa: S310
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_ready(self, timeout: float = 180) -> None:
        """Until /readyz says ready (model warmed, store reachable, partitions assigned)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                status, last = self.get("/readyz", timeout=3)
                if status == 200:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"worker {self.worker_id} not ready in {timeout}s: {last}\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


async def produce(
    topic: str,
    values: Iterable[bytes],
    key: bytes | None = None,
    bootstrap: str | None = None,
    *,
    security: dict[str, Any] | None = None,
) -> None:
    """Send ``values`` one by one, each acknowledged by all replicas; ``bootstrap``: another broker than BOOTSTRAP;
    ``security``: aiokafka's security_protocol/ssl_context/sasl_* arguments for a secured broker."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap or BOOTSTRAP, acks="all", max_request_size=16 * 1024 * 1024, **(security or {})
    )
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def create_topics(
    names: Iterable[str], partitions: int = 4, bootstrap: str | None = None, *, security: dict[str, Any] | None = None
) -> None:
    from aiokafka.admin import NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap or BOOTSTRAP, **(security or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def collect(
    topics: list[str],
    done: Any,
    timeout: float = 180,
    quiet: bool = False,
    bootstrap: str | None = None,
    *,
    security: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Read JSON records of ``topics`` from the beginning until ``done(records)`` or the timeout.

    ``quiet``: return what was read at the timeout instead of failing. ``bootstrap``: another broker than BOOTSTRAP.
    ``security``: as for :func:`produce`.
    """
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap or BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **(security or {}),
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    records: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                records[tp.topic].extend(json.loads(m.value) for m in messages)
            if done(records):
                return records
    finally:
        await consumer.stop()
    if quiet:
        return records
    counts = {t: len(v) for t, v in records.items()}
    raise AssertionError(f"timed out after {timeout}s waiting for records; got {counts}")


async def committed_vs_end(
    topic: str, group: str, bootstrap: str | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and the topic's end offsets, per partition (``bootstrap``: another broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap or BOOTSTRAP)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap or BOOTSTRAP)
    await consumer.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return committed, {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()
        await admin.close()


def scrape_metrics(port: int) -> dict[str, float]:
    """A worker's /metrics on 127.0.0.1:``port``: each ``worker_*`` sample (name with labels) and its value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()  # noqa: S310
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("worker_") and not line.startswith("#")
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)
