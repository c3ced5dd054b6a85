"""Tasks written by a transactional producer: each commit marker takes an offset that holds no task.

Faust's consumer skips the markers, so the worker sees offsets jump. The
offset guard (app/offsets.py) must confirm each marker as a real hole and
move on: in the middle of a partition (the next record resumes past it) and
at its very end (nothing follows; only the consumer's position passes it).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from sinks.chroma import ChromaStore
from tests.integration.harness import BOOTSTRAP, Topics, collect, committed_vs_end, produce, run
from tests.integration.test_distributed import completed_ids, setup, tasks, worker  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


async def produce_in_transactions(topic: str, batches: list[list[bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP, transactional_id=f"it-tx-{uuid.uuid4().hex[:8]}", enable_idempotence=True
    )
    await producer.start()
    try:
        for batch in batches:
            async with producer.transaction():
                for value in batch:
                    await producer.send(topic, value)
    finally:
        await producer.stop()


def test_tasks_from_a_transactional_producer_are_processed_once_and_committed_past_the_markers(
    setup: tuple[Topics, str, ChromaStore],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    topics, collection, store = setup
    w = worker(topics, collection, tmp_path, "w-tx").start()
    try:
        w.wait_ready()
        payloads = tasks("tx", 60)
        run(produce_in_transactions(topics.tasks, [payloads[:30], payloads[30:]]))
        want = {f"tx-{i}" for i in range(60)}
        records = run(collect([topics.results], lambda r: completed_ids(r, topics.results) >= want, timeout=180))
        assert len(records[topics.results]) == 60  # none processed twice

        # every offset, the markers included, ends up committed (else the lag never reaches 0)
        deadline = time.monotonic() + 90
        while True:
            committed, ends = run(committed_vs_end(topics.tasks, topics.group))
            if committed == ends or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert committed == ends, w.log()[-3000:]
        assert sum(ends.values()) > 60  # the markers took offsets of their own
        assert "do not exist" in w.log()  # the guard confirmed them as holes

        # plain records after the last marker still flow
        run(produce(topics.tasks, tasks("after", 6)))
        want |= {f"after-{i}" for i in range(6)}
        records = run(collect([topics.results], lambda r: completed_ids(r, topics.results) >= want, timeout=120))
        assert len(records[topics.results]) == 66
        assert store.count(collection) == 66
    finally:
        w.kill()
