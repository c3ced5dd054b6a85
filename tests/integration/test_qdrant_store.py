"""The Qdrant adapter against qdrant-client's embedded local mode (no server installs here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import ConfigError
from sinks.base import BaseVectorDB
from sinks.qdrant import QdrantStore
from tests.contract import VectorDBContract


class TestQdrantLocal(VectorDBContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[BaseVectorDB]:
        store = QdrantStore(path=tmp_path / "qdrant")
        yield store
        store.close()

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
    from sinks.base import VectorRecord

    store = QdrantStore(path=tmp_path / "q")
    store.ensure_collection("c", 2)
    store.upsert("c", [VectorRecord("00000000-0000-0000-0000-000000000001", [1.0, 0.0], {"a": 1})])
    store.close()
    again = QdrantStore(path=tmp_path / "q")
    assert again.count("c") == 1
    again.close()
