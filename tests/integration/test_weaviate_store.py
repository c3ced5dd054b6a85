"""The Weaviate adapter against a real Weaviate server built from source (started by `make up`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sinks.base import BaseVectorDB
from sinks.weaviate import WeaviateStore
from tests.contract import VectorDBContract

WEAVIATE_URL = os.environ.get("VECTORIZE_TEST_WEAVIATE", "http://127.0.0.1:8080")


def require_weaviate() -> WeaviateStore:
    store = WeaviateStore(url=WEAVIATE_URL)
    try:
        store.health()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Weaviate is not reachable at {WEAVIATE_URL} ({exc}); start it with `make up`.")
    return store


class TestWeaviateServer(VectorDBContract):
    @pytest.fixture
    def store(self) -> Iterator[BaseVectorDB]:
        store = require_weaviate()
        yield store
        store.close()

    @pytest.fixture
    def unreachable(self) -> Iterator[BaseVectorDB]:
        store = WeaviateStore(url="http://127.0.0.1:9", grpc_port=10, timeout=2)
        yield store
        store.close()
