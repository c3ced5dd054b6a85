"""Batching across tasks and the pipelined lane: bounds, order, overlap, backpressure."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import ModelLoadError
from engine.batcher import Batcher
from engine.lane import TextBudget
from engine.model_queue import CallKey, ModelQueue
from engine.work import estimate_tokens
from models.base import EmbedderInfo
from tests.fakes import FakeEmbedder
from tests.unit.test_pipeline import Harness


class Out:
    """The outcome fields the model queue touches."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.vectors: np.ndarray | None = None
        self.info: Any = None
        self.error: BaseException | None = None
        self.embed_ms = 0.0


KEY = CallKey("m", None, 4)
INFO = EmbedderInfo(name="m", family="fake", dim=2, device="cpu")


def vectors_for(call: Any) -> np.ndarray:
    """A fake model: each text's vector is (its length, its first character's code)."""
    return np.array([[len(t), ord(t[0])] for t in call.texts], dtype=np.float32)


def run_all(queue: ModelQueue, **take: Any) -> list[Any]:
    calls = []
    while (call := queue.take(**take)) is not None:
        calls.append(call)
        queue.complete(call, vectors_for(call), INFO, 0.0, 0.001)
    return calls


def test_calls_hold_texts_of_similar_length_within_count_and_padded_token_bounds() -> None:
    rng = random.Random(7)
    lengths = [rng.choice([3, 5, 8, 13, 21, 34, 55, 89]) + rng.randint(0, 2) for _ in range(200)]
    queue = ModelQueue(max_tokens=160)
    outs = [Out([f"t{i}"]) for i in range(len(lengths))]
    for out, n in zip(outs, lengths, strict=True):
        queue.add(out, KEY, [n])
    token_of = {f"t{i}": n for i, n in enumerate(lengths)}
    calls = run_all(queue)
    assert sorted(t for c in calls for t in c.texts) == sorted(token_of)  # each text exactly once
    padded = 0
    for call in calls:
        tokens = [token_of[t] for t in call.texts]
        assert tokens == sorted(tokens, reverse=True)  # longest first
        assert len(call.texts) <= 4 and (len(tokens) == 1 or len(tokens) * max(tokens) <= 160)
        padded += len(tokens) * max(tokens)
    # nearly as little padding as sorting everything at once (the best any batching can do)
    ordered = sorted(lengths, reverse=True)
    best = sum(len(ordered[i : i + 4]) * ordered[i] for i in range(0, len(ordered), 4))
    assert padded <= best * 1.1
    assert queue.texts == 0 and all(out.vectors is not None for out in outs)


def test_a_text_longer_than_the_token_bound_gets_a_call_of_its_own() -> None:
    queue = ModelQueue(max_tokens=100)
    for text, n in [("long", 500), ("a", 10), ("b", 10)]:
        queue.add(Out([text]), CallKey("m", None, 8), [n])
    assert [c.texts for c in run_all(queue)] == [["long"], ["a", "b"]]


def test_every_call_holds_the_oldest_waiting_text() -> None:
    # one outlier among many similar texts is not left waiting for ever
    queue = ModelQueue(max_tokens=10_000)
    queue.add(Out(["outlier"]), KEY, [200])
    for i in range(20):
        queue.add(Out([f"s{i}"]), KEY, [10])
    first = queue.take()
    assert first is not None and "outlier" in first.texts
    # and among the rest, arrival order decides who goes next
    second = queue.take()
    assert second is not None and "s0" in second.texts


def test_the_key_with_the_oldest_text_goes_first_and_full_only_waits_for_a_whole_call() -> None:
    queue = ModelQueue(max_tokens=10_000)
    other = CallKey("other-model", None, 4)
    queue.add(Out(["b1", "b2"]), other, [5, 5])
    queue.add(Out(["a1", "a2", "a3", "a4", "a5"]), KEY, [5] * 5)
    call = queue.take(full_only=True)  # KEY has 5 >= 4 texts
    assert call is not None and call.key == KEY and len(call.texts) == 4  # other-model holds only 2
    assert queue.take(full_only=True) is None
    nxt = queue.take()
    assert nxt is not None and nxt.key == other  # b1 arrived before a5


