"""The embedding cache with a fake shared store at its port: what skips the model, what misses, what fails soft."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import KafkaError

from core.errors import ModelLoadError
from core.ids import vector_id
from engine.acks import AckTracker, Ticket
from engine.embedding_cache import EmbeddingCache, LocalLRU
from engine.model_queue import CallKey, ModelQueue
from engine.pipeline import TaskPipeline
from engine.publisher import SEND_ERRORS, RecordPublisher
from models.base import EmbedderInfo
from models.fingerprint import model_identity, source_digest
from models.manager import ModelManager
from tests.fakes import FakeEmbedder, FakeKafka, FakeStore
from tests.unit.test_pipeline import SETTINGS


class FakeRemote:
    """The shared layer (Redis) as a dict; ``fail``/``hang`` inject an outage."""

    name = "fake Redis"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0
        self.ttls: list[int] = []
        self.fail = False
        self.hang = False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.gets += 1
        await self._trouble()
        return [self.data.get(key) for key in keys]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_seconds: int) -> None:
        await self._trouble()
        self.data.update(items)
        self.ttls.append(ttl_seconds)

    async def _trouble(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    async def close(self) -> None:
        pass


class VersionedEmbedder(FakeEmbedder):
    """A fake model whose weights are ``version``: a new version is a changed model with the same name."""

    def __init__(self, name: str, version: str, texts: list[str]) -> None:
        super().__init__(name)
        self.version = version
        self.texts = texts  # every text any version of the model embedded

    def weights_digest(self) -> str:
        return self.version

    def embed_texts(self, texts: Sequence[str], *, batch_size: int, normalize: bool | None) -> np.ndarray:
        self.texts.extend(texts)
        vectors = super().embed_texts(texts, batch_size=batch_size, normalize=normalize)
        return vectors + (0.5 if self.version != "v1" else 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """One worker's pipeline with the cache: fakes at the model, store, Kafka and Redis ports."""

    def __init__(self, remote: FakeRemote | None = None, *, cache: bool = True, **settings: Any) -> None:
        self.settings = SimpleNamespace(**{**vars(SETTINGS), **settings})
        self.kafka, self.store, self.tracker = FakeKafka(), FakeStore(), AckTracker()
        self.version = "v1"
        self.model_texts: list[str] = []
        self.manager = ModelManager(self._load, max_loaded=2, warmup=False)
        self.remote = remote if remote is not None else FakeRemote()
        self.clock = Clock()
        self.cache = EmbeddingCache(
            self.remote,
            local_bytes=self.settings.cache_local_bytes,
            max_text_bytes=self.settings.cache_max_text_bytes,
            ttl_seconds=self.settings.cache_ttl_seconds,
            timeout=0.05,
            retry_after=30.0,
            clock=self.clock,
        )
        publisher = RecordPublisher(
            self.kafka.send,
            worker_id="w-test",
            status_topic="status",
            results_topic="results",
            dlq_topic="dlq",
            errors=(*SEND_ERRORS, KafkaError),
        )
        self.acked: list[int] = []
        self.pipeline = TaskPipeline(
            settings=self.settings,
            manager=self.manager,
            stores=[self.store],
            publisher=publisher,
            on_done=self._done,
            metrics=self.cache.metrics,
            cache=self.cache if cache else None,
        )
        self.offset = 0

    def _load(self, name: str) -> FakeEmbedder:
        return VersionedEmbedder(name, self.version, self.model_texts)

    async def _done(self, ticket: Ticket) -> None:
        self.acked.extend(t.offset for t in self.tracker.complete(ticket))

    async def send(self, payload: dict[str, Any]) -> None:
        ticket = self.tracker.add("tasks-0", self.offset)
        await self.pipeline.intake(json.dumps(payload).encode(), ticket, ("tasks", 0, self.offset))
        self.offset += 1

    async def run(self, *payloads: dict[str, Any]) -> None:
        """Send the tasks, run the lanes until they are all done, then wait for the cache's writes."""
        for payload in payloads:
            await self.send(payload)
        self.pipeline.start()
        await self.pipeline.settled()
        await self.pipeline.stop()
        await self.writes_done()

    async def writes_done(self) -> None:
        if self.cache._writes:
            await asyncio.wait(set(self.cache._writes))

    def result(self, task_id: str) -> dict[str, Any]:
        return [r for r in self.kafka.on("results") if r["task_id"] == task_id][-1]

    def vectors(self, task_id: str, n: int) -> np.ndarray:
        return np.stack([p.vector for p in self.store.retrieve("vectorize", [vector_id(task_id, i) for i in range(n)])])

    def hits(self, layer: str) -> float:
        return self.cache.metrics.cache_hits.labels(layer)._value.get()


