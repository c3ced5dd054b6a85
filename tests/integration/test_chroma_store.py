"""The Chroma adapter against a real `chroma run` server (started by `make up`) and embedded mode."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import StoreUnavailableError
from core.metadata_contract import native_name
from sinks.base import PAYLOAD_KEY, BaseVectorDB, VectorRecord
from sinks.chroma import ChromaStore
from tests.contract import CONTRACT, DECLARED, DIM, VectorDBContract, _vec, old_flatten, record

CHROMA_URL = os.environ.get("VECTORIZE_TEST_CHROMA", "http://127.0.0.1:8000")


def require_chroma() -> ChromaStore:
    store = ChromaStore(url=CHROMA_URL, contract=CONTRACT)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Chroma is not reachable at {CHROMA_URL} ({exc}); start it with `make up`.")
    return store


def _written_keys(payload: dict[str, Any]) -> set[str]:
    """The list-valued keys the adapter writes for ``payload``: its declared string_list fields."""
    metadata = payload.get("metadata") or {}
    return {native_name(n) for n, kind in DECLARED.items() if kind == "string_list" and metadata.get(n)}


class ChromaContract(VectorDBContract):
    """Chroma's own view of a collection: it has no schema, so its fields are the metadata keys it holds."""

    legacy_field = "metadata.lang"

    def native_fields(self, store: BaseVectorDB, collection: str) -> set[str]:
        """The metadata keys of the records, less list values a deleted collection left behind on their row ids
        (chroma-core/chroma#7594: Chroma shows them, though nothing wrote them to these records)."""
        col = store._connect().get_collection(collection)  # type: ignore[attr-defined]
        keys = set()
        for metadata in col.get(include=["metadatas"])["metadatas"]:
            written = _written_keys(json.loads(metadata[PAYLOAD_KEY])) if PAYLOAD_KEY in metadata else set()
            keys |= {k for k, v in metadata.items() if not isinstance(v, list) or k in written}
        return keys

    def legacy_upsert(self, store: BaseVectorDB, collection: str, records: list[VectorRecord]) -> None:
        """The adapter before the contract: every scalar flattened under its dotted path beside ``_payload``."""
        col = store._connect().get_or_create_collection(  # type: ignore[attr-defined]
            name=collection, metadata={"hnsw:space": "cosine", "dimension": DIM}, embedding_function=None
        )
        col.upsert(
            ids=[r.id for r in records],
            embeddings=[list(r.vector) for r in records],
            metadatas=[
                {**dict(old_flatten(r.payload)), PAYLOAD_KEY: json.dumps(dict(r.payload), ensure_ascii=False)}
                for r in records
            ],
        )

    def test_a_collection_deleted_behind_the_adapter_is_made_again_at_the_retry(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        store.ensure_collection(collection, DIM)
        store.upsert(collection, [record(collection, str(uuid.uuid4()), 0, {})])
        store._connect().delete_collection(collection)  # type: ignore[attr-defined]  # someone else drops it
        again = record(collection, str(uuid.uuid4()), 1, {})
        with pytest.raises(StoreUnavailableError, match="created again when the write is retried"):
            store.ensure_collection(collection, DIM)
            store.upsert(collection, [again])
        store.ensure_collection(collection, DIM)  # the writer's retry
        store.upsert(collection, [again])
        assert [p.id for p in store.retrieve(collection, [again.id])] == [again.id] and store.count(collection) == 1

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        yield ChromaStore(url="http://127.0.0.1:9")

    def test_list_filters_ignore_values_a_deleted_collection_left(self, store: BaseVectorDB, collection: str) -> None:
        """chroma-core/chroma#7594: after delete_collection (by anyone), new records can inherit the deleted
        records' list values; a filter on a string_list field must still match only what the task sent."""
        client = store._connect()  # type: ignore[attr-defined]
        doomed = f"{collection}_doomed"
        old = client.create_collection(doomed, embedding_function=None)
        old.add(ids=["1", "2", "3"], embeddings=[_vec(n) for n in range(3)], metadatas=[{"meta_tags": ["ghost"]}] * 3)
        client.delete_collection(doomed)  # the bug: its list values stay behind
        store.ensure_collection(collection, DIM)
        ids = [str(uuid.uuid4()) for _ in range(6)]
        tags: list[Any] = [None, None, ["ghost"], None, ["real"], None]
        store.upsert(collection, [record(collection, i, n, {"tags": tags[n]}) for n, i in enumerate(ids)])
        hits = store.search(collection, _vec(0), k=2, filter={"tags": "ghost"})
        assert [h.id for h in hits] == [ids[2]]
        assert {h.id for h in store.search(collection, _vec(0), k=6, filter={"tags": {"in": ["ghost", "real"]}})} == {
            ids[2],
            ids[4],
        }


class TestChromaServer(ChromaContract):
    def make_store(self) -> BaseVectorDB:
        return require_chroma()

    def drop(self, store: BaseVectorDB, collection: str) -> None:
        """Records first: deleting only the collection leaves their list values behind (chroma-core/chroma#7594)."""
        client = store._connect()  # type: ignore[attr-defined]
        if collection in {c if isinstance(c, str) else c.name for c in client.list_collections()}:
            col = client.get_collection(collection)
            ids = col.get(include=[])["ids"]
            for start in range(0, len(ids), 1000):
                col.delete(ids=ids[start : start + 1000])
            client.delete_collection(collection)


class TestChromaEmbedded(ChromaContract):
    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.path = tmp_path / "chroma"

    def make_store(self) -> BaseVectorDB:
        return ChromaStore(path=self.path, contract=CONTRACT)

    def second_store(self, store: BaseVectorDB) -> BaseVectorDB:
        """Embedded Chroma is one process's database (clients opened at once race on its tenant): the other
        workers are threads sharing the store."""
        return store
