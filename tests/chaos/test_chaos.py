"""Chaos: three workers, 1,000 tasks, `kill -9` one and SIGTERM another mid-stream.

Part of `make test` (alone: `make chaos`). It caught Faust losing and
skipping records around rebalances; app/offsets.py is the fix it judges.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sinks.chroma import ChromaStore
from tests.integration.harness import Topics, collect, produce, run
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
        assert workers[1].proc.wait(90) == 0
        sigterm_exit = time.monotonic() - t0
        want = {f"chaos-{i}" for i in range(1000)}
        records = run(collect([topics.results], lambda r: completed_ids(r, topics.results) >= want, timeout=400))
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
