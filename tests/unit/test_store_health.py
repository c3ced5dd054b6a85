"""StoreWriter.answers: the readiness check of a vector store, on the store's own thread."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from core.errors import StoreUnavailableError
from engine.store_writer import StoreWriter
from ops.metrics import Metrics
from sinks.base import VectorRecord
from tests.fakes import FakeStore


class ProbedStore(FakeStore):
    """Counts health checks; a check can be held (a long write ahead of it) or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0
        self.release = threading.Event()
        self.release.set()
        self.down = False

    def health(self) -> None:
        self.checks += 1
        self.release.wait(10)
        if self.down:
            raise StoreUnavailableError("fake store is down")


def writer_for(store: FakeStore) -> StoreWriter:
    return StoreWriter(
        [store],
        settings=SimpleNamespace(
            worker_id="w",
            default_collection="c",
            store_batch_points=1000,
            store_batch_bytes=1 << 23,
            replace_stale=True,
            skip_unchanged=True,
        ),
        metrics=Metrics(),
        on_retry=lambda attempt, exc: None,
    )


def test_a_recent_successful_write_answers_without_a_check() -> None:
    store = ProbedStore()
    writer = writer_for(store)

    async def go() -> bool:
        await writer._write_all("c", 2, [VectorRecord("00000000-0000-5000-8000-000000000001", [0.1, 0.2])])
        return await writer.answers(store)

    assert asyncio.run(go()) is True
    assert store.checks == 0 and store.upserts == 1
    writer.close()


def test_a_store_that_fails_its_check_does_not_answer() -> None:
    store = ProbedStore()
    store.down = True
    writer = writer_for(store)
    assert asyncio.run(writer.answers(store)) is False
    store.down = False
    assert asyncio.run(writer.answers(store)) is True
    assert store.checks == 2
    writer.close()


def test_a_check_held_up_is_not_queued_again_every_time() -> None:
    store = ProbedStore()
    store.release.clear()  # the store's thread is busy: the check waits
    writer = writer_for(store)

    async def go() -> tuple[list[bool], int]:
        answers = [await writer.answers(store, timeout=0.2) for _ in range(5)]
        store.release.set()
        await asyncio.sleep(0.3)
        ran = store.checks
        return [*answers, await writer.answers(store, timeout=2)], ran

    answers, ran = asyncio.run(go())
    assert answers == [False] * 5 + [True]
    assert ran == 1  # one check waited behind the busy thread; five would have run once it was free
    writer.close()
