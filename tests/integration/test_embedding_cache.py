"""The embedding cache on real Kafka and Redis with real worker processes (all-MiniLM-L6-v2, embedded Qdrant).

What the model embedded is read from the worker's own metrics: ``worker_batch_size`` observes the texts of every
model call, so its sum counts the texts the model embedded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import Settings
from ops.embedding_cache import CacheStoreError, RedisVectors
from tests.integration.harness import Topics, WorkerProcess, collect, free_port, produce, run, scrape_metrics

pytestmark = pytest.mark.integration
OWN_REDIS_PORT = 6390  # this test's own Redis, stopped and started again; never the shared 6379


def embedded(port: int) -> float:
    """Texts the worker's model has embedded so far."""
    return scrape_metrics(port).get("worker_batch_size_sum", 0.0)


def hits(port: int, layer: str) -> float:
    return scrape_metrics(port).get(f'worker_cache_hits_total{{layer="{layer}"}}', 0.0)


def start_worker(topics: Topics, folder: Path, **env: str) -> tuple[WorkerProcess, int]:
    port = free_port()
    worker = WorkerProcess(topics, folder, VECTORIZE_WORKER_METRICS_PORT=str(port), **env).start()
    worker.wait_ready(timeout=300)
    return worker, port


def results_of(topics: Topics, want: dict[str, int], timeout: float = 240) -> dict[str, list[dict[str, Any]]]:
    """Every result record so far, once each task id in ``want`` has at least that many final results."""

    def done(records: dict[str, list[dict[str, Any]]]) -> bool:
        counts: dict[str, int] = {}
        for r in records[topics.results]:
            counts[r["task_id"]] = counts.get(r["task_id"], 0) + 1
        return all(counts.get(task_id, 0) >= n for task_id, n in want.items())

    return run(collect([topics.results, topics.dlq], done, timeout=timeout))


def send(topics: Topics, *tasks: dict[str, Any]) -> None:
    run(produce(topics.tasks, [json.dumps(t).encode() for t in tasks]))


def sentences(prefix: str, n: int) -> list[str]:
    rivers = ["river", "harbour", "market", "station", "library", "garden", "bridge", "tower"]
    return [f"{prefix} sentence {i} about the {rivers[i % 8]} and its {i * 7} visitors." for i in range(n)]


