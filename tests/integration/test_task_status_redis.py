"""Task statuses in Redis (ops/task_status.py) on the project's real Redis, and ``/tasks/{id}`` from a real worker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from ops import task_status
from ops.task_status import RedisTaskStatus, TaskStatusError
from tests.integration.harness import Topics, WorkerProcess, free_port, produce, run
from tests.integration.test_distributed import eventually, tasks
from tests.integration.test_embedding_cache import OWN_REDIS_PORT, OwnRedis
from tests.integration.test_table_settings import finished_with_statuses, listed_when_done

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/0"  # `make up`'s Redis, as the workers of the other tests


def record(task_id: str, status: str, timestamp: float, worker: str = "w-1") -> bytes:
    return json.dumps({"task_id": task_id, "status": status, "worker_id": worker, "timestamp": timestamp}).encode()


def store(prefix: str, **kwargs: Any) -> RedisTaskStatus:
    return RedisTaskStatus(REDIS_URL, prefix=prefix, ttl_seconds=60, **kwargs)


def track(s: RedisTaskStatus, task_id: str, status: str, timestamp: float, worker: str = "w-1") -> None:
    s.track(task_id, status, timestamp, record(task_id, status, timestamp, worker))


async def written(s: RedisTaskStatus) -> None:
    while s._queue:
        await s.flush()


@pytest.fixture
def prefix() -> str:
    return f"it-{uuid.uuid4().hex[:12]}:task-status:"


async def test_statuses_fold_into_the_latest_record_and_a_history_in_time_order(prefix: str) -> None:
    s = store(prefix)
    try:
        for status, at in (("received", 100.0), ("processing", 100.0), ("completed", 101.5)):
            track(s, "a", status, at)  # received and processing at the same instant: their rank orders them
        track(s, "a", "completed", 101.5)  # the same step again (a retried status): nothing changes
        for i in range(12):
            track(s, "b", "processing", 200.0 + i)
        await written(s)
        a, b, unknown = await s.get_many(["a", "b", "never-sent"])
        assert unknown is None
        assert a is not None and a["status"] == "completed" and a["timestamp"] == 101.5 and a["worker_id"] == "w-1"
        assert [(h["status"], h["timestamp"]) for h in a["history"]] == [
            ("received", 100.0),
            ("processing", 100.0),
            ("completed", 101.5),
        ]
        assert b is not None and [h["timestamp"] for h in b["history"]] == [202.0 + i for i in range(10)]  # last 10
        assert b["timestamp"] == 211.0
        client = redis.Redis.from_url(REDIS_URL)
        record_key, history_key = s.keys("a")
        assert 0 < client.ttl(record_key) <= 60 and 0 < client.ttl(history_key) <= 60
        assert key_slot(record_key.encode()) == key_slot(history_key.encode())  # one slot: the script runs on a cluster
        assert s.dropped == 0 and s.up is True
    finally:
        await s.close()


async def test_two_workers_statuses_of_one_task_leave_the_latest_whatever_their_order(prefix: str) -> None:
    first, second = store(prefix), store(prefix)
    try:
        # a redelivered task: the second worker's statuses reach Redis before the first worker's last one
        track(first, "t", "received", 10.0, "w-1")
        await written(first)
        track(second, "t", "received", 20.0, "w-2")
        track(second, "t", "completed", 21.0, "w-2")
        await written(second)
        track(first, "t", "processing", 11.0, "w-1")  # late: it joins the history, the record stays the latest
        await written(first)
        entry = await second.get("t")
        assert entry is not None and (entry["status"], entry["worker_id"]) == ("completed", "w-2")
        assert [(h["status"], h["timestamp"]) for h in entry["history"]] == [
            ("received", 10.0),
            ("processing", 11.0),
            ("received", 20.0),
            ("completed", 21.0),
        ]
    finally:
        await first.close()
        await second.close()


def script_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("script|exists", "script|load", "evalsha")
    }


async def test_the_fold_runs_by_its_digest_and_comes_back_after_redis_lost_its_scripts(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    s = store(prefix)
    try:
        client.script_flush()  # as after a Redis restart
        track(s, "a", "completed", 1.0)
        await written(s)  # NOSCRIPT: the worker loads the fold and sends the batch again
        before = script_calls(client)
        for i in range(3):
            track(s, f"b{i}", "completed", 2.0 + i)
            await written(s)
        after = script_calls(client)
        assert after["script|exists"] == before["script|exists"]  # no check per flush (a pipeline's registered
        assert after["script|load"] == before["script|load"]  # script costs one round trip each)
        assert after["evalsha"] == before["evalsha"] + 3
        assert [t["task_id"] for t in await s.recent()] == ["b2", "b1", "b0", "a"] and s.dropped == 0
    finally:
        await s.close()


async def test_the_group_index_lists_every_workers_tasks_newest_first(prefix: str) -> None:
    first, second = store(prefix), store(prefix)
    try:
        track(first, "a", "completed", 10.0, "w-1")
        track(first, "b", "completed", 30.0, "w-1")
        await written(first)
        track(second, "c", "received", 20.0, "w-2")
        track(second, "c", "completed", 40.0, "w-2")
        await written(second)
        track(first, "a", "received", 5.0, "w-1")  # a late, older step: a stays where its latest put it
        await written(first)
        for s in (first, second):  # any worker of the group lists the group's tasks alike
            assert [(t["task_id"], t["timestamp"]) for t in await s.recent()] == [("c", 40.0), ("b", 30.0), ("a", 10.0)]
        assert [t["task_id"] for t in await second.recent(2)] == ["c", "b"]
        client = redis.Redis.from_url(REDIS_URL)
        assert client.zscore(first.recent_key, "a") == 10.0 and 0 < client.ttl(first.recent_key) <= 60
        assert all(first.recent_key not in key for key in first.keys("recent"))  # no task's keys are the index
        assert first.recent_key == f"{prefix}recent"  # under the group's prefix: another group has its own
    finally:
        await first.close()
        await second.close()


async def test_the_group_index_keeps_the_newest_within_the_retention(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_status, "RECENT_KEPT", 3)
    s = store(prefix)  # statuses kept 60 s
    try:
        for i in range(5):
            track(s, f"n{i}", "completed", 1000.0 + i)
        await written(s)
        assert [t["task_id"] for t in await s.recent(10)] == ["n4", "n3", "n2"]  # the newest 3
        track(s, "later", "completed", 1100.0)  # 96 s after n4: the others are past the retention
        await written(s)
        client = redis.Redis.from_url(REDIS_URL)
        assert client.zrange(s.recent_key, 0, -1) == [b"later"]
        assert (
            await s.get("n4")
        ) is not None  # its own keys are there (Redis's clock, not the statuses', expires them)
        assert s.dropped == 0
    finally:
        await s.close()


async def test_an_index_key_in_the_way_costs_the_listing_not_the_statuses(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = store(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    client.set(s.recent_key, "someone else's string", ex=60)
    try:
        track(s, "t", "completed", 1.0)
        with caplog.at_level("WARNING", logger="worker.task_status"):
            await written(s)
        entry = await s.get("t")
        assert entry is not None and entry["status"] == "completed" and s.dropped == 0 and s.up is True
        assert f"Redis refused the index of recent tasks {s.recent_key!r}" in caplog.text and "WRONGTYPE" in caplog.text
        with pytest.raises(TaskStatusError) as raised:
            await s.recent()
        assert "WRONGTYPE" in str(raised.value)
        track(s, "t2", "completed", 2.0)
        with caplog.at_level("INFO", logger="worker.task_status"):
            await written(s)  # still in the way: no second warning
            assert caplog.text.count("Redis refused the index") == 1
            client.delete(s.recent_key)
            track(s, "t3", "completed", 3.0)
            await written(s)
        assert "is written again" in caplog.text and [t["task_id"] for t in await s.recent()] == ["t3"]
    finally:
        client.delete(s.recent_key)
        await s.close()


async def test_redis_away_keeps_a_bounded_queue_and_reads_say_why(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lost: list[int] = []
    port = free_port()  # nothing listens there
    dead = RedisTaskStatus(
        f"redis://:s3cret@127.0.0.1:{port}/0", prefix=prefix, ttl_seconds=60, timeout=0.5, on_error=lost.append
    )
    for i in range(3):
        track(dead, f"t{i}", "completed", float(i))
    assert await dead.flush() is False  # not reached: the statuses wait for the next try
    assert [item[0] for item in dead._queue] == ["t0", "t1", "t2"] and dead.dropped == 0 and dead.up is False
    with pytest.raises(TaskStatusError) as raised:
        await dead.get("t0")
    message = str(raised.value)
    assert f"Failed to connect to Redis at redis://:***@127.0.0.1:{port}" in message and "s3cret" not in message
    # a long outage: the queue stays bounded, the oldest statuses go first, and each one dropped is counted
    monkeypatch.setattr(task_status, "QUEUE_LIMIT", 5)
    for i in range(8):
        track(dead, f"q{i}", "completed", float(i))
    assert [item[0] for item in dead._queue] == [f"q{i}" for i in range(3, 8)] and dead.dropped == 6
    await dead.close(timeout=1.0)  # one more try, then what is left is dropped
    assert dead.dropped == 11 and sum(lost) == 11 and not dead._queue


async def test_a_flush_cancelled_at_shutdown_keeps_its_statuses_for_close(prefix: str) -> None:
    with socket.socket() as silent:  # accepts connections (its backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        s = RedisTaskStatus(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", prefix=prefix, ttl_seconds=60, timeout=30)
        track(s, "c", "received", 1.0)
        track(s, "c", "completed", 2.0)
        flushing = asyncio.ensure_future(s.flush())
        await asyncio.sleep(0.5)
        assert not flushing.done() and not s._queue  # the batch is in flight, waiting for Redis
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        assert [(item[0], item[1]) for item in s._queue] == [("c", "received"), ("c", "completed")]
        assert s.dropped == 0
        s._queue.clear()
        await s.close(timeout=0.5)


async def test_a_batch_that_fails_unexpectedly_is_dropped_and_the_writer_goes_on(
    prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = store(prefix)
    keys = s.keys

    def broken(task_id: str) -> tuple[str, str]:
        if task_id == "bad":
            raise ValueError("a bug in making the keys")
        return keys(task_id)

    monkeypatch.setattr(s, "keys", broken)
    writer = asyncio.ensure_future(s.run())
    try:
        track(s, "bad", "completed", 1.0)
        deadline = time.monotonic() + 10
        while s.dropped == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert s.dropped == 1 and "Writing 1 task statuses" in caplog.text and "a bug in making the keys" in caplog.text
        track(s, "good", "completed", 2.0)  # the writer still runs
        deadline = time.monotonic() + 10
        while (s._queue or await s.get("good") is None) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        entry = await s.get("good")
        assert entry is not None and entry["status"] == "completed" and s.dropped == 1
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await s.close()


async def test_a_short_redis_outage_loses_no_status(prefix: str, tmp_path: Path) -> None:
    own = OwnRedis(tmp_path / "redis")  # a redis-server of the test's own, started once statuses wait
    s = RedisTaskStatus(f"redis://127.0.0.1:{OWN_REDIS_PORT}/0", prefix=prefix, ttl_seconds=60, timeout=0.5)
    writer = asyncio.ensure_future(s.run())
    try:
        track(s, "blip", "received", 1.0)
        track(s, "blip", "completed", 2.0)
        deadline = time.monotonic() + 10
        while s.up is not False and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert s.up is False and len(s._queue) == 2  # tried, failed, kept
        own.start()
        deadline = time.monotonic() + 10
        while (s._queue or s.up is not True) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        entry = await s.get("blip")
        assert entry is not None and entry["status"] == "completed" and len(entry["history"]) == 2
        assert s.dropped == 0
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await s.close()
        own.stop()


def test_a_worker_answers_tasks_from_redis_and_keeps_no_table(topics: Topics, tmp_path: Path) -> None:
    w = WorkerProcess(topics, tmp_path / "w").start()  # the defaults: statuses in Redis, no task-status table
    try:
        w.wait_ready()
        run(produce(topics.tasks, tasks("red", 5)))
        records = finished_with_statuses(topics, 5)
        sent = [s for s in records[topics.status] if s["task_id"] == "red-3"]
        body = eventually(lambda: w.get("/tasks/red-3"))
        assert body["status"] == "completed" and body["served_by"] == w.worker_id
        assert body["history"] == [{"status": s["status"], "timestamp": s["timestamp"]} for s in sent]
        keys = redis.Redis.from_url(REDIS_URL).keys(f"{topics.group}:task-status:{{red-3}}*")
        assert len(keys) == 2  # the record and its history, under the group's prefix
        status, listing, done = listed_when_done(w, "red", 5)
        assert status == 200 and done == {f"red-{i}" for i in range(5)} and len(listing["tasks"]) == 5, listing
        assert listing["task_status_redis"] is True and listing["task_status_table"] is False
        assert listing["scope"] == "group"

        async def another_worker_of_the_group() -> None:  # a store of the test's own, under the group's prefix
            other = RedisTaskStatus(REDIS_URL, prefix=f"{topics.group}:task-status:", ttl_seconds=60)
            track(other, "elsewhere-1", "completed", time.time(), "w-other")
            await written(other)
            await other.close()

        run(another_worker_of_the_group())
        status, listing = w.get("/tasks")
        assert status == 200 and len(listing["tasks"]) == 6, listing
        assert (listing["tasks"][0]["task_id"], listing["tasks"][0]["worker_id"]) == ("elsewhere-1", "w-other")
        status, listing = w.get("/tasks?limit=2")
        assert status == 200 and [t["task_id"] for t in listing["tasks"]][0] == "elsewhere-1"
        assert len(listing["tasks"]) == 2
        assert not list((tmp_path / "w").rglob("task-status-*.db"))  # no table written on disk
    finally:
        w.stop()
        w.kill()
