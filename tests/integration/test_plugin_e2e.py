"""The example plugin end to end (examples/plugin, installed by `make venv`): a real worker on real Kafka runs
``qa_pair_vectorization`` tasks (the plugin's task type) with ``hashing-256`` (the plugin's model family, so no
model weights are needed) and writes to a real Chroma and a real Weaviate server (`make up`); the test reads
the vectors back from both stores: two per task, with their role and text, equal to the family's own vectors."""

from __future__ import annotations

import json
import os
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.ids import vector_id
from core.model_settings import CustomModel
from core.settings import load_settings
from models.families import make_loader
from sinks.registry import create_stores
from tests.integration.harness import Topics, WorkerProcess, collect, produce, run
from tests.integration.test_weaviate_store import WEAVIATE_URL, require_weaviate

pytestmark = pytest.mark.integration

CHROMA_URL = os.environ.get("VECTORIZE_TEST_CHROMA", "http://127.0.0.1:8000")
INSTALL = "run `make venv` (it installs examples/plugin: pip install --no-deps --no-build-isolation -e examples/plugin)"
MODEL = {"name": "hashing-256", "family": "hashing", "dim": 256}
PAIRS = [
    ("How do I reset my password?", "Open Settings, then Security, and choose Reset password."),
    ("Where can I download my invoices?", "Invoices are under Billing; each one downloads as a PDF."),
    ("Can I change the delivery address of an order?", "Yes, until the order ships: open it and edit the address."),
]


def _require_plugin() -> None:
    installed = {
        group: {ep.name: ep.value for ep in entry_points(group=group)}
        for group in ("vectorize_worker.task_types", "vectorize_worker.model_families")
    }
    assert installed["vectorize_worker.task_types"].get("qa_pair_vectorization") and installed[
        "vectorize_worker.model_families"
    ].get("hashing"), f"the example plugin is not installed in this environment ({installed}); {INSTALL}"


def test_qa_pair_tasks_of_the_plugin_land_in_real_stores_with_their_roles(topics: Topics, tmp_path: Path) -> None:
    _require_plugin()
    require_weaviate().close()
    run_id = uuid.uuid4().hex[:8]
    collection = f"Faq_{run_id}"
    tasks: list[dict[str, Any]] = [
        {
            "task_type": "qa_pair_vectorization",
            "task_id": f"faq-{run_id}-{i}",
            "collection": collection,
            "model_name": "hashing-256",
            "metadata": {"source": "help-centre", "n": i},
            "data": {"question": question, "answer": answer},
        }
        for i, (question, answer) in enumerate(PAIRS)
    ]
    bad = {"task_type": "qa_pair_vectorization", "task_id": f"bad-{run_id}", "data": {"question": "no answer?"}}
    unknown = {"task_type": "audio_vectorization", "task_id": f"unknown-{run_id}", "data": "x"}
    worker = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_VECTOR_DBS="chroma,weaviate",
        VECTORIZE_WORKER_CHROMA__URL=CHROMA_URL,
        VECTORIZE_WORKER_WEAVIATE_URL=WEAVIATE_URL,
        VECTORIZE_WORKER_CUSTOM_MODELS=json.dumps([MODEL]),
        VECTORIZE_WORKER_DEFAULT_MODEL="hashing-256",  # nothing else to load: the worker needs no weights
        VECTORIZE_WORKER_INCLUDE_VECTORS="true",
    ).start()
    wanted = {t["task_id"] for t in tasks} | {bad["task_id"], unknown["task_id"]}
    try:
        worker.wait_ready()
        run(produce(topics.tasks, [json.dumps(t).encode() for t in [*tasks, bad, unknown]]))
        records = run(
            collect(
                [topics.results, topics.dlq],
                lambda r: wanted <= {x["task_id"] for x in r[topics.results]} and len(r[topics.dlq]) >= 2,
                timeout=180,
            )
        )
        assert worker.stop() == 0
    finally:
        worker.kill()

    results = {r["task_id"]: r for r in records[topics.results]}
    # the plugin's task type refuses a pair without an answer, and an unknown type lists the plugin's
    assert results[bad["task_id"]]["status"] == "failed"
    assert "field 'data.answer': Field required" in results[bad["task_id"]]["error"]["message"]
    message = results[unknown["task_id"]]["error"]["message"]
    assert "unknown task_type 'audio_vectorization'" in message and "qa_pair_vectorization" in message
    assert {d["task_id"] for d in records[topics.dlq]} == {bad["task_id"], unknown["task_id"]}

    embedder = make_loader(device="cpu", cache_dir=None, allow_download=False, custom_models=[CustomModel(**MODEL)])(
        "hashing-256"
    )
    settings = load_settings(vector_dbs=["chroma", "weaviate"], chroma={"url": CHROMA_URL}, weaviate_url=WEAVIATE_URL)
    stores = create_stores(settings)
    try:
        for task in tasks:
            task_id = task["task_id"]
            result = results[task_id]
            assert result["status"] == "completed", result
            assert result["task_type"] == "qa_pair_vectorization" and result["dimension"] == 256
            assert result["count"] == 2 and result["vector_ids"] == [vector_id(task_id, 0), vector_id(task_id, 1)]
            assert len(result["stores"]) == 2
            texts = [task["data"]["question"], task["data"]["answer"]]
            expected = embedder.embed_texts(texts, batch_size=2, normalize=None)
            assert np.allclose(np.asarray(result["vectors"]), expected, atol=1e-6)
            for store in stores:
                where = f"{store.describe()}, task {task_id}"
                points = {p.id: p for p in store.retrieve(collection, result["vector_ids"])}
                assert set(points) == set(result["vector_ids"]), where
                for index, (role, text) in enumerate(zip(("question", "answer"), texts, strict=True)):
                    point = points[vector_id(task_id, index)]
                    assert point.payload["role"] == role and point.payload["text"] == text, (where, point.payload)
                    assert point.payload["task_type"] == "qa_pair_vectorization", where
                    assert point.payload["item_index"] == index and point.payload["model"] == "hashing-256", where
                    assert point.payload["metadata"] == task["metadata"], where
                    assert np.allclose(np.asarray(point.vector), expected[index], atol=1e-5), where
                assert store.task_record_ids(collection, [task_id]) == {task_id: set(result["vector_ids"])}, where
        # a question finds its own stored question first, in both stores
        query = embedder.embed_texts(["how to reset a password"], batch_size=1, normalize=None)[0]
        for store in stores:
            [nearest, *_] = store.search(collection, query.tolist(), k=3)
            assert nearest.id == vector_id(tasks[0]["task_id"], 0), store.describe()
            assert nearest.payload["role"] == "question", store.describe()
        for store in stores:  # leave the shared servers' collection empty
            store.delete(collection, [i for t in tasks for i in results[t["task_id"]]["vector_ids"]])
            assert store.count(collection) == 0, store.describe()
    finally:
        for store in stores:
            store.close()
