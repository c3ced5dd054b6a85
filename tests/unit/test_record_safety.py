"""One record can fail only itself: hostile payloads become that task's error, bounded and delivered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.errors import MAX_ERROR_CHARS, InvalidTaskError
from engine.store_writer import record_bytes, split_records
from sinks.base import VectorRecord
from tasks.records import ErrorInfo, to_bytes
from tasks.schema import Limits, parse_task
from tests.unit.test_pipeline import Harness

TEXT = {"task_type": "text_vectorization", "data": "hello"}


def _invalid(raw: bytes | str, limits: Limits | None = None) -> InvalidTaskError:
    with pytest.raises(InvalidTaskError) as info:
        parse_task(raw, limits=limits)
    return info.value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Python refuses to read integers of more than 4,300 digits (a ValueError, not a JSONDecodeError)
        ('{"task_type": "batch_vectorization", "data": ["a"], "batch_size": ' + "9" * 5000 + "}", "ordinary size"),
        ('{"task_type": "text_vectorization", "data": "a", "metadata": {"n": ' + "1" * 5000 + "}}", "ordinary size"),
        ('{"task_type": "text_vectorization", "data": "a", "metadata": {"x": NaN}}', "NaN is not a JSON number"),
        ('{"task_type": "text_vectorization", "data": "a", "metadata": {"x": -Infinity}}', "not a JSON number"),
        ('{"task_type": "text_vectorization", "data": "a", "metadata": {"x": "\\ud800"}}', "field 'metadata.x'"),
        ('{"task_type": "text_vectorization", "data": "a", "metadata": {"\\udfff": 1}}', "lone UTF-16 surrogate"),
        ('{"task_type": "document_vectorization", "data": {"title": "\\ud800", "content": "c"}}', "data.title"),
        ('{"task_type": "text_vectorization", "data": "a\\udc00b"}', "field 'data'"),
        ('{"task_type": ["text_vectorization"], "data": "a"}', "'task_type' must be a string"),
    ],
)
def test_hostile_values_are_the_tasks_own_error(raw: str, expected: str) -> None:
    error = _invalid(raw.encode())
    assert expected in str(error)
    # the message itself travels in records: valid UTF-8, bounded
    str(error).encode("utf-8")
    assert len(str(error)) <= MAX_ERROR_CHARS


def test_paired_surrogate_escapes_are_ordinary_text() -> None:
    task = parse_task(b'{"task_type": "text_vectorization", "data": "smile \\ud83d\\ude00"}')
    assert task.data == "smile \N{GRINNING FACE}"


def test_a_task_id_that_cannot_be_a_key_is_not_reused() -> None:
    raw = json.dumps({"task_type": "text_vectorization", "data": 1, "task_id": "a\nb"}).encode()
    assert _invalid(raw).task_id is None  # the pipeline falls back to invalid-<topic>-<partition>-<offset>


def test_ten_thousand_bad_items_give_one_bounded_message() -> None:
    raw = json.dumps({"task_type": "batch_vectorization", "data": list(range(10_000))}).encode()
    message = str(_invalid(raw))
    assert len(message) <= MAX_ERROR_CHARS
    assert "field 'data.0': Input should be a valid string" in message
    assert "and 9990 more error(s)" in message


@pytest.mark.parametrize(
    ("metadata", "limits", "expected"),
    [
        ({"blob": "x" * 20_000}, Limits(), "over the limit of 16384 (VECTORIZE_WORKER_MAX_METADATA_BYTES"),
        ({f"k{i}": i for i in range(300)}, Limits(), "300 keys, over the limit of 256"),
        ({"a": {"b": {"c": 1}}}, Limits(max_metadata_depth=2), "nested 3 levels deep"),
        ({"a": [{"b": 1}, {"c": 2}]}, Limits(max_metadata_keys=2), "3 keys, over the limit of 2"),
    ],
)
def test_metadata_is_bounded(metadata: dict[str, Any], limits: Limits, expected: str) -> None:
    raw = json.dumps({**TEXT, "task_id": "meta", "metadata": metadata}).encode()
    error = _invalid(raw, limits)
    assert expected in str(error) and error.task_id == "meta"


def test_metadata_within_the_limits_passes() -> None:
    metadata = {"lang": "en", "tags": ["a", "b"], "nested": {"n": 1.5, "ok": True, "none": None}}
    assert parse_task(json.dumps({**TEXT, "metadata": metadata}).encode()).metadata == metadata


def test_title_is_bounded() -> None:
    doc = {"task_type": "document_vectorization", "data": {"title": "t" * 1001, "content": "c"}}
    assert "'data.title' is 1001 characters, over the limit of 1000" in str(_invalid(json.dumps(doc).encode()))


def test_error_info_is_capped_and_valid_utf8() -> None:
    info = ErrorInfo.of(ValueError("bad \ud800 " + "x" * 10_000))
    assert len(info.message) <= MAX_ERROR_CHARS and "characters cut" in info.message
    info.message.encode("utf-8")
    assert json.loads(to_bytes(info))["kind"] == "internal"


def test_store_requests_are_split_by_points_and_bytes() -> None:
    records = [VectorRecord(id=str(i), vector=[0.0] * 8, payload={"text": "x" * 1000}) for i in range(10)]
    weight = record_bytes(records[0])
    assert weight > 1000
    by_points = split_records(records, max_points=4, max_bytes=1 << 30)
    assert [len(p) for p in by_points] == [4, 4, 2]
    by_bytes = split_records(records, max_points=1000, max_bytes=3 * weight)
    assert [len(p) for p in by_bytes] == [3, 3, 3, 1]
    assert [r.id for p in by_bytes for r in p] == [str(i) for i in range(10)]  # order kept
    assert [len(p) for p in split_records(records[:2], max_points=10, max_bytes=1)] == [1, 1]  # alone if too big


async def test_a_large_valid_task_is_stored_in_several_requests() -> None:
    h = Harness(store_batch_points=7)
    await h.send({"task_type": "batch_vectorization", "data": [f"text {i}" for i in range(50)], "task_id": "big"})
    await h.drain()
    assert h.statuses("big") == ["received", "processing", "completed"]
    assert h.store.count("vectorize") == 50
    assert h.store.upsert_sizes == [7] * 7 + [1]


async def test_an_unexpected_exception_while_reading_a_record_fails_that_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.pipeline

    def broken(raw: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug in the validator")

    h = Harness()
    monkeypatch.setattr(engine.pipeline, "parse_task", broken)
    await h.send(TEXT)
    monkeypatch.undo()
    await h.send({**TEXT, "task_id": "after"})
    await h.drain()
    assert h.acked == [0, 1]
    [dead] = h.kafka.on("dlq")
    assert "could not read the record (KeyError" in dead["error"]["message"]
    assert h.statuses("after") == ["received", "processing", "completed"]


async def test_records_the_broker_refuses_shrink_to_a_minimal_dead_letter() -> None:
    h = Harness()
    h.kafka.max_bytes = 2000  # the broker refuses anything larger, for good
    raw = json.dumps({"task_type": "batch_vectorization", "data": [{"n": i} for i in range(5000)]})
    await h.send(raw.encode())
    assert h.acked == [0]
    assert h.kafka.refused >= 2  # the full set and the one with the payload cut to 4 KiB
    [dead] = h.kafka.on("dlq")
    assert dead["payload"] == "" and dead["source"] == {"topic": "tasks", "partition": 0, "offset": 0}
    assert dead["error"]["error_class"] == "InvalidTaskError" and len(dead["error"]["message"]) <= 512
    assert h.statuses("invalid-tasks-0-0") == ["failed"]
    await h.send({**TEXT, "task_id": "next"})  # the worker goes on
    await h.drain()
    assert h.statuses("next") == ["received", "processing", "completed"]


async def test_records_refused_even_when_minimal_still_finish_the_task() -> None:
    h = Harness()
    h.kafka.max_bytes = 10
    await h.send(b"{not json")
    assert h.acked == [0] and h.kafka.on("dlq") == [] and h.pipeline.failed == 1


async def test_in_flight_bytes_bound_intake() -> None:
    h = Harness(max_inflight_bytes=1024)
    await h.send({**TEXT, "data": "x" * 900, "task_id": "first"})
    assert h.pipeline._bytes.held > 900
    waiting = asyncio.ensure_future(h.send({**TEXT, "data": "y" * 900, "task_id": "second"}))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # intake waits: the first record holds the budget
    await h.drain()
    await waiting
    await h.drain()
    assert h.statuses("second") == ["received", "processing", "completed"]
    assert h.pipeline._bytes.held == 0


def test_a_record_holding_a_lone_surrogate_is_still_written_as_valid_json() -> None:
    # pydantic-core's serializer refuses a lone surrogate; to_bytes falls back to escaped ASCII JSON
    from tasks.records import StatusRecord

    odd = StatusRecord(task_id="t", status="failed", worker_id="w-\ud800-é", task_type="text_vectorization")
    raw = to_bytes(odd)
    raw.decode("ascii")  # escaped: no byte UTF-8 could not carry
    assert json.loads(raw) == odd.model_dump(mode="json")
    plain = StatusRecord(task_id="t", status="completed", worker_id="w-é", task_type="text_vectorization")
    assert "é" in to_bytes(plain).decode("utf-8")  # ordinary text stays UTF-8, not escaped
    assert json.loads(to_bytes(plain)) == plain.model_dump(mode="json")
