"""The pipeline with fakes at its ports: what each task produces and when it is acknowledged."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import KafkaError

from core.errors import StoreRejectedError
from core.ids import vector_id
from core.settings import Settings
from engine.acks import AckTracker, Ticket
from engine.pipeline import TaskPipeline
from engine.publisher import SEND_ERRORS, RecordPublisher
from engine.work import WorkItem
from models.manager import ModelManager
from tasks.schema import parse_task
from tests.fakes import FakeEmbedder, FakeKafka, FakeStore, unavailable

# every setting at its default (new settings reach these tests by themselves), then the test values
SETTINGS = SimpleNamespace(
    **{name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()}
    | dict(
        worker_id="w-test",
        max_task_bytes=1 << 20,
        max_concurrent_tasks=100,
        max_inflight_texts=4096,
        max_batch_tokens=16384,
        max_batch_size=64,
        default_batch_size=32,
        batch_wait_ms=1,
        task_timeout=1800,
        default_model="fake-model",
        default_collection="vectorize",
        include_vectors=False,
        long_text="reject",
        default_image_model="fake-image-model",
        images_allowed_roots=[],
        images_allow_urls=False,
        images_allow_private_urls=False,
        images_max_bytes=1 << 20,
        images_max_pixels=4_000_000,
        images_url_timeout=5.0,
        images_batch_size=16,
        chunk_tokens=None,
        chunk_overlap_tokens=4,
        document_vector="mean",
        status_delay_ms=0,  # every status as it happens: the delay has its own tests below
    )
)


class Harness:
    def __init__(self, *, parallel_calls: int = 1, **overrides: Any) -> None:
        self.settings = SimpleNamespace(**{**vars(SETTINGS), **overrides})
        self.kafka = FakeKafka()
        self.store = FakeStore()
        self.embedders: dict[str, FakeEmbedder] = {}
        self.manager = ModelManager(self._load, max_loaded=2, warmup=False, parallel_calls=parallel_calls)
        self.tracker = AckTracker()
        self.acked: list[int] = []
        #: what the status hook saw (ops/task_status.py in the worker): (task id, status, timestamp, record)
        self.tracked: list[tuple[str, str, float, bytes]] = []
        publisher = RecordPublisher(
            self.kafka.send,
            worker_id="w-test",
            status_topic="status",
            results_topic="results",
            dlq_topic="dlq",
            errors=(*SEND_ERRORS, KafkaError),  # as the worker's Faust producer (app/runtime.py)
            on_status=lambda *seen: self.tracked.append(seen),
        )
        self.pipeline = TaskPipeline(
            settings=self.settings, manager=self.manager, stores=[self.store], publisher=publisher, on_done=self._done
        )
        self.offset = 0

    def _load(self, name: str) -> FakeEmbedder:
        if name == "missing-model":
            from core.errors import ModelLoadError

            raise ModelLoadError("Failed to load model missing-model: not found in local path 'missing-model'")
        return self.embedders.setdefault(name, FakeEmbedder(name))

    async def _done(self, ticket: Ticket) -> None:
        self.acked.extend(t.offset for t in self.tracker.complete(ticket))

    async def send(self, payload: Any) -> Ticket:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ticket = self.tracker.add("tasks-0", self.offset)
        await self.pipeline.intake(raw, ticket, ("tasks", 0, self.offset))
        self.offset += 1
        return ticket

    async def drain(self) -> None:
        """Run the lanes (the production path) until every task taken in has left them, then stop them."""
        self.pipeline.start()
        await self.pipeline.settled()
        await self.pipeline.stop()

    def statuses(self, task_id: str) -> list[str]:
        return [r["status"] for r in self.kafka.on("status") if r["task_id"] == task_id]


async def test_text_batch_and_document_tasks_complete_in_one_model_batch() -> None:
    h = Harness()
    await h.send({"task_type": "text_vectorization", "data": "hello", "task_id": "t1", "metadata": {"k": "v"}})
    await h.send({"task_type": "batch_vectorization", "data": ["a", "b", "c"], "task_id": "t2"})
    await h.send({"task_type": "document_vectorization", "data": {"title": "T", "content": "C"}, "task_id": "t3"})
    assert h.acked == []  # nothing acked before it is stored
    await h.drain()
    assert h.acked == [0, 1, 2]
    # one model call for the three tasks, longest first (less padding); the document's content is chunked
    assert h.embedders["fake-model"].calls == [["hello", "a", "b", "c", "C"]]
    for task_id in ("t1", "t2", "t3"):
        assert h.statuses(task_id) == ["received", "processing", "completed"]
    results = {r["task_id"]: r for r in h.kafka.on("results")}
    assert results["t2"]["vector_ids"] == [vector_id("t2", i) for i in range(3)]
    assert results["t2"]["dimension"] == 8 and results["t2"]["count"] == 3 and results["t2"]["vectors"] is None
    stored = h.store.retrieve("vectorize", [vector_id("t1", 0)])[0]
    assert stored.payload["text"] == "hello" and stored.payload["metadata"] == {"k": "v"}
    expected = h.embedders["fake-model"].embed_texts(["hello"], batch_size=1, normalize=None)[0]
    assert np.allclose(stored.vector, expected)
    assert h.store.retrieve("vectorize", [vector_id("t3", 0)])[0].payload["title"] == "T"
    assert h.kafka.on("dlq") == []


async def test_the_status_hook_sees_every_status_record_as_sent() -> None:
    h = Harness()
    await h.send({"task_type": "text_vectorization", "data": "hello", "task_id": "ok"})
    await h.send(b"{not json")  # a failed task's status goes the same way
    await h.drain()
    sent = h.kafka.on("status")
    assert [json.loads(record) for _, _, _, record in h.tracked] == sent
    assert [(task_id, status) for task_id, status, _, _ in h.tracked] == [(r["task_id"], r["status"]) for r in sent]
    assert [timestamp for _, _, timestamp, _ in h.tracked] == [r["timestamp"] for r in sent]
    assert ("ok", "completed") in [(r["task_id"], r["status"]) for r in sent]
    assert any(r["status"] == "failed" for r in sent)


async def test_redelivered_task_overwrites_instead_of_duplicating() -> None:
    h = Harness()
    task = {"task_type": "batch_vectorization", "data": ["x", "y"], "task_id": "dup"}
    await h.send(task)
    await h.drain()
    await h.send(task)
    await h.drain()
    assert h.store.count("vectorize") == 2


async def test_malformed_payload_fails_with_dead_letter_and_is_acked() -> None:
    h = Harness()
    await h.send(b"{not json")
    assert h.acked == [0]
    [dead] = h.kafka.on("dlq")
    assert dead["payload"] == "{not json" and dead["error"]["error_class"] == "InvalidTaskError"
    assert dead["source"] == {"topic": "tasks", "partition": 0, "offset": 0}
    assert h.statuses("invalid-tasks-0-0") == ["failed"]
    [result] = h.kafka.on("results")
    assert result["status"] == "failed" and "not valid JSON" in result["error"]["message"]


async def test_binary_payload_is_dead_lettered_as_base64() -> None:
    h = Harness()
    await h.send(b"\xff\x00\xfe")
    [dead] = h.kafka.on("dlq")
    assert dead["payload_encoding"] == "base64" and dead["payload"] == "/wD+"


async def test_image_path_without_allowed_roots_fails_clearly() -> None:
    h = Harness()
    await h.send(
        {"task_type": "image_vectorization", "data": "/path/to/image.jpg", "model_name": "ViT-B/32", "task_id": "img"}
    )
    await h.drain()
    assert h.statuses("img") == ["received", "processing", "failed"]
    message = h.kafka.on("dlq")[0]["error"]["message"]
    assert (
        message.startswith("Task img: image input path '/path/to/image.jpg' refused")
        and "images_allowed_roots" in message
    )
    assert h.acked == [0] and "ViT-B/32" not in h.embedders  # refused before the model was asked for


async def test_unknown_model_fails_only_its_task() -> None:
    h = Harness()
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "bad", "model_name": "missing-model"})
    await h.send({"task_type": "text_vectorization", "data": "b", "task_id": "good"})
    await h.drain()
    assert h.statuses("bad")[-1] == "failed" and h.statuses("good")[-1] == "completed"
    assert "Failed to load model missing-model" in h.kafka.on("dlq")[0]["error"]["message"]
    assert h.acked == [0, 1]


async def test_store_outage_is_retried_and_ack_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.retry

    monkeypatch.setattr(core.retry, "backoff_delay", lambda attempt, **_: 0.0)
    h = Harness()
    h.store.fail_next = [unavailable(), unavailable(), unavailable()]
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "t"})
    await h.drain()
    assert h.statuses("t")[-1] == "completed" and h.store.count("vectorize") == 1
    assert h.kafka.on("dlq") == [] and h.acked == [0]


async def test_dimension_mismatch_is_permanent() -> None:
    h = Harness()
    h.store.dims["vectorize"] = 3
    h.store.collections["vectorize"] = {}
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "t"})
    await h.drain()
    assert h.statuses("t")[-1] == "failed"
    assert h.kafka.on("dlq")[0]["error"]["error_class"] == StoreRejectedError.__name__


async def test_failed_delivery_is_retried_before_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.retry

    monkeypatch.setattr(core.retry, "backoff_delay", lambda attempt, **_: 0.0)
    h = Harness()
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "t"})
    h.kafka.fail_next = 1
    await h.drain()
    assert h.statuses("t")[-1] == "completed" and h.acked == [0]


async def test_terminal_status_updates_send_only_the_final_status() -> None:
    h = Harness(status_updates="terminal")
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "ok"})
    await h.send({"task_type": "text_vectorization", "data": "b", "task_id": "bad", "model_name": "missing-model"})
    await h.drain()
    assert h.statuses("ok") == ["completed"] and h.statuses("bad") == ["failed"]
    assert h.acked == [0, 1] and [r["task_id"] for r in h.kafka.on("dlq")] == ["bad"]


async def test_a_task_done_within_the_status_delay_gets_only_its_final_status() -> None:
    h = Harness(status_delay_ms=60_000)
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "ok"})
    await h.send({"task_type": "text_vectorization", "data": "b", "task_id": "bad", "model_name": "missing-model"})
    await h.drain()
    assert h.statuses("ok") == ["completed"] and h.statuses("bad") == ["failed"]
    assert h.acked == [0, 1]
    await asyncio.sleep(0)
    assert not [r for r in h.kafka.on("status") if r["status"] in ("received", "processing")]


class SlowEmbedder(FakeEmbedder):
    def embed_texts(self, texts: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # the model's thread, not the event loop
        return super().embed_texts(texts, **kwargs)


async def test_a_task_still_unfinished_after_the_status_delay_gets_every_status_in_order() -> None:
    class Slow(Harness):
        def _load(self, name: str) -> FakeEmbedder:
            return self.embedders.setdefault(name, SlowEmbedder(name))

    h = Slow(status_delay_ms=50)
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "slow"})
    await h.drain()
    assert h.statuses("slow") == ["received", "processing", "completed"]
    assert h.acked == [0]


async def test_the_status_delay_counts_from_intake_and_a_status_after_it_goes_out_at_once() -> None:
    h = Harness(status_delay_ms=20)
    ticket = await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "t"})
    assert h.statuses("t") == []  # received is held back
    await asyncio.sleep(0.1)  # the lanes are not running: the task waits past the delay
    assert h.statuses("t") == ["received"]
    await h.drain()  # processing now goes out as it happens, before completed
    assert h.statuses("t") == ["received", "processing", "completed"] and ticket.done


async def until(condition: Any, limit: float = 30.0) -> None:
    """Wait until ``condition()`` holds (polled; ``limit`` only bounds a failing test)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def held_item(h: Harness, task_id: str) -> WorkItem:
    task = parse_task(json.dumps({"task_type": "text_vectorization", "data": "a", "task_id": task_id}).encode())
    return WorkItem(task=task, raw=b"{}", ticket=h.tracker.add("tasks-0", 0), source=("tasks", 0, 0))


