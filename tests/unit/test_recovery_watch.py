"""The watch on Faust's table recovery: a stalled recovery is restarted, a stuck one fails /healthz."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP

from agents.recovery_watch import RESTARTS, RecoveryWatch, faust_recovery_watch

TP2, TP5 = TP("g-task-status-changelog", 2), TP("g-task-status-changelog", 5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watch(left: dict[TP, int] | None, restarts: list[float], clock: Clock) -> tuple[RecoveryWatch, dict[str, object]]:
    state: dict[str, object] = {"left": left}
    w = RecoveryWatch(lambda: state["left"], lambda: restarts.append(clock.now), 60.0, clock=clock)  # type: ignore[arg-type,return-value]
    return w, state


def test_a_recovery_that_makes_progress_is_left_alone() -> None:
    clock, restarts = Clock(), []
    w, state = watch({TP2: 500, TP5: 10}, restarts, clock)
    for step in range(60):  # 5 minutes, a record less every 5 s
        w.check()
        clock.now += 5
        state["left"] = {TP2: 500 - step - 1, TP5: 10}
    assert restarts == [] and w.stuck is None


def test_a_stalled_recovery_is_restarted_after_the_stall_time(caplog: pytest.LogCaptureFixture) -> None:
    clock, restarts = Clock(), []
    w, state = watch({TP2: 37, TP5: 0}, restarts, clock)
    with caplog.at_level(logging.WARNING, logger="worker.main"):
        while clock.now <= 60:
            w.check()
            clock.now += 5
    assert restarts == [60.0]
    assert "no progress for 60s (37 changelog records left: g-task-status-changelog[2]: 37)" in caplog.text
    assert "restarting it (1 of 3)" in caplog.text
    state["left"] = {TP2: 30}  # the restart unstuck it: progress again
    for _ in range(11):
        w.check()
        clock.now += 5
    assert restarts == [60.0]
    state["left"] = None  # recovery done: the next one starts afresh
    w.check()
    assert w.restarts == 0 and w.stuck is None


def test_a_recovery_that_restarts_do_not_unstick_fails_healthz_and_says_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, restarts = Clock(), []
    w, state = watch({TP5: 12}, restarts, clock)
    with caplog.at_level(logging.ERROR, logger="worker.main"):
        while clock.now <= 60 * (RESTARTS + 2):
            w.check()
            clock.now += 5
    assert len(restarts) == RESTARTS and restarts == sorted(restarts)
    assert all(b - a >= 60 for a, b in zip(restarts, restarts[1:], strict=False))
    assert w.stuck is not None and "after 3 restarts (12 changelog records left" in w.stuck
    assert "/healthz now fails: restart the worker" in caplog.text
    assert caplog.text.count("/healthz now fails") == 1  # said once, not every check
    state["left"] = {TP5: 0}  # it finally caught up: healthy again
    w.check()
    assert w.stuck is None


def test_the_watch_reads_and_restarts_fausts_own_recovery() -> None:
    signal = SimpleNamespace(set_calls=0)
    signal.set = lambda: setattr(signal, "set_calls", signal.set_calls + 1)  # type: ignore[attr-defined]
    recovery = SimpleNamespace(in_recovery=True, active_remaining=lambda: {TP2: 4}, signal_recovery_start=signal)
    app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery))
    w = faust_recovery_watch(app, 0.0)
    w.check()  # the first look: 4 left
    w.check()  # no progress, stall time 0: restarted
    assert signal.set_calls == 1
    recovery.in_recovery = False
    w.check()
    assert w.restarts == 0


def test_the_watch_is_on_the_real_recovery_and_healthz_reports_it(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Built in-process: the watch reads Faust's recovery of this app, and /healthz fails once it gave up."""
    import asyncio

    from tests.unit.built import build_worker

    worker, agents = build_worker(clean_env, tmp_path, table_store="memory")
    recovery = worker.app.tables.recovery
    assert not recovery.in_recovery
    w = agents.status.recovery_watch
    w.check()  # Faust's real recovery object, idle: nothing to do
    assert w.stuck is None and w.restarts == 0
    w.stuck = "table recovery made no progress for 240s after 3 restarts"

    class Web:
        def json(self, body: object, *, status: int = 200) -> tuple[object, int]:
            return body, status

    body, status = asyncio.run(agents.web.healthz(Web(), None))
    assert status == 503 and body["table_recovery"].startswith("table recovery made no progress")  # type: ignore[index]


def test_the_watch_runs_from_the_tables_agent_once_and_not_when_off(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Faust starts its timers only after the first recovery: the watch is started by the worker-stats agent."""
    import asyncio

    from tests.unit.built import build_worker

    async def started(**env: str) -> int:
        _, agents = build_worker(clean_env, tmp_path / str(len(env)), table_store="memory", **env)
        agents.status.start_recovery_watch()
        agents.status.start_recovery_watch()  # the agent started again: still one watch
        tasks = [t for t in asyncio.all_tasks() if "_watch_recovery" in repr(t.get_coro())]
        for task in tasks:
            task.cancel()
        return len(tasks)

    assert asyncio.run(started()) == 1
    assert asyncio.run(started(recovery_stall_seconds="0")) == 0
