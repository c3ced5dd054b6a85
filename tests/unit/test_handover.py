"""Tasks of partitions revoked in a rebalance are handed over: not written, not reported, and a write already under
way is waited for (engine/store_writer.py, agents/intake.py ``forget_revoked``). Fakes at the store port."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from core.ids import vector_id
from engine.acks import AckTracker
from sinks.base import VectorRecord
from tests.fakes import FakeStore, unavailable
from tests.unit.built import build_worker
from tests.unit.test_pipeline import Harness
from tests.unit.test_sync import batch, settle, task_ids_in, tombstone

TP0 = "tasks-0"  # the Harness's partition


class HeldStore(FakeStore):
    """Each upsert waits until the test lets it go (``go``); ``entered`` says one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        self.entered.set()
        assert self.go.wait(10), "the test never let the upsert go"
        super().upsert(collection, records)


class DownStore(FakeStore):
    """Unavailable until the test says otherwise; ``attempts`` counts the calls it refused."""

    def __init__(self) -> None:
        super().__init__()
        self.down, self.attempts = True, 0

    def _maybe_fail(self) -> None:
        if self.down:
            self.attempts += 1
            raise unavailable()

    def health(self) -> None:
        if self.down:
            raise unavailable()


def use_store(h: Harness, store: FakeStore) -> None:
    """``store`` in place of the Harness's, on the writer's one store thread."""
    h.store = store
    h.pipeline.stores[:] = [store]
    writer = h.pipeline.writer
    writer.stores[:] = [store]
    writer._executors = {id(store): next(iter(writer._executors.values()))}


def handed_over(h: Harness) -> float:
    return h.pipeline.metrics.handed_over._value.get()


def reported(h: Harness, task_id: str) -> list[str]:
    return [r["task_id"] for r in h.kafka.on("results") if r["task_id"] == task_id] + [
        s for s in h.statuses(task_id) if s in ("completed", "failed")
    ]


async def test_a_task_revoked_before_its_write_is_neither_written_nor_reported() -> None:
    h = Harness()
    await h.send(batch("t", 3))
    assert h.tracker.forget({TP0}) == 1  # the rebalance: its partition goes to another worker
    await h.drain()
    assert task_ids_in(h) == {} and h.store.upserts == 0
    assert reported(h, "t") == [] and h.acked == [] and handed_over(h) == 1
    assert not h.pipeline._active  # its id is given back: the next record of the id is not held
    assert h.pipeline._held == {} and h.pipeline._slots._value == h.settings.max_concurrent_tasks  # its budgets too
    assert h.statuses("t") == ["received"]  # nothing after the revocation (it is not even embedded)
    assert not h.embedders  # not embedded: its next owner does it
    assert not h.kafka.on("dlq")


async def test_a_write_under_way_is_waited_for_and_the_rest_of_it_is_not_sent() -> None:
    h = Harness(store_batch_points=2)  # 5 records: three requests
    store = HeldStore()
    use_store(h, store)
    writer = h.pipeline.writer
    await h.send(batch("t", 5))
    h.pipeline.start()
    assert await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, 10)  # the first request is sent
    h.tracker.forget({TP0})
    assert await writer.settled({TP0}, timeout=0.1) is False  # a request that does not end: said, not waited for
    settled = asyncio.ensure_future(writer.settled({TP0}, timeout=10))
    await asyncio.sleep(0.2)
    assert not settled.done()  # the rebalance waits for the request under way
    assert await writer.settled({"tasks-9"}, timeout=0) is True  # another partition's tasks are not in it
    store.go.set()
    assert await settled is True
    await h.pipeline.settled()
    await h.pipeline.stop()
    assert store.upserts == 1 and task_ids_in(h) == {"t": 2}  # the other two requests were never sent
    assert reported(h, "t") == [] and handed_over(h) == 1
    # the partition's new owner (here the same pipeline, a new delivery) writes it whole and reports it
    await h.send(batch("t", 5))
    await h.drain()
    assert task_ids_in(h) == {"t": 5} and reported(h, "t") == ["t", "completed"]