def count_device_jobs(w: Worker) -> list[int]:
    """From now on, count the jobs the worker hands its device thread (model calls and tokenizer work)."""
    jobs = [0]
    original = w.manager.run

    async def counting_run(func: Any) -> Any:
        jobs[0] += 1
        return await original(func)

    w.manager.run = counting_run  # type: ignore[method-assign]
    return jobs


def batch(task_id: str, texts: list[str], **extra: Any) -> dict[str, Any]:
    return {"task_type": "batch_vectorization", "task_id": task_id, "data": texts, **extra}


async def test_a_resent_batch_skips_the_model_and_stores_the_same_vectors() -> None:
    w = Worker()
    await w.run(batch("t1", ["alpha", "beta", "gamma"]))
    assert sorted(w.model_texts) == ["alpha", "beta", "gamma"]
    await w.run(batch("t1", ["alpha", "beta", "gamma"]), batch("t2", ["gamma", "alpha"]))
    assert len(w.model_texts) == 3  # nothing new for the model
    assert w.result("t1")["status"] == "completed" and w.result("t2")["status"] == "completed"
    assert w.acked == [0, 1, 2]
    assert np.array_equal(w.vectors("t2", 2), w.vectors("t1", 3)[[2, 0]])
    assert w.hits("local") == 5 and w.cache.misses == 3 and w.cache.hit_ratio == 5 / 8
    assert w.remote.ttls == [SETTINGS.cache_ttl_seconds]  # the first batch's three vectors, in one write


async def test_another_worker_gets_the_vectors_from_the_shared_layer() -> None:
    remote = FakeRemote()
    first, second = Worker(remote), Worker(remote)
    await first.run(batch("t1", ["one", "two"]))
    await second.run(batch("t1", ["one", "two"]))
    assert second.model_texts == [] and second.hits("redis") == 2 and remote.gets == 2
    assert np.array_equal(second.vectors("t1", 2), first.vectors("t1", 2))
    await second.run(batch("t2", ["two"]))  # now in the second worker's local layer too
    assert remote.gets == 2 and second.hits("local") == 1


async def test_an_edited_document_re_embeds_only_its_changed_chunks() -> None:
    w = Worker(chunk_tokens=8, chunk_overlap_tokens=0)
    words = [f"w{i}" for i in range(40)]
    document = {"task_type": "document_vectorization", "task_id": "doc", "data": {"content": " ".join(words)}}
    await w.run(document)
    assert len(w.model_texts) == 5  # five chunks of eight words (the document vector is their mean)
    words[21] = "edited"  # one word in the third chunk
    document["data"] = {"content": " ".join(words)}
    await w.run(document)
    assert w.model_texts[5:] == [" ".join(words[16:24])]
    assert w.result("doc")["status"] == "completed" and w.result("doc")["count"] == 6


async def test_an_edited_batch_embeds_only_the_changed_text_and_keeps_the_order() -> None:
    w = Worker()
    await w.run(batch("t", ["a1", "b1", "c1"]))
    before = w.vectors("t", 3)
    await w.run(batch("t", ["a1", "B2", "c1"]))
    assert w.model_texts[3:] == ["B2"]
    after = w.vectors("t", 3)
    assert np.array_equal(after[[0, 2]], before[[0, 2]]) and not np.array_equal(after[1], before[1])


