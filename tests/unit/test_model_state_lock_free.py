"""Reading what is loaded never waits for a load in progress (the event loop reads it every 2 s).

A load holds the manager's lock for as long as the loader runs (a download can
take minutes). These tests hold a fake loader inside that lock with a
``threading.Event`` and read the state from another thread: each read must
come back while the load is still held, not after it is released.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from models.manager import ModelManager
from tests.fakes import FakeEmbedder

GENEROUS = 60.0  # seconds: only a bound for a hung test, never a timing assertion


class HeldLoader:
    """Loads ``slow`` only once ``release`` is set; says when it is inside the load (the lock held)."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def __call__(self, name: str) -> FakeEmbedder:
        if name == "slow":
            self.inside.set()
            assert self.release.wait(GENEROUS), "the test never released the load"
        return FakeEmbedder(name)


def test_state_readers_answer_while_a_load_holds_the_lock() -> None:
    loader = HeldLoader()
    manager = ModelManager(loader, max_loaded=3, warmup=False)
    manager.get_sync("fast")
    with ThreadPoolExecutor(max_workers=2) as pool:
        load = pool.submit(manager.get_sync, "slow")
        assert loader.inside.wait(GENEROUS)

        def read() -> tuple[list[str], bool, bool, int, bool]:
            return (
                [m.name for m in manager.loaded()],
                manager.is_loaded("fast"),
                manager.is_loaded("slow"),
                manager.memory_used(),
                manager.loaded_model("slow") is None,
            )

        reader = pool.submit(read)
        names, fast, slow, memory, slow_absent = reader.result(timeout=GENEROUS)
        assert not load.done(), "the load finished before the read: the test proved nothing"
        assert (names, fast, slow, memory, slow_absent) == (["fast"], True, False, 0, True)
        loader.release.set()
        load.result(timeout=GENEROUS)
    assert [m.name for m in manager.loaded()] == ["fast", "slow"] and manager.is_loaded("slow")
    manager.close()


def test_the_event_loop_keeps_running_while_the_device_thread_loads() -> None:
    """The async path the worker uses: a load on the device thread, the state read on the loop."""
    loader = HeldLoader()
    manager = ModelManager(loader, max_loaded=3, warmup=False)

    async def scenario() -> tuple[list[str], bool]:
        loop = asyncio.get_running_loop()
        load = asyncio.ensure_future(manager.get("slow"))
        assert await loop.run_in_executor(None, loader.inside.wait, GENEROUS)
        names = [m.name for m in manager.loaded()]  # on the loop, as runtime.refresh/state do
        still_loading = not load.done()
        loader.release.set()
        await load
        return names, still_loading

    names, still_loading = asyncio.run(scenario())
    assert names == [] and still_loading
    assert manager.is_loaded("slow")
    manager.close()


def test_an_evicted_model_leaves_the_snapshot_before_it_closes() -> None:
    closed_seen: list[bool] = []
    manager = ModelManager(FakeEmbedder, max_loaded=1, warmup=False)
    first = manager.get_sync("a")
    original_close = first.close

    def close() -> None:
        closed_seen.append(manager.loaded_model("a") is None)
        original_close()

    first.close = close  # type: ignore[method-assign]
    manager.get_sync("b")
    assert closed_seen == [True] and [m.name for m in manager.loaded()] == ["b"]
    manager.close()
