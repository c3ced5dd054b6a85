"""The watch on table recovery, on a real broker and a real worker: a recovery that can never end.

A transaction's commit marker takes the last offset of a partition and is never delivered to a consumer, so
Faust's recovery (at-least-once: it does not look for markers) waits for that offset for ever. That is a real
stall to watch: written into every partition of the task-status changelog, the workers recovering the table
after the next rebalance never get past it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.harness import BOOTSTRAP, Topics, WorkerProcess, run

pytestmark = pytest.mark.integration


async def one_transaction_per_partition(topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, transactional_id=f"it-rw-{uuid.uuid4().hex[:8]}", enable_idempotence=True
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        assert partitions, f"{topic} does not exist"
        async with producer.transaction():
            for partition in partitions:
                entry = {"task_id": f"tx-{partition}", "status": "completed", "history": []}
                await producer.send(
                    topic, json.dumps(entry).encode(), key=json.dumps(f"tx-{partition}").encode(), partition=partition
                )
    finally:
        await producer.stop()


def test_a_recovery_that_never_ends_is_restarted_three_times_then_fails_healthz(topics: Topics, tmp_path: Path) -> None:
    # the task-status table (off by default: statuses go to Redis) is the changelog made to stall here
    env = {"VECTORIZE_WORKER_RECOVERY_STALL_SECONDS": "2", "VECTORIZE_WORKER_TASK_STATUS_TABLE": "true"}
    first = WorkerProcess(topics, tmp_path / "b", worker_id="rw-b", **env).start()  # creates the changelog
    second: WorkerProcess | None = None
    try:
        first.wait_ready()  # its first recovery is over: its web server and /healthz are up
        run(one_transaction_per_partition(f"{topics.group}-task-status-changelog"))
        # a second worker joins: both recover their new assignments, and every partition ends in a marker
        second = WorkerProcess(topics, tmp_path / "c", worker_id="rw-c", **env).start()
        first.wait_for_log(
            r"Table recovery made no progress for \d+s \(\d+ changelog records left: .*restarting it \(1 of 3\)"
        )
        first.wait_for_log(r"after 3 restarts .*/healthz now fails: restart the worker", timeout=120)
        status, body = first.get("/healthz")
        assert status == 503 and body["status"] == "down" and body["consumer"] is True
        assert "table recovery made no progress" in body["table_recovery"]
        assert "task-status-changelog" in body["table_recovery"]
        log = first.log()
        assert [n for n in (1, 2, 3) if f"restarting it ({n} of 3)" in log] == [1, 2, 3]
        assert "restarting it (4 of 3)" not in log
        # the second worker's first recovery is watched too (Faust's timers and web server wait for it)
        second.wait_for_log(r"after 3 restarts .*/healthz now fails", timeout=120)
    finally:
        first.kill()
        if second is not None:
            second.kill()
