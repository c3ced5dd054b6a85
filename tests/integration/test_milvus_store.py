"""The Milvus adapter against Milvus Lite's real engine, served on 127.0.0.1:19530 by `make up`, and as a file."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pymilvus import DataType, MilvusClient

from core.errors import StoreRejectedError
from sinks.base import PAYLOAD_KEY, BaseVectorDB, VectorRecord
from sinks.milvus import MilvusStore, collection_name
from tests.contract import CONTRACT, DIM, VectorDBContract, _vec, old_flatten

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

    def drop_behind(self, store: BaseVectorDB, collection: str) -> None:
        store._connect().drop_collection(collection_name(collection))  # type: ignore[attr-defined]

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        store = MilvusStore(uri="http://127.0.0.1:9", timeout=2)
        yield store
        store.close()

    def test_an_unimplemented_call_is_refused_for_good(self, store: BaseVectorDB, collection: str) -> None:
        """This Milvus answers alias calls with UNIMPLEMENTED: a permanent refusal saying so, never an outage
        retried forever."""
        store.ensure_collection(collection, DIM)
        client = store._connect()  # type: ignore[attr-defined]
        with pytest.raises(StoreRejectedError, match="creating an alias is not supported by this Milvus") as info:
            store._call("creating an alias", client.create_alias, collection_name(collection), f"{collection}_alias")  # type: ignore[attr-defined]
        assert "UNIMPLEMENTED" in str(info.value) and store.describe() in str(info.value)
        assert store.count(collection) == 0  # the client is still usable

    def test_keyset_scan_reads_the_smallest_ids_first_across_segments(
        self, store: BaseVectorDB, collection: str
    ) -> None:
        """Keyset paging relies on Milvus answering ``id > cursor`` with a limit by the smallest ids, in order:
        1,200 rows written in shuffled batches, 100 of them deleted and 200 written again, read in pages of 97."""
        store.ensure_collection(collection, DIM)
        ids = [str(uuid.uuid4()) for _ in range(1200)]
        random.Random(7).shuffle(ids)
        for start in range(0, len(ids), 200):
            store.upsert(
                collection, [VectorRecord(i, _vec(n), {"n": n}) for n, i in enumerate(ids[start : start + 200])]
            )
        store.delete(collection, ids[:100])
        store.upsert(collection, [VectorRecord(i, _vec(1), {"again": True}) for i in ids[100:300]])
        live = sorted(ids[100:])
        read: list[str] = []
        cursor = None
        while True:
            page, cursor = store.scan_ids(collection, cursor, limit=97)
            assert page == [i for i in live if not read or i > read[-1]][: len(page)]  # the smallest, in order
            read.extend(page)
            if cursor is None:
                break
        assert read == live


def test_unimplemented_maps_to_a_permanent_refusal(tmp_path: Path) -> None:
    """The mapping itself, for a gRPC error and for pymilvus' own exception (no Milvus needed)."""

    class Unimplemented(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNIMPLEMENTED

        def details(self) -> str:
            return "Method not implemented!"

    def refuse(timeout: float) -> None:
        raise Unimplemented()

    store = MilvusStore(uri=str(tmp_path / "never-opened.db"))
    with pytest.raises(StoreRejectedError, match=r"switching an alias is not supported by this Milvus.*Method not"):
        store._call("switching an alias", refuse)

    from pymilvus.exceptions import MilvusException

    def refuse_wrapped(timeout: float) -> None:
        raise MilvusException(message="<_InactiveRpcError: StatusCode.UNIMPLEMENTED>")

    with pytest.raises(StoreRejectedError, match="not supported by this Milvus"):
        store._call("altering properties", refuse_wrapped)


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
