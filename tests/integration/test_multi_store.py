"""One worker, four vector databases at once, on real Kafka; and a Weaviate outage mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.harness import ROOT, Topics, WorkerProcess, collect, produce, run
from tests.integration.test_distributed import completed_ids, tasks
from tests.integration.test_milvus_store import MILVUS_URI, require_milvus
from tests.integration.test_weaviate_store import WEAVIATE_URL, require_weaviate

pytestmark = pytest.mark.integration
CHROMA_URL = os.environ.get("VECTORIZE_TEST_CHROMA", "http://127.0.0.1:8000")


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_one_batch_task_lands_in_all_four_databases(topics: Topics, tmp_path: Path) -> None:
    require_weaviate().close()
    require_milvus().close()
    collection = f"multi_{topics.suffix}"
    texts = ["The harbour lights flickered at dusk.", "向量数据库存储嵌入。", "A quiet morning in the library."]
    run(
        produce(
            topics.tasks,
            [
                json.dumps(
                    {
                        "task_type": "batch_vectorization",
                        "data": texts,
                        "task_id": "four",
                        "collection": collection,
                        "metadata": {"lang": "mixed"},
                    }
                ).encode()
            ],
        )
    )
    w = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_VECTOR_DBS="weaviate,chroma,milvus,qdrant",
        VECTORIZE_WORKER_WEAVIATE_URL=WEAVIATE_URL,
        VECTORIZE_WORKER_CHROMA__URL=CHROMA_URL,
        VECTORIZE_WORKER_MILVUS__URI=MILVUS_URI,
        VECTORIZE_WORKER_INCLUDE_VECTORS="true",
    ).start()
    try:
        records = run(collect([topics.results], lambda r: "four" in completed_ids(r, topics.results), timeout=180))
        assert w.stop() == 0
    finally:
        w.kill()
    [result] = [r for r in records[topics.results] if r["task_id"] == "four"]
    assert len(result["stores"]) == 4 and result["count"] == 3
    ids, expected = result["vector_ids"], result["vectors"]

    import chromadb
    import weaviate
    from pymilvus import MilvusClient
    from qdrant_client import QdrantClient

    from sinks.base import POINTER_COLLECTION
    from sinks.milvus import collection_name
    from sinks.weaviate import class_name

    got: dict[str, dict[str, list[float]]] = {}
    wv = weaviate.connect_to_local(host="127.0.0.1", port=8080, grpc_port=50051, skip_init_checks=True)
    try:
        objs = wv.collections.get(class_name(collection)).query.fetch_objects_by_ids(ids, include_vector=True).objects
        got["weaviate"] = {str(o.uuid): o.vector["default"] for o in objs}
    finally:
        wv.close()
    # Chroma and Milvus keep the collection's name as a pointer row of vw_aliases (docs/stores.md): an external
    # reader with the database's own client reads the pointer's target first
    chroma = chromadb.HttpClient(host="127.0.0.1", port=8000)
    pointer = chroma.get_collection(POINTER_COLLECTION).get(ids=[collection], include=["metadatas"])
    ch = chroma.get_collection(pointer["metadatas"][0]["target"])
    res = ch.get(ids=ids, include=["embeddings"])
    got["chroma"] = dict(zip(res["ids"], [list(e) for e in res["embeddings"]], strict=True))
    mv = MilvusClient(uri=MILVUS_URI)
    [row] = mv.get(POINTER_COLLECTION, ids=[collection_name(collection)], output_fields=["target"])
    got["milvus"] = {row["id"]: row["vector"] for row in mv.get(row["target"], ids=ids, output_fields=["vector"])}
    mv.close()
    qd = QdrantClient(path=str(tmp_path / "w" / "qdrant"))
    got["qdrant"] = {str(p.id): p.vector for p in qd.retrieve(collection, ids=ids, with_vectors=True)}
    qd.close()
    for db, vectors in got.items():
        assert set(vectors) == set(ids), db
        for vid, vector in zip(ids, expected, strict=True):
            assert cosine(vectors[vid], vector) >= 0.9999, (db, vid)


def weaviate_ctl(action: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "weaviate.sh"), action], check=True, capture_output=True, timeout=300)


def test_weaviate_outage_loses_and_duplicates_nothing(topics: Topics, tmp_path: Path) -> None:
    store = require_weaviate()
    collection = f"wvout_{topics.suffix}"
    w = WorkerProcess(
        topics,
        tmp_path / "w",
        VECTORIZE_WORKER_VECTOR_DBS="weaviate",
        VECTORIZE_WORKER_WEAVIATE_URL=WEAVIATE_URL,
        VECTORIZE_WORKER_DEFAULT_COLLECTION=collection,
        VECTORIZE_WORKER_WEAVIATE__TIMEOUT="3",
    ).start()
    try:
        w.wait_ready()
        every = tasks("wv", 200)
        run(produce(topics.tasks, every[:100]))
        run(collect([topics.results], lambda r: len(completed_ids(r, topics.results)) >= 100, timeout=120))
        # The second half arrives while Weaviate is down, so its writes must fail and be retried.
        before = len(w.log())
        weaviate_ctl("stop")
        run(produce(topics.tasks, every[100:]))
        deadline = time.monotonic() + 60
        while not _write_retried(w.log()[before:]) and time.monotonic() < deadline:
            time.sleep(0.5)
        retried = _write_retried(w.log()[before:])
        weaviate_ctl("start")  # before the assertion: the shared Weaviate must come back whatever happens
        assert retried, "the worker never retried a write while Weaviate was down"
        records = run(collect([topics.results], lambda r: len(completed_ids(r, topics.results)) >= 200, timeout=300))
        assert completed_ids(records, topics.results) == {f"wv-{i}" for i in range(200)}
        assert not [r for r in records[topics.results] if r["status"] != "completed"]
        assert store.count(collection) == 200
        assert w.proc.poll() is None
    finally:
        w.stop()
        w.kill()
        store.close()
        weaviate_ctl("start")  # a no-op when it runs; the later tests need it whatever failed above


def _write_retried(log: str) -> bool:
    """A retried write to Weaviate: core/retry.py's warning for a failed store write, or weaviate-client's own
    retry of the query that looks up a write's existing records (its gRPC queries back off 1+2+...+32 s on an
    unavailable server before they raise, docs/stores.md)."""
    return any(
        ("Storing" in line and "on Weaviate" in line and "retrying in" in line)
        or "Retrying with exponential backoff" in line
        for line in log.splitlines()
    )
