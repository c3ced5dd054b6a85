"""Kafka itself stops in the middle of a stream and comes back: the worker rides it out and loses nothing.

The test runs its own broker (scripts/kafka.sh on ports 9192/9193 with its
state in a temporary folder), since it stops it: the shared one on 9092 is
never touched. A real worker reads a stream of one-text tasks; after the
first half Kafka is stopped for about ten seconds (records in flight, status
and result records unsent, commits failing), started again on the same
data, and the second half is sent. Every task must complete, the group's
commits must reach the end of every partition and the same worker process
must still be running, then leave cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    ROOT,
    Topics,
    WorkerProcess,
    collect,
    committed_vs_end,
    create_topics,
    produce,
    run,
)

pytestmark = pytest.mark.integration
PORT = int(os.environ.get("VECTORIZE_TEST_RESTART_KAFKA_PORT", "9192"))
CONTROLLER_PORT = int(os.environ.get("VECTORIZE_TEST_RESTART_KAFKA_CONTROLLER_PORT", "9193"))
BOOTSTRAP = f"127.0.0.1:{PORT}"
N_TASKS = 300
OUTAGE_S = 10.0


class OwnKafka:
    """scripts/kafka.sh on its own ports and state folder: a broker this test may stop."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(PORT),
            "KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
            "VW_STATE": str(state),
            "KAFKA_SECURE": "0",
            "KAFKA_HEAP": "512m",
        }

    def ctl(self, verb: str) -> None:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "kafka.sh"), verb],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode != 0:
            log = self.state / "kafka" / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(
                f"scripts/kafka.sh {verb} for the test broker on {BOOTSTRAP} (state {self.state}) failed "
                f"with {proc.returncode}: {proc.stdout}{proc.stderr}\n{tail}"
            )


def port_taken(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    """A fresh broker on 127.0.0.1:9192, stopped and its data removed afterwards."""
    for port in (PORT, CONTROLLER_PORT):
        if port_taken(port):
            pytest.fail(
                f"Port {port} on 127.0.0.1 is taken; the broker-restart test starts its own Kafka on "
                f"{PORT}/{CONTROLLER_PORT}. Stop what listens there or set VECTORIZE_TEST_RESTART_KAFKA_PORT and "
                "VECTORIZE_TEST_RESTART_KAFKA_CONTROLLER_PORT."
            )
    kafka = OwnKafka(tmp_path_factory.mktemp("kafka-restart"))
    kafka.ctl("start")
    try:
        yield kafka
    finally:
        kafka.ctl("reset")  # stop and remove its data


def tasks(prefix: str, n: int) -> list[bytes]:
    return [
        json.dumps(
            {"task_type": "text_vectorization", "data": f"Sentence {i} of a stream.", "task_id": f"{prefix}-{i}"}
        ).encode()
        for i in range(n)
    ]


def completed_ids(records: dict[str, list[dict[str, Any]]], topic: str) -> set[str]:
    return {r["task_id"] for r in records[topic] if r["status"] == "completed"}


def send_paced(topic: str, payloads: list[bytes], chunk: int = 50, pause: float = 0.1) -> None:
    """A stream rather than one burst: ``chunk`` records, a pause, and so on (over a few seconds)."""
    for i in range(0, len(payloads), chunk):
        run(produce(topic, payloads[i : i + chunk], bootstrap=BOOTSTRAP))
        time.sleep(pause)


def test_worker_survives_a_broker_restart_mid_stream(
    own_kafka: OwnKafka, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = Topics()
    run(create_topics([topics.tasks], partitions=4, bootstrap=BOOTSTRAP))
    w = WorkerProcess(
        topics,
        tmp_path / "w-restart",
        VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
        # a few tasks at a time: the worker is still busy with the first half when Kafka stops
        VECTORIZE_WORKER_MAX_CONCURRENT_TASKS="4",
    ).start()
    payloads = tasks("restart", N_TASKS)
    half = N_TASKS // 2
    try:
        w.wait_ready()
        send_paced(topics.tasks, payloads[:half])
        stopped_at = time.time()
        own_kafka.ctl("stop")
        time.sleep(OUTAGE_S)
        assert w.proc is not None and w.proc.poll() is None, (
            f"the worker exited while Kafka was down:\n{w.log()[-4000:]}"
        )
        own_kafka.ctl("start")
        restarted_at = time.time()
        send_paced(topics.tasks, payloads[half:])

        want = {f"restart-{i}" for i in range(N_TASKS)}
        records = run(
            collect(
                [topics.results, topics.status],
                lambda r: completed_ids(r, topics.results) >= want and completed_ids(r, topics.status) >= want,
                timeout=300,
                bootstrap=BOOTSTRAP,
            )
        )
        assert completed_ids(records, topics.results) == want
        assert not [r for r in records[topics.results] if r["status"] != "completed"]  # an outage fails no task

        # every offset acknowledged and committed: the group's lag reaches 0 on every partition
        deadline = time.monotonic() + 60
        while True:
            committed, ends = run(committed_vs_end(topics.tasks, topics.group, bootstrap=BOOTSTRAP))
            if committed == {p: end for p, end in ends.items() if end} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert sum(ends.values()) == N_TASKS
        assert committed == {p: end for p, end in ends.items() if end}, (committed, ends)

        assert w.proc.poll() is None, f"the worker exited:\n{w.log()[-4000:]}"  # the same process throughout
        assert w.stop() == 0
    finally:
        w.kill()

    # the vectors: one per task, redeliveries overwrote (deterministic ids)
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(tmp_path / "w-restart" / "qdrant"))
    try:
        assert client.count("vectorize", exact=True).count == N_TASKS
    finally:
        client.close()

    done_at = {s["task_id"]: s["timestamp"] for s in records[topics.status] if s["status"] == "completed"}
    first_after = sum(1 for i in range(half) if done_at[f"restart-{i}"] > stopped_at)
    with capsys.disabled():
        print(
            f"\nbroker restart: {first_after}/{half} tasks of the first half completed after Kafka stopped; "
            f"{len(records[topics.results])} result records for {N_TASKS} tasks; "
            f"Kafka back {restarted_at - stopped_at:.1f}s after the stop began"
        )
