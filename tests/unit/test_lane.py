"""Batching across tasks and the pipelined lane: bounds, order, overlap, backpressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.batcher import Batcher
from app.lane import TextBudget, embed_planned, estimate_tokens, plan_batches
from models.manager import ModelManager
from tests.fakes import FakeEmbedder
from tests.unit.test_pipeline import Harness

SENTENCES = [
    "Short.",
    "A somewhat longer sentence about bushfires near the Hume Highway today.",
    "Mid-length text here.",
    "x" * 900,  # over the per-text estimate cap
    "The quick brown fox jumps over the lazy dog, twice, and then once more for good measure.",
    "Hi",
    "Another ordinary sentence of moderate size.",
]


def test_plan_batches_respects_count_and_padded_token_bounds_and_sorts_by_length() -> None:
    lengths = [3, 40, 7, 120, 25, 2, 60, 9, 9, 33, 1, 80]
    plan = plan_batches(lengths, max_count=4, max_tokens=160)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))  # each text exactly once
    for batch in plan:
        assert len(batch) <= 4
        assert len(batch) * max(lengths[i] for i in batch) <= 160
    flat = [lengths[i] for batch in plan for i in batch]
    assert flat == sorted(lengths, reverse=True)  # longest first: similar lengths share a batch


def test_a_text_longer_than_the_token_bound_gets_a_batch_of_its_own() -> None:
    assert plan_batches([500, 10, 10], max_count=8, max_tokens=100) == [[0], [1, 2]]


def test_token_estimate_is_cheap_and_capped() -> None:
    assert estimate_tokens("abcd" * 10) == 12
    assert estimate_tokens("x" * 100_000) == 512


async def test_embed_planned_restores_input_order_across_model_batches() -> None:
    embedder = FakeEmbedder("m")
    manager = ModelManager(lambda name: embedder, warmup=False)
    texts = SENTENCES * 5
    vectors, info = await embed_planned(manager, "m", texts, batch_size=3, max_tokens=64, normalize=None)
    expected = FakeEmbedder("m").embed_texts(texts, batch_size=len(texts), normalize=None)
    assert info.dim == 8 and vectors.shape == (len(texts), 8)
    np.testing.assert_array_equal(vectors, expected)  # row i is text i's vector
    assert len(embedder.calls) > 5  # several model batches, each bounded
    for call in embedder.calls:
        assert len(call) <= 3 and (len(call) == 1 or len(call) * max(map(estimate_tokens, call)) <= 64)
    manager.close()


class WordCountEmbedder(FakeEmbedder):
    """Reports each text's words + 2 as its token count, which the character estimate gets badly wrong here."""

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]


async def test_embed_planned_sorts_by_the_models_token_counts_when_it_has_them() -> None:
    # long words (few tokens, many characters) and short words (many tokens, few characters):
    # by the character estimate the two kinds interleave, by tokens they do not
    few = ["x" * chars + f" {i}" for i, chars in enumerate((40, 80, 120, 160))]  # 4 tokens each
    many = [" ".join(["a"] * words) for words in (25, 45, 65, 85)]  # 27 to 87 tokens
    assert sorted(map(estimate_tokens, few + many)) != sorted(map(estimate_tokens, few)) + sorted(
        map(estimate_tokens, many)
    )
    texts = [t for pair in zip(few, many, strict=True) for t in pair]
    embedder = WordCountEmbedder("m")
    manager = ModelManager(lambda name: embedder, warmup=False)
    vectors, _ = await embed_planned(manager, "m", texts, batch_size=4, max_tokens=10_000, normalize=None)
    np.testing.assert_array_equal(vectors, FakeEmbedder("m").embed_texts(texts, batch_size=8, normalize=None))
    # by characters the two groups would mix; by tokens each model call holds one group
    assert sorted(map(sorted, embedder.calls)) == sorted([sorted(many), sorted(few)])
    # and the padded-token bound counts real tokens: 33 tokens x 3 texts fit 100, x 4 do not
    embedder.calls.clear()
    same = [" ".join(["a"] * 31)] * 4  # 63 characters: estimated at 17 tokens, 4 x 17 would fit
    await embed_planned(manager, "m", same, batch_size=8, max_tokens=100, normalize=None)
    assert [len(call) for call in embedder.calls] == [3, 1]
    manager.close()


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
    lane = asyncio.ensure_future(h.pipeline.run_text_lane())
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
    lane = asyncio.ensure_future(h.pipeline.run_text_lane())
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
