"""The behaviour every vector database adapter must show; subclass and provide ``store``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from app.errors import StoreRejectedError, StoreUnavailableError
from sinks.base import BaseVectorDB, VectorRecord

DIM = 8


def _vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


class VectorDBContract:
    """Inherit in ``test_<db>.py`` and define the ``store`` and ``unreachable`` fixtures."""

    @pytest.fixture
    def store(self) -> Iterator[BaseVectorDB]:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def collection(self) -> str:
        return f"Contract_{uuid.uuid4().hex[:10]}"

    def test_create_upsert_count(self, store: BaseVectorDB, collection: str) -> None:
        assert store.count(collection) == 0
        store.ensure_collection(collection, DIM)
        store.ensure_collection(collection, DIM)  # idempotent
        ids = _ids(3)
        store.upsert(collection, [VectorRecord(i, _vec(n), {"n": n}) for n, i in enumerate(ids)])
        assert store.count(collection) == 3

    def test_upsert_same_ids_replaces(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(2)
        store.upsert(collection, [VectorRecord(i, _vec(n), {"v": 1}) for n, i in enumerate(ids)])
        store.upsert(collection, [VectorRecord(i, _vec(n + 100), {"v": 2}) for n, i in enumerate(ids)])
        assert store.count(collection) == 2
        got = {p.id: p for p in store.retrieve(collection, ids)}
        for n, i in enumerate(ids):
            assert got[i].payload["v"] == 2
            assert np.allclose(got[i].vector, _vec(n + 100), atol=1e-5)

    def test_delete(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(3)
        store.upsert(collection, [VectorRecord(i, _vec(n)) for n, i in enumerate(ids)])
        store.delete(collection, ids[:2] + [str(uuid.uuid4())])
        assert store.count(collection) == 1
        assert [p.id for p in store.retrieve(collection, ids)] == [ids[2]]

    def test_search_nearest_first(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(5)
        store.upsert(collection, [VectorRecord(i, _vec(n), {"n": n}) for n, i in enumerate(ids)])
        hits = store.search(collection, _vec(3), k=3)
        assert hits[0].id == ids[3] and len(hits) == 3
        assert hits[0].score >= hits[1].score >= hits[2].score

    def test_metadata_round_trip(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        payload = {"text": "向量化 ✓ café", "metadata": {"tags": ["a", "é"], "nested": {"x": 1.5, "ok": True}}}
        rid = str(uuid.uuid4())
        store.upsert(collection, [VectorRecord(rid, _vec(1), payload)])
        [point] = store.retrieve(collection, [rid])
        assert point.payload == payload

    def test_filter_search(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        ids = _ids(4)
        store.upsert(
            collection,
            [VectorRecord(i, _vec(n), {"metadata": {"lang": "zh" if n % 2 else "en"}}) for n, i in enumerate(ids)],
        )
        hits = store.search(collection, _vec(0), k=4, filter={"metadata.lang": "zh"})
        assert {h.id for h in hits} == {ids[1], ids[3]}

    def test_dimension_mismatch_is_permanent_and_clear(self, store: BaseVectorDB, collection: str) -> None:
        store.ensure_collection(collection, DIM)
        with pytest.raises(StoreRejectedError, match=rf"dimension.*{DIM}|{DIM}.*dimension"):
            store.ensure_collection(collection, DIM + 1)
        with pytest.raises(StoreRejectedError, match="dimension"):
            store.upsert(collection, [VectorRecord(str(uuid.uuid4()), [0.1] * (DIM + 2))])

    def test_unreachable_server_is_retryable_and_clear(self, unreachable: BaseVectorDB) -> None:
        with pytest.raises(StoreUnavailableError) as info:
            unreachable.health()
        message = str(info.value)
        assert "Failed to connect" in message and "is the server running?" in message
