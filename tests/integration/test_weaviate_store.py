"""The Weaviate adapter against a real Weaviate server built from source (started by `make up`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest
from weaviate.classes.config import Configure, VectorDistances
from weaviate.classes.data import DataObject

from sinks.base import PAYLOAD_KEY, BaseVectorDB, VectorRecord
from sinks.weaviate import WeaviateStore, class_name
from tests.contract import CONTRACT, DIM, VectorDBContract, old_flatten

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
