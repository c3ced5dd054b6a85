"""A queue that hands out batches: up to a count and a cost, or whatever came within a wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Items go in with :meth:`put` (which waits while ``maxsize`` items are queued).

    :meth:`next_batch` waits for the first item, then gathers more until the
    batch weighs ``max_weight`` (an item's weight is e.g. its number of texts),
    the next item would push its cost (e.g. estimated tokens) over
    ``max_cost``, or ``max_wait`` seconds passed since the first item. So a
    lone task is released after the wait and a busy queue fills batches at
    once. An item that does not fit is held back and opens the next batch; a
    single item heavier than the bounds makes a batch of its own. Items come
    out in the order they went in.
    """

    def __init__(
        self, maxsize: int = 0, weight: Callable[[T], int] = lambda _: 1, cost: Callable[[T], int] = lambda _: 0
    ) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self._weight = weight
        self._cost = cost
        self._held: list[T] = []  # at most one: the item that did not fit the last batch

    async def put(self, item: T) -> None:
        await self._queue.put(item)

    def qsize(self) -> int:
        return self._queue.qsize() + len(self._held)

    def clear(self) -> list[T]:
        """Take every queued item out at once (in order) and return them."""
        items, self._held = self._held, []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def next_batch(
        self,
        max_weight: int,
        max_wait: float | Callable[[], float],
        on_first: Callable[[], object] | None = None,
        max_cost: int | None = None,
    ) -> list[T]:
        """``on_first`` runs as soon as the first item is taken (the batch is then in flight).

        ``max_wait`` may be a function, asked when the first item is taken.
        """
        loop = asyncio.get_running_loop()
        first = self._held.pop() if self._held else await self._queue.get()
        if on_first is not None:
            on_first()
        batch = [first]
        weight, cost = self._weight(first), self._cost(first)
        deadline = loop.time() + (max_wait() if callable(max_wait) else max_wait)
        while weight < max_weight:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                got = await self._get_within(remaining)
                if got is None:
                    break
                item = got
            item_weight, item_cost = self._weight(item), self._cost(item)
            if weight + item_weight > max_weight or (max_cost is not None and cost + item_cost > max_cost):
                self._held.append(item)
                break
            batch.append(item)
            weight += item_weight
            cost += item_cost
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
