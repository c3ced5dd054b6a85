"""Admit each task partition's records strictly in offset order, with no holes.

faust-streaming 0.15.3 can lose records around rebalances: records it had
fetched but not yet handed to the agent are cleared, its read offset says they
were delivered, and the next record then opens an "offset gap" that
``Consumer._add_gap`` counts as acknowledged (the chaos test caught it:
``gap 24..37`` right after a rebalance, fourteen tasks committed unprocessed).

The guard makes the intake agent independent of that logic. Per partition it
knows the next offset it must see (the committed offset when the partition
is assigned, then one past each admitted record):

* the expected offset is admitted and processed;
* a lower offset is a duplicate of a record already admitted: dropped;
* a higher offset means records went missing: the consumer is sought back to
  the expected offset and every record is dropped until that one arrives.

Records can also vanish with nothing after them to reveal the hole: Faust
fetched them (the consumer's position moved past them) but never handed
them to the agent, and no later record arrives (the end of a backlog; the
chaos test caught it after a rebalance, a partition's last 55 tasks never
processed). So once the intake has waited ``stall_after`` seconds for
records, the guard compares each partition's consumer position with the
offset it expects; a partition read past it, at the same position at two
checks a second apart with nothing delivered, is sought back as for a hole.
(The check needs the whole intake idle: a partition's lost tail is found
once the others have no more records either.)

Faust's own gap filling is switched off for the tasks topic (see
:func:`app.compat.install_offset_guard`), so an offset is only ever committed after
the guard admitted it and the pipeline finished it. A real hole (transaction
markers from a transactional producer) is confirmed when several seeks in a
row cannot produce the expected record (each resuming at the same offset,
or, for a marker at the end of a partition, each delivering nothing to the
waiting intake while the consumer's position passed exactly that one
offset); only then are its offsets acknowledged, in order after the records
before them (:func:`app.compat.ack_offsets_without_records`), and passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

log = logging.getLogger("worker.main")

Seek = Callable[[Hashable, int], Awaitable[None]]
Committed = Callable[[Hashable], Awaitable[int]]
RealGap = Callable[[Hashable, int, int], Awaitable[None]]
Assigned = Callable[[Hashable], bool]
Positions = Callable[[], Awaitable[dict[Hashable, int]]]
STALL_ERROR_ROUNDS = 60  # a partition still not back in order after this many seeks (about a minute) is an error


@dataclass
class _Seeking:
    target: int  # the offset the partition must deliver next
    at: float  # when the last seek was made
    lowest: int | None = None  # lowest offset delivered since that seek
    # where each finished seek resumed: its ``lowest``, or the position one control record past the
    # target when nothing came while the intake waited (the last few rounds only)
    rounds: list[int | None] = field(default_factory=list)
    count: int = 0  # rounds finished


class OffsetGuard:
    """Decides, per record, whether the intake may process it (see the module docstring).

    ``committed(tp)`` returns where a freshly assigned partition starts (its
    committed offset, or the log start when nothing was committed);
    ``seek(tp, offset)`` repositions the consumer; ``real_gap(tp, first, last)``
    acknowledges offsets ``first..last``, which hold no record. All three are
    awaited on the event loop. ``assigned(tp)`` says whether this worker owns
    ``tp`` now: records fetched before a partition was revoked are dropped.
    ``positions()`` returns the consumer's position (next offset to fetch)
    of each task partition it owns and reads now (empty during a
    rebalance). A hole counts as real only when the last ``confirm`` seeks,
    ``reseek_after`` seconds apart, each brought the same first offset
    beyond it, or each delivered nothing to the waiting intake while the
    consumer passed exactly one offset (a transaction marker, which the
    consumer skips): records lost by the consumer come back on a seek, and
    records fetched before a seek arrive in the first round only.

    The intake calls :meth:`waiting` each time it waits for the next record;
    :meth:`admit` ends the wait.
    """

    def __init__(
        self,
        *,
        seek: Seek,
        committed: Committed,
        real_gap: RealGap,
        assigned: Assigned = lambda tp: True,
        positions: Positions | None = None,
        reseek_after: float = 1.0,
        stall_after: float = 3.0,
        confirm: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seek = seek
        self._committed = committed
        self._real_gap = real_gap
        self._assigned = assigned
        self._positions = positions
        self.reseek_after = reseek_after
        self.stall_after = stall_after
        self.confirm = confirm
        self._clock = clock
        self._expected: dict[Hashable, int] = {}
        self._seeking: dict[Hashable, _Seeking] = {}
        self._waiting_since: float | None = None
        self._suspects: dict[Hashable, int] = {}  # partition -> position read past the expected offset once
        self.seeks = 0
        self.dropped = 0
        self.stalls = 0

    def waiting(self) -> None:
        """The intake waits for the next record (it is not held up by backpressure)."""
        if self._waiting_since is None:
            self._waiting_since = self._clock()

    async def admit(self, tp: Hashable, offset: int) -> bool:
        """True when the record at ``offset`` is the next one of ``tp`` and may be processed."""
        self._waiting_since = None
        if self._suspects:
            self._suspects.clear()  # something arrives: undelivered records may still be on their way
        if not self._assigned(tp):
            self.forget({tp})
            self.dropped += 1
            return False  # fetched before the partition was revoked; its new owner reads it
        expected = self._expected.get(tp)
        if expected is None:
            committed = await self._committed(tp)
            expected = self._expected.setdefault(tp, committed)  # the timer may have set it meanwhile
        if offset == expected:
            self._expected[tp] = offset + 1
            if self._seeking.pop(tp, None) is not None:
                log.info("Offset guard: %s is back in order at offset %d", tp, offset)
            return True
        self.dropped += 1
        if offset < expected:
            return False  # delivered again (after a seek): the first delivery is the one in flight
        state = self._seeking.get(tp)
        if state is None:
            log.warning(
                "Offset guard: %s delivered offset %d while %d was expected (records lost by the consumer "
                "around a rebalance); seeking back to %d",
                tp,
                offset,
                expected,
                expected,
            )
            self._seeking[tp] = _Seeking(expected, self._clock(), offset)
            await self._do_seek(tp, expected)
            return False
        state.lowest = offset if state.lowest is None else min(state.lowest, offset)
        if self._clock() - state.at >= self.reseek_after:
            await self._next_round(tp, state, None)
        return False

    async def reseek_stalled(self) -> None:
        """Seek back over records fetched but never delivered, and repeat seeks that brought nothing
        (call about every second).

        Faust drops records below a read offset that records fetched before
        the seek pushed up, so a seek can come back empty; a later one works.
        """
        now = self._clock()
        positions: dict[Hashable, int] = {}
        if self._positions is not None and (self._idle_since(now - self.stall_after) or self._seeking):
            positions = await self._positions()
        # still waiting since before the positions were read: a record admitted meanwhile may be one of them
        if self._idle_since(now - self.stall_after):
            await self._seek_back_undelivered(positions, now)
        else:
            self._suspects.clear()
        for tp, state in list(self._seeking.items()):
            if not self._assigned(tp):
                self.forget({tp})
            elif now - state.at >= self.reseek_after:
                await self._next_round(tp, state, positions.get(tp))

    async def _seek_back_undelivered(self, positions: dict[Hashable, int], now: float) -> None:
        """The intake has waited ``stall_after`` seconds: a partition read past the expected offset, at the same
        position at two checks in a row with nothing delivered between them, lost those records."""
        for tp, position in positions.items():
            if tp in self._seeking or not self._assigned(tp):
                self._suspects.pop(tp, None)
                continue
            expected = self._expected.get(tp)
            if expected is None:
                try:
                    committed = await self._committed(tp)
                except Exception as exc:  # noqa: BLE001 - broker busy or gone: checked again next second
                    log.debug("Offset guard: no committed offset for %s yet (%r)", tp, exc)
                    continue
                if not self._idle_since(now - self.stall_after):
                    return  # a record arrived meanwhile
                expected = self._expected.setdefault(tp, committed)
            if position <= expected:
                self._suspects.pop(tp, None)
                continue
            if self._suspects.get(tp) != position:
                self._suspects[tp] = position  # first sighting: the records may still be in Faust's buffers
                continue
            del self._suspects[tp]
            self.stalls += 1
            log.warning(
                "Offset guard: %s was read up to offset %d but offsets from %d have not reached the intake, which "
                "has waited %.0fs for records (lost in the consumer); seeking back to %d",
                tp,
                position - 1,
                expected,
                now - (self._waiting_since or now),
                expected,
            )
            self._seeking[tp] = _Seeking(expected, now)
            await self._do_seek(tp, expected)

    async def _next_round(self, tp: Hashable, state: _Seeking, position: int | None) -> None:
        resumed_at = state.lowest
        if resumed_at is None and position == state.target + 1 and self._idle_since(state.at):
            # the consumer passed one offset and the waiting intake got nothing: a control record (transaction
            # marker); a longer stretch read without delivery is never taken for a hole, it is sought again
            resumed_at = position
        state.rounds.append(resumed_at)
        del state.rounds[: -(self.confirm + 1)]
        state.count += 1
        if state.count == STALL_ERROR_ROUNDS:
            log.error(
                "Offset guard: %s has not delivered offset %d for %d seeks (consumer position %s); its tasks from "
                "there wait. Check the broker's log for that partition, or restart this worker",
                tp,
                state.target,
                state.count,
                position,
            )
        last = state.rounds[-self.confirm :]
        if len(state.rounds) > self.confirm and last[0] is not None and last.count(last[0]) == len(last):
            first = last[0]
            log.warning(
                "Offset guard: offsets %d..%d of %s do not exist (%d seeks in a row resumed at %d); moving on",
                state.target,
                first - 1,
                tp,
                self.confirm,
                first,
            )
            await self._real_gap(tp, state.target, first - 1)
            self._seeking.pop(tp, None)
            self._expected[tp] = first
            await self._do_seek(tp, first)
            return
        state.lowest = None
        state.at = self._clock()
        await self._do_seek(tp, state.target)

    def _idle_since(self, moment: float) -> bool:
        return self._waiting_since is not None and self._waiting_since <= moment

    def forget(self, tps: set[Hashable]) -> None:
        """Partitions revoked: their next owner starts again from the committed offset."""
        for tp in tps:
            self._expected.pop(tp, None)
            self._seeking.pop(tp, None)
            self._suspects.pop(tp, None)

    def expected(self, tp: Hashable) -> int | None:
        return self._expected.get(tp)

    async def _do_seek(self, tp: Hashable, offset: int) -> None:
        self.seeks += 1
        try:
            await self._seek(tp, offset)
        except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile; the next round seeks again
            log.warning("Offset guard: seeking %s to %d failed (%r); will retry", tp, offset, exc)
