"""A real worker process on a real Kafka broker: tasks in, vectors and records out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.demo import EXAMPLES, SENTENCES  # the same tasks `make demo` sends
from tests.integration.harness import (
    ROOT,
    Topics,
    WorkerProcess,
    collect,
    committed_vs_end,
    produce,
    run,
)

pytestmark = pytest.mark.integration


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def faust_send(topics: Topics, value: str, tmp_path: Path) -> None:
    env = {**os.environ, **topics.env(), "PYTHONPATH": str(ROOT), "VECTORIZE_WORKER_DATA_DIR": str(tmp_path / "cli")}
    proc = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "send", topics.tasks, value],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_examples_sentences_and_bad_input_end_to_end(topics: Topics, tmp_path: Path) -> None:
    sentence_tasks = [
        {"task_type": "text_vectorization", "data": s, "task_id": f"s-{i}", "metadata": {"i": i, "lang": "en"}}
        for i, s in enumerate(SENTENCES)
    ]
    dup = {"task_type": "batch_vectorization", "data": ["one", "two"], "task_id": "dup"}
    payloads = [json.dumps(t, ensure_ascii=False).encode() for t in [*EXAMPLES, *sentence_tasks, dup]]
    payloads += [b"not json", json.dumps(dup).encode()]
    run(produce(topics.tasks, payloads))
    faust_send(
        topics,
        json.dumps({"task_type": "text_vectorization", "data": "sent by faust send", "task_id": "cli-1"}),
        tmp_path,
    )
    expected_results = len(payloads) + 1

    worker = WorkerProcess(topics, tmp_path / "w1").start()
    try:
        records = run(
            collect(
                [topics.status, topics.results, topics.dlq],
                lambda r: (
                    len(r[topics.results]) >= expected_results
                    and sum(s["status"] in ("completed", "failed") for s in r[topics.status]) >= expected_results
                ),
                timeout=240,
            )
        )
        import redis

        assert redis.Redis().get("worker:worker-it:heartbeat") is not None
        assert worker.stop() == 0
        assert redis.Redis().get("worker:worker-it:heartbeat") is None  # a clean stop leaves the live list at once
    finally:
        worker.kill()

    results = records[topics.results]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_type.setdefault(r["task_type"] or "invalid", []).append(r)
    statuses: dict[str, list[str]] = {}
    for s in records[topics.status]:
        statuses.setdefault(s["task_id"], []).append(s["status"])

    # every valid text-family task: received -> processing -> completed, 384-dim vectors
    completed = [r for r in results if r["status"] == "completed"]
    assert len(completed) == 4 + 12 + 2 + 1 - 1  # examples minus the image task, sentences, dup twice, cli
    for r in completed:
        if r["task_id"] == "dup":  # sent twice: two interleaved sequences
            assert sorted(statuses["dup"]) == sorted(["received", "processing", "completed"] * 2)
            assert statuses["dup"][0] == "received" and statuses["dup"][-1] == "completed"
        else:
            assert statuses[r["task_id"]] == ["received", "processing", "completed"]
        assert r["dimension"] == 384 and r["worker_id"] == "worker-it" and r["model"].endswith("all-MiniLM-L6-v2")
        assert r["count"] == len(r["vector_ids"]) > 0
    assert by_type["batch_vectorization"][0]["count"] in (2, 3)

    # the image task and the malformed record: failed status, dead letter with the original payload
    [image] = by_type["image_vectorization"]
    assert image["status"] == "failed" and "local image paths are off" in image["error"]["message"]
    assert statuses[image["task_id"]] == ["received", "processing", "failed"]
    [invalid] = by_type["invalid"]
    assert statuses[invalid["task_id"]] == ["failed"]
    dead = {d["task_id"]: d for d in records[topics.dlq]}
    assert len(dead) == 2
    assert dead[invalid["task_id"]]["payload"] == "not json"
    assert dead[invalid["task_id"]]["source"]["topic"] == topics.tasks
    assert json.loads(dead[image["task_id"]]["payload"])["data"] == "/path/to/image.jpg"

    # offsets: everything acknowledged and committed by the time the worker left
    committed, ends = run(committed_vs_end(topics.tasks, topics.group))
    # a partition that got no record has nothing to commit (keyless records land on random partitions)
    assert committed == {p: end for p, end in ends.items() if end} and sum(ends.values()) == len(payloads) + 1

    # the vectors in Qdrant equal an independent encode of each text
    from qdrant_client import QdrantClient, models
    from sentence_transformers import SentenceTransformer

    from models.resolve import packaged_model_dir

    reference = SentenceTransformer(str(packaged_model_dir("sentence-transformers/all-MiniLM-L6-v2")), device="cpu")
    client = QdrantClient(path=str(tmp_path / "w1" / "qdrant"))
    try:
        texts_by_id: dict[str, str] = {}
        for r in completed:
            for point in client.retrieve("vectorize", ids=r["vector_ids"], with_vectors=True, with_payload=True):
                assert len(point.vector) == 384
                if point.payload.get("vector_kind") == "document":  # a document's own vector has no text
                    continue
                texts_by_id[str(point.id)] = point.payload["text"]
                expected = reference.encode(point.payload["text"])
                assert cosine(point.vector, expected) >= 0.999, point.payload["text"]
        assert len(texts_by_id) == 1 + 3 + 1 + 12 + 2 + 1
        assert "文档内容..." in texts_by_id.values()  # the document's one chunk
        dup_filter = models.Filter(must=[models.FieldCondition(key="task_id", match=models.MatchValue(value="dup"))])
        assert client.count("vectorize", count_filter=dup_filter, exact=True).count == 2  # sent twice, stored once
        assert client.count("vectorize", exact=True).count == 21  # 20 texts and chunks + 1 document vector
        meta = client.retrieve("vectorize", ids=[next(r for r in completed if r["task_id"] == "s-3")["vector_ids"][0]])
        assert meta[0].payload["metadata"] == {"i": 3, "lang": "en"}
        # nearest neighbour of a query about pets is one of the two cat sentences
        hits = client.query_points("vectorize", query=reference.encode("a cat by the window").tolist(), limit=2).points
        assert {h.payload["task_id"] for h in hits} == {"s-0", "s-1"}
    finally:
        client.close()
    log = worker.log()
    assert "Processing task s-0 of type text_vectorization" in log
    assert "worker.task_processor - INFO - Task s-0 completed successfully in" in log


def test_doctor_reports_pass_and_a_clear_kafka_failure(topics: Topics, tmp_path: Path) -> None:
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "VECTORIZE_WORKER_DATA_DIR": str(tmp_path),
        "VECTORIZE_WORKER_DEVICE": "cpu",
        "VECTORIZE_WORKER_MODELS_BACKEND": "onnx",  # a fixed engine: auto picks the fastest measured here
        **topics.env(),
    }
    ok = subprocess.run(
        [sys.executable, "scripts/test_worker.py"], cwd=ROOT, env=base, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[PASS] kafka" in ok.stdout and "[PASS] model" in ok.stdout and "dim=384" in ok.stdout
    assert "on cpu (onnxruntime)" in ok.stdout
    bad = {**base, "VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    fail = subprocess.run(
        [sys.executable, "scripts/test_worker.py"], cwd=ROOT, env=bad, capture_output=True, text=True, timeout=300
    )
    assert fail.returncode == 1
    assert "[FAIL] kafka" in fail.stdout and "Failed to connect to Kafka at 127.0.0.1:1" in fail.stdout
    assert "result: FAILED: kafka" in fail.stdout
    # the same checks as a Faust command
    cmd = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "doctor"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cmd.returncode == 0 and "result: all checks passed" in cmd.stdout, cmd.stdout + cmd.stderr


def test_make_demo_against_a_running_worker(topics: Topics, tmp_path: Path) -> None:
    # /search/ on, as `make run` has it for `make demo`
    worker = WorkerProcess(topics, tmp_path / "w-demo", VECTORIZE_WORKER_WEB_SEARCH_ENABLED="true").start()
    try:
        worker.wait_for_log(r"Model sentence-transformers/all-MiniLM-L6-v2 loaded successfully", timeout=180)
        env = {**worker.env}
        demo = subprocess.run(
            [sys.executable, "scripts/demo.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "the closest sentence is about the cat" in demo.stdout
        assert demo.stdout.count(" completed ") == 15 and "image input path" in demo.stdout
        assert worker.stop() == 0
    finally:
        worker.kill()
