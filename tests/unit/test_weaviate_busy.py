"""Weaviate holds a class read-only while it applies a configuration update: workers binding one class at once meet
it (a 422 "store is read-only due to: UpdateVectorIndexConfigs"). A moment's wait, not a refusal (sinks/weaviate.py).
The adapter's client is replaced by fakes at its port; the real race is tested on a real Weaviate in the contract
suite (``test_workers_binding_one_collection_at_once``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from weaviate.exceptions import UnexpectedStatusCodeError

from core.errors import RetryableError, StoreRejectedError, StoreUnavailableError
from core.versioning import ModelIdentity, binding_text
from sinks.weaviate import WeaviateStore
from sinks.weaviate_fields import Layout

MODEL = ModelIdentity("m/a", "a" * 64, 8, family="fake")
READ_ONLY = (
    'updating db: TYPE_UPDATE_CLASS: vector index configs update: shard "x": store is read-only due to: '
    "UpdateVectorIndexConfigs: [default]"
)


def status_error(code: int, message: str) -> UnexpectedStatusCodeError:
    response = httpx.Response(code, json={"error": [{"message": message}]}, request=httpx.Request("PUT", "http://w"))
    return UnexpectedStatusCodeError("Collection configuration may not have been updated.", response)


def raiser(exc: BaseException) -> Any:
    def call() -> None:
        raise exc

    return call


def test_a_class_held_read_only_is_retried_and_a_real_refusal_is_not() -> None:
    store = WeaviateStore(url="http://127.0.0.1:9")
    with pytest.raises(StoreUnavailableError) as busy:
        store._call("binding collection Docs to model m/a", raiser(status_error(422, READ_ONLY)))
    assert isinstance(busy.value, RetryableError)
    assert "held the class read-only during binding collection Docs" in str(busy.value) and "will retry" in str(
        busy.value
    )
    with pytest.raises(StoreRejectedError):
        store._call("binding collection Docs to model m/a", raiser(status_error(422, "invalid description")))


def test_binding_waits_out_another_workers_update_and_takes_its_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    store = WeaviateStore(url="http://127.0.0.1:9")
    unbound = Layout(dim=8, legacy=False, description="vectorize-worker dim=8 layout=2")
    bound = Layout(dim=8, legacy=False, description=f"vectorize-worker dim=8 layout=2 {binding_text(MODEL)}")
    reads = iter([unbound, bound])  # before the update; then another worker's binding is there
    monkeypatch.setattr(store, "_read_layout", lambda collection: next(reads))
    monkeypatch.setattr(store, "_held_model", lambda collection, layout, dim: None)
    updates: list[str] = []

    def update(description: str) -> None:
        updates.append(description)
        raise status_error(422, READ_ONLY)

    monkeypatch.setattr(store, "_collection", lambda collection: SimpleNamespace(config=SimpleNamespace(update=update)))
    assert store._bind("docs", unbound, MODEL) == MODEL
    assert len(updates) == 1  # read-only once, then the binding read back: no second update needed


def test_binding_gives_up_on_a_class_that_stays_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks import weaviate

    store = WeaviateStore(url="http://127.0.0.1:9")
    unbound = Layout(dim=8, legacy=False, description="vectorize-worker dim=8 layout=2")
    monkeypatch.setattr(store, "_read_layout", lambda collection: unbound)
    monkeypatch.setattr(store, "_held_model", lambda collection, layout, dim: None)
    monkeypatch.setattr(weaviate, "BIND_BUSY_SECONDS", 0.3)

    def update(description: str) -> None:
        raise status_error(422, READ_ONLY)

    monkeypatch.setattr(store, "_collection", lambda collection: SimpleNamespace(config=SimpleNamespace(update=update)))
    with pytest.raises(StoreUnavailableError, match="read-only"):  # retried by the store writer, not refused
        store._bind("docs", unbound, MODEL)
