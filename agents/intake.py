"""The intake agent: every record of ``vectorization-tasks`` enters the pipeline here.

The stream runs without automatic acks. Each record gets a ticket in the
ordered :class:`~engine.acks.AckTracker`; the pipeline completes the ticket when
the task is stored and reported (or dead-lettered), and only then is the
offset acknowledged, in partition order. A worker that dies mid-batch leaves
its records unacknowledged, so another worker processes them again; the
deterministic vector ids make that an overwrite.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from app.faust_app import OUTPUT_TOPICS, ack_missing_offsets, app, claim_data_dir, raw_topic, settings, tasks_topic
from app.offsets import OffsetGuard
from app.runtime import WorkerRuntime
from engine.acks import MissingOffsets, Ticket

log = logging.getLogger("worker.main")
_runtime: WorkerRuntime | None = None


async def _start_offset(tp: Any) -> int:
    """Where a freshly assigned partition resumes: its committed offset (asked of the broker), else the log start.

    Faust's own record of it (``_committed_offset``) is not set yet for the
    first records after an assignment (and 0 reads as unset): trusting it
    made a worker re-read partitions from the start after a rebalance.
    """
    consumer = app.consumer
    committed: int | None = None
    try:
        thread = consumer._thread  # Faust runs aiokafka in its own thread; ask there
        committed = await thread.call_thread(thread._ensure_consumer().committed, tp)
    except Exception as exc:  # noqa: BLE001 - fall back to what Faust knows
        log.warning("Could not ask the broker for the committed offset of %s (%r); using Faust's", tp, exc)
        committed = consumer._committed_offset.get(tp)
    if committed is not None:
        return int(committed)
    earliest = await consumer.earliest_offsets(tp)
    return int(earliest.get(tp) or 0)


async def _seek(tp: Any, offset: int) -> None:
    await app.consumer.seek(tp, offset)


def _assigned(tp: Any) -> bool:
    return tp in app.consumer.assignment()


async def _positions() -> dict[Any, int]:
    """The consumer's position (next offset to fetch) of each task partition it reads now; none while rebalancing."""
    try:
        consumer = app.consumer
        if app.rebalancing or not consumer.flow_active:
            return {}
        tps = [tp for tp in consumer.assignment() if tp.topic == settings.tasks_topic]
        if not tps:
            return {}
        thread = consumer._thread  # aiokafka runs in Faust's consumer thread; ask there
        kafka = thread._ensure_consumer()

        async def read() -> dict[Any, int]:
            # at once for all partitions, briefly: a partition without a position yet is skipped this time
            found = await asyncio.wait_for(
                asyncio.gather(*(kafka.position(tp) for tp in tps), return_exceptions=True), timeout=0.5
            )
            return {tp: p for tp, p in zip(tps, found, strict=True) if isinstance(p, int)}

        return await thread.call_thread(read)
    except Exception as exc:  # noqa: BLE001 - starting, stopping or rebalancing: checked again next second
        log.debug("Could not read the consumer's positions (%r)", exc)
        return {}


async def _real_gap(tp: Any, first: int, last: int) -> None:
    await runtime().pass_missing(tp, first, last)


guard = OffsetGuard(seek=_seek, committed=_start_offset, real_gap=_real_gap, assigned=_assigned, positions=_positions)


async def kafka_send(topic: str, key: bytes | None, value: bytes) -> Any:
    """SendPort on Faust's producer: returns the delivery future.

    Straight to the producer: ``Topic.send`` wraps each record in Faust's
    channel, message and sensor objects, which cost a one-text task more of
    the event loop than its four records themselves (docs/performance.md).
    The topics are declared when intake starts.
    """
    return await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)


def consumer_lag() -> dict[tuple[str, int], int]:
    """Records between the committed offset and the end of each assigned task partition."""
    consumer = app.consumer
    lags: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic != settings.tasks_topic:
            continue
        highwater = consumer.highwater(tp)
        if highwater is not None:
            committed = consumer._committed_offset.get(tp) or 0  # Faust keeps no public accessor
            lags[(tp.topic, tp.partition)] = max(0, highwater - committed)
    return lags


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(settings, kafka_send, lag=consumer_lag)
    return _runtime


@app.agent(tasks_topic, name="intake")
async def intake(stream: Any) -> None:
    claim_data_dir()  # before the embedded store or a table opens anything there
    for name in OUTPUT_TOPICS:
        await raw_topic(name).maybe_declare()
    rt = runtime()
    await rt.start()
    events = stream.noack()

    async def ack(tickets: list[Ticket]) -> None:
        for ticket in tickets:
            if isinstance(ticket.event, MissingOffsets):
                ack_missing_offsets(app.consumer, ticket.tp, ticket.event.first, ticket.event.last)
            else:
                await events.ack(ticket.event)

    rt.set_acker(ack)
    rt.ensure_lane()
    assert rt.pipeline is not None
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


@app.on_partitions_revoked.connect
async def forget_revoked(app: Any, revoked: set[Any], **kwargs: Any) -> None:
    """Records of revoked task partitions are re-read from the committed offset: never ack the old ones."""
    task_tps = {tp for tp in revoked if tp.topic == settings.tasks_topic}
    guard.forget(task_tps)
    if _runtime is not None:
        dropped = _runtime.tracker.forget(task_tps)
        if dropped:
            log.info("Rebalance: %d task(s) in flight on revoked partitions will be redelivered", dropped)


@app.timer(interval=1.0)
async def reseek_stalled() -> None:
    """Records fetched but never delivered are sought back, a seek that brought nothing is repeated
    (see OffsetGuard.reseek_stalled)."""
    await guard.reseek_stalled()