async def test_a_status_held_while_the_held_ones_wait_for_the_broker_is_sent_after_them() -> None:
    h = Harness(status_delay_ms=10)
    reporter = h.pipeline.reporter
    item = held_item(h, "t")
    h.kafka.hold = True  # the broker confirms nothing yet
    await reporter.early_status(item, "received")
    await until(lambda: h.statuses("t") == ["received"])  # the sweep queued it and waits for the broker
    await reporter.early_status(item, "processing")  # held behind it
    h.kafka.release()
    assert item.status_sender is not None
    await item.status_sender
    assert h.statuses("t") == ["received", "processing"]


async def test_a_task_failed_while_its_held_status_is_being_queued_fails_after_it() -> None:
    h = Harness(status_delay_ms=10)
    reporter = h.pipeline.reporter
    item = held_item(h, "t")
    h.kafka.gate = asyncio.Event()  # the producer does not take the `received` status yet
    h.kafka.gated = lambda topic, value: value.get("status") == "received"
    await reporter.early_status(item, "received")
    await until(lambda: item.status_sender is not None)  # the sweep is queueing `received`
    failing = asyncio.ensure_future(h.pipeline.text.steps.fail([item], RuntimeError("a bug in a stage")))
    await asyncio.sleep(0.05)
    h.kafka.gate.set()
    await failing
    assert h.statuses("t") == ["received", "failed"]  # never an early status after the final one
    assert [r["task_id"] for r in h.kafka.on("dlq")] == ["t"] and item.ticket.failed


