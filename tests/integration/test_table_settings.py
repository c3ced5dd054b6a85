"""The table settings on real Kafka: the task-status table in the in-memory store, and no status store at all."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Topics, WorkerProcess, collect, produce, run
from tests.integration.test_distributed import completed_ids, eventually, tasks

pytestmark = pytest.mark.integration


def finished_with_statuses(topics: Topics, n: int) -> dict[str, list[dict[str, Any]]]:
    """The result and status records so far, once ``n`` tasks have a result and a ``completed`` status."""
    return run(
        collect(
            [topics.results, topics.status],
            lambda r: (
                len(completed_ids(r, topics.results)) >= n
                and sum(s["status"] == "completed" for s in r[topics.status]) >= n
            ),
            timeout=120,
        )
    )


def listed_when_done(w: WorkerProcess, prefix: str, n: int) -> tuple[int, dict[str, Any], set[str]]:
    """``/tasks`` once it lists tasks ``<prefix>-0`` … ``<prefix>-<n-1>`` completed (at most 20 s: the table's
    tracker follows the status topic a moment behind): its status, body and the completed ids."""
    deadline = time.monotonic() + 20
    while True:
        status, listing = w.get("/tasks")
        done = {t["task_id"] for t in listing["tasks"] if t["status"] == "completed"}
        if done == {f"{prefix}-{i}" for i in range(n)} or time.monotonic() > deadline:
            return status, listing, done
        time.sleep(0.5)


def test_memory_table_store_serves_task_status(topics: Topics, tmp_path: Path) -> None:
    w = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_TABLE_STORE="memory",
        VECTORIZE_WORKER_TASK_STATUS_TABLE="true",  # the table, not Redis, behind /tasks
        VECTORIZE_WORKER_TASK_STATUS_REDIS="false",
    ).start()
    try:
        w.wait_ready()
        run(produce(topics.tasks, tasks("mem", 5)))
        run(collect([topics.results], lambda r: len(completed_ids(r, topics.results)) >= 5, timeout=120))
        body = eventually(lambda: w.get("/tasks/mem-3"))
        assert [h["status"] for h in body["history"]] == ["received", "processing", "completed"]
        status, listing, done = listed_when_done(w, "mem", 5)
        assert status == 200 and done == {f"mem-{i}" for i in range(5)}, listing
        assert len(listing["tasks"]) == 5  # one entry per task, not per status record
        # Faust's memory store: nothing of the tables on disk
        assert not list((tmp_path / "w").rglob("task-status-*.db"))
    finally:
        w.stop()
        w.kill()


def test_without_a_status_store_statuses_still_flow(topics: Topics, tmp_path: Path) -> None:
    w = WorkerProcess(
        topics, tmp_path / "w", VECTORIZE_WORKER_TASK_STATUS_TABLE="false", VECTORIZE_WORKER_TASK_STATUS_REDIS="false"
    ).start()
    try:
        w.wait_ready()
        run(produce(topics.tasks, tasks("off", 5)))
        records = finished_with_statuses(topics, 5)
        assert completed_ids(records, topics.results) == {f"off-{i}" for i in range(5)}
        sequence = [s["status"] for s in records[topics.status] if s["task_id"] == "off-2"]
        assert sequence == ["received", "processing", "completed"]
        status, body = w.get("/tasks/off-2")
        assert status == 404
        assert "kafka.task_status_table" in body["error"] and "redis.task_status" in body["error"], body
        assert topics.status in body["error"], body
        status, listing = w.get("/tasks")  # no tracker, no Redis statuses: nothing was written
        assert status == 200 and listing["tasks"] == [] and listing["task_status_table"] is False
        assert listing["task_status_redis"] is False
        assert w.proc is not None and w.proc.poll() is None
    finally:
        w.stop()
        w.kill()


def test_tasks_done_within_the_status_delay_get_only_their_final_status(topics: Topics, tmp_path: Path) -> None:
    # kafka.status_delay_ms holds received/processing back (default 1 s); a minute here, so every one of these
    # tasks is done within it whatever the machine's speed (the delay's timer has its unit tests)
    w = WorkerProcess(topics, tmp_path / "w", VECTORIZE_WORKER_STATUS_DELAY_MS="60000").start()
    try:
        w.wait_ready()
        run(produce(topics.tasks, tasks("quick", 5)))
        records = run(
            collect(
                [topics.results, topics.status],
                lambda r: len(completed_ids(r, topics.results)) >= 5 and len(r[topics.status]) >= 5,
                timeout=120,
            )
        )
        assert completed_ids(records, topics.results) == {f"quick-{i}" for i in range(5)}
        # everything on the status topic, read for 5 s: a status sent after the final one would be there by then
        records = run(collect([topics.status], lambda r: False, timeout=5, quiet=True))
        by_task = {
            f"quick-{i}": [s["status"] for s in records[topics.status] if s["task_id"] == f"quick-{i}"]
            for i in range(5)
        }
        assert by_task == {f"quick-{i}": ["completed"] for i in range(5)}, by_task
        body = eventually(lambda: w.get("/tasks/quick-3"))
        assert [h["status"] for h in body["history"]] == ["completed"]
    finally:
        w.stop()
        w.kill()


def test_a_second_worker_on_the_same_data_dir_stops_with_a_clear_message(topics: Topics, tmp_path: Path) -> None:
    first = WorkerProcess(topics, tmp_path / "w", worker_id="same").start()
    # the same worker id and data dir (the default id on one machine); its own log file
    second = WorkerProcess(topics, tmp_path / "second", worker_id="same", VECTORIZE_WORKER_DATA_DIR=str(tmp_path / "w"))
    try:
        first.wait_ready()
        second.start()
        assert second.proc is not None
        assert second.proc.wait(timeout=120) == 2
        message = second.log()
        assert "Another worker already runs with worker id 'same'" in message and str(tmp_path / "w") in message
        assert "VECTORIZE_WORKER_WORKER_ID" in message
        assert first.proc is not None and first.proc.poll() is None  # the first one is unharmed
        run(produce(topics.tasks, tasks("lock", 3)))
        run(collect([topics.results], lambda r: len(completed_ids(r, topics.results)) >= 3, timeout=120))
    finally:
        second.kill()
        first.stop()
        first.kill()
