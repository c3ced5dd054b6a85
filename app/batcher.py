"""A bounded queue that hands out batches: up to a weight, or whatever came within a wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Items go in with :meth:`put` (which waits while ``maxsize`` items are queued).

    :meth:`next_batch` waits for the first item, then gathers more until the
    batch weighs ``max_weight`` (an item's weight is e.g. its number of texts)
    or ``max_wait`` seconds passed since the first item, so a lone task is
    released after the wait and a busy queue fills batches at once.
    """

    def __init__(self, maxsize: int = 0, weight: Callable[[T], int] = lambda _: 1) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self._weight = weight

    async def put(self, item: T) -> None:
        await self._queue.put(item)

    def qsize(self) -> int:
        return self._queue.qsize()

    async def next_batch(
        self, max_weight: int, max_wait: float, on_first: Callable[[], object] | None = None
    ) -> list[T]:
        """``on_first`` runs as soon as the first item is taken (the batch is then in flight)."""
        loop = asyncio.get_running_loop()
        first = await self._queue.get()
        if on_first is not None:
            on_first()
        batch = [first]
        total = self._weight(first)
        deadline = loop.time() + max_wait
        while total < max_weight:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                item = await self._get_within(remaining)
                if item is None:
                    break
            batch.append(item)
            total += self._weight(item)
        return batch

    async def _get_within(self, timeout: float) -> T | None:
        getter = asyncio.ensure_future(self._queue.get())
        try:
            await asyncio.wait({getter}, timeout=timeout)
        finally:
            if not getter.done():
                getter.cancel()
                # let the cancellation settle: if the get won the race, keep its item
                await asyncio.wait({getter})
        return None if getter.cancelled() else getter.result()
