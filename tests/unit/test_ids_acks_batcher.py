from __future__ import annotations

import asyncio
import uuid

from core.ids import vector_id
from engine.acks import AckTracker, MissingOffsets
from engine.batcher import Batcher


def test_vector_ids_are_deterministic_uuids() -> None:
    assert vector_id("t1", 0) == vector_id("t1", 0)
    assert uuid.UUID(vector_id("t1", 0)).version == 5
    ids = {vector_id("t1", 0), vector_id("t1", 1), vector_id("t2", 0), vector_id("t1", 0, 1), vector_id("t1/0", 1)}
    assert len(ids) == 5


def test_acks_are_released_in_partition_order() -> None:
    tracker = AckTracker()
    a0, a1, a2 = (tracker.add("p0", offset) for offset in (10, 11, 12))
    b0 = tracker.add("p1", 5)
    assert tracker.complete(a1) == []  # head (10) still in flight
    assert tracker.complete(b0) == [b0]  # other partition is independent
    assert tracker.complete(a0) == [a0, a1]  # head done: releases 10 and 11
    assert tracker.in_flight() == 1
    assert tracker.complete(a2) == [a2]
    assert tracker.in_flight() == 0


def test_offsets_without_a_record_wait_for_the_records_before_them() -> None:
    # a transaction marker confirmed at 12 while record 11 is still being processed
    tracker = AckTracker()
    record = tracker.add("p0", 11)
    marker = tracker.add("p0", 12, MissingOffsets(12, 12))
    assert tracker.complete(marker) == []  # never acknowledged ahead of record 11 (faust#606)
    assert tracker.complete(record) == [record, marker]


def test_forget_drops_lost_partitions() -> None:
    tracker = AckTracker()
    tracker.add("p0", 1)
    tracker.add("p1", 1)
    assert tracker.forget({"p0"}) == 1
    assert tracker.in_flight() == 1


def test_forgotten_tickets_are_never_released_after_a_rebalance() -> None:
    tracker = AckTracker()
    old = [tracker.add("p0", offset) for offset in (22, 23)]  # in flight when p0 was revoked
    tracker.forget({"p0"})
    new = tracker.add("p0", 21)  # re-read from the committed offset
    assert tracker.complete(old[0]) == [] and tracker.complete(old[1]) == []
    assert tracker.complete(new) == [new]  # 22 and 23 come again behind 21


async def test_batcher_respects_weight_and_keeps_order() -> None:
    batcher: Batcher[tuple[str, int]] = Batcher(weight=lambda item: item[1])
    for item in [("a", 2), ("b", 2), ("c", 2), ("d", 1)]:
        await batcher.put(item)
    first = await batcher.next_batch(max_weight=4, max_wait=0.01)
    second = await batcher.next_batch(max_weight=4, max_wait=0.01)
    assert [x[0] for x in first] == ["a", "b"]
    assert [x[0] for x in second] == ["c", "d"]


async def test_lone_item_is_released_after_the_wait() -> None:
    batcher: Batcher[int] = Batcher()
    await batcher.put(1)
    batch = await asyncio.wait_for(batcher.next_batch(max_weight=100, max_wait=0.05), timeout=5)
    assert batch == [1]


async def test_late_items_join_within_the_wait_and_none_are_lost() -> None:
    batcher: Batcher[int] = Batcher(maxsize=3)

    async def produce() -> None:
        for i in range(10):
            await batcher.put(i)
            await asyncio.sleep(0.001)

    producer = asyncio.create_task(produce())
    seen: list[int] = []
    while len(seen) < 10:
        seen.extend(await batcher.next_batch(max_weight=4, max_wait=0.02))
    await producer
    assert seen == list(range(10))
