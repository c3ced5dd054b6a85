"""The intake agent: every record of ``vectorization-tasks`` enters the pipeline here.

The stream runs without automatic acks. Each record gets a ticket in the
ordered :class:`~engine.acks.AckTracker`; the pipeline completes the ticket when
the task is stored and reported (or dead-lettered), and only then is the
offset acknowledged, in partition order. A worker that dies mid-batch leaves
its records unacknowledged, so another worker processes them again; the
deterministic vector ids make that an overwrite.

:func:`register` attaches the agent, its rebalance handler and the guard's
timer to a built app; nothing happens on import.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from app import compat
from app.faust_app import WorkerApp
from app.offsets import OffsetGuard
from app.runtime import WorkerRuntime
from core.errors import ConfigError
from engine.acks import MissingOffsets, Ticket

log = logging.getLogger("worker.main")


class Intake:
    """The intake of one worker app: its offset guard, its Kafka ports and the worker runtime it starts."""

    def __init__(self, worker: WorkerApp) -> None:
        self.worker = worker
        self.app = worker.app
        self.settings = worker.settings
        self._runtime: WorkerRuntime | None = None
        self.guard = OffsetGuard(
            seek=self._seek,
            committed=self.start_offset,
            real_gap=self._real_gap,
            assigned=self._assigned,
            positions=self.positions,
        )

    @property
    def started(self) -> WorkerRuntime | None:
        """The runtime once something asked for it (the agent, when it starts); None before."""
        return self._runtime

    def runtime(self) -> WorkerRuntime:
        """The worker runtime (models, stores, pipeline), created on first use."""
        if self._runtime is None:
            self._runtime = WorkerRuntime(self.settings, self.kafka_send, lag=self.consumer_lag)
        return self._runtime

    async def start_offset(self, tp: Any) -> int:
        """Where a freshly assigned partition resumes: its committed offset (asked of the broker), else the log
        start.

        Faust's own record of it is not set yet for the first records after an
        assignment (and 0 reads as unset): trusting it made a worker re-read
        partitions from the start after a rebalance.
        """
        consumer = self.app.consumer
        committed: int | None = None
        try:
            committed = await compat.broker_committed_offset(consumer, tp)
        except Exception as exc:  # noqa: BLE001 - fall back to what Faust knows
            log.warning("Could not ask the broker for the committed offset of %s (%r); using Faust's", tp, exc)
            committed = compat.committed_offset(consumer, tp)
        if committed is not None:
            return committed
        earliest = await consumer.earliest_offsets(tp)
        return int(earliest.get(tp) or 0)

    async def _seek(self, tp: Any, offset: int) -> None:
        await self.app.consumer.seek(tp, offset)

    def _assigned(self, tp: Any) -> bool:
        return tp in self.app.consumer.assignment()

    async def positions(self) -> dict[Any, int]:
        """The consumer's position (next offset to fetch) of each task partition it reads now; none while
        rebalancing."""
        try:
            if self.app.rebalancing:
                return {}
            consumer = self.app.consumer
            tps = [tp for tp in consumer.assignment() if tp.topic == self.settings.tasks_topic]
            return await compat.consumer_positions(consumer, tps)
        except Exception as exc:  # noqa: BLE001 - starting, stopping or rebalancing: checked again next second
            log.debug("Could not read the consumer's positions (%r)", exc)
            return {}

    async def _real_gap(self, tp: Any, first: int, last: int) -> None:
        await self.runtime().pass_missing(tp, first, last)

    async def kafka_send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        """SendPort on Faust's producer: returns the delivery future.

        Straight to the producer: ``Topic.send`` wraps each record in Faust's
        channel, message and sensor objects, which cost a one-text task more of
        the event loop than its four records themselves (docs/performance.md).
        The topics are declared when intake starts.
        """
        return await self.app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Records between the committed offset and the end of each assigned task partition."""
        consumer = self.app.consumer
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            if tp.topic != self.settings.tasks_topic:
                continue
            highwater = consumer.highwater(tp)
            if highwater is not None:
                committed = compat.committed_offset(consumer, tp) or 0
                lags[(tp.topic, tp.partition)] = max(0, highwater - committed)
        return lags

    async def run(self, stream: Any) -> None:
        """Each task record, admitted in offset order, into the pipeline; acked in partition order once done."""
        self.worker.claim_data_dir()  # before the embedded store or a table opens anything there
        for name in self.worker.output_topics:
            await self.worker.raw_topic(name).maybe_declare()
        rt = self.runtime()
        try:
            await rt.start()
        except ConfigError as exc:  # e.g. a model entry no installed family takes: the worker must not start
            print(f"vectorize-worker: {exc}", file=sys.stderr, flush=True)
            log.critical("Cannot start: %s", exc)
            os._exit(2)
        events = stream.noack()

        async def ack(tickets: list[Ticket]) -> None:
            for ticket in tickets:
                if isinstance(ticket.event, MissingOffsets):
                    compat.ack_offsets_without_records(
                        self.app.consumer, ticket.tp, ticket.event.first, ticket.event.last
                    )
                else:
                    await events.ack(ticket.event)

        rt.set_acker(ack)
        rt.ensure_lane()
        assert rt.pipeline is not None
        guard = self.guard
        try:
            guard.waiting()
            async for event in events.events():
                message = event.message
                if await guard.admit(message.tp, message.offset):
                    ticket = rt.tracker.add(message.tp, message.offset, event)
                    await rt.pipeline.intake(
                        event.value, ticket, (message.topic, message.partition, message.offset), key=message.key
                    )
                # else out of order: never processed, never acked (see app/offsets.py)
                guard.waiting()
        except Exception:
            # A restarted agent would inherit tickets of records it never sees
            # again and stall their partitions' commits: exit instead; nothing
            # unfinished was acknowledged, so another worker takes it over.
            log.critical("The intake agent failed; the worker exits so its tasks go to another worker", exc_info=True)
            os._exit(70)
        finally:
            await rt.stop()

    async def forget_revoked(self, app: Any, revoked: set[Any], **kwargs: Any) -> None:
        """Records of revoked task partitions are re-read from the committed offset: never ack the old ones.

        Their tasks are handed over: none is written from now on (engine/store_writer.py), and the rebalance
        waits, at most ``kafka.handover_wait`` seconds, for writes already under way to end. Kafka gives the
        partitions to their new owner only once every member has rejoined, so no write of this worker lands
        after the new owner's write of a later version of the same id."""
        task_tps = {tp for tp in revoked if tp.topic == self.settings.tasks_topic}
        self.guard.forget(task_tps)
        rt = self._runtime
        if rt is None:
            return
        dropped = rt.tracker.forget(task_tps)
        if not dropped:
            return
        log.info("Rebalance: %d task(s) in flight on revoked partitions will be redelivered", dropped)
        # within half the session timeout: Faust warns of a revocation that takes the whole of it
        wait = min(self.settings.kafka_handover_wait, self.settings.kafka_session_timeout / 2)
        if rt.pipeline is not None and not await rt.pipeline.writer.settled(task_tps, wait):
            log.warning(
                "Rebalance: store writes of tasks on revoked partitions still run after %.0fs "
                "(kafka.handover_wait, at most half kafka.session_timeout); the partitions go to their new owner "
                "now, and a request already sent could land after the new owner's write of the same id: a slow "
                "store?",
                wait,
            )

    async def reseek_stalled(self) -> None:
        """Records fetched but never delivered are sought back, a seek that brought nothing is repeated
        (see OffsetGuard.reseek_stalled)."""
        await self.guard.reseek_stalled()


def register(worker: WorkerApp) -> Intake:
    """Attach the intake agent, its rebalance handler and the guard's 1-second timer to ``worker``'s app."""
    intake = Intake(worker)
    app = worker.app
    app.agent(worker.tasks_topic, name="intake")(intake.run)
    app.on_partitions_revoked.connect(intake.forget_revoked)
    app.timer(interval=1.0)(intake.reseek_stalled)
    return intake
