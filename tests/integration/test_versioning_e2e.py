"""One model per collection, on a real worker writing to Weaviate, Chroma and Milvus at once (`make up`): a
collection written with the default model (all-MiniLM-L6-v2) refuses a task of the example plugin's
``hashing-256`` model with a failed status and a dead letter naming both models, while the same task into another
collection completes; every result carries its model's identity, /models shows the same, and each store holds the
binding and the records' model revision."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.settings import load_settings
from core.versioning import ModelIdentity
from sinks.registry import create_stores
from tests.integration.harness import Topics, WorkerProcess, collect, produce, run
from tests.integration.test_plugin_e2e import _require_plugin
from tests.integration.test_sync_e2e import STORES

pytestmark = pytest.mark.integration

HASHING = {"name": "hashing-256", "family": "hashing", "dim": 256}
DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"


def text(task_id: str, collection: str, model: str | None = None) -> dict[str, Any]:
    task = {"task_type": "text_vectorization", "task_id": task_id, "collection": collection, "data": f"{task_id} text"}
    return task | ({"model_name": model} if model else {})


def send(topics: Topics, *tasks: dict[str, Any]) -> None:
    run(produce(topics.tasks, [json.dumps(t).encode() for t in tasks]))


def wait(topics: Topics, ids: set[str], dead: int = 0) -> dict[str, list[dict[str, Any]]]:
    return run(
        collect(
            [topics.results, topics.dlq, topics.status],
            lambda r: ids <= {x["task_id"] for x in r[topics.results]} and len(r[topics.dlq]) >= dead,
            timeout=240,
        )
    )


def test_a_collection_refuses_the_vectors_of_another_model(topics: Topics, tmp_path: Path) -> None:
    _require_plugin()
    run_id = uuid.uuid4().hex[:8]
    bound, elsewhere = f"Versioned_{run_id}", f"Versioned_{run_id}_other"
    first, other, moved, again = (f"{n}-{run_id}" for n in ("first", "other", "moved", "again"))
    worker = WorkerProcess(
        topics,
        tmp_path / "w",
        **STORES,
        VECTORIZE_WORKER_CUSTOM_MODELS=json.dumps([HASHING]),  # a configured model: allowed in tasks
    ).start()
    settings = load_settings(
        vector_dbs=["weaviate", "chroma", "milvus"],
        chroma={"url": STORES["VECTORIZE_WORKER_CHROMA__URL"]},
        milvus={"uri": STORES["VECTORIZE_WORKER_MILVUS__URI"]},
    )
    stores = create_stores(settings)
    try:
        worker.wait_ready()
        send(topics, text(first, bound))  # the default model: the collection is bound to it in every store
        wait(topics, {first})
        send(topics, text(other, bound, "hashing-256"), text(moved, elsewhere, "hashing-256"), text(again, bound))
        records = wait(topics, {first, other, moved, again}, dead=1)
        status, models = worker.get("/models")
        assert worker.stop() == 0

        results = {r["task_id"]: r for r in records[topics.results]}
        minilm = ModelIdentity.from_dict(results[first]["model_identity"])
        hashing = ModelIdentity.from_dict(results[moved]["model_identity"])
        assert (minilm.name, minilm.dim, len(minilm.revision)) == (DEFAULT, 384, 64)
        assert (hashing.name, hashing.dim, hashing.family) == ("hashing-256", 256, "hashing")
        assert results[again]["status"] == "completed" and results[again]["model_identity"] == minilm.to_dict()
        assert results[moved]["status"] == "completed" and results[moved]["collection"] == elsewhere

        refused = results[other]
        assert refused["status"] == "failed" and refused["model_identity"] is None
        assert refused["error"]["kind"] == "store_rejected"
        message = refused["error"]["message"]
        for part in (
            repr(bound),
            f"is bound to model {DEFAULT} (rev {minilm.revision[:12]}, dim 384)",
            f"model hashing-256 (rev {hashing.revision[:12]}, dim 256)",
            "Send the task to another collection (its `collection` field)",
            f"delete collection {bound!r} and send its tasks again",
        ):
            assert part in message, (part, message)
        [dead] = records[topics.dlq]
        assert dead["task_id"] == other and dead["error"]["message"] == message
        assert json.loads(dead["payload"])["model_name"] == "hashing-256"
        assert [s["status"] for s in records[topics.status] if s["task_id"] == other][-1] == "failed"

        assert status == 200
        shown = {m["name"]: m["identity"] for m in models["loaded"]}
        assert shown[DEFAULT] == minilm.to_dict() and shown["hashing-256"] == hashing.to_dict()

        for store in stores:
            where = store.describe()
            assert store.bound_identity(bound) == minilm, where
            assert store.bound_identity(elsewhere) == hashing, where
            assert store.task_record_ids(bound, [other]) == {}, where  # nothing of the refused task anywhere
            for task_id, identity, collection in ((first, minilm, bound), (moved, hashing, elsewhere)):
                [point] = store.retrieve(collection, results[task_id]["vector_ids"], with_vectors=False)
                payload = point.payload
                assert payload["model"] == identity.name, where
                assert payload["model_revision"] == identity.revision[:16], where
                assert payload["normalize"] is bool(identity.normalize), where
    finally:
        worker.kill()
        for store in stores:
            for name in (bound, elsewhere):
                _drop(store, name)
            store.close()


def _drop(store: Any, collection: str) -> None:
    """Leave the shared servers as they were: this run's collections removed (records first, for Chroma), and
    the alias or pointer a collection was made behind with its physical collection."""
    target = store.resolve(collection)
    if target is not None:
        store.unpoint(collection)
        _drop(store, target)
    if store.name == "weaviate":
        from sinks.weaviate import class_name

        store._connect().collections.delete(class_name(collection))
    elif store.name == "milvus":
        from sinks.milvus import collection_name

        client = store._connect()
        if client.has_collection(collection_name(collection)):
            client.drop_collection(collection_name(collection))
    elif store.name == "chroma":
        client = store._connect()
        if collection in {c if isinstance(c, str) else c.name for c in client.list_collections()}:
            col = client.get_collection(collection)
            ids = col.get(include=[])["ids"]
            if ids:
                col.delete(ids=ids)
            client.delete_collection(collection)
