"""The Weaviate adapter against a real Weaviate server built from source (started by `make up`)."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator

import pytest
from weaviate.classes.config import Configure, VectorDistances
from weaviate.classes.data import DataObject

from sinks.base import PAYLOAD_KEY, BaseVectorDB, VectorRecord
from sinks.weaviate import WeaviateStore, class_name
from tests.contract import CONTRACT, DIM, VectorDBContract, old_flatten, record

WEAVIATE_URL = os.environ.get("VECTORIZE_TEST_WEAVIATE", "http://127.0.0.1:8080")
WEAVIATE_GRPC = int(os.environ.get("VECTORIZE_TEST_WEAVIATE_GRPC", "50051"))
_OLD_PROPERTY = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")


def require_weaviate() -> WeaviateStore:
    store = WeaviateStore(url=WEAVIATE_URL, grpc_port=WEAVIATE_GRPC, contract=CONTRACT)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Weaviate is not reachable at {WEAVIATE_URL} ({exc}); start it with `make up`.")
    return store


class TestWeaviateServer(VectorDBContract):
    def make_store(self) -> BaseVectorDB:
        return require_weaviate()

    def native_fields(self, store: BaseVectorDB, collection: str) -> set[str]:
        config = store._connect().collections.get(class_name(collection)).config.get()  # type: ignore[attr-defined]
        return {p.name for p in config.properties}

    def legacy_upsert(self, store: BaseVectorDB, collection: str, records: list[VectorRecord]) -> None:
        """The adapter before the contract: no properties at creation, every scalar an auto-schema property."""
        client = store._connect()  # type: ignore[attr-defined]
        client.collections.create(
            class_name(collection),
            description=f"vectorize-worker dim={DIM}",
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
            ),
        )
        objects = [
            DataObject(
                uuid=r.id,
                vector=list(r.vector),
                properties={
                    **{p: v for k, v in old_flatten(r.payload) if _OLD_PROPERTY.match(p := k.replace(".", "__"))},
                    PAYLOAD_KEY: json.dumps(dict(r.payload), ensure_ascii=False),
                },
            )
            for r in records
        ]
        result = client.collections.get(class_name(collection)).data.insert_many(objects)
        assert not result.has_errors, result.errors

    def drop(self, store: BaseVectorDB, collection: str) -> None:
        store._connect().collections.delete(class_name(collection))  # type: ignore[attr-defined]

    def drop_behind(self, store: BaseVectorDB, collection: str) -> None:
        self.drop(store, collection)

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        store = WeaviateStore(url="http://127.0.0.1:9", grpc_port=10, timeout=2)
        yield store
        store.close()


@pytest.mark.parametrize(
    ("index", "hnsw", "expected"),
    [
        ("hnsw", {}, {"ef_construction": 128, "max_connections": 32, "ef": -1}),  # Weaviate's defaults
        ("hnsw", {"ef_construction": 64, "max_connections": 16, "ef": 80}, None),
        ("flat", {}, None),
    ],
)
def test_new_collections_get_the_configured_vector_index(
    index: str, hnsw: dict[str, int], expected: dict[str, int] | None
) -> None:
    require_weaviate()
    store = WeaviateStore(url=WEAVIATE_URL, grpc_port=WEAVIATE_GRPC, contract=CONTRACT, vector_index=index, hnsw=hnsw)
    collection = f"index_{index}_{uuid.uuid4().hex[:8]}"
    try:
        store.ensure_collection(collection, DIM)
        records = [record(collection, str(uuid.uuid4()), seed, {}, task=f"t{seed}") for seed in range(20)]
        store.upsert(collection, records)
        config = store._connect().collections.get(class_name(collection)).config.get()
        got = config.vector_config["default"].vector_index_config
        if index == "flat":
            assert type(got).__name__ == "_VectorIndexConfigFlat", got
        else:
            wanted = expected or hnsw
            assert {
                "ef_construction": got.ef_construction,
                "max_connections": got.max_connections,
                "ef": got.ef,
            } == wanted
        hits = store.search(collection, list(records[7].vector), k=3)  # the index answers: the record itself first
        assert hits[0].id == records[7].id
    finally:
        store._connect().collections.delete(class_name(collection))
        store.close()