async def retrying_then_revoked(h: Harness) -> DownStore:
    """A two-text task whose write fails against a store that stays down, revoked once a retry is under way."""
    store = DownStore()
    use_store(h, store)
    await h.send(batch("t", 2))
    h.pipeline.start()
    for _ in range(500):
        if store.attempts:
            break
        await asyncio.sleep(0.01)
    assert store.attempts  # the write failed and is being retried
    h.tracker.forget({TP0})
    return store


async def test_a_write_retried_through_an_outage_stops_once_its_task_is_handed_over() -> None:
    h = Harness()
    store = await retrying_then_revoked(h)
    assert await h.pipeline.writer.settled({TP0}, timeout=10) is True  # its next try had nothing of its own to write
    refused = store.attempts
    store.down = False  # the store comes back only now
    await h.pipeline.settled()
    await h.pipeline.stop()
    assert task_ids_in(h) == {} and store.upserts == 0 and store.attempts == refused
    assert reported(h, "t") == [] and handed_over(h) == 1


async def test_other_partitions_tasks_in_the_same_write_are_written_and_reported() -> None:
    h = Harness()
    await h.send(batch("mine", 2))
    kept = h.tracker.add("tasks-1", 0)  # another partition, not revoked
    raw = b'{"task_id": "kept", "task_type": "batch_vectorization", "data": ["a", "b"]}'
    await h.pipeline.intake(raw, kept, ("tasks", 1, 0))
    h.tracker.forget({TP0})
    await h.drain()
    assert task_ids_in(h) == {"kept": 2} and reported(h, "kept") == ["kept", "completed"]
    assert reported(h, "mine") == [] and handed_over(h) == 1


async def test_a_delete_revoked_before_it_runs_leaves_the_vectors_to_the_new_owner() -> None:
    h = Harness()
    await h.send(batch("d", 2))
    await h.drain()
    await tombstone(h, b"d")
    h.tracker.forget({TP0})
    await settle(h)
    assert task_ids_in(h) == {"d": 2} and handed_over(h) == 1
    assert [s for s in h.statuses("d") if s == "completed"] == ["completed"]  # the first version's only
    assert set(h.store.collections["vectorize"]) == {vector_id("d", 0), vector_id("d", 1)}


class Writer:
    def __init__(self, answer: bool) -> None:
        self.answer, self.asked = answer, []

    async def settled(self, tps: Any, timeout: float) -> bool:
        self.asked.append((set(tps), timeout))
        return self.answer


@pytest.mark.parametrize("settles", [True, False])
async def test_a_rebalance_waits_for_the_revoked_tasks_writes_and_says_when_they_run_on(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, settles: bool
) -> None:
    worker, parts = build_worker(clean_env, tmp_path, kafka_handover_wait="7", kafka_session_timeout="30")
    topic = worker.settings.tasks_topic
    writer, tracker = Writer(settles), AckTracker()
    parts.intake._runtime = SimpleNamespace(tracker=tracker, pipeline=SimpleNamespace(writer=writer))  # type: ignore[assignment]
    await parts.intake.forget_revoked(worker.app, {TP(topic, 1)})
    assert writer.asked == []  # nothing in flight there: nothing to wait for
    ticket = tracker.add(TP(topic, 0), 5)
    with caplog.at_level(logging.WARNING, logger="worker"):
        await parts.intake.forget_revoked(worker.app, {TP(topic, 0), TP("another-topic", 0)})
    assert ticket.forgotten and writer.asked == [({TP(topic, 0)}, 7.0)]
    warned = "still run after 7s (kafka.handover_wait" in caplog.text
    assert warned is not settles
    worker.settings.kafka_session_timeout = 10.0  # half of it is less than kafka.handover_wait: half of it
    tracker.add(TP(topic, 0), 6)
    await parts.intake.forget_revoked(worker.app, {TP(topic, 0)})
    assert writer.asked[-1] == ({TP(topic, 0)}, 5.0)


