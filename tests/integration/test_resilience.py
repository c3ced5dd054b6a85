"""Bad input, Redis outage, heartbeat expiry and a vector store outage, on real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from ops.heartbeat import heartbeat_key
from tests.integration.harness import ROOT, Topics, WorkerProcess, collect, produce, run
from tests.integration.test_distributed import CHROMA_URL, completed_ids, tasks, worker
from tests.unit.test_schema import MALFORMED

pytestmark = pytest.mark.integration
REDIS_URL = "redis://127.0.0.1:6379/0"


def malformed_payloads() -> list[bytes]:
    """50 bad records of different kinds."""
    bad = [payload for payload, _ in MALFORMED]  # 23 kinds from the unit tests
    bad.append(b"x" * (10 * 1024 * 1024))  # 10 MB
    bad.append(b'{"task_type": "text_vectorization", "data": "' + b"y" * (5 * 1024 * 1024) + b'"}')
    bad.append(b"\x00" * 64)  # null bytes
    bad.append(b'{"a":' * 5000 + b"1" + b"}" * 5000)  # very deep nesting
    bad.append(b"null")
    for i in range(50 - len(bad)):  # more wrong types / missing fields
        bad.append(json.dumps({"task_type": "batch_vectorization", "data": [i, None], "task_id": f"bad-{i}"}).encode())
    assert len(bad) == 50
    return bad


def test_fifty_malformed_payloads_each_fail_once_and_valid_tasks_flow(topics: Topics, tmp_path: Path) -> None:
    good = tasks("good", 30)
    bad = malformed_payloads()
    mixed: list[bytes] = []
    for i in range(50):  # interleave: valid tasks keep flowing between the bad ones
        mixed.append(bad[i])
        if i < 30:
            mixed.append(good[i])
    run(produce(topics.tasks, mixed))
    w = WorkerProcess(topics, tmp_path / "w", VECTORIZE_WORKER_MAX_TASK_BYTES=str(4 * 1024 * 1024)).start()
    try:
        records = run(
            collect(
                [topics.results, topics.dlq, topics.status],
                lambda r: len(r[topics.results]) >= 80 and len(r[topics.dlq]) >= 50,
                timeout=240,
            )
        )
        time.sleep(2)
        assert w.proc.poll() is None  # still running
        assert w.stop() == 0
    finally:
        w.kill()
    failed = [r for r in records[topics.results] if r["status"] == "failed"]
    assert len(failed) == 50 and len(records[topics.dlq]) == 50
    assert completed_ids(records, topics.results) == {f"good-{i}" for i in range(30)}
    failed_status = [s for s in records[topics.status] if s["status"] == "failed"]
    assert len(failed_status) == 50 and len({s["task_id"] for s in failed_status}) == 50
    kinds = {d["error"]["message"].split(":")[0] for d in records[topics.dlq]}
    assert any("over the limit" in d["error"]["message"] for d in records[topics.dlq])
    assert any("nested deeper" in d["error"]["message"] for d in records[topics.dlq])
    assert len(kinds) >= 2
    assert {d["source"]["topic"] for d in records[topics.dlq]} == {topics.tasks}
    huge = [d for d in records[topics.dlq] if d["payload_bytes"] == 10 * 1024 * 1024]
    assert len(huge) == 1 and huge[0]["payload_truncated"] and len(huge[0]["payload"]) == 512 * 1024


def redis_ctl(action: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "redis.sh"), action], check=True, capture_output=True, timeout=60)


def test_redis_outage_heartbeat_resumes_and_expires(topics: Topics, tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    w = WorkerProcess(topics, tmp_path / "w", worker_id="hb-worker", VECTORIZE_WORKER_HEARTBEAT_INTERVAL="0.5").start()
    key = heartbeat_key("hb-worker")
    try:
        w.wait_ready()
        deadline = time.monotonic() + 10
        while not (beat := json.loads(client.get(key) or "{}")).get("ready") and time.monotonic() < deadline:
            time.sleep(0.2)  # the first beats may predate readiness
        assert beat["status"] == "running" and beat["pid"] == w.proc.pid and beat["ready"] is True
        assert beat["loaded_models"] == ["sentence-transformers/all-MiniLM-L6-v2"] and beat["device"] == "cpu"
        # the harness's models.backend onnx: the default model runs in ONNX Runtime (it exported and matched torch)
        assert beat["model_backends"] == {"sentence-transformers/all-MiniLM-L6-v2": "onnxruntime"}
        assert 0 < client.ttl(key) <= 2
        redis_ctl("stop")
        try:
            run(produce(topics.tasks, tasks("during-outage", 20)))
            run(collect([topics.results], lambda r: len(completed_ids(r, topics.results)) >= 20, timeout=120))
            time.sleep(2)  # several beats fail meanwhile
        finally:
            redis_ctl("start")
        deadline = time.monotonic() + 20
        while client.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(client.get(key))["processed"] >= 20
        log = w.log()
        beats = [line for line in log.splitlines() if " - worker.heartbeat - " in line]
        assert sum("Failed to connect to Redis at" in line for line in beats) == 1  # one warning, not one per beat
        assert "heartbeats resumed" in log
        # the embedding cache shares that Redis: one warning of its own for the outage (the 20 tasks completed)
        assert log.count("Embedding cache: ") == 1
        # a worker that dies disappears when its TTL runs out
        os.killpg(w.proc.pid, signal.SIGKILL)
        w.proc.wait(30)
        time.sleep(2.5)
        assert client.get(key) is None
    finally:
        w.kill()
        redis_ctl("start")


def test_a_beating_heartbeat_stops_whenever_it_is_stopped() -> None:
    """redis-py 8.1 swallows a cancel that lands in parts of a command: a heartbeat loop cancelled at a random
    moment went on beating in over a third of 100 tries, and the SIGTERM drain that awaited it never handed over
    to Faust (a chaos-test worker stayed in the group, taking no task). Stopped as the worker stops it, each of
    100 loops, cancelled at a random moment of its beats, ends within 3 s and its key is gone."""
    import asyncio
    import random

    from app.runtime import cancel_and_wait
    from ops.heartbeat import Heartbeat

    async def beat_and_stop(n: int) -> tuple[bool, bool]:
        hb = Heartbeat(REDIS_URL, f"it-stop-{n}", lambda: {"ready": True}, interval=0.001)
        task = asyncio.ensure_future(hb.run())
        await asyncio.sleep(random.random() * 0.01)  # somewhere in a beat, or between two
        hb.halt()
        await cancel_and_wait([task], timeout=3)
        ended = task.done()
        await hb.stop()
        return ended, redis.Redis.from_url(REDIS_URL).exists(heartbeat_key(f"it-stop-{n}")) == 1

    async def all_of_them() -> list[tuple[bool, bool]]:
        return [await beat_and_stop(n) for n in range(100)]

    outcomes = asyncio.run(all_of_them())
    assert [n for n, (ended, _) in enumerate(outcomes) if not ended] == []
    assert [n for n, (_, key_left) in enumerate(outcomes) if key_left] == []


def chroma_ctl(action: str) -> None:
    env = {**os.environ, "VENV": os.environ.get("VENV", str(Path(os.sys.executable).parent.parent))}
    subprocess.run([str(ROOT / "scripts" / "chroma.sh"), action], check=True, capture_output=True, timeout=120, env=env)


def test_store_outage_loses_nothing_and_recovers_without_restart(topics: Topics, tmp_path: Path) -> None:
    from sinks.chroma import ChromaStore

    collection = f"outage_{topics.suffix}"
    w = worker(topics, collection, tmp_path, "w-outage").start()
    store = ChromaStore(url=CHROMA_URL)
    not_ready_seen: list[Any] = []
    try:
        w.wait_ready()
        run(produce(topics.tasks, tasks("outage", 200)))
        run(collect([topics.results], lambda r: len(r[topics.results]) >= 20, timeout=120))
        chroma_ctl("stop")
        try:
            # the pipelined worker may have finished the first 200 already: these
            # are certainly written during the outage
            run(produce(topics.tasks, tasks("outage-late", 50)))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not not_ready_seen:
                status, body = w.get("/readyz")
                if status == 503 and body["checks"]["store_reachable"] is False:
                    not_ready_seen.append(body)
                time.sleep(0.5)
        finally:
            chroma_ctl("start")
        want = {f"outage-{i}" for i in range(200)} | {f"outage-late-{i}" for i in range(50)}
        records = run(collect([topics.results], lambda r: completed_ids(r, topics.results) >= want, timeout=300))
        assert completed_ids(records, topics.results) == want
        assert not [r for r in records[topics.results] if r["status"] != "completed"]
        assert store.count(collection) == 250
        assert not_ready_seen, "the worker never reported itself not ready while Chroma was down"
        w.wait_ready(timeout=60)  # recovered by itself
        assert w.proc.poll() is None
        assert "retrying in" in w.log()
    finally:
        w.stop()
        w.kill()
