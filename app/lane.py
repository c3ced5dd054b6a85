"""The pipelined text lane: gather → embed → store and report, joined by bounded queues.

While the model computes batch N on the device thread, the gather stage forms
batch N+1 (validated tasks, ``processing`` statuses queued) and the store stage
writes batch N−1's vectors and delivers its records. Each queue holds one
batch, so at most four batches are in flight; when the model or the store
falls behind, the gather stage stops taking tasks, intake waits for a slot and
the Kafka agent stops pulling records (see ``TaskPipeline.intake``).

The gather stage bounds a batch by tokens estimated as ``characters / 4``
(+2 for the special tokens): a real tokenizer costs about as much per text as
the event loop spends on a whole small task, and a bound only needs an
estimate. The embed stage, on the device thread, asks the model's tokenizer
for each text's real token count (one batched call, about 10 µs a text),
sorts by it and cuts model batches of at most ``batch_size`` texts and
``max_batch_tokens`` padded tokens (texts × longest), so short texts are not
padded to the length of long ones. Sorting by characters instead (what
``SentenceTransformer.encode`` does) pads about a quarter more on news
sentences: a character count is a poor guess of a token count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from app.pipeline import Outcome, TaskPipeline, WorkItem
    from models.base import EmbedderInfo
    from models.manager import ModelManager

log = logging.getLogger("worker.task_processor")
T = TypeVar("T")

#: a text's token estimate is capped here: models truncate (all-MiniLM-L6-v2 at 256)
MAX_TOKENS_PER_TEXT = 512


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: about four characters per token, plus [CLS] and [SEP]."""
    return min(len(text) // 4 + 2, MAX_TOKENS_PER_TEXT)


def plan_batches(lengths: Sequence[int], max_count: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` (token estimates) grouped into model batches, longest first.

    Every batch has at most ``max_count`` texts and ``len(batch) * longest <=
    max_tokens`` (the padded size the model computes), except a single text
    longer than ``max_tokens``, which gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0  # the first text of a batch is its longest: the order is descending
    for index in order:
        if current and (len(current) >= max_count or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        if not current:
            longest = lengths[index]
        current.append(index)
    if current:
        batches.append(current)
    return batches


async def embed_planned(
    manager: ModelManager,
    model: str,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_tokens: int,
    normalize: bool | None,
) -> tuple[np.ndarray, EmbedderInfo]:
    """Embed ``texts`` in length-sorted model batches, all in one job on the device thread.

    Returns the vectors in the order of ``texts``. Raises whatever the model
    raises (``ModelLoadError`` for an unknown model). The texts are sorted by
    their real token counts (the model's tokenizer, on the device thread) when
    the model can tell them, else by the character estimate.
    """

    def job() -> tuple[np.ndarray, EmbedderInfo]:
        lengths = manager.token_lengths_sync(model, texts)
        if lengths is None:
            lengths = [estimate_tokens(t) for t in texts]
        plan = plan_batches(lengths, batch_size, max_tokens)
        out: np.ndarray | None = None
        info = None
        for indices in plan:
            vectors, info = manager.embed_texts_sync(
                model, [texts[i] for i in indices], batch_size=len(indices), normalize=normalize
            )
            if len(vectors) != len(indices):
                raise ValueError(f"Model {model} returned {len(vectors)} vectors for {len(indices)} texts")
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[indices] = vectors
        assert out is not None and info is not None
        return out, info

    return await manager.run(job)


class TextBudget:
    """Bounds the texts held by unfinished tasks (backpressure on intake).

    :meth:`acquire` waits while taking ``n`` more would exceed ``limit``; a
    task larger than the limit still goes through when nothing else is held.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.held == 0 or self.held + n <= self.limit)
            self.held += n

    def release(self, n: int) -> None:
        self.held -= n
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class TextLane:
    """Runs the three stages of the text lane until cancelled or the pipeline drains."""

    def __init__(self, pipeline: TaskPipeline) -> None:
        self.p = pipeline
        self._to_embed: asyncio.Queue[list[Outcome]] = asyncio.Queue(1)
        self._to_store: asyncio.Queue[list[Outcome]] = asyncio.Queue(1)
        self._embedding = False

    async def run(self) -> None:
        stages = [
            asyncio.ensure_future(self._gather()),
            asyncio.ensure_future(self._embed()),
            asyncio.ensure_future(self._store()),
        ]
        try:
            await asyncio.gather(*stages)
        finally:
            for stage in stages:
                stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)

    async def _gather(self) -> None:
        p = self.p
        while p.accepting:
            batch: list[WorkItem] = await p._text_lane.next_batch(
                p.settings.max_batch_size, self._wait, on_first=p._batch_started, max_cost=p.max_batch_tokens
            )
            ok, outcomes = await self._guard(batch, p.prepare(batch))
            if ok and outcomes:
                await self._to_embed.put(outcomes)
            else:
                p._batch_finished(0)

    def _wait(self) -> float:
        """Waiting for more tasks pays only while the model is busy anyway; an idle one starts at once."""
        busy = self._embedding or not self._to_embed.empty()
        return self.p.settings.batch_wait_ms / 1000 if busy else 0.0

    async def _embed(self) -> None:
        while True:
            outcomes = await self._to_embed.get()
            self._embedding = True
            try:
                ok, _ = await self._guard([o.item for o in outcomes], self.p.embed(outcomes))
            finally:
                self._embedding = False
            if ok:
                await self._to_store.put(outcomes)
            else:
                self.p._batch_finished(len(outcomes))

    async def _store(self) -> None:
        while True:
            outcomes = await self._to_store.get()
            items = [o.item for o in outcomes]
            await self._guard(items, self.p.store_and_report(outcomes))
            self.p._batch_finished(len(outcomes))

    async def _guard(self, batch: list[WorkItem], step: Awaitable[T]) -> tuple[bool, T | None]:
        """Await one stage's step; on a bug, fail the batch's unfinished tasks and return (False, None)."""
        try:
            return True, await step
        except Exception as exc:  # noqa: BLE001 - a bug must not leave tickets hanging
            log.exception("Unexpected error in a batch of %d tasks; failing the unfinished ones", len(batch))
            await self.p._fail_unfinished(batch, exc)
            return False, None
