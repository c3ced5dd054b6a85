"""A table recovery that stops making progress is restarted; one that stays stuck fails ``/healthz``.

After every rebalance Faust pauses all of a worker's task partitions until
its tables have read their changelogs up to the end (table recovery). When
recovery waits for a record that never comes (faust-streaming has had
several such bugs; one that dropped re-read records is fixed in
``app/compat.py``), the worker holds its partitions and takes no task, for
ever, with only a warning every few seconds in its log. This watch checks
every few seconds how many changelog records the active partitions still
lack; when that number has not gone down for ``kafka.recovery_stall_seconds``
it restarts the recovery (Faust seeks the changelogs again from what it
applied and reads on), and after three restarts without progress it gives
up: ``/healthz`` answers 503 naming the stall, so an orchestrator's liveness
probe restarts the worker, and the log says so at ERROR.

Faust's public ``app.tables.recovery`` is all it touches: ``in_recovery``,
``active_remaining()`` and ``signal_recovery_start``, the event a rebalance
sets to start a recovery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("worker.main")

#: restarts of one stuck recovery before the watch gives up and fails /healthz
RESTARTS = 3


class RecoveryWatch:
    """Decides from the records a recovery still lacks when to restart it; pure, driven by :meth:`check`.

    ``remaining`` returns the records each active changelog partition still lacks, or None when no recovery
    runs; ``restart`` starts the recovery again.
    """

    def __init__(
        self,
        remaining: Callable[[], Mapping[Any, int] | None],
        restart: Callable[[], None],
        stall_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._remaining = remaining
        self._restart = restart
        self.stall_s = stall_s
        self._clock = clock
        self._least: int | None = None  # the fewest records left seen in this recovery
        self._since = 0.0  # when that number last went down (or the recovery or its last restart began)
        self.restarts = 0
        self.stuck: str | None = None  # why /healthz fails, once the watch gave up

    def check(self) -> None:
        left = {tp: n for tp, n in (self._remaining() or {}).items() if n > 0}
        now = self._clock()
        if not left:  # no recovery, or it is done: the next one starts afresh
            self._least, self.restarts, self.stuck = None, 0, None
            return
        total = sum(left.values())
        if self._least is None or total < self._least:
            self._least, self._since = total, now
            return
        if self.stuck is not None or now - self._since < self.stall_s:
            return
        where = ", ".join(f"{getattr(tp, 'topic', tp)}[{getattr(tp, 'partition', '?')}]: {n}" for tp, n in left.items())
        if self.restarts >= RESTARTS:
            self.stuck = (
                f"table recovery made no progress for {now - self._since:.0f}s after {self.restarts} restarts "
                f"({total} changelog records left: {where})"
            )
            log.error(
                "%s; this worker takes no task until it recovers. /healthz now fails: restart the worker (an "
                "orchestrator's liveness probe does), and check the broker holds those changelog partitions",
                self.stuck,
            )
            return
        self.restarts += 1
        log.warning(
            "Table recovery made no progress for %.0fs (%d changelog records left: %s); restarting it (%d of %d)",
            now - self._since,
            total,
            where,
            self.restarts,
            RESTARTS,
        )
        self._since = now
        self._restart()


def faust_recovery_watch(app: Any, stall_s: float) -> RecoveryWatch:
    """A :class:`RecoveryWatch` on ``app``'s table recovery (Faust's ``app.tables.recovery``)."""

    def remaining() -> Mapping[Any, int] | None:
        recovery = app.tables.recovery
        return recovery.active_remaining() if recovery.in_recovery else None

    def restart() -> None:
        app.tables.recovery.signal_recovery_start.set()

    return RecoveryWatch(remaining, restart, stall_s)
