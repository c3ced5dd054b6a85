"""Acknowledge source offsets strictly in order, whatever order tasks finish in.

Tasks of one partition may finish out of order (a failed task finishes at
once, a batch task takes longer). Faust commits from the set of acked
offsets, and faust-streaming 0.15.3 can commit past a gap (faust#606), so we
never hand Faust an out-of-order ack: an event is released for acking only
when it and every earlier event of its partition are done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MissingOffsets:
    """The event of a ticket for offsets that hold no record (``first``..``last``, e.g. a transaction marker)."""

    first: int
    last: int


@dataclass(eq=False)
class Ticket:
    """One source record in flight."""

    tp: Hashable
    offset: int
    event: Any = None
    done: bool = field(default=False)
    forgotten: bool = field(default=False)
    failed: bool = field(default=False)  # its task failed (dead-lettered): a migration's twin is then undone
    parent: Ticket | None = field(default=None)  # a migration twin's: the ticket of the task it twins

    @property
    def revoked(self) -> bool:
        """Its record's partition was revoked in a rebalance (a twin: its task's): the work is handed over."""
        return self.forgotten or (self.parent is not None and self.parent.forgotten)

    @property
    def source_tp(self) -> Hashable:
        """The partition its work comes from (a twin: its task's)."""
        return self.parent.tp if self.parent is not None else self.tp


class AckTracker:
    """Per-partition FIFO of tickets; :meth:`complete` returns what may be acked now."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[Ticket]] = {}

    def add(self, tp: Hashable, offset: int, event: Any = None) -> Ticket:
        ticket = Ticket(tp, offset, event)
        self._queues.setdefault(tp, deque()).append(ticket)
        return ticket

    def complete(self, ticket: Ticket) -> list[Ticket]:
        """Mark ``ticket`` done; return the tickets at the head of its partition now ready, in order.

        A ticket dropped by :meth:`forget` is never returned: its record was
        revoked and will be delivered again from the committed offset.
        """
        ticket.done = True
        if ticket.forgotten:
            return []
        queue = self._queues.get(ticket.tp)
        ready: list[Ticket] = []
        while queue and queue[0].done:
            ready.append(queue.popleft())
        if queue is not None and not queue:
            del self._queues[ticket.tp]
        return ready

    def forget(self, tps: set[Hashable]) -> int:
        """Drop tickets of partitions revoked in a rebalance; returns how many.

        Their records are re-read from the committed offset after the
        rebalance (by whichever worker gets the partition). Acking one of the
        old events later would put an offset into Faust's acked set ahead of
        the new deliveries, and faust-streaming 0.15.3 commits past a head gap
        of one record (faust#606): a lost task. So forgotten tickets are never
        released, even when their work finishes.
        """
        dropped = 0
        for tp in list(self._queues):
            if tp in tps:
                for ticket in self._queues.pop(tp):
                    ticket.forgotten = True
                    dropped += 1
        return dropped

    def in_flight(self) -> int:
        return sum(len(q) for q in self._queues.values())