async def test_a_task_whose_first_status_comes_after_the_delay_gets_it_at_once() -> None:
    # e.g. it waited for an earlier version of itself: it does not queue behind the sweep
    h = Harness(status_delay_ms=10_000)
    item = held_item(h, "late")
    item.received_at -= 20.0
    await h.pipeline.reporter.early_status(item, "received")
    assert h.statuses("late") == ["received"] and item.statuses_due


async def test_statuses_held_when_the_lanes_stop_go_out_when_they_start_again() -> None:
    h = Harness(status_delay_ms=10)
    reporter = h.pipeline.reporter
    item = held_item(h, "t")
    await reporter.early_status(item, "received")
    await h.pipeline.stop()
    await asyncio.sleep(0.05)  # past the delay, no sweep
    assert h.statuses("t") == [] and item.held_statuses == ["received"]
    h.pipeline.start()
    await until(lambda: h.statuses("t") == ["received"])
    await h.pipeline.stop()


async def test_expired_task_is_failed_not_embedded() -> None:
    h = Harness(task_timeout=0.000001)
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "old"})
    await h.drain()
    assert h.statuses("old") == ["received", "failed"]
    assert "task_timeout" in h.kafka.on("dlq")[0]["error"]["message"]
    assert h.embedders == {}


async def test_collections_and_include_vectors() -> None:
    h = Harness(include_vectors=True)
    await h.send(
        {"task_type": "text_vectorization", "data": "a", "task_id": "t", "collection": "Other", "normalize": True}
    )
    await h.drain()
    [result] = h.kafka.on("results")
    assert result["collection"] == "Other" and h.store.count("Other") == 1
    assert abs(float(np.linalg.norm(result["vectors"][0])) - 1.0) < 1e-5