async def test_a_migration_twin_is_handed_over_with_its_task() -> None:
    from tests.unit.test_dual_write import SHADOW, harness
    from tests.unit.test_dual_write import settle as settle_twins

    h = harness("dual_write")
    release = threading.Event()
    twin_model = h.embedders["model-b"]
    original = twin_model.embed_texts

    def held_back(texts: Any, **kw: Any) -> Any:
        release.wait(10)
        return original(texts, **kw)

    twin_model.embed_texts = held_back  # type: ignore[method-assign]
    h.pipeline.start()
    await h.send(batch("t1", 2))
    for _ in range(500):  # the task's live write is done; its twin waits for the other model
        if h.kafka.on("results"):
            break
        await asyncio.sleep(0.01)
    assert h.kafka.on("results")
    h.tracker.forget({TP0})  # the task's partition is revoked before its twin is written
    release.set()
    await settle_twins(h)
    assert task_ids_in(h) == {"t1": 2}  # the live write, done before
    assert not h.store.collections.get(SHADOW)  # the twin was not written after the revocation
    assert h.acked == [] and handed_over(h) == 1


async def test_a_task_failing_after_its_partition_was_revoked_is_dead_lettered_by_the_new_owner_only() -> None:
    h = Harness()
    await h.send({"task_id": "m", "task_type": "text_vectorization", "data": "x", "model_name": "missing-model"})
    h.tracker.forget({TP0})
    await h.drain()
    assert h.kafka.on("dlq") == [] and reported(h, "m") == [] and handed_over(h) == 1
    await h.send({"task_id": "m", "task_type": "text_vectorization", "data": "x", "model_name": "missing-model"})
    await h.drain()  # the partition's next owner: the one dead letter
    assert [r["task_id"] for r in h.kafka.on("dlq")] == ["m"] and "failed" in h.statuses("m")


def items(task_id: str, texts: list[str]) -> bytes:
    return json.dumps({"task_id": task_id, "task_type": "batch_vectorization", "data": texts}).encode()


async def test_a_task_revoked_mid_write_keeps_its_stored_records_while_the_others_lose_their_stale_ones() -> None:
    h = Harness(store_batch_points=1)  # one request per record: the revocation lands between two of them
    store = HeldStore()
    use_store(h, store)
    store.go.set()
    kept = [h.tracker.add("tasks-1", n) for n in range(2)]
    await h.send(items("old", ["a0", "a1", "a2"]))
    await h.pipeline.intake(items("kept", ["b0", "b1", "b2"]), kept[0], ("tasks", 1, 0))
    await h.drain()
    assert task_ids_in(h) == {"old": 3, "kept": 3}
    store.go.clear()
    store.entered.clear()
    # version 2 of both, one record fewer for "kept" (its third is stale) and two fewer for "old"
    await h.send(items("old", ["new a0"]))
    await h.pipeline.intake(items("kept", ["new b0", "new b1"]), kept[1], ("tasks", 1, 1))
    h.pipeline.start()
    assert await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, 10)  # one record under way
    h.tracker.forget({TP0})  # "old"'s partition is revoked between two requests of the same write
    store.go.set()
    await h.pipeline.settled()
    await h.pipeline.stop()
    stored = h.store.collections["vectorize"]
    old = {rid for rid, p in stored.items() if p.payload["task_id"] == "old"}
    assert old == {vector_id("old", i) for i in range(3)}  # none of its stored records deleted as stale
    texts = {p.payload["text"] for p in stored.values() if p.payload["task_id"] == "kept"}
    assert texts == {"new b0", "new b1"}  # the task of the other partition written whole, its stale record gone
    assert reported(h, "kept") == ["kept", "kept", "completed", "completed"] and reported(h, "old") == [
        "old",
        "completed",
    ]
    assert handed_over(h) == 1


async def test_a_write_that_found_only_handed_over_tasks_says_nothing_of_the_store() -> None:
    h = Harness()
    store = await retrying_then_revoked(h)
    assert await h.pipeline.writer.settled({TP0}, timeout=10) is True  # no attempt under way: at once
    for _ in range(500):  # the retry that finds nothing of its own to write
        if handed_over(h):
            break
        await asyncio.sleep(0.01)
    assert handed_over(h) == 1
    assert await h.pipeline.writer.answers(store, timeout=0.5) is False  # still down: not "written a moment ago"
    await h.pipeline.stop()
