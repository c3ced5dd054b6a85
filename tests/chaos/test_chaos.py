"""Chaos: three workers, 1,000 tasks, `kill -9` one and SIGTERM another mid-stream.

Part of `make test` (alone: `make chaos`). It caught Faust losing and
skipping records around rebalances; app/offsets.py is the fix it judges.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from sinks.chroma import ChromaStore
from tests.integration.harness import BOOTSTRAP, ROOT, Topics, WorkerProcess, collect, committed_vs_end, produce, run
from tests.integration.test_distributed import completed_ids, setup, tasks, worker  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def test_chaos_kill_and_sigterm_lose_nothing(
    setup: tuple[Topics, str, ChromaStore],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics, collection, store = setup
    workers = [worker(topics, collection, tmp_path, f"w-{n}").start() for n in ("x", "y", "z")]
    try:
        for w in workers:
            w.wait_ready()
        run(produce(topics.tasks, tasks("chaos", 1000)))
        # let work get going, then kill -9 one worker and SIGTERM another mid-stream
        run(collect([topics.results], lambda r: len(r[topics.results]) >= 150, timeout=300))
        os.killpg(workers[0].proc.pid, signal.SIGKILL)
        workers[1].proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            assert workers[1].proc.wait(90) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"w-y did not exit within 90s of SIGTERM\n{diagnose_stuck([workers[1]])}") from None
        sigterm_exit = time.monotonic() - t0
        want = {f"chaos-{i}" for i in range(1000)}
        try:
            records = run(collect([topics.results], lambda r: completed_ids(r, topics.results) >= want, timeout=400))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnose(topics, want, workers)}\n{diagnose_stuck(workers)}") from None
        results = records[topics.results]
        per_worker: dict[str, int] = {}
        for r in results:
            per_worker[r["worker_id"]] = per_worker.get(r["worker_id"], 0) + 1
        count = store.count(collection)
        with capsys.disabled():
            print(
                f"\nchaos: 1000 tasks, {len(results)} results ({len(results) - 1000} redelivered), "
                f"per worker {per_worker}, store count {count}, SIGTERM exit after {sigterm_exit:.1f}s"
            )
        assert completed_ids(records, topics.results) == want
        assert not [r for r in results if r["status"] != "completed"]
        assert count == 1000  # no loss, no duplicate
        assert per_worker.get("w-z", 0) > 0
    finally:
        for w in workers:
            w.kill()


def diagnose(topics: Topics, want: set[str], workers: list[WorkerProcess]) -> str:
    """Which tasks never completed (partition and offset), the group's offsets, and the workers' warnings."""

    async def where() -> dict[str, tuple[int, int]]:
        consumer = AIOKafkaConsumer(
            topics.tasks, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        found: dict[str, tuple[int, int]] = {}
        try:
            while len(found) < 1000:
                batch = await consumer.getmany(timeout_ms=2000)
                if not batch:
                    break
                for tp, messages in batch.items():
                    for m in messages:
                        found[json.loads(m.value)["task_id"]] = (tp.partition, m.offset)
        finally:
            await consumer.stop()
        return found

    places = run(where())
    results = run(collect([topics.results], lambda r: False, timeout=5, quiet=True))[topics.results]
    missing = sorted(
        want - {r["task_id"] for r in results if r["status"] == "completed"}, key=lambda t: places.get(t, (-1, -1))
    )
    committed, ends = run(committed_vs_end(topics.tasks, topics.group))
    lines = [
        f"missing {len(missing)}: {[(t, places.get(t)) for t in missing[:40]]}",
        f"committed {committed} end {ends}",
    ]
    for w in workers:
        lines.append(f"--- {w.worker_id} (exit {w.proc.poll() if w.proc else None}):")
        lines.extend(notable(w.log())[-40:])
    return "\n".join(lines)


#: log lines that tell a rebalance's story: warnings, errors, the offset guard, Faust's recovery, the group, SIGTERM
NOTABLE = re.compile(r"WARNING|ERROR|guard|Recovery\]: [A-Z]|generation|Setting newly|Revoking|SIGTERM|Signal received")
#: frames of a stuck task worth showing: the worker's own code and Faust's rebalance, recovery and consumer
OWN_FRAMES = re.compile(r'File ".*/(agents|app|engine|faust/(tables|app|transport))/')


def notable(log: str) -> list[str]:
    """The log's notable lines, a line repeated with only its time changed collapsed into one (``xN``)."""
    out: list[str] = []
    last, count = "", 0
    for line in log.splitlines():
        if not NOTABLE.search(line):
            continue
        text = re.sub(r"^\S+ \S+ - |\d+\.\d+ minutes", "", line)
        if text == last:
            count += 1
            continue
        if count:
            out[-1] += f"  (x{count + 1})"
        out.append(line[:300])
        last, count = text, 0
    if count:
        out[-1] += f"  (x{count + 1})"
    return out


def diagnose_stuck(workers: list[WorkerProcess]) -> str:
    """Where each live worker's asyncio tasks wait: mode's worker prints every task's stack on SIGUSR1."""
    live = [w for w in workers if w.proc is not None and w.proc.poll() is None]
    before = {w.worker_id: len(w.log()) for w in live}
    for w in live:
        w.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
    time.sleep(3)
    lines: list[str] = []
    for w in live:
        dump = w.log()[before[w.worker_id] :]
        frames = [
            re.sub(r"/\S*/site-packages/|/\S*/python3\.\d+/", "", line.strip().replace(f"{ROOT}/", ""))[:200]
            for line in dump.splitlines()
            if OWN_FRAMES.search(line) or line.startswith("Stack")
        ]
        lines.append(f"--- {w.worker_id}: its tasks' frames in the worker's and Faust's code (full dump in its log)")
        lines.extend(frames[-60:])
        lines.append(f"--- {w.worker_id}: notable log lines")
        lines.extend(notable(w.log())[-30:])
    return "\n".join(lines)