def test_a_task_finishes_when_its_last_text_is_embedded_with_vectors_in_its_order() -> None:
    queue = ModelQueue(max_tokens=10_000)
    texts = ["aaaa", "b", "cccccccc", "dd", "eee", "f" * 12]
    big, small = Out(texts), Out(["zz"])
    queue.add(big, KEY, [len(t) for t in texts])
    queue.add(small, KEY, [2])
    finished = []
    while (call := queue.take()) is not None:
        finished += queue.complete(call, vectors_for(call), INFO, 1.0, 1.5)
    assert finished.count(big) == 1 and finished.count(small) == 1
    assert big.vectors is not None
    assert big.vectors[:, 0].tolist() == [len(t) for t in texts]  # row i is text i
    assert big.vectors[:, 1].tolist() == [ord(t[0]) for t in texts]
    assert big.info is INFO and big.embed_ms == 500.0


def test_failing_a_call_fails_its_tasks_and_removes_their_other_texts() -> None:
    queue = ModelQueue(max_tokens=10_000)
    pair = CallKey("m", None, 2)
    a, b, c = Out(["a1", "a2" * 20]), Out(["b1"]), Out(["c1"])
    queue.add(a, pair, [2, 40])
    queue.add(b, pair, [2])
    queue.add(c, CallKey("m2", None, 4), [2])
    call = queue.take()
    assert call is not None and sorted(call.texts) == ["a1", "b1"]
    boom = RuntimeError("boom")
    assert queue.fail(call, boom) == [a, b]
    assert a.error is boom and b.error is boom and queue.texts == 1  # a's long text left the queue too
    rest = queue.take()
    assert rest is not None and rest.texts == ["c1"]
    # a model that cannot load fails every task waiting for it at once
    queue = ModelQueue(max_tokens=10_000)
    outs = [Out([f"x{i}"]) for i in range(6)]
    for out in outs:
        queue.add(out, KEY, [3])
    call = queue.take()
    assert call is not None
    assert len(queue.fail(call, ModelLoadError("no such model"), whole_key=True)) == 6
    assert queue.texts == 0 and queue.take() is None


class WordCountEmbedder(FakeEmbedder):
    """Reports each text's words + 2 as its token count, which the character estimate gets badly wrong here."""

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]


async def test_model_calls_are_cut_by_the_models_token_counts_when_it_has_them() -> None:
    # long words (few tokens, many characters) and short words (many tokens, few characters):
    # by the character estimate the two kinds interleave, by tokens they do not
    few = ["x" * chars + f" {i}" for i, chars in enumerate((40, 80, 120, 160))]  # 4 tokens each
    many = [" ".join(["a"] * words) for words in (25, 45, 65, 85)]  # 27 to 87 tokens
    assert sorted(map(estimate_tokens, few + many)) != sorted(map(estimate_tokens, few)) + sorted(
        map(estimate_tokens, many)
    )
    h = Harness(default_batch_size=4, max_batch_tokens=10_000)
    embedder = h.embedders["fake-model"] = WordCountEmbedder("fake-model")
    for i, text in enumerate(t for pair in zip(few, many, strict=True) for t in pair):
        await h.send({"task_type": "text_vectorization", "data": text, "task_id": f"w{i}"})
    await h.drain()
    assert sorted(map(sorted, embedder.calls)) == sorted([sorted(many), sorted(few)])
    assert len(h.acked) == 8
    # and the padded-token bound counts real tokens: 33 tokens x 3 texts fit 100, x 4 do not
    h = Harness(default_batch_size=8, max_batch_tokens=100)
    embedder = h.embedders["fake-model"] = WordCountEmbedder("fake-model")
    same = [" ".join(["a"] * 31)] * 4  # 63 characters: estimated at 17 tokens, 4 x 17 would fit
    await h.send({"task_type": "batch_vectorization", "data": same, "task_id": "same"})
    await h.drain()
    assert sorted(len(call) for call in embedder.calls) == [1, 3]


def test_token_estimate_is_cheap_and_capped() -> None:
    assert estimate_tokens("abcd" * 10) == 12
    assert estimate_tokens("x" * 100_000) == 512


async def test_batcher_cost_bound_holds_back_the_item_that_does_not_fit() -> None:
    batcher: Batcher[tuple[str, int]] = Batcher(cost=lambda item: item[1])
    for item in [("a", 50), ("b", 40), ("c", 30), ("d", 500), ("e", 1)]:
        await batcher.put(item)
    batches = [await batcher.next_batch(max_weight=100, max_wait=0, max_cost=100) for _ in range(3)]
    assert [[x[0] for x in b] for b in batches] == [["a", "b"], ["c"], ["d"]]  # a lone heavy item still goes
    assert [x[0] for x in await batcher.next_batch(max_weight=100, max_wait=0, max_cost=100)] == ["e"]
    assert batcher.qsize() == 0


