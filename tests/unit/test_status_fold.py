"""The task-status fold is idempotent: a status record read twice is in a task's history once.

After a rebalance Faust 0.15.3 re-reads the status records it had not
committed yet (it does not commit on revocation), while the table's changelog
already holds their fold: the distributed test once saw a task's history
``received, received, processing, completed`` for statuses sent once.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.records import StatusRecord, fold_status, to_bytes


def record(status: str, timestamp: float, worker: str = "w-a") -> dict[str, Any]:
    return json.loads(to_bytes(StatusRecord(task_id="t", status=status, worker_id=worker, timestamp=timestamp)))


def fold(records: list[dict[str, Any]], entry: dict[str, Any] | None = None) -> dict[str, Any] | None:
    for r in records:
        entry = fold_status(entry, r)
    return entry


def steps(entry: dict[str, Any] | None) -> list[tuple[str, float]]:
    return [(h["status"], h["timestamp"]) for h in (entry or {}).get("history", [])]


def test_records_read_again_after_a_rebalance_leave_the_entry_as_it_was() -> None:
    first = [record("received", 1.0), record("processing", 1.1), record("completed", 1.5)]
    entry = fold(first)
    # the new owner recovered `entry` from the changelog and re-reads from the last commit
    again = fold(first[1:], entry)
    assert again == entry
    assert steps(again) == [("received", 1.0), ("processing", 1.1), ("completed", 1.5)]
    assert again["status"] == "completed"  # a re-read older record does not turn the status back


def test_a_partly_folded_task_gets_only_its_missing_steps() -> None:
    entry = fold([record("received", 1.0)])  # the fold committed to the changelog, the source offset not
    entry = fold([record("received", 1.0), record("processing", 1.1), record("completed", 1.5)], entry)
    assert steps(entry) == [("received", 1.0), ("processing", 1.1), ("completed", 1.5)]


def test_a_redelivered_task_keeps_both_deliveries() -> None:
    """At-least-once: a task processed again (new records, new timestamps) shows both runs."""
    entry = fold([record("received", 1.0), record("processing", 1.1), record("completed", 1.5)])
    entry = fold(
        [record("received", 4.0, "w-b"), record("processing", 4.1, "w-b"), record("completed", 4.3, "w-b")], entry
    )
    assert [s for s, _ in steps(entry)] == ["received", "processing", "completed"] * 2
    assert entry is not None and entry["worker_id"] == "w-b"
