"""Stores in sync with the source: an update replaces a task's vectors, a delete (task or tombstone) removes them,
in the order of the records of a task id."""

from __future__ import annotations

import asyncio
from typing import Any

from core.ids import vector_id
from tests.unit.test_pipeline import Harness


def batch(task_id: str, n: int) -> dict[str, Any]:
    return {"task_type": "batch_vectorization", "data": [f"text {i}" for i in range(n)], "task_id": task_id}


def task_ids_in(h: Harness, collection: str = "vectorize") -> dict[str, int]:
    counts: dict[str, int] = {}
    for point in h.store.collections.get(collection, {}).values():
        counts[point.payload["task_id"]] = counts.get(point.payload["task_id"], 0) + 1
    return counts


def result(h: Harness, task_id: str, n: int = -1) -> dict[str, Any]:
    return [r for r in h.kafka.on("results") if r["task_id"] == task_id][n]


async def tombstone(h: Harness, key: bytes) -> None:
    ticket = h.tracker.add("tasks-0", h.offset)
    await h.pipeline.intake(None, ticket, ("tasks", 0, h.offset), key=key)
    h.offset += 1


async def settle(h: Harness) -> None:
    await h.drain()
    for _ in range(100):  # deletes run beside the lanes
        if not h.pipeline._deletes:
            return
        await asyncio.sleep(0.01)


async def test_a_shrunk_batch_leaves_only_the_new_vectors() -> None:
    h = Harness()
    await h.send(batch("b", 5))
    await h.send({**batch("other", 2)})
    await h.drain()
    await h.send(batch("b", 2))
    await h.drain()
    assert task_ids_in(h) == {"b": 2, "other": 2}
    assert set(h.store.collections["vectorize"]) >= {vector_id("b", 0), vector_id("b", 1)}
    assert result(h, "b")["deleted"] == {"fake": 3}
    assert result(h, "b", 0)["deleted"] is None  # the first version removed nothing


async def test_a_shrunk_document_loses_its_old_chunks() -> None:
    h = Harness(chunk_tokens=8, chunk_overlap_tokens=0)
    long = " ".join(f"w{i}" for i in range(60))
    await h.send({"task_type": "document_vectorization", "data": {"content": long}, "task_id": "d"})
    await h.drain()
    before = task_ids_in(h)["d"]
    await h.send({"task_type": "document_vectorization", "data": {"content": "w1 w2"}, "task_id": "d"})
    await h.drain()
    after = result(h, "d")
    assert task_ids_in(h)["d"] == after["count"] < before
    assert after["deleted"] == {"fake": before - after["count"]}


async def test_replace_stale_off_keeps_the_old_vectors() -> None:
    h = Harness(replace_stale=False)
    await h.send(batch("b", 4))
    await h.drain()
    await h.send(batch("b", 1))
    await h.drain()
    assert task_ids_in(h) == {"b": 4}


async def test_delete_task_and_tombstone_remove_every_vector_and_say_how_many() -> None:
    h = Harness()
    await h.send(batch("x", 3))
    await h.send(batch("y", 2))
    await h.drain()
    await h.send({"task_type": "delete", "task_id": "x"})
    await tombstone(h, b"y")
    await h.send({"task_type": "delete", "task_id": "never-sent"})
    await settle(h)
    assert task_ids_in(h) == {}
    assert result(h, "x")["deleted"] == {"fake": 3} and result(h, "x")["status"] == "completed"
    assert result(h, "y")["deleted"] == {"fake": 2} and result(h, "y")["task_type"] == "delete"
    assert result(h, "never-sent")["deleted"] == {"fake": 0}
    assert h.statuses("x")[-1] == "completed" and h.acked == [0, 1, 2, 3, 4]


async def test_a_delete_after_an_update_of_the_same_key_wins() -> None:
    h = Harness()
    await h.send(batch("k", 2))  # queued in the text lane, not stored yet
    await h.send({"task_type": "delete", "task_id": "k"})
    await asyncio.sleep(0.05)
    assert h.pipeline._deletes  # the delete waits for the update before it
    await settle(h)
    assert task_ids_in(h) == {} and result(h, "k")["deleted"] == {"fake": 2}
    assert h.acked == [0, 1]


async def test_an_update_after_a_delete_of_the_same_key_is_kept() -> None:
    h = Harness()
    await h.send(batch("k", 2))
    await h.drain()
    await h.send({"task_type": "delete", "task_id": "k"})
    await h.send(batch("k", 1))  # waits for the delete before it
    await settle(h)
    assert task_ids_in(h) == {"k": 1}


async def test_bad_deletes_fail_alone() -> None:
    h = Harness()
    await h.send({"task_type": "delete"})
    await h.send({"task_type": "delete", "task_id": "z", "metadata": {}})
    await tombstone(h, b"\xff\xfe")
    await h.send(batch("fine", 1))
    await settle(h)
    errors = [d["error"]["message"] for d in h.kafka.on("dlq")]
    assert len(errors) == 3
    assert "field 'task_id': Field required" in errors[0]
    assert "field 'metadata': unknown field" in errors[1]
    assert "tombstone" in errors[2] and "is not a task id" in errors[2]
    assert h.statuses("fine")[-1] == "completed"
