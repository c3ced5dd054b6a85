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

:func:`register` creates the tables and attaches their agents and timer to a
built app; nothing happens on import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agents.recovery_watch import RecoveryWatch, faust_recovery_watch
from app import compat
from app.faust_app import WorkerApp
from app.runtime import WorkerRuntime
from tasks.records import fold_status

log = logging.getLogger("worker.main")


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


#: status records the tracker folds into one table write per task: the
#: received, processing and completed records of a small task usually arrive
#: within one window, and each table write costs a changelog record and a
#: RocksDB write (docs/performance.md)
TRACKER_BATCH = 2000  # ~0.2 s of the event loop when a status backlog fills a window at once
TRACKER_WINDOW_S = 1.0


class StatusTables:
    """The ``task-status`` and ``worker-stats`` tables of one worker app and the agents that feed them.

    ``started`` returns the worker's runtime once the intake agent started it (None before): the worker
    reports only then.
    """

    def __init__(self, worker: WorkerApp, started: Callable[[], WorkerRuntime | None]) -> None:
        s = worker.settings
        self.settings = s
        self._started = started
        # Tables use Faust's json codec: str keys, dict values. The task-status
        # changelog is compacted *and* time-limited, so recovery after a rebalance
        # reads at most `task_status_retention_hours` of tasks, not the whole history.
        # only with kafka.task_status_table: no changelog topic, recovery or RocksDB files without it
        self.task_status: Any = (
            worker.app.Table(
                "task-status",
                default=None,
                partitions=s.topic_partitions,
                # On disk the table outlives restarts, and the changelog's time limit deletes
                # nothing locally: RocksDB's own time-to-live drops entries past retention.
                options=worker.table_options(ttl_seconds=int(s.task_status_retention_hours * 3600)),
                extra_topic_configs={
                    "cleanup.policy": "compact,delete",
                    "retention.ms": str(int(s.task_status_retention_hours * 3_600_000)),
                },
            )
            if s.task_status_table
            else None
        )
        self.worker_stats = worker.app.Table(
            "worker-stats", default=None, partitions=s.topic_partitions, options=worker.table_options()
        )
        # recovery must see every changelog record it fetches, or it can wait for ever (app/compat.py)
        compat.deliver_every_changelog_record(
            {
                table.changelog_topic.get_topic_name()
                for table in (self.task_status, self.worker_stats)
                if table is not None
            }
        )
        self.status_topic = worker.raw_topic(s.status_topic)
        self.worker_reports = worker.raw_topic(f"{s.kafka_group_id}-worker-reports")
        #: the task ids this worker's tracker wrote last, newest at the right: `/tasks`
        #: lists these instead of scanning a table that holds a day of tasks
        self.recent_task_ids: deque[str] = deque(maxlen=1000)
        #: restarts a recovery of these tables that stopped making progress (agents/recovery_watch.py)
        self.recovery_watch: RecoveryWatch = faust_recovery_watch(worker.app, s.recovery_stall_seconds)
        self._watching: asyncio.Task[None] | None = None

    async def track_task_status(self, stream: Any) -> None:
        """Fold each window of status records into one ``task-status`` write per task."""
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
                    compat.set_current_event(stream, event)  # the table reads the partition of the current event
                    entry = table_get(self.task_status, task_id)
                latest[task_id] = (event, fold_status(entry, record))
            for task_id, (event, value) in latest.items():
                # records of one task share its partition (keyed by task id), and so does its table entry
                compat.set_current_event(stream, event)
                _put(self.task_status, task_id, value)
                self.recent_task_ids.append(task_id)
            compat.set_current_event(stream, None)

    async def report_worker_state(self) -> None:
        """Send this worker's state, keyed by its id, for the ``worker_stats`` table."""
        rt = self._started()  # created by the intake agent; None until it starts
        if rt is None or rt.pipeline is None:
            return
        state = {**rt.state(), "last_seen": time.time()}
        try:
            await self.worker_reports.send(key=self.settings.worker_id.encode(), value=json.dumps(state).encode())
        except Exception as exc:  # noqa: BLE001 - Kafka down: the next report follows; tasks are not affected
            log.debug("Could not send the worker report: %r", exc)

    def start_recovery_watch(self) -> None:
        """Check the tables' recovery every few seconds from now on (once; ``recovery_stall_seconds: 0``: never).

        Started by this module's agent, which Faust starts with the app: Faust's timers start only once the
        first recovery is complete, and that first recovery must be watched too."""
        stall = self.settings.recovery_stall_seconds
        if self._watching is None and stall > 0:
            self._watching = asyncio.ensure_future(self._watch_recovery(min(5.0, stall)))

    async def _watch_recovery(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.recovery_watch.check()
            except Exception:  # noqa: BLE001 - a broken check must not end the watch, nor the worker
                log.exception("Checking the table recovery failed; checking again in %.0fs", interval)

    async def track_worker_stats(self, stream: Any) -> None:
        """Each worker's reports into the ``worker-stats`` table, keyed by worker id."""
        self.start_recovery_watch()
        async for event in stream.events():
            try:
                state = json.loads(event.value)
            except (TypeError, ValueError):
                continue
            if isinstance(state, dict) and state.get("worker_id"):
                _put(self.worker_stats, str(state["worker_id"]), state)


def register(worker: WorkerApp, started: Callable[[], WorkerRuntime | None]) -> StatusTables:
    """Create the tables on ``worker``'s app and attach their agents and the worker-report timer."""
    tables = StatusTables(worker, started)
    app, s = worker.app, worker.settings
    # Reading every status record back costs one-text tasks up to 8% of their
    # throughput (docs/performance.md); kafka.task_status_table: false leaves the
    # table empty and /tasks/{id} says so.
    if s.task_status_table:
        app.agent(tables.status_topic, name="task-status-tracker")(tables.track_task_status)
    app.timer(interval=s.heartbeat_interval)(tables.report_worker_state)
    app.agent(tables.worker_reports, name="worker-stats-tracker")(tables.track_worker_stats)
    return tables
