"""Stores in sync with the source, on a real worker writing to Weaviate, Chroma and Milvus at once: an updated
document or batch leaves exactly its new vectors, a delete task and a tombstone remove every vector of their
task (counted per store in the result), a delete of an unknown id completes with 0."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.settings import load_settings
from sinks.registry import create_stores
from tests.integration.harness import Topics, WorkerProcess, collect, free_port, produce, run, scrape_metrics

pytestmark = pytest.mark.integration

STORES = {
    "VECTORIZE_WORKER_VECTOR_DBS": "weaviate,chroma,milvus",
    "VECTORIZE_WORKER_CHROMA__URL": "http://127.0.0.1:8000",
    "VECTORIZE_WORKER_MILVUS__URI": "http://127.0.0.1:19530",
}


def document(task_id: str, words: int, collection: str) -> dict[str, Any]:
    content = " ".join(f"sentence {i} tells of the river and the mill by the road." for i in range(words // 10))
    return {
        "task_type": "document_vectorization",
        "task_id": task_id,
        "collection": collection,
        "data": {"title": "T", "content": content},
    }


def batch(task_id: str, n: int, collection: str) -> dict[str, Any]:
    texts = [f"item {i} of the catalogue" for i in range(n)]
    return {"task_type": "batch_vectorization", "task_id": task_id, "collection": collection, "data": texts}


def send(topics: Topics, *tasks: dict[str, Any] | tuple[str, None]) -> None:
    """Each record keyed by its task id (a producer's part of the ordering rule); (id, None) is a tombstone."""

    async def go() -> None:
        for task in tasks:
            if isinstance(task, tuple):
                await produce(topics.tasks, [None], key=task[0].encode())  # type: ignore[list-item]
            else:
                await produce(topics.tasks, [json.dumps(task).encode()], key=task["task_id"].encode())

    run(go())


def unchanged(port: int) -> dict[str, float]:
    """worker_store_unchanged_records_total by store: the records left out of a write as already stored."""
    prefix = 'worker_store_unchanged_records_total{store="'
    return {name[len(prefix) : -2]: v for name, v in scrape_metrics(port).items() if name.startswith(prefix)}


def results_for(topics: Topics, wanted: list[tuple[str, int]]) -> dict[str, list[dict[str, Any]]]:
    """Wait until each task id has at least its number of results; return them by task id, in order."""

    def done(records: dict[str, list[dict[str, Any]]]) -> bool:
        ids = [r["task_id"] for r in records[topics.results]]
        return all(ids.count(task_id) >= n for task_id, n in wanted)

    records = run(collect([topics.results], done, timeout=240))[topics.results]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["task_id"], []).append(r)
    return by_id


def test_updates_replace_and_deletes_delete_in_every_store(topics: Topics, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex[:8]
    collection = f"Sync_{run_id}"
    doc_id, bat_id, unknown = f"doc-{run_id}", f"bat-{run_id}", f"never-sent-{run_id}"
    metrics_port = free_port()
    worker = WorkerProcess(topics, tmp_path / "w", **STORES, VECTORIZE_WORKER_METRICS_PORT=str(metrics_port)).start()
    try:
        worker.wait_ready()
        send(topics, document(doc_id, 2000, collection), batch(bat_id, 5, collection))
        first = results_for(topics, [(doc_id, 1), (bat_id, 1)])
        chunks_before = first[doc_id][0]["chunks"]
        assert first[doc_id][0]["status"] == "completed" and chunks_before >= 10, first[doc_id]

        send(topics, document(doc_id, 660, collection), batch(bat_id, 2, collection))
        second = results_for(topics, [(doc_id, 2), (bat_id, 2)])
        doc, bat = second[doc_id][-1], second[bat_id][-1]
        assert doc["status"] == bat["status"] == "completed"
        stores = load_settings(
            **{"vector_dbs": ["weaviate", "chroma", "milvus"]},
            chroma={"url": STORES["VECTORIZE_WORKER_CHROMA__URL"]},
            milvus={"uri": STORES["VECTORIZE_WORKER_MILVUS__URI"]},
        )
        opened = create_stores(stores)
        try:
            for store in opened:
                found = store.task_record_ids(collection, [doc_id, bat_id])
                # exactly the new version's vectors: chunks plus the document vector, and two items
                assert found == {doc_id: set(doc["vector_ids"]), bat_id: set(bat["vector_ids"])}, store.describe()
            names = [s.describe() for s in opened]
            assert doc["deleted"] == {n: len(first[doc_id][0]["vector_ids"]) - len(doc["vector_ids"]) for n in names}
            assert bat["deleted"] == dict.fromkeys(names, 3)

            # the same version again (its texts come from the embedding cache): nothing is written to any store
            before = {store.describe(): store.task_records(collection, [bat_id]) for store in opened}
            skipped = unchanged(metrics_port)
            send(topics, batch(bat_id, 2, collection))
            again = results_for(topics, [(bat_id, 3)])[bat_id][-1]
            assert again["status"] == "completed" and again["vector_ids"] == bat["vector_ids"]
            assert again["deleted"] is None
            for store in opened:
                assert store.task_records(collection, [bat_id]) == before[store.describe()], store.describe()
                assert all(before[store.describe()][bat_id].values()), store.describe()  # every record has a digest
            after = unchanged(metrics_port)
            assert {name: after[name] - skipped.get(name, 0.0) for name in after} == dict.fromkeys(
                ("weaviate", "chroma", "milvus"), 2.0
            )

            send(topics, {"task_type": "delete", "task_id": doc_id, "collection": collection})
            send(topics, (bat_id, None))  # a tombstone: its key names the task; the default collection is used
            send(topics, {"task_type": "delete", "task_id": bat_id, "collection": collection})
            send(topics, {"task_type": "delete", "task_id": unknown, "collection": collection})
            third = results_for(topics, [(doc_id, 3), (bat_id, 5), (unknown, 1)])
            assert third[doc_id][-1]["deleted"] == dict.fromkeys(names, len(doc["vector_ids"]))
            tomb = third[bat_id][3]
            assert tomb["task_type"] == "delete" and tomb["collection"] == "vectorize"
            assert tomb["deleted"] == dict.fromkeys(names, 0)  # nothing of bat_id in the default collection
            assert third[bat_id][4]["deleted"] == dict.fromkeys(names, 2)
            assert third[unknown][0]["deleted"] == dict.fromkeys(names, 0)
            for store in opened:
                assert store.task_record_ids(collection, [doc_id, bat_id]) == {}, store.describe()
                assert store.count(collection) == 0, store.describe()
        finally:
            for store in opened:
                store.close()
        assert worker.stop() == 0
    finally:
        worker.kill()