async def test_a_changed_model_misses_the_old_models_vectors() -> None:
    w = Worker()
    await w.run(batch("t", ["same text"]))
    old, old_vector = w.manager.identity("fake-model"), w.vectors("t", 1)[0]
    w.manager.unload("fake-model")
    w.version = "v2"  # same name, other weights
    w.store.bindings.clear()  # the collection is bound to v1: deleted, as the refusal says (docs/stores.md)
    await w.run(batch("t", ["same text"]))
    assert w.manager.identity("fake-model") not in (None, old)
    assert w.model_texts == ["same text", "same text"]
    assert np.allclose(w.vectors("t", 1)[0], old_vector + 0.5)  # the new model's vector, not the cached one


async def test_normalize_is_part_of_the_key() -> None:
    w = Worker()
    await w.run(batch("a", ["text"]))
    await w.run(batch("b", ["text"], normalize=True))
    await w.run(batch("c", ["text"], normalize=False))
    assert w.model_texts == ["text", "text", "text"]
    await w.run(batch("d", ["text"], normalize=True))
    assert len(w.model_texts) == 3
    assert np.isclose(np.linalg.norm(w.vectors("d", 1)[0]), 1.0)


async def test_identical_texts_in_flight_are_embedded_once() -> None:
    w = Worker()
    await w.run(batch("t1", ["dup", "x", "dup"]), batch("t2", ["dup", "y"]), batch("t3", ["x"]))
    assert sorted(w.model_texts) == ["dup", "x", "y"]
    assert w.hits("inflight") == 3 and w.cache.misses == 3
    assert np.array_equal(w.vectors("t1", 3)[0], w.vectors("t2", 2)[0])
    assert all(w.result(t)["status"] == "completed" for t in ("t1", "t2", "t3"))


async def test_a_call_whose_texts_all_hit_never_reaches_the_device_thread() -> None:
    w = Worker(batch_wait_ms=0)
    await w.run(batch("warm", ["p", "q", "r"]))
    jobs = count_device_jobs(w)
    lane = asyncio.ensure_future(w.pipeline.run_lanes())
    try:
        for i, text in enumerate(["p", "q", "r"]):
            await w.send({"task_type": "text_vectorization", "task_id": f"one-{i}", "data": text})
        await w.send(batch("all", ["r", "q", "p"]))
        for _ in range(500):
            if len(w.acked) == 5:
                break
            await asyncio.sleep(0.01)
    finally:
        lane.cancel()
        await asyncio.gather(lane, return_exceptions=True)
    assert w.acked == [0, 1, 2, 3, 4] and jobs[0] == 0 and len(w.model_texts) == 3
    assert w.result("all")["status"] == "completed"


async def test_a_resent_long_text_skips_the_tokenizer_too() -> None:
    w = Worker()
    long_texts = [" ".join(f"w{i}-{j}" for j in range(60)) for i in range(3)]  # over the tokenizer-free bound
    await w.run(batch("t", long_texts))
    jobs = count_device_jobs(w)
    await w.run(batch("t", long_texts))
    assert jobs[0] == 0 and len(w.model_texts) == 3  # neither fitted to the model nor embedded again
    assert w.result("t")["status"] == "completed" and w.hits("local") == 3


async def test_a_resent_text_the_model_truncated_is_fitted_again_and_hits() -> None:
    w = Worker(long_text="truncate")
    too_long = " ".join(f"w{j}" for j in range(600))  # the fake model takes 510 words
    await w.run(batch("t", ["short", too_long]))
    assert len(w.model_texts) == 2 and w.result("t")["truncated_items"] == [1]
    await w.run(batch("t", ["short", too_long]))
    assert len(w.model_texts) == 2  # the cut text was found under its cut form
    assert w.result("t")["truncated_items"] == [1] and w.hits("local") == 2 and w.cache.misses == 2


