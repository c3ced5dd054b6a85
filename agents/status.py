"""Faust tables fed by ``vectorization-status``: each task's status, and per-worker counters.

``task_status`` is keyed by task id and co-partitioned with the status topic
(records are keyed by task id), so after a rebalance each key lives with the
worker that owns its partition; ``/tasks/{task_id}`` is routed there.
``worker_stats`` is keyed by worker id through a ``group_by`` repartition.
"""

from __future__ import annotations

import json
from typing import Any

from app.faust_app import app, raw_topic, settings

# Tables use Faust's json codec: str keys, dict values. The task-status
# changelog is compacted *and* time-limited, so recovery after a rebalance
# reads at most `task_status_retention_hours` of tasks, not the whole history.
task_status = app.Table(
    "task-status",
    default=None,
    partitions=settings.topic_partitions,
    extra_topic_configs={
        "cleanup.policy": "compact,delete",
        "retention.ms": str(int(settings.task_status_retention_hours * 3_600_000)),
    },
)
worker_stats = app.Table("worker-stats", default=None, partitions=settings.topic_partitions)
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
    return record if isinstance(record, dict) and "task_id" in record else None


@app.agent(status_topic, name="task-status-tracker")
async def track_task_status(stream: Any) -> None:
    async for event in stream.events():
        record = _decode(event.value)
        if record is None:
            continue
        previous = table_get(task_status, record["task_id"]) or {"history": []}
        history = [*previous["history"], {"status": record["status"], "timestamp": record["timestamp"]}][-10:]
        _put(task_status, record["task_id"], {**record, "history": history})


def _worker_key(value: bytes) -> bytes:
    record = _decode(value) or {}
    return str(record.get("worker_id", "unknown")).encode()


@app.agent(status_topic, name="worker-stats-tracker")
async def track_worker_stats(stream: Any) -> None:
    async for value in stream.group_by(_worker_key, name="by-worker"):
        record = _decode(value)
        if record is None:
            continue
        worker = str(record.get("worker_id", "unknown"))
        stats = table_get(worker_stats, worker) or {"worker_id": worker, "completed": 0, "failed": 0, "received": 0}
        if record["status"] in ("completed", "failed", "received"):
            stats[record["status"]] += 1
        stats["last_seen"] = record["timestamp"]
        _put(worker_stats, worker, stats)
