"""The Chroma adapter against a real `chroma run` server (started by `make up`) and embedded mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinks.base import BaseVectorDB
from sinks.chroma import ChromaStore
from tests.contract import VectorDBContract

CHROMA_URL = os.environ.get("VECTORIZE_TEST_CHROMA", "http://127.0.0.1:8000")


def require_chroma() -> ChromaStore:
    store = ChromaStore(url=CHROMA_URL)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Chroma is not reachable at {CHROMA_URL} ({exc}); start it with `make up`.")
    return store


class TestChromaServer(VectorDBContract):
    @pytest.fixture
    def store(self) -> Iterator[BaseVectorDB]:
        yield require_chroma()

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        yield ChromaStore(url="http://127.0.0.1:9")


class TestChromaEmbedded(VectorDBContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[BaseVectorDB]:
        yield ChromaStore(path=tmp_path / "chroma")

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        yield ChromaStore(url="http://127.0.0.1:9")