async def test_redis_errors_turn_the_cache_off_for_a_while_and_tasks_complete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = Worker()
    w.remote.fail = True
    caplog.set_level(logging.INFO, logger="worker.embedding_cache")
    await w.run(batch("t1", ["a", "b"]))
    await w.run(batch("t2", ["c"]))
    assert w.result("t1")["status"] == "completed" and w.result("t2")["status"] == "completed"
    assert w.acked == [0, 1]
    # one lookup failed, then the cache left Redis alone (the local layer still works: the writes went there)
    assert w.remote.gets == 1 and w.cache.remote_up is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fake Redis failed" in warnings[0].getMessage()
    assert "Connection refused" in warnings[0].getMessage()
    w.remote.fail = False
    w.clock.now += 31  # past retry_after: Redis is asked again
    await w.run(batch("t3", ["d"]))
    assert w.remote.gets == 2 and w.cache.remote_up is True
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert w.remote.data  # written again


async def test_a_hanging_redis_times_out_and_the_task_completes() -> None:
    w = Worker()
    w.remote.hang = True
    await w.run(batch("t", ["a"]))
    assert w.result("t")["status"] == "completed" and w.cache.remote_up is False and w.model_texts == ["a"]


async def test_texts_over_the_size_limit_are_not_cached() -> None:
    w = Worker(cache_max_text_bytes=10)
    await w.run(batch("t1", ["short", "a much longer text"]))
    await w.run(batch("t2", ["short", "a much longer text"]))
    assert w.model_texts.count("short") == 1 and w.model_texts.count("a much longer text") == 2
    assert len(w.remote.data) == 1


async def test_a_resent_image_skips_the_model() -> None:
    from PIL import Image

    w = Worker()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    data = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    for task_id in ("i1", "i2"):
        await w.run({"task_type": "image_vectorization", "task_id": task_id, "data": data})
    embedder = w.manager.loaded_model("fake-image-model")
    assert isinstance(embedder, FakeEmbedder) and embedder.image_calls == [1]
    assert w.result("i2")["status"] == "completed" and w.hits("local") == 1
    assert np.array_equal(w.vectors("i1", 1), w.vectors("i2", 1))


async def test_without_the_cache_every_text_goes_to_the_model() -> None:
    w = Worker(cache=False)
    await w.run(batch("t1", ["a", "a"]))
    await w.run(batch("t2", ["a"]))
    assert w.model_texts == ["a", "a", "a"] and w.remote.gets == 0


def test_the_local_layer_is_bounded_by_bytes() -> None:
    lru = LocalLRU(max_bytes=2000)
    value = bytes(400)
    for i in range(20):
        lru.put(f"k{i}", value)
        lru.get("k0")  # used all along: stays
        assert lru.bytes <= 2000
    assert lru.get("k0") is not None and lru.get("k1") is None and lru.get("k19") is not None
    assert len(lru) == 2000 // LocalLRU.cost("k10", value)
    lru.put("huge", bytes(5000))  # larger than the whole budget: not kept, nothing evicted for it
    assert lru.get("huge") is None and lru.get("k19") is not None


def test_keys_cover_identity_normalize_kind_and_the_exact_input() -> None:
    cache = EmbeddingCache(None, prefix="p:", max_text_bytes=8)
    key = cache.key("id", None, b"text", b"abc")
    assert key.startswith("p:") and len(key) == 2 + 64
    assert key == cache.key("id", None, b"text", b"abc")
    others = [
        cache.key("id2", None, b"text", b"abc"),
        cache.key("id", True, b"text", b"abc"),
        cache.key("id", False, b"text", b"abc"),
        cache.key("id", None, b"image", b"abc"),
        cache.key("id", None, b"text", b"abc "),
    ]
    assert len({key, *others}) == 6
    assert cache.text_keys("id", None, ["abc", "x" * 9]) == [key, None]


def test_a_twin_fails_with_the_call_it_waits_for() -> None:
    queue = ModelQueue(max_tokens=1000)
    key = CallKey("m", None, 8)
    first, second = SimpleNamespace(texts=["t"], error=None), SimpleNamespace(texts=["t", "u"], error=None)
    assert queue.add(first, key, [3], text_keys=["k-t"]) == 0
    assert queue.add(second, key, [3, 4], text_keys=["k-t", "k-u"]) == 1
    call = queue.take()
    assert call is not None and sorted(call.texts) == ["t", "u"]
    failed = queue.fail(call, RuntimeError("model crashed"))
    assert {id(o) for o in failed} == {id(first), id(second)} and queue.texts == 0