def test_an_edited_document_re_embeds_only_its_changed_chunks(topics: Topics, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from models.resolve import packaged_model_dir
    from models.tokenizers import HFTextTokenizer
    from tasks.chunking import chunk_text

    paragraphs = [" ".join(sentences(f"Part {p}", 12)) for p in range(9)]
    edited = list(paragraphs)
    edited[3] = edited[3].replace("sentence 4 about the library", "sentence 4 about the museum")
    assert edited != paragraphs
    # the chunks the worker cuts (its tokenizer, chunk size = the model's limit, the default overlap of 32)
    model = "sentence-transformers/all-MiniLM-L6-v2"
    tokenizer = HFTextTokenizer(AutoTokenizer.from_pretrained(str(packaged_model_dir(model))), 256, model=model)
    overlap = Settings().chunk_overlap_tokens

    def chunks(text: str) -> list[str]:
        return [c.text for c in chunk_text(text, tokenizer, size=tokenizer.max_tokens, overlap=overlap)]

    before, after = chunks(" ".join(paragraphs)), chunks(" ".join(edited))
    changed = set(after) - set(before)
    assert len(before) >= 5 and 1 <= len(changed) < len(after)  # the edit touches a chunk or two, not all

    worker, port = start_worker(topics, tmp_path / "w")
    try:
        document = {"task_type": "document_vectorization", "task_id": "doc", "data": {"content": " ".join(paragraphs)}}
        send(topics, document)
        results_of(topics, {"doc": 1})
        first = embedded(port)
        assert first == len(set(before))
        send(topics, {**document, "data": {"content": " ".join(edited)}})
        records = results_of(topics, {"doc": 2})
        assert embedded(port) - first == len(changed)  # only the changed chunks went to the model
        assert hits(port, "local") == len(after) - len(changed)
        assert [r["status"] for r in records[topics.results]] == ["completed", "completed"]
        assert records[topics.results][-1]["count"] == len(after) + 1  # the chunks and the document's mean
        assert worker.stop() == 0
    finally:
        worker.kill()


def test_a_resent_batch_embeds_nothing_new_and_a_restarted_worker_reads_redis(topics: Topics, tmp_path: Path) -> None:
    texts = sentences("Resent", 40)
    task = {"task_type": "batch_vectorization", "task_id": "batch", "data": texts}
    worker, port = start_worker(topics, tmp_path / "w1")
    try:
        send(topics, task)
        results_of(topics, {"batch": 1})
        first = embedded(port)
        assert first == len(texts)
        send(topics, task)
        records = results_of(topics, {"batch": 2})
        assert embedded(port) == first and hits(port, "local") == len(texts)
        assert worker.stop() == 0
    finally:
        worker.kill()
    # a new worker process (empty in-process cache) on the same Redis: every vector comes from Redis
    second, port = start_worker(topics, tmp_path / "w2", worker_id="worker-it-2")
    try:
        send(topics, task)
        records = results_of(topics, {"batch": 3})
        assert embedded(port) == 0 and hits(port, "redis") == len(texts)
        assert [r["status"] for r in records[topics.results]] == ["completed"] * 3
        assert records[topics.dlq] == []
        assert second.stop() == 0
    finally:
        second.kill()


class OwnRedis:
    """A redis-server of this test's own on OWN_REDIS_PORT, with no persistence (a restart empties it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server); `make up` installs it")

    def client(self) -> redis.Redis:
        return redis.Redis(port=OWN_REDIS_PORT, socket_timeout=2)

    def start(self) -> None:
        subprocess.run(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(OWN_REDIS_PORT), "--daemonize", "yes"]
            + ["--dir", str(self.folder), "--save", "", "--appendonly", "no", "--logfile", str(self.folder / "log")],
            check=True,
            timeout=30,
        )
        self._wait(up=True)

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(OWN_REDIS_PORT), "shutdown", "nosave"], capture_output=True, timeout=30, check=False
        )
        self._wait(up=False)

    def _wait(self, *, up: bool) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                answers = bool(self.client().ping())
            except redis.RedisError:
                answers = False
            if answers == up:
                return
            time.sleep(0.1)
        raise AssertionError(f"Redis on port {OWN_REDIS_PORT} did not {'start' if up else 'stop'}")

    def keys(self, prefix: str) -> int:
        return sum(1 for _ in self.client().scan_iter(match=prefix + "*", count=1000))


def test_the_cache_survives_a_redis_restart_without_failing_a_task(topics: Topics, tmp_path: Path) -> None:
    own = OwnRedis(tmp_path / "redis")
    prefix = f"it:{topics.suffix}:"
    env = {
        "VECTORIZE_WORKER_REDIS_URL": f"redis://127.0.0.1:{OWN_REDIS_PORT}/0",
        "VECTORIZE_WORKER_CACHE_RETRY_SECONDS": "1",
    }
    own.start()
    worker: WorkerProcess | None = None
    try:
        worker, port = start_worker(topics, tmp_path / "w", **env)
        first = sentences("Before", 10)
        send(topics, {"task_type": "batch_vectorization", "task_id": "before", "data": first})
        results_of(topics, {"before": 1})
        deadline = time.monotonic() + 30  # the writes are fire-and-forget: wait until they are in
        while own.keys(prefix) < len(first) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert own.keys(prefix) == len(first)

        own.stop()  # Redis goes away: tasks go on, new texts through the model, known ones from the local cache
        during = sentences("During", 10)
        send(
            topics,
            {"task_type": "batch_vectorization", "task_id": "during", "data": during},
            {"task_type": "batch_vectorization", "task_id": "again", "data": first},
        )
        results_of(topics, {"during": 1, "again": 1})
        assert embedded(port) == len(first) + len(during)

        own.start()  # empty: no persistence. New texts are written to it again once the cache retries Redis
        n = 0
        deadline = time.monotonic() + 60
        while own.keys(prefix) == 0 and time.monotonic() < deadline:
            send(topics, {"task_type": "text_vectorization", "task_id": f"after-{n}", "data": f"After the restart {n}"})
            results_of(topics, {f"after-{n}": 1})
            n += 1
        assert own.keys(prefix) >= 1

        records = results_of(topics, {"before": 1, "during": 1, "again": 1, **{f"after-{i}": 1 for i in range(n)}})
        assert {r["status"] for r in records[topics.results]} == {"completed"} and records[topics.dlq] == []
        # one warning per outage: after a warning, the next cache line says Redis answers again
        lines = [
            line for line in worker.log().splitlines() if "Embedding cache: Redis at redis://127.0.0.1:6390/0" in line
        ]
        kinds = ["failed" if " failed (" in line else "back" for line in lines]
        assert kinds[:2] == ["failed", "back"] and all(a != b for a, b in zip(kinds, kinds[1:], strict=False)), lines
        assert worker.stop() == 0
    finally:
        if worker is not None:
            worker.kill()
        own.stop()


async def test_the_redis_adapter_reads_writes_with_a_ttl_and_names_a_dead_server() -> None:
    prefix = f"it:adapter:{time.time_ns()}:"
    store = RedisVectors("redis://127.0.0.1:6379/0")
    try:
        await store.set_many([(prefix + "a", b"\x00\x01"), (prefix + "b", b"\x02")], 60)
        assert await store.get_many([prefix + "a", prefix + "missing", prefix + "b"]) == [b"\x00\x01", None, b"\x02"]
        ttl = redis.Redis().ttl(prefix + "a")
        assert 0 < ttl <= 60
    finally:
        redis.Redis().delete(prefix + "a", prefix + "b")
        await store.close()
    dead = RedisVectors(f"redis://:s3cret@127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(CacheStoreError) as raised:
        await dead.get_many(["k"])
    message = str(raised.value)
    assert "Failed to connect to Redis at redis://:***@127.0.0.1:" in message and "s3cret" not in message
    await dead.close()
