"""Hostile producers on a real worker: every hostile record is dead-lettered, every valid task interleaved
with them completes, the worker stays up and the group's lag reaches 0."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tests.integration.harness import Topics, WorkerProcess, collect, committed_vs_end, produce, run

pytestmark = pytest.mark.integration

TEXT = '{"task_type": "text_vectorization", "data": "a", "task_id": "%s"%s}'


def hostile_records() -> list[bytes]:
    """At least 100 records, each of which must fail alone: the cases of the hardening issue and their kin."""
    huge = "9" * 5000
    records: list[bytes] = []
    for i in range(12):
        records += [
            # integers Python will not read (the record that used to stop every worker of the group)
            f'{{"task_type": "batch_vectorization", "data": ["x"], "batch_size": {huge}, "task_id": "h-int-{i}"}}'.encode(),
            (TEXT % (f"h-meta-int-{i}", f', "metadata": {{"n": {huge}}}')).encode(),
            # lone surrogates in metadata, in a key, in a title, in the text
            (TEXT % (f"h-sur-{i}", ', "metadata": {"k": "\\ud800"}')).encode(),
            (TEXT % (f"h-surkey-{i}", ', "metadata": {"\\udfff": 1}')).encode(),
            json.dumps(
                {"task_type": "document_vectorization", "data": {"title": "\ud800", "content": "c"}}, ensure_ascii=True
            ).encode(),
            # NaN, deep nesting, not an object, not UTF-8, not JSON, empty
            (TEXT % (f"h-nan-{i}", ', "metadata": {"x": NaN}')).encode(),
            ("[" * (100 + i) + "]" * (100 + i)).encode(),
            b"[1, 2, 3]",
            bytes(random.Random(i).randrange(256) for _ in range(64)) + b"\xff",
            b"{not json at all",
        ]
    # 10,000 non-string items (a 1.2 MB validation message before the cap), oversized metadata, too many keys,
    # a title over the limit, an unknown task type, wrong field types
    records += [
        json.dumps({"task_type": "batch_vectorization", "data": list(range(10_000)), "task_id": "h-wide"}).encode(),
        (TEXT % ("h-bigmeta", ', "metadata": {"blob": "%s"}' % ("x" * 40_000))).encode(),
        (TEXT % ("h-keys", ', "metadata": ' + json.dumps({f"k{i}": i for i in range(1000)}))).encode(),
        json.dumps(
            {"task_type": "document_vectorization", "task_id": "h-title", "data": {"title": "t" * 5000, "content": "c"}}
        ).encode(),
        b'{"task_type": "summarize_everything", "data": "x", "task_id": "h-type"}',
        b'{"task_type": "text_vectorization", "data": {"not": "text"}, "task_id": "h-data"}',
        b'{"task_type": 7, "data": "x"}',
        b"",
    ]
    return records


def test_hostile_records_fail_alone_and_the_worker_goes_on(topics: Topics, tmp_path: Path) -> None:
    hostile = hostile_records()
    assert len(hostile) >= 100
    valid = [(TEXT % (f"ok-{i}", "")).encode() for i in range(len(hostile))]
    stream = [record for pair in zip(hostile, valid, strict=True) for record in pair]  # interleaved
    worker = WorkerProcess(topics, tmp_path / "w").start()
    try:
        worker.wait_ready()
        run(produce(topics.tasks, stream))
        records = run(
            collect(
                [topics.results, topics.dlq],
                # distinct records: at-least-once may repeat one after a rebalance
                lambda r: (
                    len({(x["task_id"], x["status"]) for x in r[topics.results]}) >= len(stream)
                    and len({json.dumps(d["source"]) for d in r[topics.dlq]}) >= len(hostile)
                ),
                timeout=240,
            )
        )
        deadline = time.monotonic() + 60
        while True:  # the commits follow the acks within a second or two
            committed, end = run(committed_vs_end(topics.tasks, topics.group))
            if committed == end or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-3000:]
        status, ready = worker.get("/readyz")
        assert status == 200, ready
        assert worker.stop() == 0
    finally:
        worker.kill()
    results = records[topics.results]
    completed = {r["task_id"] for r in results if r["status"] == "completed"}
    assert completed == {f"ok-{i}" for i in range(len(valid))}, sorted(completed)[:5]
    failed = list({r["task_id"]: r for r in results if r["status"] == "failed"}.values())
    assert len(failed) == len(hostile), len(failed)
    for result in failed:
        message = result["error"]["message"]
        assert result["error"]["kind"] == "invalid_task" and 0 < len(message) <= 4096, result
    sources = {(d["source"]["partition"], d["source"]["offset"]) for d in records[topics.dlq]}
    assert len(sources) == len(hostile)  # each dead letter says where its record is
    assert committed == end, (committed, end)
    assert sum(end.values()) == len(stream)