async def test_lone_task_is_released_after_the_wait_and_completes() -> None:
    h = Harness(batch_wait_ms=30, max_batch_size=256)
    lane = asyncio.ensure_future(h.pipeline.run_lanes())
    await h.send({"task_type": "text_vectorization", "data": "alone", "task_id": "lone"})
    for _ in range(500):  # no other task comes; the batch must not wait for a full one
        if h.acked:
            break
        await asyncio.sleep(0.01)
    assert h.acked == [0] and h.statuses("lone") == ["received", "processing", "completed"]
    lane.cancel()
    await asyncio.gather(lane, return_exceptions=True)


async def test_model_works_on_the_next_batch_while_the_previous_one_is_stored() -> None:
    h = Harness(max_batch_size=2, batch_wait_ms=0)
    store_gate = threading.Event()
    original = h.store.upsert

    def slow_upsert(collection: str, records: Any) -> None:
        store_gate.wait(10)
        original(collection, records)

    h.store.upsert = slow_upsert  # type: ignore[method-assign]
    lane = asyncio.ensure_future(h.pipeline.run_lanes())
    for i in range(6):
        await h.send({"task_type": "text_vectorization", "data": f"text {i}", "task_id": f"p{i}"})
    embedder_calls = lambda: len(h.embedders["fake-model"].calls) if "fake-model" in h.embedders else 0  # noqa: E731
    for _ in range(500):
        if embedder_calls() >= 2:
            break
        await asyncio.sleep(0.01)
    assert embedder_calls() >= 2 and h.acked == []  # batch 2 embedded while batch 1 is still being stored
    store_gate.set()
    for _ in range(500):
        if len(h.acked) == 6:
            break
        await asyncio.sleep(0.01)
    assert h.acked == [0, 1, 2, 3, 4, 5]  # acks stay in order, each after its store write and records
    assert all(h.statuses(f"p{i}") == ["received", "processing", "completed"] for i in range(6))
    lane.cancel()
    await asyncio.gather(lane, return_exceptions=True)


async def test_intake_waits_while_max_inflight_texts_are_unfinished() -> None:
    h = Harness(max_inflight_texts=3)
    await h.send({"task_type": "batch_vectorization", "data": ["a", "b"], "task_id": "b1"})
    blocked = asyncio.ensure_future(h.send({"task_type": "batch_vectorization", "data": ["c", "d"], "task_id": "b2"}))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # 2 + 2 texts would exceed 3: intake (and so the Kafka agent) waits
    await h.drain()
    await asyncio.wait_for(blocked, timeout=5)
    await h.drain()
    assert h.acked == [0, 1]


async def test_text_budget_lets_an_oversized_task_through_when_nothing_else_is_held() -> None:
    budget = TextBudget(limit=4)
    await asyncio.wait_for(budget.acquire(10), timeout=5)
    assert budget.held == 10
    budget.release(10)
    await asyncio.wait_for(budget.acquire(4), timeout=5)
    assert budget.held == 4


class GatedEmbedder(FakeEmbedder):
    """Blocks every model call until ``gate`` is set; counts the calls that started."""

    def __init__(self, name: str, gate: threading.Event) -> None:
        super().__init__(name)
        self.gate = gate
        self.started = 0

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        self.started += 1
        assert self.gate.wait(10)
        return super().embed_texts(texts, batch_size=batch_size, normalize=normalize)


