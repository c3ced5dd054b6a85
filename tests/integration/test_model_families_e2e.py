"""A real worker on real Kafka embeds text tasks with every family (tiny models found by their product names)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.families import make_loader
from tests.integration.harness import Topics, WorkerProcess, collect, produce, run
from tests.models.conftest import cache_with, cos
from tests.tiny_models import build_bert, build_clip, build_roberta

pytestmark = pytest.mark.integration


def test_worker_embeds_text_tasks_with_each_family(topics: Topics, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    cache = tmp_path / "models-cache"
    cache_with(cache, "bert-base-uncased", build_bert(tiny / "bert"))
    cache_with(cache, "ViT-B-32", build_clip(tiny / "clip"))
    roberta = build_roberta(tiny / "roberta")
    custom = [{"name": "my-roberta", "path": str(roberta), "pooling": "cls", "normalize": True}]
    tasks: list[dict[str, Any]] = [
        {
            "task_id": "hf",
            "task_type": "text_vectorization",
            "data": "a cat on a mat",
            "model_name": "bert-base-uncased",
        },
        {
            "task_id": "clip",
            "task_type": "batch_vectorization",
            "data": ["a photo of a dog", "a diagram"],
            "model_name": "ViT-B/32",
        },
        {"task_id": "custom", "task_type": "text_vectorization", "data": "hello world", "model_name": "my-roberta"},
        {"task_id": "st", "task_type": "text_vectorization", "data": "the default model"},
        {"task_id": "missing", "task_type": "text_vectorization", "data": "x", "model_name": "roberta-base"},
    ]
    for task in tasks:
        task["collection"] = f"fam_{task['task_id']}"  # one collection per dimension
    worker = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_MODELS_CACHE_DIR=str(cache),
        VECTORIZE_WORKER_CUSTOM_MODELS=json.dumps(custom),
        VECTORIZE_WORKER_MAX_LOADED_MODELS="2",
        VECTORIZE_WORKER_MODELS_MEMORY_BUDGET="1GiB",
        VECTORIZE_WORKER_INCLUDE_VECTORS="true",
    ).start()
    try:
        worker.wait_for_log(r"Model sentence-transformers/all-MiniLM-L6-v2 loaded successfully", timeout=180)
        for attempt in range(20):  # /readyz answers 500 (not JSON) while Faust's consumer thread starts
            try:
                worker.wait_ready()
                break
            except ValueError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        run(produce(topics.tasks, [json.dumps(t).encode() for t in tasks]))
        records = run(
            collect([topics.results, topics.dlq], lambda r: len(r[topics.results]) >= len(tasks), timeout=240)
        )
        status, loaded = worker.get("/models")
        assert worker.stop() == 0
    finally:
        worker.kill()
    results = {r["task_id"]: r for r in records[topics.results]}
    expected = {"hf": ("transformers", 32), "clip": ("clip", 16), "custom": ("transformers", 32), "st": (None, 384)}
    for task_id, (_, dim) in expected.items():
        assert results[task_id]["status"] == "completed", results[task_id]
        assert results[task_id]["dimension"] == dim
    missing = results["missing"]
    assert missing["status"] == "failed"
    assert "Failed to load model roberta-base: not found in" in missing["error"]["message"]
    assert [d["task_id"] for d in records[topics.dlq]] == ["missing"]
    names = [m["name"] for m in loaded["loaded"]]
    assert status == 200 and 1 <= len(names) <= 2  # max_loaded_models=2 across four models
    assert set(names) <= {"bert-base-uncased", "ViT-B/32", "my-roberta", "sentence-transformers/all-MiniLM-L6-v2"}

    # the worker's vectors equal the same models loaded here
    load = make_loader(device="cpu", cache_dir=str(cache), allow_download=False)
    for task in tasks[:2]:
        texts = task["data"] if isinstance(task["data"], list) else [task["data"]]
        mine = load(task["model_name"]).embed_texts(texts, batch_size=8, normalize=None)
        for got, want in zip(results[task["task_id"]]["vectors"], mine, strict=True):
            assert cos(np.asarray(got), want) >= 0.999
    assert abs(float(np.linalg.norm(results["custom"]["vectors"][0])) - 1.0) < 1e-4  # the entry's normalize
