"""The Milvus adapter against Milvus Lite's real engine, served on 127.0.0.1:19530 by `make up`, and as a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymilvus import DataType, MilvusClient

from sinks.base import PAYLOAD_KEY, BaseVectorDB, VectorRecord
from sinks.milvus import MilvusStore, collection_name
from tests.contract import CONTRACT, DIM, VectorDBContract, old_flatten

MILVUS_URI = os.environ.get("VECTORIZE_TEST_MILVUS", "http://127.0.0.1:19530")


def require_milvus() -> MilvusStore:
    store = MilvusStore(uri=MILVUS_URI, contract=CONTRACT)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Milvus is not reachable at {MILVUS_URI} ({exc}); start it with `make up`.")
    return store


class MilvusContract(VectorDBContract):
    """The contract plus Milvus's own view of a collection (shared by the server and the Lite file)."""

    def native_fields(self, store: BaseVectorDB, collection: str) -> set[str]:
        """The schema's fields plus every dynamic field a row holds (Milvus keeps those in one JSON column)."""
        client = store._connect()  # type: ignore[attr-defined]
        name = collection_name(collection)
        schema = {f["name"] for f in client.describe_collection(name)["fields"]}
        rows = client.query(name, filter="", output_fields=["*"], limit=16_384)
        return (schema | {key for row in rows for key in row}) - {"id", "vector"}

    def legacy_upsert(self, store: BaseVectorDB, collection: str, records: list[VectorRecord]) -> None:
        """The adapter before the contract: id, vector and ``_payload``, every scalar a dynamic field."""
        client = store._connect()  # type: ignore[attr-defined]
        name = collection_name(collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        schema.add_field(PAYLOAD_KEY, DataType.VARCHAR, max_length=65535)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
        client.create_collection(name, schema=schema, index_params=index)
        rows = [
            {
                "id": r.id,
                "vector": list(r.vector),
                PAYLOAD_KEY: json.dumps(dict(r.payload), ensure_ascii=False),
                **{k.replace(".", "__"): v for k, v in old_flatten(r.payload)},
            }
            for r in records
        ]
        client.upsert(name, rows)

    def drop(self, store: BaseVectorDB, collection: str) -> None:
        client = store._connect()  # type: ignore[attr-defined]
        if client.has_collection(collection_name(collection)):
            client.drop_collection(collection_name(collection))

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        store = MilvusStore(uri="http://127.0.0.1:9", timeout=2)
        yield store
        store.close()


class TestMilvusServer(MilvusContract):
    def make_store(self) -> BaseVectorDB:
        return require_milvus()


class TestMilvusLiteFile(MilvusContract):
    @pytest.fixture(scope="class")
    def lite_dir(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("milvus-lite")

    @pytest.fixture(autouse=True)
    def _file(self, lite_dir: Path) -> None:
        self.uri = str(lite_dir / "test.db")

    def make_store(self) -> BaseVectorDB:
        return MilvusStore(uri=self.uri, contract=CONTRACT)
