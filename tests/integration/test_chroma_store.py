"""The Chroma adapter against a real `chroma run` server (started by `make up`) and embedded mode."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.metadata_contract import native_name
from engine.store_writer import with_digest
from sinks.base import PAYLOAD_KEY, BaseVectorDB, VectorRecord, worker_values
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


def _plain(r: VectorRecord) -> dict[str, Any]:
    """A record's metadata as a writer that sends only what it has would write it: its worker fields and its
    payload (no None for what it lacks)."""
    return {**worker_values(r.payload), PAYLOAD_KEY: json.dumps(dict(r.payload), ensure_ascii=False)}


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

    def drop_behind(self, store: BaseVectorDB, collection: str) -> None:
        store._connect().delete_collection(collection)  # type: ignore[attr-defined]

    def test_reads_follow_a_collection_made_again_behind_the_adapter(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        """A held handle names a collection's id: after the collection is deleted and made again (by another
        worker), a search, retrieve or count through this adapter reads the new one, not a dead handle."""
        store.ensure_collection(collection, DIM)
        store.upsert(collection, [record(collection, str(uuid.uuid4()), 0, {})])
        self.drop_behind(store, collection)
        again = record(collection, str(uuid.uuid4()), 1, {"lang": "en"})
        # made again by another worker (here with the raw client: the adapter's handle is not replaced)
        col = store._connect().create_collection(  # type: ignore[attr-defined]
            collection, metadata={"dimension": DIM}, embedding_function=None
        )
        col.upsert(ids=[again.id], embeddings=[list(again.vector)], metadatas=[{**_plain(again), "meta_lang": "en"}])
        assert store.count(collection) == 1
        assert [p.id for p in store.retrieve(collection, [again.id])] == [again.id]
        assert [h.id for h in store.search(collection, again.vector, k=1, filter={"lang": "en"})] == [again.id]

    def test_a_rewrite_leaves_nothing_of_the_record_it_replaces(self, store: BaseVectorDB, collection: str) -> None:
        """Chroma's upsert merges metadata into what a record held: the adapter sends None (which deletes a key)
        for every worker and declared field a record lacks, and reads a record's digest from its payload, which
        every write replaces whole. So neither a stale digest (a wrong skip of a changed record) nor a removed
        metadata field (a wrong filter match) outlives a rewrite."""
        store.ensure_collection(collection, DIM)
        rid = str(uuid.uuid4())
        col = store._connect().get_collection(collection)  # type: ignore[attr-defined]

        def native() -> dict[str, Any]:
            return col.get(ids=[rid], include=["metadatas"])["metadatas"][0]

        first, _ = with_digest(record(collection, rid, 0, {"lang": "en", "year": 2020}, task="t-m"))
        store.upsert(collection, [first])
        assert store.task_records(collection, ["t-m"]) == {"t-m": {rid: first.payload["content_digest"]}}
        assert native()["content_digest"] == first.payload["content_digest"] and native()["meta_lang"] == "en"
        assert [h.id for h in store.search(collection, _vec(0), k=1, filter={"lang": "en"})] == [rid]

        # a worker from before digests rewrites the task (other content, no digest; it sent only what it had):
        # the native digest stays (Chroma merges), the payload's does not, and the lookup reads the payload's
        second = record(collection, rid, 1, {"lang": "en", "year": 2021}, task="t-m")
        col.upsert(ids=[rid], embeddings=[list(second.vector)], metadatas=[_plain(second)])
        assert native()["content_digest"] == first.payload["content_digest"]  # what Chroma's merge keeps
        assert store.task_records(collection, ["t-m"]) == {"t-m": {rid: None}}  # so the first content is rewritten

        # this adapter rewrites it without the digest and without the lang field: neither key survives
        third = record(collection, rid, 2, {"year": 2022}, task="t-m")
        store.upsert(collection, [third])
        assert "content_digest" not in native() and "meta_lang" not in native() and native()["meta_year"] == 2022
        assert store.task_records(collection, ["t-m"]) == {"t-m": {rid: None}}
        assert store.search(collection, _vec(2), k=1, filter={"lang": "en"}) == []
        [point] = store.retrieve(collection, [rid])
        assert point.payload == third.payload

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
