"""The Milvus adapter against Milvus Lite's real engine, served on 127.0.0.1:19530 by `make up`, and as a file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.base import BaseVectorDB
from sinks.milvus import MilvusStore
from tests.contract import VectorDBContract

MILVUS_URI = os.environ.get("VECTORIZE_TEST_MILVUS", "http://127.0.0.1:19530")


def require_milvus() -> MilvusStore:
    store = MilvusStore(uri=MILVUS_URI)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Milvus is not reachable at {MILVUS_URI} ({exc}); start it with `make up`.")
    return store


class MilvusContract(VectorDBContract):
    """The contract plus Milvus's unreachable server (shared by the server and the Lite file)."""

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        store = MilvusStore(uri="http://127.0.0.1:9", timeout=2)
        yield store
        store.close()


class TestMilvusServer(MilvusContract):
    @pytest.fixture
    def store(self) -> Iterator[BaseVectorDB]:
        store = require_milvus()
        yield store
        store.close()


class TestMilvusLiteFile(MilvusContract):
    @pytest.fixture(scope="class")
    def lite_dir(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("milvus-lite")

    @pytest.fixture
    def store(self, lite_dir: Path) -> Iterator[BaseVectorDB]:
        store = MilvusStore(uri=str(lite_dir / "test.db"))
        yield store
        store.close()
