"""models.allowed on a real worker: a task naming another model fails with a dead letter, the others go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.harness import Topics, WorkerProcess, collect, produce, run

pytestmark = pytest.mark.integration


def test_a_model_outside_models_allowed_fails_its_task_and_the_worker_goes_on(topics: Topics, tmp_path: Path) -> None:
    w = WorkerProcess(
        topics, tmp_path / "w", VECTORIZE_WORKER_MODELS_ALLOWED="sentence-transformers/all-MiniLM-*"
    ).start()
    try:
        w.wait_ready()
        tasks = [
            {"task_id": "path", "task_type": "text_vectorization", "data": "a", "model_name": str(tmp_path)},
            {"task_id": "hub", "task_type": "batch_vectorization", "data": ["b", "c"], "model_name": "roberta-base"},
            {"task_id": "ok", "task_type": "text_vectorization", "data": "d"},
        ]
        run(produce(topics.tasks, [json.dumps(t).encode() for t in tasks]))
        records = run(
            collect(
                [topics.results, topics.dlq],
                lambda r: len(r[topics.results]) >= 3 and len(r[topics.dlq]) >= 2,
                timeout=120,
            )
        )
    finally:
        w.stop()
        w.kill()
    results = {r["task_id"]: r for r in records[topics.results]}
    assert results["ok"]["status"] == "completed" and results["ok"]["count"] == 1
    for task_id, name in (("path", str(tmp_path)), ("hub", "roberta-base")):
        error = results[task_id]["error"]
        assert results[task_id]["status"] == "failed" and error["kind"] == "model_load", results[task_id]
        assert error["message"].startswith(f"Failed to load model {name}: it is not among the models")
        assert "sentence-transformers/all-MiniLM-*, sentence-transformers/all-MiniLM-L6-v2" in error["message"]
    assert sorted(d["task_id"] for d in records[topics.dlq]) == ["hub", "path"]