async def test_oversized_payload_dead_letter_is_truncated_but_points_at_the_original() -> None:
    h = Harness(max_task_bytes=1024)
    await h.send(b"z" * (2 * 1024 * 1024))
    [dead] = h.kafka.on("dlq")
    assert dead["payload_truncated"] and dead["payload_bytes"] == 2 * 1024 * 1024
    assert len(dead["payload"]) == RecordPublisher.DLQ_PAYLOAD_LIMIT
    assert dead["source"] == {"topic": "tasks", "partition": 0, "offset": 0}
    assert h.acked == [0]


async def test_metrics_follow_the_work() -> None:
    h = Harness()
    await h.send({"task_type": "batch_vectorization", "data": ["a", "b"], "task_id": "m1"})
    await h.send(b"bad")
    await h.drain()
    sample = h.pipeline.metrics.registry.get_sample_value
    assert sample("worker_tasks_processed_total", {"task_type": "batch_vectorization", "status": "completed"}) == 1
    assert sample("worker_tasks_processed_total", {"task_type": "invalid", "status": "failed"}) == 1
    assert sample("worker_batch_size_sum") == 2
    assert sample("worker_errors_total", {"kind": "invalid_task"}) == 1
    assert sample("worker_store_write_seconds_count", {"store": "fake"}) == 1
    assert h.pipeline.recent_failures[0]["task_id"] == "invalid-tasks-0-1"


async def test_max_concurrent_tasks_bounds_unfinished_records() -> None:
    import asyncio

    h = Harness(max_concurrent_tasks=2)
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "c1"})
    await h.send({"task_type": "text_vectorization", "data": "b", "task_id": "c2"})
    third = asyncio.ensure_future(h.send({"task_type": "text_vectorization", "data": "c", "task_id": "c3"}))
    await asyncio.sleep(0.05)
    assert not third.done()  # two unfinished: the third waits at intake
    await h.drain()  # c1 and c2 finish and free their slots
    await asyncio.wait_for(third, timeout=5)
    await h.drain()
    assert h.statuses("c3")[-1] == "completed" and h.acked == [0, 1, 2]


