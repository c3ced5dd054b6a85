"""A rebalance hands the revoked partitions' tasks over (engine/store_writer.py, agents/intake.py): on a real broker
and a real Chroma server, a worker whose store writes are failing when a second worker joins never writes the
tasks it lost after the new owner wrote their later versions.

Worker A reaches Chroma through a relay the test can cut (connections refused, as a store that went away); worker
B reaches it directly. Version 1 of eight ids (two per partition, keyed by id) reaches A while its store is away:
A retries the write. B joins, takes half the partitions, and writes version 1 then version 2 of their ids. Then
A's store comes back. Before the hand-over, A's retried write of version 1 landed then, over B's version 2.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiokafka.partitioner import murmur2

from sinks.chroma import ChromaStore
from tests.integration.harness import (
    Topics,
    WorkerProcess,
    create_topics,
    free_port,
    produce,
    require_kafka,
    run,
    scrape_metrics,
)
from tests.integration.test_distributed import CHROMA_URL

pytestmark = pytest.mark.integration
PARTITIONS = 4


class Relay:
    """A TCP relay to ``target`` on a port of its own; :meth:`down` closes it (new connections refused, the open
    ones cut), :meth:`up` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> Relay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def two_ids_per_partition() -> list[str]:
    """Eight task ids, two in each partition (Kafka's default partitioner on the id as key)."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for i in range(1000):
        task_id = f"h-{i}"
        ids = by_partition[(murmur2(task_id.encode()) & 0x7FFFFFFF) % PARTITIONS]
        if len(ids) < 2:
            ids.append(task_id)
    return [task_id for ids in by_partition.values() for task_id in ids]


def version(task_id: str, n: int) -> str:
    return f"Version {n} of the record {task_id}, as its source held it then."


def send(topics: Topics, ids: list[str], n: int) -> None:
    async def go() -> None:
        for task_id in ids:
            task = {"task_id": task_id, "task_type": "text_vectorization", "data": version(task_id, n)}
            await produce(topics.tasks, [json.dumps(task).encode()], key=task_id.encode())

    run(go())


def stored_texts(store: ChromaStore, collection: str) -> dict[str, str]:
    """Each task's stored text, read back with the adapter (through the collection's alias)."""
    physical = store.resolve(collection) or collection
    out: dict[str, str] = {}
    cursor = None
    while True:
        points, cursor = store.scan(physical, cursor)
        out.update({p.payload["task_id"]: p.payload["text"] for p in points})
        if not cursor:
            return out


def idle(w: WorkerProcess, timeout: float = 180) -> dict[str, Any]:
    """The worker's /state once it holds no task and has read every record of its partitions, twice in a row
    3 s apart (the lag is refreshed every 2 s)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        _, state = w.get("/state")
        calm = calm + 1 if (state["in_flight"], state["active_tasks"], state["consumer_lag"]) == (0, 0, 0) else 0
        if calm == 2:
            return state
        time.sleep(3)
    raise AssertionError(f"{w.worker_id} never went idle: {state}\n{w.log()[-4000:]}")


def test_a_worker_whose_writes_fail_hands_its_revoked_tasks_over_and_never_writes_them_late(tmp_path: Path) -> None:
    require_kafka()
    store = ChromaStore(url=CHROMA_URL)
    store.health()  # `make up`'s Chroma (a failure here names it)
    topics = Topics()
    run(create_topics([topics.tasks], partitions=PARTITIONS))
    collection = f"it_{topics.suffix}"
    chroma = urlsplit(CHROMA_URL)
    relay = Relay((chroma.hostname or "127.0.0.1", chroma.port or 8000)).up()
    common = {
        "VECTORIZE_WORKER_VECTOR_DBS": "chroma",
        "VECTORIZE_WORKER_DEFAULT_COLLECTION": collection,
        "VECTORIZE_WORKER_TOPIC_PARTITIONS": str(PARTITIONS),
        "VECTORIZE_WORKER_KAFKA_SESSION_TIMEOUT": "10",
        "VECTORIZE_WORKER_HEARTBEAT_INTERVAL": "1",
        "VECTORIZE_WORKER_KAFKA_HANDOVER_WAIT": "3",
    }
    metrics_a = free_port()
    a = WorkerProcess(
        topics,
        tmp_path / "a",
        worker_id="w-a",
        VECTORIZE_WORKER_CHROMA__URL=f"http://127.0.0.1:{relay.port}",
        VECTORIZE_WORKER_METRICS_PORT=str(metrics_a),
        **common,
    ).start()
    b = WorkerProcess(topics, tmp_path / "b", worker_id="w-b", VECTORIZE_WORKER_CHROMA__URL=CHROMA_URL, **common)
    ids = two_ids_per_partition()
    try:
        a.wait_ready()
        send(topics, ["h-warm"], 0)  # the collection made (and put behind its alias) while A's store answers
        deadline = time.monotonic() + 60
        while "h-warm" not in stored_texts(store, collection) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "h-warm" in stored_texts(store, collection), a.log()[-4000:]
        relay.down()
        send(topics, ids, 1)
        a.wait_for_log(r"Storing \d+ vectors in .* failed \(attempt 1\)", timeout=60)  # A retries its write
        b.start()
        b.wait_ready()
        a.wait_for_log(r"on revoked partitions will be redelivered", timeout=60)
        send(topics, ids, 2)
        deadline = time.monotonic() + 120  # B writes version 2 of its ids (then goes idle)
        while not any(text == version(t, 2) for t, text in stored_texts(store, collection).items() if t in ids):
            assert time.monotonic() < deadline, b.log()[-4000:]
            time.sleep(0.5)
        idle(b)
        moved = {task_id for task_id, text in stored_texts(store, collection).items() if task_id in ids}
        assert moved and len(moved) < len(ids), moved  # B took some partitions, A kept the others
        assert {t: stored_texts(store, collection)[t] for t in moved} == {t: version(t, 2) for t in moved}
        relay.up()  # A's store is back: A writes its own partitions' tasks, and nothing of those it lost
        idle(a)
        assert stored_texts(store, collection) == {"h-warm": version("h-warm", 0), **{t: version(t, 2) for t in ids}}
        handed = scrape_metrics(metrics_a)["worker_tasks_handed_over_total"]
        assert handed >= len(moved), handed  # eager rebalancing: A gave up every task it held, then took its own again
        assert "its partition was revoked in a rebalance" in a.log()
    finally:
        relay.down()
        for w in (a, b):
            if w.proc is not None:
                w.stop()
                w.kill()
