"""Migrations in the worker (issue 16), with fakes at the ports: the dual write (a twin of every task of a migrating
alias, written to the other collection with the other model, acknowledged together), deletes from both, the
``reembed`` records of the backfill (written only while the migration and the source still want them, silent on
success, dead-lettered alone on failure) and the epochs a worker applies."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core.ids import DOCUMENT_VECTOR, vector_id
from core.versioning import ModelIdentity, physical_name
from engine.migrations import Backfill, Collection, MigrationState, advance
from tests.fakes import FakeEmbedder
from tests.unit.test_images import photo, png_bytes
from tests.unit.test_pipeline import Harness

A = ModelIdentity("fake-model", "a" * 64, 8, family="fake")
B = ModelIdentity("model-b", "b" * 64, 6, family="fake")
LIVE, SHADOW = "vectorize", "vectorize__model_b_bbbbbbbb"


def states(alias: str = LIVE, a: ModelIdentity = A, b: ModelIdentity = B) -> list[MigrationState]:
    """bound → shadow_created → dual_write → backfill → verify → switched, for ``alias`` from ``a`` to ``b``."""
    out = [MigrationState.bound(alias, Collection(alias, a))]
    out.append(advance(out[-1], "shadow_created", shadow=Collection(SHADOW, b)))
    out.append(advance(out[-1], "dual_write"))
    out.append(advance(out[-1], "backfill", backfill=Backfill("fake", None, 0)))
    out.append(advance(out[-1], "verify"))
    out.append(advance(out[-1], "switched", switched=("fake",)))
    return out


def harness(phase: str, **overrides: Any) -> Harness:
    h = Harness(**overrides)
    h.embedders["model-b"] = FakeEmbedder("model-b", dim=6)
    for state in states():
        h.pipeline.migrations.apply(state)
        if state.phase == phase:
            break
    return h


async def harness_with_loaded_models(upto: int) -> tuple[Harness, list[MigrationState]]:
    """A harness whose states bind the identities the worker computes for its two models (as the migrate command
    binds the collections), applied up to the ``upto``-th; the states."""
    h = Harness()
    h.embedders["model-b"] = FakeEmbedder("model-b", dim=6)
    for name in ("fake-model", "model-b"):
        await h.manager.get(name)
    a, b = h.manager.identity_record("fake-model"), h.manager.identity_record("model-b")
    assert a is not None and b is not None
    path = states(a=a, b=b)
    for state in path[:upto]:
        h.pipeline.migrations.apply(state)
    return h, path


def batch(task_id: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"task_type": "batch_vectorization", "data": [f"text {i}" for i in range(n)], "task_id": task_id, **extra}


async def settle(h: Harness) -> None:
    for _ in range(5):  # twins are queued by the lane that wrote their task: run the lanes until nothing is left
        await h.drain()
        await asyncio.sleep(0.01)
        if not h.pipeline._jobs and not h.pipeline._deletes and not any(lane.pending for lane in h.pipeline.lanes):
            return


def embedded(name: str, text: str, dim: int) -> np.ndarray:
    return FakeEmbedder(name, dim=dim).embed_texts([text], batch_size=1, normalize=None)[0]


async def test_dual_write_stores_every_task_in_both_collections_with_its_model_and_acks_once() -> None:
    h = harness("dual_write")
    await h.send(batch("t1", 3, metadata={"k": "v"}))
    await settle(h)
    live, shadow = h.store.collections[LIVE], h.store.collections[SHADOW]
    assert set(live) == set(shadow) == {vector_id("t1", i) for i in range(3)}
    for i in range(3):
        a, b = live[vector_id("t1", i)], shadow[vector_id("t1", i)]
        assert len(a.vector) == 8 and len(b.vector) == 6
        assert np.allclose(b.vector, embedded("model-b", f"text {i}", 6))
        assert b.payload["model"] == "model-b" and a.payload["model"] == "fake-model"
        same = ("text", "task_id", "task_type", "item_index", "metadata")
        assert {k: b.payload[k] for k in same} == {k: a.payload[k] for k in same}
    assert h.acked == [0]
    assert h.statuses("t1") == ["received", "processing", "completed"]  # nothing published for the twin
    assert [r["task_id"] for r in h.kafka.on("results")] == ["t1"] and h.kafka.on("dlq") == []


async def test_a_task_is_acknowledged_only_after_its_twin() -> None:
    h = harness("backfill")
    release = threading.Event()
    twin_model = h.embedders["model-b"]
    original = twin_model.embed_texts

    def held_back(texts: Any, **kw: Any) -> np.ndarray:
        release.wait(10)
        return original(texts, **kw)

    twin_model.embed_texts = held_back  # type: ignore[method-assign]
    h.pipeline.start()
    await h.send(batch("t1", 1))
    for _ in range(500):  # the live write is done and the task reported; its twin is held back
        if h.kafka.on("results"):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert h.kafka.on("results") and h.acked == []
    release.set()
    await settle(h)
    assert h.acked == [0] and vector_id("t1", 0) in h.store.collections[SHADOW]


async def test_a_document_twin_keeps_the_chunks_and_remakes_the_document_vector() -> None:
    h = harness("dual_write", chunk_tokens=8, chunk_overlap_tokens=0)
    content = " ".join(f"w{i}" for i in range(30))
    await h.send({"task_type": "document_vectorization", "data": {"title": "T", "content": content}, "task_id": "d"})
    await settle(h)
    live, shadow = h.store.collections[LIVE], h.store.collections[SHADOW]
    assert set(live) == set(shadow) and len(shadow) > 2
    chunks = [p for p in shadow.values() if p.payload.get("vector_kind") == "chunk"]
    doc = shadow[vector_id("d", DOCUMENT_VECTOR)]
    assert doc.payload["title"] == "T" and doc.payload["model"] == "model-b" and "text" not in doc.payload
    mean = np.mean([c.vector for c in chunks], axis=0)
    assert np.allclose(doc.vector, mean, atol=1e-5)  # the fake's vectors are not normalised: the plain mean
    for c in chunks:
        assert (
            c.payload["text"] == live[c.id].payload["text"]
            and c.payload["char_start"] == live[c.id].payload["char_start"]
        )


async def test_deletes_and_updates_during_a_migration_reach_both_collections() -> None:
    h = harness("dual_write")
    await h.send(batch("x", 3))
    await h.send(batch("y", 1))
    await settle(h)
    await h.send(batch("x", 1))  # shrinks: the stale items go from both
    await h.send({"task_type": "delete", "task_id": "y"})
    await settle(h)
    for name in (LIVE, SHADOW):
        assert set(h.store.collections[name]) == {vector_id("x", 0)}, name
    deleted = [r for r in h.kafka.on("results") if r["task_id"] == "y"][-1]
    assert deleted["deleted"] == {"fake": 1}  # what the live collection held


async def test_after_the_switch_the_new_model_is_live_and_the_old_collection_gets_the_twins() -> None:
    h, _ = await harness_with_loaded_models(upto=len(states()))  # switched
    await h.send(batch("s", 2))
    await settle(h)
    assert {len(p.vector) for p in h.store.collections[SHADOW].values()} == {6}  # live now
    assert {len(p.vector) for p in h.store.collections[LIVE].values()} == {8}  # old: the twin, with model A
    result = h.kafka.on("results")[-1]
    assert result["model"] == "model-b" and result["dimension"] == 6  # a task naming no model gets the live one
    assert h.acked == [0]


async def test_a_failing_twin_never_fails_the_task() -> None:
    h = harness("dual_write")
    h.pipeline.migrations.apply(
        advance(h.pipeline.migrations.get(LIVE), "backfill", backfill=Backfill("fake", None, 0))  # type: ignore[arg-type]
    )
    h.embedders.pop("model-b")
    h.embedders["model-b"] = FakeEmbedder("model-b", dim=6, max_tokens=3)  # every text too long for it
    await h.send({"task_type": "text_vectorization", "data": "a long text for the small model", "task_id": "t"})
    await settle(h)
    assert h.statuses("t")[-1] == "completed" and h.acked == [0]
    dead = h.kafka.on("dlq")
    assert len(dead) == 1 and dead[0]["task_id"] == "t"
    assert SHADOW not in h.store.collections or not h.store.collections[SHADOW]
    assert [s for s in h.kafka.on("status") if s["status"] == "failed"] == []


def reembed(task_id: str, items: list[dict[str, Any]], *, epoch: int, metadata: Any = None) -> dict[str, Any]:
    return {
        "task_type": "reembed",
        "task_id": task_id,
        "collection": LIVE,
        "model_name": "model-b",
        "metadata": metadata or {},
        "migration": {"epoch": epoch, "source": LIVE, "target": SHADOW},
        "items": items,
    }


def items_of(h: Harness, task_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": p.id,
            "digest": p.payload.get("content_digest"),
            "payload": {k: v for k, v in p.payload.items() if k != "metadata"},
        }
        for p in h.store.collections[LIVE].values()
        if p.payload["task_id"] == task_id
    ]


async def test_the_backfill_reembeds_what_the_source_still_holds_and_skips_what_changed() -> None:
    h = harness("bound")
    await h.send(batch("old", 2, metadata={"m": 1}))
    await h.send(batch("changed", 1))
    await settle(h)
    carried = {t: items_of(h, t) for t in ("old", "changed")}
    for state in states()[1:4]:  # into backfill
        h.pipeline.migrations.apply(state)
    epoch = h.pipeline.migrations.get(LIVE).epoch  # type: ignore[union-attr]
    h.store.collections[LIVE][vector_id("changed", 0)].payload["content_digest"] = "edited since the scan"
    before = len(h.kafka.on("status")), len(h.kafka.on("results"))
    await h.send(reembed("old", carried["old"], epoch=epoch, metadata={"m": 1}))
    await h.send(reembed("changed", carried["changed"], epoch=epoch))
    await settle(h)
    shadow = h.store.collections[SHADOW]
    assert set(shadow) == {vector_id("old", 0), vector_id("old", 1)}
    assert shadow[vector_id("old", 1)].payload["metadata"] == {"m": 1}
    assert np.allclose(shadow[vector_id("old", 1)].vector, embedded("model-b", "text 1", 6))
    assert (len(h.kafka.on("status")), len(h.kafka.on("results"))) == before  # silent
    assert h.acked[-2:] == [2, 3]
    tasks = h.pipeline.metrics.migration_tasks
    assert tasks.labels("written")._value.get() == 1 and tasks.labels("skipped")._value.get() == 1


async def test_a_reembed_for_a_migration_that_moved_on_writes_nothing() -> None:
    h = harness("bound")
    await h.send(batch("t", 1))
    await settle(h)
    carried = items_of(h, "t")
    for state in states()[1:]:  # switched: the live collection is the shadow now
        h.pipeline.migrations.apply(state)
    await h.send(reembed("t", carried, epoch=3))
    await settle(h)
    assert SHADOW not in h.store.collections or vector_id("t", 0) not in h.store.collections[SHADOW]
    assert h.pipeline.metrics.migration_tasks.labels("skipped")._value.get() == 1


async def test_a_reembed_that_cannot_be_done_is_dead_lettered_alone() -> None:
    h = harness("backfill")
    image = {"id": vector_id("img", 0), "digest": None, "payload": {"task_id": "img", "item_index": 0, "source": "url"}}
    await h.send(reembed("img", [image], epoch=3))
    await settle(h)
    dead = h.kafka.on("dlq")
    assert len(dead) == 1 and dead[0]["task_id"] == "img" and "its path or URL was not stored" in json.dumps(dead)
    assert h.statuses("img") == [] and h.kafka.on("results") == []
    assert h.acked == [0]


async def test_the_epoch_a_worker_applies_waits_for_the_records_taken_in_before() -> None:
    h = harness("bound")
    h.pipeline.start()
    assert h.pipeline.applied_epochs() == {LIVE: 0}
    await h.send(batch("early", 1))  # taken in under epoch 0, not done yet
    h.pipeline.migrations.apply(states()[1])
    assert h.pipeline.applied_epochs() == {LIVE: 0}
    await settle(h)
    assert h.pipeline.applied_epochs() == {LIVE: 1}


async def test_a_switch_between_a_tasks_live_write_and_its_twin_still_twins_it_into_the_new_live_collection() -> None:
    h = harness("verify")
    write = h.pipeline.writer.write
    switched = states()[-1]

    async def write_then_switch(outcomes: Any) -> None:
        await write(outcomes)
        h.pipeline.migrations.apply(switched)  # the command switched while this task was being written

    h.pipeline.writer.write = write_then_switch  # type: ignore[method-assign]
    await h.send(batch("racing", 2))
    await settle(h)
    assert (
        set(h.store.collections[LIVE]) == set(h.store.collections[SHADOW]) == {vector_id("racing", i) for i in (0, 1)}
    )
    assert {len(p.vector) for p in h.store.collections[SHADOW].values()} == {6}


async def test_a_task_embedded_before_a_switch_is_written_where_its_model_belongs_and_twinned_into_the_live_one() -> (
    None
):
    h, path = await harness_with_loaded_models(upto=5)  # verify
    model_a = h.embedders["fake-model"]
    embed = model_a.embed_texts

    def embed_then_switch(texts: Any, **kw: Any) -> np.ndarray:
        vectors = embed(texts, **kw)
        h.pipeline.migrations.apply(path[-1])  # the switch lands while the model runs
        return vectors

    model_a.embed_texts = embed_then_switch  # type: ignore[method-assign]
    await h.send(batch("early", 1))
    await settle(h)
    assert h.statuses("early")[-1] == "completed" and h.kafka.on("dlq") == []
    assert len(h.store.collections[LIVE][vector_id("early", 0)].vector) == 8  # model A's, in A's collection
    assert len(h.store.collections[SHADOW][vector_id("early", 0)].vector) == 6  # its twin in the live one


async def test_an_image_task_of_a_migrating_collection_is_read_again_for_its_twin() -> None:
    h = harness("dual_write")
    image = base64.b64encode(png_bytes(photo(seed=3))).decode()
    await h.send({"task_type": "image_vectorization", "data": image, "task_id": "img", "metadata": {"k": 1}})
    await settle(h)
    assert h.statuses("img")[-1] == "completed" and h.acked == [0] and h.kafka.on("dlq") == []
    live, shadow = h.store.collections[LIVE][vector_id("img", 0)], h.store.collections[SHADOW][vector_id("img", 0)]
    assert len(live.vector) == 8 and len(shadow.vector) == 6  # the image embedded again by the new model
    assert shadow.payload["model"] == "model-b" and shadow.payload["metadata"] == {"k": 1}
    assert h.embedders["model-b"].image_calls == [1]
    assert [r["task_id"] for r in h.kafka.on("results")] == ["img"]  # nothing published for the twin


async def test_the_backfill_reads_a_stored_image_again_by_its_path(tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    picture.write_bytes(png_bytes(photo(seed=5)))
    h = harness("bound", images_allowed_roots=[str(tmp_path)])
    await h.send({"task_type": "image_vectorization", "data": str(picture), "task_id": "img"})
    await settle(h)
    carried = items_of(h, "img")
    assert carried[0]["payload"]["image_ref"] == str(picture)
    for state in states()[1:4]:
        h.pipeline.migrations.apply(state)
    await h.send(reembed("img", carried, epoch=3))
    await settle(h)
    assert len(h.store.collections[SHADOW][vector_id("img", 0)].vector) == 6 and h.kafka.on("dlq") == []
    assert h.statuses("img") == ["received", "processing", "completed"]  # the first send's only


async def test_the_backfill_of_an_image_sent_inline_is_dead_lettered_alone() -> None:
    h = harness("bound")
    image = base64.b64encode(png_bytes(photo(seed=4))).decode()
    await h.send({"task_type": "image_vectorization", "data": image, "task_id": "inline"})
    await settle(h)
    carried = items_of(h, "inline")
    for state in states()[1:4]:
        h.pipeline.migrations.apply(state)
    await h.send(reembed("inline", carried, epoch=3))
    await settle(h)
    dead = h.kafka.on("dlq")
    assert [d["task_id"] for d in dead] == ["inline"] and "cannot be read again" in json.dumps(dead)
    assert h.statuses("inline") == ["received", "processing", "completed"] and h.acked == [0, 1]


async def test_a_failed_twin_of_an_update_leaves_no_older_version_in_the_other_collection() -> None:
    h = harness("dual_write")
    await h.send(batch("u", 2))
    await settle(h)
    assert set(h.store.collections[SHADOW]) == {vector_id("u", 0), vector_id("u", 1)}
    h.embedders["model-b"].embed_texts = _failing  # type: ignore[method-assign]
    await h.send(batch("u", 2, metadata={"v": 2}))  # the update: its twin fails
    await settle(h)
    assert h.statuses("u")[-1] == "completed" and h.acked == [0, 1]
    assert vector_id("u", 0) not in h.store.collections[SHADOW]  # gone: verify finds it missing and sends it again
    assert h.store.collections[LIVE][vector_id("u", 0)].payload["metadata"] == {"v": 2}


def _failing(texts: Any, **kw: Any) -> np.ndarray:
    raise RuntimeError("the new model broke")


async def test_a_rollback_while_a_task_of_the_new_model_is_in_flight_keeps_the_task() -> None:
    h, path = await harness_with_loaded_models(upto=len(states()))  # switched: tasks naming no model get model-b
    rolled_back = advance(path[-1], "rolled_back")
    model_b = h.embedders["model-b"]
    embed = model_b.embed_texts

    def embed_then_roll_back(texts: Any, **kw: Any) -> np.ndarray:
        vectors = embed(texts, **kw)
        if not h.kafka.on("results"):
            h.pipeline.migrations.apply(rolled_back)  # the rollback lands while the model runs
        return vectors

    model_b.embed_texts = embed_then_roll_back  # type: ignore[method-assign]
    await h.send(batch("late", 1))
    await settle(h)
    assert h.statuses("late")[-1] == "completed" and h.kafka.on("dlq") == []
    assert len(h.store.collections[SHADOW][vector_id("late", 0)].vector) == 6  # where model-b's vectors belong
    assert len(h.store.collections[LIVE][vector_id("late", 0)].vector) == 8  # its twin in the live one again


async def test_a_reembed_record_that_cannot_be_read_publishes_nothing_under_the_users_task_id() -> None:
    h = harness("backfill")
    bad = reembed("t", [{"id": "x", "digest": None, "payload": {"text": "a"}}], epoch=3)
    bad["migration"]["check_source"] = False  # only a worker's own twins skip the source check
    await h.send(bad)
    await h.send({**reembed("t2", [], epoch=3)})  # no items
    await settle(h)
    assert h.kafka.on("status") == [] and h.kafka.on("results") == []
    assert [d["task_id"] for d in h.kafka.on("dlq")] == ["t", "t2"] and "check_source" in json.dumps(h.kafka.on("dlq"))


async def test_a_reembed_of_a_migration_that_moved_on_is_not_embedded_at_all() -> None:
    h = harness("bound")
    await h.send(batch("t", 1))
    await settle(h)
    carried = items_of(h, "t")
    for state in states()[1:4]:
        h.pipeline.migrations.apply(state)
    h.pipeline.migrations.apply(advance(h.pipeline.migrations.get(LIVE), "aborted"))  # type: ignore[arg-type]
    await h.send(reembed("t", carried, epoch=3))
    await settle(h)
    assert h.embedders["model-b"].calls == [] and h.acked == [0, 1]
    assert h.pipeline.metrics.migration_tasks.labels("skipped")._value.get() == 1


async def test_a_drain_acknowledges_no_task_whose_twin_is_not_written() -> None:
    h = harness("dual_write")
    h.pipeline.start()
    for i in range(6):
        await h.send(batch(f"d{i}", 2))
    await asyncio.sleep(0.02)  # some in the model, some queued
    assert await h.pipeline.drain(timeout=20)
    shadow = {p.payload["task_id"] for p in h.store.collections.get(SHADOW, {}).values()}
    assert {f"d{offset}" for offset in h.acked} <= shadow  # every task acknowledged is in both collections
    await h.pipeline.stop()


# -- a new collection made behind an alias (stores.aliases) --------------------------------------------------------
class Binder:
    """The port that publishes a collection's binding (the runtime's migration state writer)."""

    def __init__(self) -> None:
        self.states: list[MigrationState] = []

    async def __call__(self, state: MigrationState) -> None:
        self.states.append(state)


def bound_harness(**overrides: Any) -> tuple[Harness, Binder]:
    binder = Binder()
    h = Harness(**overrides)
    h.pipeline.writer.bind = binder
    return h, binder


async def test_a_new_collection_is_made_behind_an_alias_named_after_its_model() -> None:
    h, binder = bound_harness()
    await h.send(batch("t1", 2, collection="docs"))
    await h.send(batch("t2", 1, collection="docs"))
    await settle(h)
    identity = h.manager.identity_record("fake-model")
    assert identity is not None
    physical = physical_name("docs", identity)
    assert h.store.aliases == {"docs": physical} and h.store.pointed["docs"] == identity
    assert set(h.store.collections) == {physical} and h.store.count(physical) == 3
    assert h.store.bindings[physical] == identity
    assert [(s.alias, s.phase, s.live.physical) for s in binder.states] == [("docs", "bound", physical)]  # once
    assert h.pipeline.migrations.get("docs") == binder.states[0]
    assert [r["collection"] for r in h.kafka.on("results")] == ["docs", "docs"]  # the name tasks use


async def test_a_collection_made_before_aliases_keeps_its_name() -> None:
    h, binder = bound_harness()
    h.store.ensure_collection("docs", 8)  # a plain collection of that name, from an earlier version
    await h.send(batch("t1", 1, collection="docs"))
    await settle(h)
    assert binder.states == [] and h.store.aliases == {} and h.store.count("docs") == 1


async def test_an_alias_pointing_at_another_collection_is_written_through_its_name() -> None:
    h, binder = bound_harness()
    h.store.ensure_collection("elsewhere", 8)
    h.store.point("docs", "elsewhere")  # made by hand, or by a worker of another model
    await h.send(batch("t1", 1, collection="docs"))
    await settle(h)
    assert binder.states == [] and h.store.count("docs") == 1 and h.store.count("elsewhere") == 0  # under its name


async def test_a_task_of_another_model_is_refused_naming_the_collection_it_used_and_the_migration() -> None:
    h, _ = bound_harness()
    h.embedders["model-b"] = FakeEmbedder("model-b", dim=6)
    await h.send(batch("first", 1, collection="docs"))
    await settle(h)
    await h.send(batch("other", 1, collection="docs", model_name="model-b"))
    await settle(h)
    [dead] = h.kafka.on("dlq")
    message = dead["error"]["message"]
    assert dead["task_id"] == "other" and "Collection 'docs' on every store is bound to model fake-model" in message
    assert "faust -A app migrate docs --to-model model-b" in message and h.statuses("other")[-1] == "failed"
    assert len(h.store.collections) == 1  # nothing of model-b anywhere


async def test_a_hostile_record_is_rejected_alone_even_when_it_names_the_reembed_type() -> None:
    h = harness("backfill")
    deep = b'{"task_type": "reembed", "items": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    await h.send(deep)  # nested far deeper than allowed: rejected at decoding, the rejection must not crash
    await h.send(b"[" * 100_000)
    await h.send(batch("after", 1))
    await settle(h)
    assert h.statuses("after")[-1] == "completed" and h.acked == [0, 1, 2]
    assert len(h.kafka.on("dlq")) == 2


async def test_a_store_without_the_alias_of_a_known_collection_gets_it_made_again() -> None:
    h, binder = bound_harness()
    await h.manager.get("fake-model")
    identity = h.manager.identity_record("fake-model")
    assert identity is not None
    physical = physical_name("docs", identity)
    h.pipeline.migrations.apply(MigrationState.bound("docs", Collection(physical, identity)))  # from the topic
    await h.send(batch("t1", 1, collection="docs"))  # this store is new: neither the collection nor the pointer
    await settle(h)
    assert h.store.aliases == {"docs": physical} and h.store.count(physical) == 1 and binder.states == []