async def until(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_second_call_waits_behind_the_running_one_only_once_it_is_full() -> None:
    h = Harness(default_batch_size=2, batch_wait_ms=0)
    gate = threading.Event()
    embedder = h.embedders["fake-model"] = GatedEmbedder("fake-model", gate)
    lane = h.pipeline.text
    running = asyncio.ensure_future(lane.run())
    await h.send({"task_type": "text_vectorization", "data": "first", "task_id": "g0"})
    await until(lambda: embedder.started == 1, "the first call to start")  # an idle model takes a lone text at once
    await h.send({"task_type": "text_vectorization", "data": "second", "task_id": "g1"})
    await asyncio.sleep(0.1)
    assert lane.queue.texts == 1  # half a call: it waits for more texts or for the model
    await h.send({"task_type": "text_vectorization", "data": "third", "task_id": "g2"})
    await until(lambda: lane.queue.texts == 0, "a whole call to be queued behind the running one")
    assert embedder.started == 1 and h.acked == []
    gate.set()
    await until(lambda: len(h.acked) == 3, "all three tasks")
    assert embedder.calls == [["first"], ["second", "third"]]
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_with_two_device_threads_an_idle_one_takes_what_waits_and_a_third_call_waits_to_be_full() -> None:
    """``models.parallel_calls`` 2: a call starts on each idle device thread with whatever waits (a lone text is
    not held back while the other thread computes); behind two running calls one more is queued once whole."""
    h = Harness(default_batch_size=2, batch_wait_ms=0, parallel_calls=2)
    gate = threading.Event()
    embedder = h.embedders["fake-model"] = GatedEmbedder("fake-model", gate)
    embedder.concurrent_calls = True
    lane = h.pipeline.text
    running = asyncio.ensure_future(lane.run())
    await h.send({"task_type": "text_vectorization", "data": "first", "task_id": "g0"})
    await until(lambda: embedder.started == 1, "the first call to start")
    await h.send({"task_type": "text_vectorization", "data": "second", "task_id": "g1"})
    await until(lambda: embedder.started == 2, "the second call to start on the idle device thread")
    await h.send({"task_type": "text_vectorization", "data": "third", "task_id": "g2"})
    await asyncio.sleep(0.1)
    assert lane.queue.texts == 1  # both threads busy: half a call waits for more texts or for a thread
    await h.send({"task_type": "text_vectorization", "data": "fourth", "task_id": "g3"})
    await until(lambda: lane.queue.texts == 0, "a whole call to be queued behind the running ones")
    assert embedder.started == 2 and h.acked == []
    gate.set()
    await until(lambda: len(h.acked) == 4, "all four tasks")
    assert sorted(map(tuple, embedder.calls)) == [("first",), ("second",), ("third", "fourth")]
    assert h.acked == [0, 1, 2, 3]  # acknowledged in order whichever call ended first
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


def test_drop_unstarted_keeps_the_tasks_the_model_has_begun() -> None:
    queue = ModelQueue(max_tokens=10_000)
    begun, waiting, other = Out(["b1", "b2", "b3"]), Out(["w1"]), Out(["o1", "o2"])
    queue.add(begun, CallKey("m", None, 2), [2, 2, 9])
    queue.add(waiting, CallKey("m", None, 2), [9])
    queue.add(other, CallKey("m2", None, 2), [3, 3])
    call = queue.take()
    assert call is not None and sorted(call.texts) == ["b1", "b2"]
    assert queue.drop_unstarted() == [waiting, other]
    assert queue.texts == 1  # b3 stays: its task has texts in a model call and finishes
    rest = queue.take()
    assert rest is not None and rest.texts == ["b3"] and queue.take() is None
    # with room for one text the oldest unstarted task stays, the younger two-text one goes
    queue = ModelQueue(max_tokens=10_000)
    older, younger = Out(["o"]), Out(["y1", "y2"])
    queue.add(older, KEY, [3])
    queue.add(younger, KEY, [3, 3])
    assert queue.drop_unstarted(keep_texts=1) == [younger] and queue.texts == 1


class FailingCounter(FakeEmbedder):
    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        raise RuntimeError("tokenizer went away")


async def test_a_failing_token_count_falls_back_to_the_estimate_and_the_tasks_complete() -> None:
    h = Harness()
    h.embedders["fake-model"] = FailingCounter("fake-model")
    await h.send({"task_type": "batch_vectorization", "data": ["a", "bb", "ccc"], "task_id": "fc"})
    await h.drain()
    assert h.acked == [0] and h.statuses("fc") == ["received", "processing", "completed"]


async def test_drain_leaves_the_tasks_the_model_has_not_begun_unacknowledged() -> None:
    h = Harness(default_batch_size=1, batch_wait_ms=0)
    gate = threading.Event()
    embedder = h.embedders["fake-model"] = GatedEmbedder("fake-model", gate)
    running = asyncio.ensure_future(h.pipeline.run_lanes())
    for i in range(4):
        await h.send({"task_type": "text_vectorization", "data": f"text {i}", "task_id": f"d{i}"})
    await until(lambda: embedder.started == 1, "the first call")
    drained = asyncio.ensure_future(h.pipeline.drain(timeout=10))
    await asyncio.sleep(0.05)
    assert not drained.done()  # d0 is in the model, d1 queued behind it on the device thread
    gate.set()
    assert await drained is True
    assert h.acked == [0, 1]  # d2 and d3 never reached the model: redelivered to another worker
    assert h.statuses("d3") == ["received", "processing"] and len(embedder.calls) == 2
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_gather_waits_while_the_model_queue_is_full_of_document_chunks() -> None:
    h = Harness(max_inflight_texts=4, chunk_tokens=5, chunk_overlap_tokens=0, batch_wait_ms=0, default_batch_size=2)
    gate = threading.Event()
    embedder = h.embedders["fake-model"] = GatedEmbedder("fake-model", gate)
    running = asyncio.ensure_future(h.pipeline.run_lanes())
    content = " ".join(f"w{i}" for i in range(60))  # 12 chunks of 5 words: one text at intake
    await h.send({"task_type": "document_vectorization", "data": {"content": content}, "task_id": "doc1"})
    await until(lambda: embedder.started == 1, "the first call")
    await h.send({"task_type": "document_vectorization", "data": {"content": content}, "task_id": "doc2"})
    await asyncio.sleep(0.1)
    assert h.statuses("doc2") == ["received"]  # not taken into the lane while doc1's chunks fill the queue
    gate.set()
    await until(lambda: len(h.acked) == 2, "both documents")
    assert h.statuses("doc2") == ["received", "processing", "completed"]
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_drain_keeps_the_queued_tasks_the_model_can_do_in_half_the_timeout() -> None:
    h = Harness(default_batch_size=1, batch_wait_ms=0)
    gate = threading.Event()
    gate.set()
    embedder = h.embedders["fake-model"] = GatedEmbedder("fake-model", gate)
    running = asyncio.ensure_future(h.pipeline.run_lanes())
    await h.send({"task_type": "text_vectorization", "data": "warm", "task_id": "k0"})
    await until(lambda: h.acked == [0], "the first task")  # the lane has measured the model's speed
    gate.clear()
    for i in range(1, 5):
        await h.send({"task_type": "text_vectorization", "data": f"text {i}", "task_id": f"k{i}"})
    await until(lambda: embedder.started == 2, "the next call")
    drained = asyncio.ensure_future(h.pipeline.drain(timeout=10))
    await asyncio.sleep(0.05)
    gate.set()
    assert await drained is True
    assert h.acked == [0, 1, 2, 3, 4]  # a fast model finishes the short queue instead of handing it on
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_every_lane_offers_the_lane_interface_and_a_drain_leaves_queued_tasks_unacknowledged() -> None:
    from engine.stages import Lane

    h = Harness()
    interface = {name for name in vars(Lane) if not name.startswith("_")}
    assert {"start", "run", "submit", "pending", "active", "settled", "drain", "close"} <= interface
    for lane in h.pipeline.lanes:
        assert interface <= set(dir(lane)), f"{lane.name} lacks {interface - set(dir(lane))}"
    text = await h.send({"task_type": "text_vectorization", "data": "queued", "task_id": "q-text"})
    image = await h.send({"task_type": "image_vectorization", "data": "/nowhere.png", "task_id": "q-image"})
    assert (h.pipeline.text.pending, h.pipeline.images.pending) == (1, 1)  # routed by task type
    assert await h.pipeline.drain(1) is True  # nothing was started: both leave their lanes at once
    assert (h.pipeline.text.pending, h.pipeline.images.pending) == (0, 0)
    assert not text.done and not image.done and h.acked == []  # unacknowledged: another worker gets them
    assert h.statuses("q-text") == ["received"] and h.statuses("q-image") == ["received"]


async def test_a_task_waiting_for_room_when_the_drain_begins_stays_unacknowledged() -> None:
    h = Harness(max_inflight_texts=2, batch_wait_ms=0)
    lane = h.pipeline.text
    gate = asyncio.Event()
    original = lane._enqueue

    async def slow_enqueue(outcomes: Any) -> Any:
        await gate.wait()
        return await original(outcomes)

    lane._enqueue = slow_enqueue  # type: ignore[method-assign]  # the gather stage is busy when SIGTERM comes
    running = asyncio.ensure_future(h.pipeline.run_lanes())
    await h.send({"task_type": "text_vectorization", "data": "a", "task_id": "t0"})
    await h.send({"task_type": "text_vectorization", "data": "b", "task_id": "t1"})
    await until(lambda: lane.active >= 1, "the first batch to start")
    late = asyncio.ensure_future(h.send({"task_type": "text_vectorization", "data": "c", "task_id": "t2"}))
    await asyncio.sleep(0.05)
    assert not late.done()  # waits for room (max_inflight_texts)
    drained = asyncio.ensure_future(h.pipeline.drain(timeout=5))
    await asyncio.sleep(0.05)
    gate.set()
    assert await drained is True  # not held up by the task that found room only after the drain began
    assert h.acked == [0, 1] and lane.pending == 0 and h.statuses("t2") == ["received"]
    running.cancel()
    late.cancel()
    await asyncio.gather(running, late, return_exceptions=True)


async def test_a_delete_waiting_for_a_drained_task_of_its_id_is_left_for_another_worker_too() -> None:
    h = Harness()
    await h.send({"task_type": "text_vectorization", "data": "queued", "task_id": "X"})
    ticket = h.tracker.add("tasks-0", h.offset)
    await h.pipeline.intake(None, ticket, ("tasks", 0, h.offset), key=b"X")  # tombstone: delete X after X
    await asyncio.sleep(0.05)
    assert await h.pipeline.drain(1) is True
    assert not ticket.done and h.acked == [] and not h.pipeline._deletes
    assert [r["status"] for r in h.kafka.on("status")] == ["received"]  # nothing completed, nothing deleted


async def test_a_batch_is_written_while_the_one_before_it_is_delivered_and_no_further() -> None:
    # the store stage writes one batch at a time, in order; the batch written last is delivered (its results and
    # statuses) while the next one is written, and no write runs further ahead of the deliveries than that
    h = Harness(batch_wait_ms=0)
    written: list[str] = []
    original = h.store.upsert

    def upsert(collection: str, records: Any) -> None:
        written.extend(str(r.payload["task_id"]) for r in records)
        original(collection, records)

    h.store.upsert = upsert  # type: ignore[method-assign]
    h.kafka.hold = True  # a slow broker: no delivery is confirmed until release()
    lane = asyncio.ensure_future(h.pipeline.run_lanes())

    async def until(check: Any) -> None:
        for _ in range(500):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    for i in range(2):
        await h.send({"task_type": "text_vectorization", "data": f"first {i}", "task_id": f"a{i}"})
    await until(lambda: len(written) == 2)
    for i in range(2):
        await h.send({"task_type": "text_vectorization", "data": f"second {i}", "task_id": f"b{i}"})
    await until(lambda: len(written) == 4)  # written while the first batch's records wait for the broker
    assert h.acked == []
    for i in range(2):
        await h.send({"task_type": "text_vectorization", "data": f"third {i}", "task_id": f"c{i}"})
    await asyncio.sleep(0.3)
    assert sorted(written) == ["a0", "a1", "b0", "b1"]  # one delivery behind the writes at most
    h.kafka.release()
    await until(lambda: len(h.acked) == 6)
    assert h.acked == [0, 1, 2, 3, 4, 5] and sorted(written[4:]) == ["c0", "c1"]
    for task_id in ("a0", "a1", "b0", "b1", "c0", "c1"):
        assert h.statuses(task_id)[-1] == "completed"
        # each task's records follow its write: its result names the vectors written
        assert [r["task_id"] for r in h.kafka.on("results")].count(task_id) == 1
    lane.cancel()
    await asyncio.gather(lane, return_exceptions=True)


async def test_a_budget_with_room_is_taken_at_once_and_a_waiter_is_woken_by_a_release() -> None:
    budget = TextBudget(limit=4)
    await budget.acquire(3)
    waiter = asyncio.ensure_future(budget.acquire(2))  # 3 + 2 > 4: waits
    await asyncio.sleep(0.01)
    assert not waiter.done() and budget.held == 3
    small = asyncio.ensure_future(budget.acquire(1))  # 3 + 1 fits: taken, as before the waiter
    await asyncio.sleep(0.01)
    assert small.done() and not waiter.done() and budget.held == 4
    budget.release(1)
    await asyncio.sleep(0.01)
    assert not waiter.done()  # 3 + 2 still does not fit
    budget.release(3)
    await asyncio.wait_for(waiter, timeout=5)
    assert budget.held == 2
