"""Several worker processes in one consumer group, sharing a Chroma server: no task lost or doubled."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ops.task_status import RANK
from sinks.chroma import ChromaStore
from tests.integration.harness import (
    ROOT,
    Topics,
    WorkerProcess,
    collect,
    create_topics,
    free_port,
    produce,
    require_kafka,
    run,
    scrape_metrics,
)

pytestmark = pytest.mark.integration
CHROMA_URL = os.environ.get("VECTORIZE_TEST_CHROMA", "http://127.0.0.1:8000")
SUBJECTS = ["The river", "A young doctor", "Our small team", "The old library", "A passing storm", "The city council"]
VERBS = ["opened", "studied", "described", "changed", "protected", "questioned"]
OBJECTS = ["the northern bridge", "a rare manuscript", "the winter market", "an unusual signal", "the harbour lights"]


def sentences(n: int) -> list[str]:
    out = []
    for i in range(n):
        s, v, o = SUBJECTS[i % 6], VERBS[(i // 6) % 6], OBJECTS[(i // 36) % 5]
        out.append(f"{s} {v} {o} on day {i}.")
    return out


def tasks(prefix: str, n: int) -> list[bytes]:
    return [
        json.dumps({"task_type": "text_vectorization", "data": text, "task_id": f"{prefix}-{i}"}).encode()
        for i, text in enumerate(sentences(n))
    ]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Topics, str, ChromaStore]:
    require_kafka()
    store = ChromaStore(url=CHROMA_URL)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Chroma is not reachable at {CHROMA_URL} ({exc}); start it with `make up`.")
    topics = Topics()
    run(create_topics([topics.tasks], partitions=6))
    return topics, f"it_{topics.suffix}", store


def worker(topics: Topics, collection: str, tmp_path: Path, name: str, **env: str) -> WorkerProcess:
    return WorkerProcess(
        topics,
        tmp_path / name,
        worker_id=name,
        VECTORIZE_WORKER_VECTOR_DBS="chroma",
        VECTORIZE_WORKER_CHROMA__URL=CHROMA_URL,
        VECTORIZE_WORKER_DEFAULT_COLLECTION=collection,
        VECTORIZE_WORKER_TOPIC_PARTITIONS="6",
        VECTORIZE_WORKER_KAFKA_SESSION_TIMEOUT="10",
        VECTORIZE_WORKER_HEARTBEAT_INTERVAL="1",
        **env,
    )


def completed_ids(records: dict[str, list[dict[str, Any]]], topic: str) -> set[str]:
    return {r["task_id"] for r in records[topic] if r["status"] == "completed"}


def test_two_workers_share_500_tasks_exactly_once(
    setup: tuple[Topics, str, ChromaStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics, collection, store = setup
    metrics_port = free_port()
    workers = [
        worker(topics, collection, tmp_path, "w-a", VECTORIZE_WORKER_METRICS_PORT=str(metrics_port)).start(),
        worker(topics, collection, tmp_path, "w-b").start(),
    ]
    try:
        for w in workers:
            w.wait_ready()
        # a redelivered task is only right after a rebalance: count the group generations each worker joined
        synced_before = [w.log().count("Successfully synced group") for w in workers]
        payloads = tasks("two", 500)
        run(produce(topics.tasks, payloads))
        want = {f"two-{i}" for i in range(500)}
        records = run(
            collect(
                [topics.results, topics.status],
                lambda r: completed_ids(r, topics.results) >= want and completed_ids(r, topics.status) >= want,
                timeout=300,
            )
        )
        by_worker: dict[str, int] = {}
        for r in records[topics.results]:
            by_worker[r["worker_id"]] = by_worker.get(r["worker_id"], 0) + 1
        with capsys.disabled():
            print(f"\n500 tasks, 2 workers: results per worker {by_worker}; store count {store.count(collection)}")
        assert set(by_worker) == {"w-a", "w-b"} and all(n > 0 for n in by_worker.values())
        assert store.count(collection) == 500

        # the metrics endpoint of w-a has every named metric, with sane values
        def scrape() -> dict[str, float]:
            return scrape_metrics(metrics_port)

        # gauges (lag, memory, dependencies) are refreshed every 2 s: the 500 tasks can be done before the first
        deadline = time.monotonic() + 20
        values = scrape()
        while not any(k.startswith("worker_consumer_lag{") for k in values) and time.monotonic() < deadline:
            time.sleep(0.5)
            values = scrape()
        done = values['worker_tasks_processed_total{status="completed",task_type="text_vectorization"}']
        assert done == by_worker["w-a"]
        assert values['worker_task_processing_seconds_count{task_type="text_vectorization"}'] == done
        assert values["worker_loaded_models"] == 1
        assert 100e6 < values["worker_memory_usage_bytes"] < 8e9
        assert values["worker_active_tasks"] >= 0
        assert values["worker_batch_size_sum"] == done and values["worker_batch_size_count"] >= 1
        assert any(k.startswith("worker_inference_seconds_count") for k in values)
        assert values['worker_store_write_seconds_count{store="chroma"}'] >= 1
        assert any(k.startswith("worker_consumer_lag{") for k in values)
        assert values['worker_dependency_up{dependency="store"}'] == 1

        # web views: workers from Redis, task status from the table (routed), dashboard renders the data
        status, body = workers[0].get("/workers")
        assert status == 200 and {w["worker_id"] for w in body["workers"]} >= {"w-a", "w-b"}
        # the worker-stats table (fed by each worker's periodic report): between them, the two workers'
        # slices hold both workers, with the tasks each completed
        deadline = time.monotonic() + 20
        while True:
            table = {k: v for w in workers for k, v in w.get("/workers")[1]["table_stats"].items()}
            counts = {k: v["processed"] for k, v in table.items()}
            if counts == by_worker or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert counts == by_worker, table
        assert all(v["loaded_models"] == ["sentence-transformers/all-MiniLM-L6-v2"] for v in table.values())
        for task_id in ("two-0", "two-250", "two-499"):
            # Each status record of the task is held once (a fold repeated after a rebalance once doubled entries). Normally that is
            # received, processing, completed; at-least-once delivery repeats the three when a rebalance revoked
            # the task's partition before its offset was committed (then another generation was joined).
            sent = [
                {"status": s["status"], "timestamp": s["timestamp"]}
                for s in records[topics.status]
                if s["task_id"] == task_id
            ]
            # Redis keeps them in time order (statuses of one instant in their own order): the topic's order, but
            # for two workers' statuses of a task processed again, which may reach the topic interleaved
            sent.sort(key=lambda h: (h["timestamp"], RANK[h["status"]]))
            for w in workers:  # either worker answers for any task (from Redis, whichever worker wrote it)
                body = eventually(lambda w=w, task_id=task_id: w.get(f"/tasks/{task_id}"), history=sent[-10:])
                assert body["history"] == sent[-10:], (task_id, w.worker_id)
            statuses = [h["status"] for h in sent]
            assert statuses[0] == "received" and statuses[-1] == "completed", (task_id, statuses)
            if len(statuses) > 3:
                rebalanced = [
                    w.log().count("Successfully synced group") > n for w, n in zip(workers, synced_before, strict=True)
                ]
                assert any(rebalanced), f"{task_id} was processed again without a rebalance: {statuses}"
        status, body = workers[1].get("/models")
        assert body["loaded"][0]["dim"] == 384
        check_dashboard(workers[0], tmp_path)
    finally:
        for w in workers:
            w.stop()
            w.kill()


def eventually(get: Any, timeout: float = 20, history: list[dict[str, Any]] | None = None) -> Any:
    """The status table follows the status topic a moment behind the results: poll until 200 and completed
    (and, given ``history``, until the entry's history is that)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = get()
        settled = status == 200 and body.get("status") == "completed"
        if settled and history is not None:
            settled = body.get("history") == history
        if settled or time.monotonic() > deadline:
            assert status == 200, body
            return body
        time.sleep(0.5)


def check_dashboard(w: WorkerProcess, tmp_path: Path) -> None:
    """Headless Chromium renders the dashboard; its DOM and screenshot show the live workers."""
    shot = tmp_path / "dashboard.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
    ]
    url = f"http://127.0.0.1:{w.web_port}/"
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    rendered = dom.stdout
    assert "<td>w-a</td>" in rendered and "<td>w-b</td>" in rendered, rendered[-3000:]  # rows built by the page's JS
    assert "<td>sentence-transformers/all-MiniLM-L6-v2</td>" in rendered
    assert 'id="n-workers">2<' in rendered
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 900)
    assert len(set(image.getdata())) > 20  # rendered text and tables, not a blank page
    out = ROOT / ".state" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dashboard.png").write_bytes(shot.read_bytes())