async def test_a_bug_in_a_batch_fails_its_tasks_instead_of_stalling_commits() -> None:
    h = Harness()

    class Broken(FakeEmbedder):
        def embed_texts(self, texts, *, batch_size, normalize):  # type: ignore[override]
            return super().embed_texts(texts, batch_size=batch_size, normalize=normalize)[:-1]  # one row short

    h.embedders["fake-model"] = Broken("fake-model")
    await h.send({"task_type": "batch_vectorization", "data": ["a", "b"], "task_id": "bug"})
    await h.drain()  # the lane catches the bug and fails the call's tasks
    assert h.statuses("bug")[-1] == "failed" and h.acked == [0]
    assert h.pipeline.metrics.registry.get_sample_value("worker_errors_total", {"kind": "internal"}) >= 1


async def test_a_result_record_kafka_refuses_fails_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    h = Harness(include_vectors=True)
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "big"})
    original = h.kafka.send

    async def refuse_results(topic: str, key: bytes | None, value: bytes):  # type: ignore[no-untyped-def]
        if topic == "results" and b'"completed"' in value:
            import asyncio

            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(MessageSizeTooLargeError("too large"))
            return fut
        return await original(topic, key, value)

    h.pipeline.publisher._send = refuse_results
    await h.drain()
    assert h.statuses("big")[-1] == "failed" and h.acked == [0]
    assert "include_vectors" in h.kafka.on("dlq")[0]["error"]["message"]


async def test_drain_waits_for_the_batch_in_flight() -> None:
    import asyncio
    import threading

    h = Harness()
    gate = threading.Event()

    def slow_embed(*args: Any, **kwargs: Any) -> Any:  # runs on the device thread
        gate.wait(10)
        return FakeEmbedder("fake-model").embed_texts(["x"], batch_size=1, normalize=None), FakeEmbedder().info

    h.manager.embed_texts_sync = slow_embed  # type: ignore[method-assign]
    lane = asyncio.ensure_future(h.pipeline.run_lanes())
    await h.send({"task_type": "text_vectorization", "data": "x", "task_id": "inflight"})
    await asyncio.sleep(0.05)
    drained = asyncio.ensure_future(h.pipeline.drain(timeout=5))
    await asyncio.sleep(0.05)
    assert not drained.done()  # the batch is still embedding
    gate.set()
    assert await drained is True
    assert h.statuses("inflight")[-1] == "completed" and h.acked == [0]
    lane.cancel()


async def test_several_stores_are_written_in_parallel_and_retried_separately(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.retry

    monkeypatch.setattr(core.retry, "backoff_delay", lambda attempt, **_: 0.0)
    h = Harness()
    flaky = FakeStore()
    flaky.name = "flaky"
    flaky.fail_next = [unavailable(), unavailable()]
    h.pipeline.stores.append(flaky)
    from concurrent.futures import ThreadPoolExecutor

    h.pipeline.writer._executors[id(flaky)] = ThreadPoolExecutor(1)
    await h.send({"task_type": "batch_vectorization", "data": ["a", "b"], "task_id": "multi"})
    await h.drain()
    assert h.store.count("vectorize") == 2 and flaky.count("vectorize") == 2
    assert h.store.upserts == 1  # the healthy store was written once, not once per retry
    [result] = h.kafka.on("results")
    assert result["stores"] == ["fake", "flaky"] and h.acked == [0]


async def test_the_same_task_twice_is_done_twice_in_order() -> None:
    h = Harness()
    task = {"task_type": "batch_vectorization", "data": ["x", "y"], "task_id": "twice"}
    h.pipeline.start()  # the second waits at intake for the first: the lanes must be running
    await h.send(task)
    await h.send(task)
    await h.drain()
    assert h.statuses("twice") == ["received", "processing", "completed"] * 2 and h.store.count("vectorize") == 2
    assert h.acked == [0, 1]


async def test_one_refused_task_does_not_fail_its_batch_mates() -> None:
    h = Harness()
    await h.send({"task_type": "text_vectorization", "data": "fine", "task_id": "ok1"})
    await h.send({"task_type": "text_vectorization", "data": "poison", "task_id": "bad"})
    await h.send({"task_type": "text_vectorization", "data": "also fine", "task_id": "ok2"})
    await h.drain()
    assert [h.statuses(t)[-1] for t in ("ok1", "bad", "ok2")] == ["completed", "failed", "completed"]
    assert h.store.count("vectorize") == 2 and h.acked == [0, 1, 2]
