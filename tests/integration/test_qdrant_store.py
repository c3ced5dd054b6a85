"""The Qdrant adapter against qdrant-client's embedded local mode (no server installs here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import models

from core.errors import ConfigError
from sinks.base import BaseVectorDB, VectorRecord
from sinks.qdrant import QdrantStore
from tests.contract import CONTRACT, DIM, VectorDBContract


class TestQdrantLocal(VectorDBContract):
    extra_fields = frozenset({"metadata"})  # Qdrant keeps the payload as its own JSON: "metadata" is one key
    legacy_field = "metadata"

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.path = tmp_path / "qdrant"

    def make_store(self) -> BaseVectorDB:
        return QdrantStore(path=self.path, contract=CONTRACT)

    def second_store(self, store: BaseVectorDB) -> BaseVectorDB:
        """Local mode locks its folder to one client: the other workers are threads sharing it, caches cleared."""
        store._dims.clear()  # type: ignore[attr-defined]
        return store

    def test_workers_creating_one_collection_at_once(self, store: BaseVectorDB, collection: str) -> None:
        """Local mode has one client per folder (a file lock), and the worker calls a store from its one store
        thread, so no two creations ever run at once here (qdrant-client's local mode is not thread-safe: it
        rewrites meta.json). What applies: three workers' worth of creations, caches cleared in between, all
        succeed and leave one collection."""
        for _ in range(3):
            self.second_store(store).ensure_collection(collection, DIM)
        assert store.count(collection) == 0
        assert collection in {c.name for c in store._client.get_collections().collections}  # type: ignore[attr-defined]

    def native_fields(self, store: BaseVectorDB, collection: str) -> set[str]:
        """Qdrant's schema is its payload indexes (none in local mode); its fields, the payloads' top-level keys."""
        client = store._client  # type: ignore[attr-defined]
        indexed = set(client.get_collection(collection).payload_schema)
        points, _ = client.scroll(collection, limit=10_000, with_payload=True)
        return indexed | {key for p in points for key in p.payload or {}}

    def legacy_upsert(self, store: BaseVectorDB, collection: str, records: list[VectorRecord]) -> None:
        """Before the contract the Qdrant payload was the payload itself, as it still is (no meta_ keys)."""
        client = store._client  # type: ignore[attr-defined]
        client.create_collection(collection, vectors_config=models.VectorParams(size=DIM, distance="Cosine"))
        points = [models.PointStruct(id=r.id, vector=list(r.vector), payload=dict(r.payload)) for r in records]
        client.upsert(collection, points=points, wait=True)

    def drop_behind(self, store: BaseVectorDB, collection: str) -> None:
        store._client.delete_collection(collection)  # type: ignore[attr-defined]

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        store = QdrantStore(url="http://127.0.0.1:9", timeout=2)
        yield store
        store.close()


def test_local_storage_is_single_process(tmp_path: Path) -> None:
    first = QdrantStore(path=tmp_path / "q")
    try:
        with pytest.raises(ConfigError, match="Local mode is single-process"):
            QdrantStore(path=tmp_path / "q")
    finally:
        first.close()


def test_data_survives_reopening(tmp_path: Path) -> None:
    store = QdrantStore(path=tmp_path / "q")
    store.ensure_collection("c", 2)
    store.upsert("c", [VectorRecord("00000000-0000-0000-0000-000000000001", [1.0, 0.0], {"a": 1})])
    store.close()
    again = QdrantStore(path=tmp_path / "q")
    assert again.count("c") == 1
    again.close()
