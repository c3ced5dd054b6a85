"""Versioned vectors and bound collections (issue 16): the identity record, the model manager's identities, the
payload keys every stored record carries, the refusal of a second model in a collection, and what the result
records and ``/models`` show."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from core.errors import StoreRejectedError
from core.ids import vector_id
from core.versioning import ModelIdentity, binding_in, binding_text, check_binding, mismatch_message
from engine.pipeline import TaskPipeline
from models.fingerprint import identity_record, model_identity
from models.manager import ModelManager
from tests.fakes import FakeEmbedder, FakeStore
from tests.unit.test_pipeline import Harness

REV_A = "3f2a9c1d0e11" + "a" * 52
REV_B = "9e01b2c3d4e5" + "b" * 52
A = ModelIdentity("org/model-a", REV_A, 384, normalize=True, pooling="mean", family="sentence-transformers")
B = ModelIdentity("org/model-b", REV_B, 384, normalize=None, pooling=None, family="transformers")


# -- the record ---------------------------------------------------------------------------------------------
def test_an_identity_round_trips_through_its_dict_and_its_json() -> None:
    assert A.to_dict() == {
        "name": "org/model-a",
        "revision": REV_A,
        "dim": 384,
        "normalize": True,
        "pooling": "mean",
        "family": "sentence-transformers",
    }
    assert ModelIdentity.from_dict(A.to_dict()) == A
    assert ModelIdentity.from_json(A.to_json()) == A and ModelIdentity.from_json(B.to_json()) == B
    assert " " not in A.to_json() and json.loads(A.to_json()) == A.to_dict()
    assert A.record_revision == REV_A[:16]


def test_a_bad_identity_names_each_bad_field() -> None:
    bad = {"name": "", "revision": 3, "dim": True, "normalize": "yes", "pooling": 1, "family": None}
    with pytest.raises(ValueError) as info:
        ModelIdentity.from_dict(bad)
    message = str(info.value)
    for field in ("name must be", "revision must be", "dim must be", "normalize must be", "pooling must be"):
        assert field in message, message
    assert "family must be" in message
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelIdentity.from_json("{nope")
    with pytest.raises(ValueError, match="must be a JSON object"):
        ModelIdentity.from_json("[1]")


def test_the_same_model_means_name_revision_dim_normalize_and_pooling() -> None:
    assert A.accepts(A) and A.accepts(replace(A, family="renamed family"))  # the family only describes
    for other in (
        replace(A, name="org/model-a2"),
        replace(A, revision=REV_B),  # same name, retrained or fine-tuned
        replace(A, dim=768),
        replace(A, normalize=False),
        replace(A, pooling="cls"),
    ):
        assert not A.accepts(other), other


def test_a_stored_record_says_its_model_by_name_and_the_start_of_its_revision() -> None:
    held = ModelIdentity.from_record({"model": A.name, "model_revision": A.record_revision}, 384)
    assert held is not None and held.partial and held.revision == REV_A[:16]
    assert held.accepts(A) and not held.accepts(replace(A, revision=REV_B)) and not held.accepts(B)
    assert not held.accepts(replace(A, dim=768))
    older = ModelIdentity.from_record({"model": A.name}, 384)  # written before revisions: the name decides
    assert older is not None and older.accepts(A) and not older.accepts(B)
    assert ModelIdentity.from_record({"text": "no model"}, 384) is None
    assert ModelIdentity.from_record({"model": ""}, 384) is None


def test_a_binding_is_read_back_from_a_description_among_other_words() -> None:
    text = f"vectorize-worker dim=384 layout=2 {binding_text(A)}"
    assert binding_in(text) == A
    assert binding_in("vectorize-worker dim=384 layout=2") is None and binding_in(None) is None
    assert binding_in(f"vectorize-worker {binding_text(B)} and more words") == B
    with pytest.raises(ValueError, match="not valid JSON"):
        binding_in('vectorize-worker model={"name": ')
    with pytest.raises(ValueError, match="dim must be"):
        binding_in('model={"name": "x", "revision": "", "dim": 0}')


def test_the_mismatch_message_names_the_collection_the_store_both_models_and_the_way_out() -> None:
    message = mismatch_message(collection="docs", store="Qdrant at http://q:6333", bound=A, wanted=B)
    assert message == (
        "Collection 'docs' on Qdrant at http://q:6333 is bound to model org/model-a (rev 3f2a9c1d0e11, dim 384); "
        "this task's vectors come from model org/model-b (rev 9e01b2c3d4e5, dim 384). A collection holds the "
        "vectors of one model. Send the task to another collection (its `collection` field), or delete collection "
        "'docs' and send its tasks again."
    )
    held = ModelIdentity.from_record({"model": A.name}, 384)
    assert held is not None
    by_record = mismatch_message(collection="docs", store="Milvus at m", bound=held, wanted=B)
    assert "holds vectors of model org/model-a (rev unknown, dim 384)" in by_record
    with pytest.raises(StoreRejectedError) as info:
        check_binding(A, B, collection="docs", store="s")
    assert info.value.kind == "store_rejected"  # permanent: the task fails alone, with a dead letter
    check_binding(A, A, collection="docs", store="s")
    check_binding(None, B, collection="docs", store="s")  # unbound: nothing to refuse


# -- the model's identity -----------------------------------------------------------------------------------
class Pooled(FakeEmbedder):
    """A family that states its pooling and default normalisation (as the torch families do)."""

    def vector_settings(self) -> dict[str, Any]:
        return {**super().vector_settings(), "pooling": "cls", "normalize_default": True}

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        return super().embed_texts(texts, batch_size=batch_size, normalize=True if normalize is None else normalize)


def test_the_identity_record_of_a_model() -> None:
    plain = identity_record(FakeEmbedder("m", dim=8))
    assert plain == ModelIdentity("m", model_identity(FakeEmbedder("m", dim=8)), 8, None, None, "fake")
    pooled = identity_record(Pooled("m", dim=8))
    assert (pooled.pooling, pooled.normalize, pooled.family) == ("cls", True, "fake")
    assert pooled.revision != plain.revision  # the vector settings are in the revision too
    assert identity_record(Pooled("m", dim=8), "given").revision == "given"


def test_every_loaded_model_has_an_identity_kept_after_it_is_unloaded() -> None:
    loads: list[str] = []

    def load(name: str) -> FakeEmbedder:
        loads.append(name)
        return FakeEmbedder(name)

    # `identify` no longer decides: every load computes the identity (collections are bound to one)
    manager = ModelManager(load, max_loaded=1, warmup=False)
    assert manager.identity_record("a") is None
    manager.get_sync("a")
    record = manager.identity_record("a")
    assert record is not None and record.name == "a" and record.revision == manager.identity("a")
    assert record.revision == model_identity(FakeEmbedder("a")) and record.dim == 8
    manager.get_sync("b")  # evicts a: its vectors may still be on their way to the stores
    assert manager.identity("a") is None and manager.identity_record("a") == record
    assert manager.identity_record("b") is not None and manager.identity_record("b") != record
    manager.close()


# -- a fake store, the writer and the pipeline --------------------------------------------------------------
def test_a_store_refuses_a_second_model_in_a_collection() -> None:
    store = FakeStore()
    store.ensure_collection("docs", 384, identity=A)
    store.ensure_collection("docs", 384, identity=A)
    store.ensure_collection("docs", 384)  # an older caller: unchecked
    with pytest.raises(StoreRejectedError) as info:
        store.ensure_collection("docs", 384, identity=B)
    assert str(info.value) == mismatch_message(collection="docs", store="FakeStore", bound=A, wanted=B)
    store.ensure_collection("other", 384, identity=B)
    assert store.bound_identity("docs") == A and store.bound_identity("other") == B


class TwoModels(Harness):
    """The pipeline's harness with models of one dimension whose vectors differ: ``fake-model`` and ``other-model``
    (a Pooled family: it normalises by default)."""

    def _load(self, name: str) -> FakeEmbedder:
        if name == "other-model":
            return self.embedders.setdefault(name, Pooled(name))
        return super()._load(name)


def text(task_id: str, model: str | None = None, collection: str | None = None, **more: Any) -> dict[str, Any]:
    task = {"task_type": "batch_vectorization", "data": [f"{task_id} one", f"{task_id} two"], "task_id": task_id}
    return task | ({"model_name": model} if model else {}) | ({"collection": collection} if collection else {}) | more


async def test_a_mixed_batch_fails_only_the_tasks_of_the_other_model() -> None:
    h = TwoModels()
    await h.send(text("first"))  # binds the collection to fake-model
    await h.drain()
    for task in (text("a1"), text("b1", "other-model"), text("a2", normalize=True), text("b2", "other-model")):
        await h.send(task)
    await h.send(text("b3", "other-model", collection="elsewhere"))  # the way out: another collection
    await h.drain()
    assert h.acked == [0, 1, 2, 3, 4, 5]
    results = {r["task_id"]: r for r in h.kafka.on("results")}
    bound = h.manager.identity_record("fake-model")
    other = h.manager.identity_record("other-model")
    assert bound is not None and other is not None
    for task_id in ("first", "a1", "a2"):
        assert results[task_id]["status"] == "completed" and results[task_id]["model_identity"] == bound.to_dict()
    assert results["b3"]["status"] == "completed" and results["b3"]["model_identity"] == other.to_dict()
    expected = mismatch_message(collection="vectorize", store="FakeStore", bound=bound, wanted=other)
    for task_id in ("b1", "b2"):
        assert results[task_id]["status"] == "failed" and results[task_id]["model_identity"] is None
        assert results[task_id]["error"]["message"] == expected
        assert results[task_id]["error"]["kind"] == "store_rejected"
        assert h.statuses(task_id)[-1] == "failed"
    assert {d["task_id"] for d in h.kafka.on("dlq")} == {"b1", "b2"}
    assert "other-model (rev " in expected and "fake-model (rev " in expected
    # nothing of the other model in the bound collection; its vectors went where it was sent
    stored = h.store.collections["vectorize"]
    assert {p.payload["task_id"] for p in stored.values()} == {"first", "a1", "a2"}
    assert {p.payload["task_id"] for p in h.store.collections["elsewhere"].values()} == {"b3"}
    assert h.store.bound_identity("vectorize") == bound and h.store.bound_identity("elsewhere") == other


async def test_every_stored_record_names_its_model_revision_and_normalisation() -> None:
    h = TwoModels()
    await h.send(text("plain"))
    await h.send(text("asked", normalize=True))
    await h.send(text("pooled", "other-model", collection="pooled"))
    await h.send(text("pooled-raw", "other-model", collection="pooled", normalize=False))
    await h.drain()
    fake, other = h.manager.identity_record("fake-model"), h.manager.identity_record("other-model")
    assert fake is not None and other is not None
    expected = {
        ("vectorize", "plain"): (fake, False),  # the task did not say: the model's default (none: not normalised)
        ("vectorize", "asked"): (fake, True),
        ("pooled", "pooled"): (other, True),  # the model normalises by default
        ("pooled", "pooled-raw"): (other, False),
    }
    for (collection, task_id), (identity, normalize) in expected.items():
        for index in range(2):
            [point] = h.store.retrieve(collection, [vector_id(task_id, index)])
            assert point.payload["model"] == identity.name
            assert point.payload["model_revision"] == identity.revision[:16]
            assert point.payload["normalize"] is normalize
            norm = float(np.linalg.norm(point.vector))
            assert (abs(norm - 1) < 1e-5) is normalize, (task_id, norm)


async def test_several_stores_a_model_one_of_them_refuses_is_written_to_none() -> None:
    h = TwoModels()
    second = FakeStore()
    second.name = "second"
    h.pipeline = TaskPipeline(
        settings=h.settings,
        manager=h.manager,
        stores=[h.store, second],
        publisher=h.pipeline.reporter.publisher,
        on_done=h._done,
    )
    await h.send(text("a"))
    await h.drain()
    h.store.bindings["vectorize"] = A  # only the first store refuses
    second.collections.clear()
    second.bindings.clear()
    second.dims.clear()
    await h.send(text("a-again"))
    await h.drain()
    [result] = [r for r in h.kafka.on("results") if r["task_id"] == "a-again"]
    assert result["status"] == "failed" and "is bound to model org/model-a" in result["error"]["message"]
    assert second.collections.get("vectorize", {}) == {}  # ensured (made, bound) but nothing written


class OldAdapter(FakeStore):
    """An adapter written before bindings: its ensure_collection takes no identity."""

    name = "old"

    def ensure_collection(self, collection: str, dim: int, distance: str = "cosine") -> None:  # type: ignore[override]
        super().ensure_collection(collection, dim, distance)


async def test_an_adapter_without_bindings_still_gets_its_writes(caplog: pytest.LogCaptureFixture) -> None:
    h = TwoModels()
    old = OldAdapter()
    h.pipeline = TaskPipeline(
        settings=h.settings, manager=h.manager, stores=[old], publisher=h.pipeline.reporter.publisher, on_done=h._done
    )
    with caplog.at_level(logging.WARNING, logger="worker.task_processor"):
        await h.send(text("a"))
        await h.send(text("b", "other-model"))
        await h.drain()
    assert {r["task_id"]: r["status"] for r in h.kafka.on("results")} == {"a": "completed", "b": "completed"}
    assert old.count("vectorize") == 4 and old.bindings == {}
    warnings = [r.getMessage() for r in caplog.records if "takes no identity=" in r.getMessage()]
    assert len(warnings) == 1 and "old adapter" in warnings[0] and "not bound to a model" in warnings[0]


# -- /models --------------------------------------------------------------------------------------------------
class Web:
    def json(self, body: Any, *, status: int = 200, **kwargs: Any) -> tuple[Any, int]:
        return body, status


def test_models_shows_each_loaded_models_identity() -> None:
    from agents.web import WebViews

    manager = ModelManager(lambda name: FakeEmbedder(name), max_loaded=2, warmup=False)
    manager.get_sync("m1")
    manager.get_sync("m2")
    settings = SimpleNamespace(
        worker_id="w", max_loaded_models=2, default_model="m1", web_auth_token=None, kafka_group_id="g"
    )
    runtime = SimpleNamespace(manager=manager, device="cpu")
    views = WebViews(settings, app=None, runtime=lambda: runtime, tables=None)  # type: ignore[arg-type]
    body, status = asyncio.run(views.models(Web(), None))
    assert status == 200
    shown = {m["name"]: m["identity"] for m in body["loaded"]}
    for name in ("m1", "m2"):
        record = manager.identity_record(name)
        assert record is not None and shown[name] == record.to_dict() and shown[name]["revision"]
    manager.close()
