"""SIGTERM: drain, commit, leave, then mode's shutdown — which must come whatever fails or hangs before it."""

from __future__ import annotations

import asyncio
import gc
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from agents import lifecycle


class Consumer:
    def __init__(self) -> None:
        self.commits = 0

    async def commit(self) -> bool:
        self.commits += 1
        return True


class Pipeline:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.drained = False

    async def drain(self, timeout: float) -> bool:
        if self.fail:
            raise RuntimeError("a stage broke while draining")
        self.drained = True
        return True


class Runtime:
    def __init__(self, pipeline: Pipeline, leave_hangs: bool = False) -> None:
        self.pipeline = pipeline
        self.leave_hangs = leave_hangs
        self.left = False

    async def leave(self) -> None:
        if self.leave_hangs:
            await asyncio.Event().wait()  # Redis never answers
        self.left = True


def parts(rt: Runtime) -> tuple[Any, Any, Consumer]:
    consumer = Consumer()
    worker = SimpleNamespace(settings=SimpleNamespace(shutdown_timeout=1.0), app=SimpleNamespace(consumer=consumer))
    intake = SimpleNamespace(runtime=lambda: rt)
    return worker, intake, consumer


async def test_drain_commits_leaves_then_hands_over_to_modes_shutdown() -> None:
    rt = Runtime(Pipeline())
    worker, intake, consumer = parts(rt)
    stopped: list[bool] = []
    await lifecycle.drain_then_stop(worker, intake, lambda: stopped.append(rt.left))
    assert rt.pipeline.drained and consumer.commits == 1 and stopped == [True]  # mode's shutdown came last


async def test_a_goodbye_to_redis_that_hangs_does_not_keep_the_worker_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "LEAVE_TIMEOUT_S", 0.05)
    rt = Runtime(Pipeline(), leave_hangs=True)
    worker, intake, consumer = parts(rt)
    stopped: list[bool] = []
    await asyncio.wait_for(lifecycle.drain_then_stop(worker, intake, lambda: stopped.append(True)), 5)
    assert stopped == [True] and consumer.commits == 1 and not rt.left


async def test_a_drain_that_fails_still_stops_the_worker() -> None:
    rt = Runtime(Pipeline(fail=True))
    worker, intake, consumer = parts(rt)
    stopped: list[bool] = []
    await lifecycle.drain_then_stop(worker, intake, lambda: stopped.append(True))
    assert stopped == [True] and consumer.commits == 0  # nothing committed: the batch in flight is redelivered


async def test_the_drain_started_by_sigterm_is_held_until_it_ends() -> None:
    """The loop holds tasks weakly: a drain nobody references could be collected before mode's shutdown."""
    loop = asyncio.get_running_loop()
    rt = Runtime(Pipeline())
    worker, intake, _ = parts(rt)
    stopped = asyncio.Event()
    handlers: dict[int, Any] = {}
    fake_loop = SimpleNamespace(
        add_signal_handler=lambda sig, fn: handlers.__setitem__(sig, fn),
        remove_signal_handler=lambda sig: handlers.pop(sig, None),
        _signal_handlers={signal.SIGTERM: SimpleNamespace(_callback=stopped.set)},  # mode's handler
    )
    lifecycle.install(worker, intake, fake_loop)  # type: ignore[arg-type]
    handlers[signal.SIGTERM]()  # the signal arrives
    assert signal.SIGTERM not in handlers  # a second SIGTERM goes to the default handler
    assert len(lifecycle._draining) == 1
    gc.collect()
    await asyncio.wait_for(stopped.wait(), 5)
    await asyncio.sleep(0)
    assert rt.left and not lifecycle._draining and loop.is_running()


async def test_a_background_task_that_swallows_its_cancel_does_not_hold_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py swallows a cancel in parts of a command: waiting on such a task for ever kept a worker up."""
    from app.runtime import cancel_and_wait

    stop = False

    async def stubborn() -> None:
        while not stop:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass  # as redis-py does

    task = asyncio.ensure_future(stubborn())
    polite = asyncio.ensure_future(asyncio.sleep(60))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task, polite], timeout=0.1), 5)
    assert polite.cancelled() and not task.done()
    assert "did not end within 0s of being cancelled; going on" in caplog.text
    stop = True  # the test's own cleanup
    await asyncio.wait_for(task, 5)
