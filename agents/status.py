"""Faust tables: each task's status (from ``vectorization-status``) and each worker's state.

``task_status`` is keyed by task id and co-partitioned with the status topic
(records are keyed by task id), so after a rebalance each key lives with the
worker that owns its partition; ``/tasks/{task_id}`` is routed there.

``worker_stats`` is keyed by worker id and fed by the workers themselves:
every ``heartbeat_interval`` each worker sends its state (tasks processed and
failed since it started, active tasks, loaded models, last seen) to the
``<group>-worker-reports`` topic, keyed by its id. One record per worker every
few seconds, where counting the status records cost a repartition of three
records per task (see docs/performance.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

from app.faust_app import app, raw_topic, settings, table_options
from tasks.records import fold_status

log = logging.getLogger("worker.main")

# Tables use Faust's json codec: str keys, dict values. The task-status
# changelog is compacted *and* time-limited, so recovery after a rebalance
# reads at most `task_status_retention_hours` of tasks, not the whole history.
task_status = app.Table(
    "task-status",
    default=None,
    partitions=settings.topic_partitions,
    # On disk the table outlives restarts, and the changelog's time limit deletes
    # nothing locally: RocksDB's own time-to-live drops entries past retention.
    options=table_options(ttl_seconds=int(settings.task_status_retention_hours * 3600)),
    extra_topic_configs={
        "cleanup.policy": "compact,delete",
        "retention.ms": str(int(settings.task_status_retention_hours * 3_600_000)),
    },
)
worker_stats = app.Table("worker-stats", default=None, partitions=settings.topic_partitions, options=table_options())
status_topic = raw_topic(settings.status_topic)


def table_get(table: Any, key: str) -> dict[str, Any] | None:
    return table.get(key)


def _put(table: Any, key: str, value: dict[str, Any]) -> None:
    table[key] = value


def _decode(value: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(value)
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict) or not all(k in record for k in ("task_id", "status", "timestamp")):
        return None  # not a status record: skipped, never a reason to lose the window's other records
    return record


#: the task ids this worker's tracker wrote last, newest at the right: `/tasks`
#: lists these instead of scanning a table that holds a day of tasks
recent_task_ids: deque[str] = deque(maxlen=1000)


#: status records the tracker folds into one table write per task: the
#: received, processing and completed records of a small task usually arrive
#: within one window, and each table write costs a changelog record and a
#: RocksDB write (docs/performance.md)
TRACKER_BATCH = 2000  # ~0.2 s of the event loop when a status backlog fills a window at once
TRACKER_WINDOW_S = 1.0


async def track_task_status(stream: Any) -> None:
    async for events in stream.take_events(TRACKER_BATCH, within=TRACKER_WINDOW_S):
        # No await in this body: Faust's take buffer fills in the background and sets the stream's
        # current event, which the table reads and writes below must not see change under them.
        latest: dict[str, tuple[Any, dict[str, Any]]] = {}
        for event in events:
            record = _decode(event.value)
            if record is None:
                continue
            task_id = record["task_id"]
            if task_id in latest:
                entry = latest[task_id][1]
            else:
                stream._set_current_event(event)  # the table reads the partition of the current event
                entry = table_get(task_status, task_id)
            latest[task_id] = (event, fold_status(entry, record))
        for task_id, (event, value) in latest.items():
            # records of one task share its partition (keyed by task id), and so does its table entry
            stream._set_current_event(event)
            _put(task_status, task_id, value)
            recent_task_ids.append(task_id)
        stream._set_current_event(None)


# Reading every status record back costs one-text tasks up to 8% of their
# throughput (docs/performance.md); kafka.task_status_table: false leaves the
# table empty and /tasks/{id} says so.
if settings.task_status_table:
    app.agent(status_topic, name="task-status-tracker")(track_task_status)


worker_reports = raw_topic(f"{settings.kafka_group_id}-worker-reports")


@app.timer(interval=settings.heartbeat_interval)
async def report_worker_state() -> None:
    """Send this worker's state, keyed by its id, for the ``worker_stats`` table."""
    from agents.intake import _runtime  # created by the intake agent; None until it starts

    if _runtime is None or _runtime.pipeline is None:
        return
    state = {**_runtime.state(), "last_seen": time.time()}
    try:
        await worker_reports.send(key=settings.worker_id.encode(), value=json.dumps(state).encode())
    except Exception as exc:  # noqa: BLE001 - Kafka down: the next report follows; tasks are not affected
        log.debug("Could not send the worker report: %r", exc)


@app.agent(worker_reports, name="worker-stats-tracker")
async def track_worker_stats(stream: Any) -> None:
    async for event in stream.events():
        try:
            state = json.loads(event.value)
        except (TypeError, ValueError):
            continue
        if isinstance(state, dict) and state.get("worker_id"):
            _put(worker_stats, str(state["worker_id"]), state)
