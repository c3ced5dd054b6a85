"""Stores in sync with the source: an update replaces a task's vectors, a delete (task or tombstone) removes them,
in the order of the records of a task id."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from core.ids import vector_id
from engine.store_writer import DIGEST_INLINE, float32_bytes, with_digest
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


def unchanged(h: Harness) -> float:
    return h.pipeline.metrics.store_unchanged.labels("fake")._value.get()


async def test_a_task_sent_again_unchanged_is_not_written_again() -> None:
    h = Harness()
    await h.send({**batch("b", 3), "metadata": {"lang": "en"}})
    await h.drain()
    stored = {i: (p.payload, p.vector) for i, p in h.store.collections["vectorize"].items()}
    upserts = h.store.upserts
    await h.send({**batch("b", 3), "metadata": {"lang": "en"}})
    await h.drain()
    assert h.store.upserts == upserts  # nothing written: every record's digest was already there
    assert unchanged(h) == 3
    assert {i: (p.payload, p.vector) for i, p in h.store.collections["vectorize"].items()} == stored
    assert result(h, "b")["vector_ids"] == result(h, "b", 0)["vector_ids"]
    assert result(h, "b")["deleted"] is None


async def test_an_edited_batch_writes_only_the_records_that_changed() -> None:
    h = Harness()
    await h.send(batch("b", 4))
    await h.drain()
    edited = batch("b", 4)
    edited["data"][2] = "an edited text"
    await h.send(edited)
    await h.drain()
    assert h.store.upsert_sizes[-1] == 1  # only item 2
    assert unchanged(h) == 3
    assert h.store.collections["vectorize"][vector_id("b", 2)].payload["text"] == "an edited text"


async def test_changed_metadata_rewrites_every_record_of_the_task() -> None:
    h = Harness()
    await h.send({**batch("b", 2), "metadata": {"v": 1}})
    await h.drain()
    await h.send({**batch("b", 2), "metadata": {"v": 2}})
    await h.drain()
    assert h.store.upsert_sizes[-1] == 2
    assert {p.payload["metadata"]["v"] for p in h.store.collections["vectorize"].values()} == {2}


async def test_a_record_stored_without_a_digest_is_written_again() -> None:
    h = Harness()
    await h.send(batch("b", 2))
    await h.drain()
    for point in h.store.collections["vectorize"].values():  # as written before digests existed
        del point.payload["content_digest"]
    await h.send(batch("b", 2))
    await h.drain()
    assert h.store.upsert_sizes[-1] == 2
    assert all("content_digest" in p.payload for p in h.store.collections["vectorize"].values())


async def test_skip_unchanged_off_writes_every_record() -> None:
    h = Harness(skip_unchanged=False)
    await h.send(batch("b", 2))
    await h.drain()
    await h.send(batch("b", 2))
    await h.drain()
    assert h.store.upsert_sizes == [2, 2]
    assert unchanged(h) == 0


async def test_with_both_off_the_writer_makes_no_lookup() -> None:
    h = Harness(skip_unchanged=False, replace_stale=False)
    await h.send(batch("b", 2))
    await h.drain()
    assert h.store.lookups == 0 and h.store.upserts == 1


def test_the_digest_covers_vector_payload_and_filterable_values_but_not_who_wrote_it_or_when() -> None:
    from sinks.base import VectorRecord

    base = VectorRecord(
        id="x", vector=[0.25, -0.5], payload={"task_id": "t", "text": "a", "worker_id": "w1", "created_at": 1.0}
    )

    def digest(record: VectorRecord) -> str:
        return with_digest(record)[0].payload["content_digest"]

    same = replace(base, payload={**base.payload, "worker_id": "w2", "created_at": 2.0})
    assert digest(same) == digest(base)
    assert digest(replace(base, vector=[0.25, -0.4999])) != digest(base)
    assert digest(replace(base, payload={**base.payload, "text": "b"})) != digest(base)
    assert digest(replace(base, filterable={"lang": "en"})) != digest(base)
    record, weight = with_digest(base)
    assert record.payload["worker_id"] == "w1" and weight > 0  # the volatile keys are still written


def test_a_digest_is_the_one_earlier_versions_stored() -> None:
    """Stored digests stay valid across versions (else every record is written once more after an upgrade): this
    record's digest as the worker computed it before its vectors were packed by struct."""
    from sinks.base import VectorRecord

    record = VectorRecord(
        id="x",
        vector=[0.25, -0.5, 1 / 3, 1e-40, 3.0e38],
        payload={
            "task_id": "t",
            "text": "naïve café",
            "metadata": {"b": 1, "a": [1, 2]},
            "worker_id": "w1",
            "created_at": 1.0,
        },
        filterable={"lang": "en"},
    )
    assert with_digest(record)[0].payload["content_digest"] == "109b67d94cdc157703993452702d7dbf"


@given(st.lists(st.floats(width=64), max_size=64) | st.lists(st.floats(width=32), max_size=64))
def test_float32_bytes_are_numpys_for_any_list_of_floats(vector: list[float]) -> None:
    """Out of float32's range (numpy: infinite), NaN, subnormal, negative zero: the same bytes as numpy's."""
    with np.errstate(over="ignore"):  # numpy's "overflow encountered in cast" for values beyond float32's range
        expected = np.asarray(vector, dtype=np.float32).tobytes()
        assert float32_bytes(vector) == expected
        assert float32_bytes(tuple(vector)) == expected


async def test_a_large_write_is_digested_off_the_event_loop_and_skipped_alike() -> None:
    h = Harness()
    await h.send(batch("big", DIGEST_INLINE + 44))
    await h.drain()
    upserts = h.store.upserts
    await h.send(batch("big", DIGEST_INLINE + 44))
    await h.drain()
    assert h.store.upserts == upserts and unchanged(h) == DIGEST_INLINE + 44