def test_a_twin_takes_the_place_of_a_dropped_task() -> None:
    queue = ModelQueue(max_tokens=1000)
    key = CallKey("m", None, 8)
    leader = SimpleNamespace(texts=["t"], error=None)
    follower = SimpleNamespace(texts=["t"], error=None)
    queue.add(leader, key, [3], text_keys=["k-t"])
    queue.add(follower, key, [3], text_keys=["k-t"])
    assert queue.drop_unstarted() == [leader]  # the follower waits on a twin: it stays
    call = queue.take()
    assert call is not None and call.parts[0][0].outcome is follower
    info = EmbedderInfo(name="m", family="fake", dim=2, device="cpu")
    assert queue.complete(call, np.ones((1, 2), dtype=np.float32), info, 0.0, 0.1) == [follower]


def test_identity_follows_the_weights_content_not_their_size_or_mtime(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "onnx").mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"A" * 1000)
    (folder / "config.json").write_text('{"hidden": 8}')
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "onnx" / "model.onnx").write_bytes(b"export")
    (folder / "README.md").write_text("docs")
    first = source_digest(str(folder))
    stat = weights.stat()
    with weights.open("r+b") as handle:  # same size, same mtime afterwards, other bytes
        handle.write(b"B")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    second = source_digest(str(folder))
    assert second != first
    (folder / "onnx" / "model.onnx").write_bytes(b"another export")  # not read by the loaders
    (folder / "README.md").write_text("other docs")
    assert source_digest(str(folder)) == second
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert source_digest(str(folder)) != second


def test_identity_covers_name_and_vector_settings() -> None:
    a, b = FakeEmbedder("m"), FakeEmbedder("m")
    assert model_identity(a) == model_identity(b)
    assert model_identity(FakeEmbedder("other")) != model_identity(a)
    assert model_identity(FakeEmbedder("m", max_tokens=128)) != model_identity(a)


async def test_a_model_that_cannot_load_is_tried_once_per_batch() -> None:
    w = Worker()
    attempts: list[str] = []
    original = w._load

    def load(name: str) -> FakeEmbedder:
        if name == "broken-model":
            attempts.append(name)
            raise ModelLoadError("Failed to load model broken-model: not found")
        return original(name)

    w.manager._load = load  # type: ignore[method-assign]
    await w.run({"task_type": "text_vectorization", "data": "hello", "task_id": "b1", "model_name": "broken-model"})
    assert attempts == ["broken-model"] and w.acked == [0]
    assert w.result("b1")["status"] == "failed" and "broken-model" in w.result("b1")["error"]["message"]


async def test_a_later_version_of_a_task_is_stored_after_the_earlier_one_even_when_cached() -> None:
    w = Worker(batch_wait_ms=0)
    await w.run(batch("warm", ["cached text"]))
    gate = asyncio.Event()
    original = w.manager.run

    async def slow_model(func: Any) -> Any:  # the earlier version's new text takes the model a while
        await gate.wait()
        return await original(func)

    w.manager.run = slow_model  # type: ignore[method-assign]
    w.pipeline.start()
    await w.send(batch("doc", ["new text", "second"]))  # version 1: needs the model
    later = asyncio.ensure_future(w.send(batch("doc", ["cached text"])))  # version 2: all in the cache
    await asyncio.sleep(0.05)
    assert not later.done()  # it waits for version 1 of its id
    gate.set()
    await later
    await w.pipeline.settled()
    await w.pipeline.stop()
    await w.writes_done()
    assert w.acked == [0, 1, 2]
    assert [r["count"] for r in w.kafka.on("results") if r["task_id"] == "doc"] == [2, 1]  # in order
    [point] = w.store.retrieve("vectorize", [vector_id("doc", 0)])
    assert point.payload["text"] == "cached text"  # the later version's, not overwritten by the earlier
    assert w.store.retrieve("vectorize", [vector_id("doc", 1)]) == []  # its stale item removed
