"""Tasks through real Kafka → a real worker process → store → results topic."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.model_cases import percentile
from tests.integration.harness import BOOTSTRAP

#: (task id, JSON value, number of texts)
Task = tuple[str, bytes, int]


def into(collection: str | None) -> dict[str, str]:
    """The task field that sends a task's vectors to ``collection`` (none: the worker's default collection)."""
    return {"collection": collection} if collection else {}


def text_task(task_id: str, text: str, collection: str | None = None) -> Task:
    body = {"task_id": task_id, "task_type": "text_vectorization", "data": text, **into(collection)}
    return task_id, json.dumps(body).encode(), 1


def bulk_tasks(prefix: str, texts: list[str], size: int = 256, collection: str | None = None) -> list[Task]:
    out = []
    for n, start in enumerate(range(0, len(texts), size)):
        chunk = texts[start : start + size]
        body = {"task_id": f"{prefix}-{n}", "task_type": "batch_vectorization", "data": chunk, **into(collection)}
        out.append((f"{prefix}-{n}", json.dumps(body).encode(), len(chunk)))
    return out


def small_tasks(prefix: str, texts: list[str], collection: str | None = None) -> list[Task]:
    return [text_task(f"{prefix}-{i}", t, collection) for i, t in enumerate(texts)]


def repeated_tasks(
    prefix: str, texts: list[str], share: float = 0.5, seed: int = 11, collection: str | None = None
) -> list[Task]:
    """As many one-text tasks as ``texts``, ``share`` of them repeating another task's text: the first
    ``1 - share`` of the texts once each, then a random pick of them again, all shuffled (a repeat may come long
    after its first, or right beside it while that one is still queued for the model)."""
    rng = random.Random(seed)
    distinct = texts[: len(texts) - int(len(texts) * share)]
    corpus = distinct + rng.sample(distinct, len(texts) - len(distinct))
    rng.shuffle(corpus)
    return small_tasks(prefix, corpus, collection)


def mixed_tasks(
    prefix: str, texts: list[str], articles: list[str], seed: int = 7, collection: str | None = None
) -> list[Task]:
    """Half one-text tasks, a third batches of 2-64 texts, the rest whole news articles as documents."""
    rng = random.Random(seed)
    out: list[Task] = []
    i = n = 0
    while i < len(texts):
        task_id = f"{prefix}-{n}"
        roll = rng.random()
        if roll < 0.5:
            out.append(text_task(task_id, texts[i], collection))
            i += 1
        elif roll < 0.83:
            chunk = texts[i : i + rng.randint(2, 64)]
            body = {"task_id": task_id, "task_type": "batch_vectorization", "data": chunk, **into(collection)}
            out.append((task_id, json.dumps(body).encode(), len(chunk)))
            i += len(chunk)
        else:
            article = articles[n % len(articles)]
            title, _, content = article.partition(". ")
            body = {
                "task_id": task_id,
                "task_type": "document_vectorization",
                "data": {"title": title, "content": content or title},
                **into(collection),
            }
            out.append((task_id, json.dumps(body).encode(), 1))
        n += 1
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads; 0.0 once it is gone)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RssSampler:
    """VmRSS of one process, sampled every ``interval`` seconds on a thread."""

    pid: int
    interval: float = 0.5
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> RssSampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.read()
            if rss:
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def read(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all its threads)."""
        return process_cpu_seconds(self.pid)

    @staticmethod
    def machine_cpu_seconds() -> float:
        """CPU time of the whole machine so far (every process: worker, Kafka, the store, this driver)."""
        import os

        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def between(self, t0: float, t1: float) -> list[int]:
        return [rss for t, rss in self.samples if t0 <= t <= t1]

    def stop(self) -> None:
        self._stop.set()


class Driver:
    """Sends tasks and collects their results (by task id) from the results topic."""

    def __init__(self, tasks_topic: str, results_topic: str) -> None:
        self.tasks_topic = tasks_topic
        self.results_topic = results_topic
        self.results: dict[str, tuple[float, dict[str, Any]]] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._expect: set[str] = set()
        self._all_in: asyncio.Event = asyncio.Event()

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=BOOTSTRAP, acks=1, linger_ms=5, max_request_size=16 * 1024 * 1024
        )
        # the latency probe sends as a latency-minded producer does, at once: with the 5 ms linger above each of
        # its tasks reached the broker ~5 ms later, and that was counted as the worker's latency
        self.prompt = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks=1, linger_ms=0)
        self.consumer = AIOKafkaConsumer(
            self.results_topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="latest", enable_auto_commit=False
        )
        await self.producer.start()
        await self.prompt.start()
        await self.consumer.start()
        while not self.consumer.assignment():
            await asyncio.sleep(0.1)
        await self.consumer.seek_to_end()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.consumer:
            now = time.monotonic()
            value = json.loads(message.value)
            task_id = value["task_id"]
            self.results[task_id] = (now, value)
            waiter = self._waiters.pop(task_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self._expect:
                self._expect.discard(task_id)
                if not self._expect:
                    self._all_in.set()

    async def run(self, tasks: list[Task], timeout: float = 1800) -> dict[str, Any]:
        """Send all tasks as fast as the producer takes them; wait for every result."""
        self._expect = {task_id for task_id, _, _ in tasks}
        self._all_in = asyncio.Event()
        t0 = time.monotonic()
        futures = [
            await self.producer.send(self.tasks_topic, value, key=task_id.encode()) for task_id, value, _ in tasks
        ]
        await asyncio.gather(*futures)
        sent = time.monotonic()
        await asyncio.wait_for(self._all_in.wait(), timeout)
        t1 = max(self.results[task_id][0] for task_id, _, _ in tasks)
        texts = sum(n for _, _, n in tasks)
        values = [self.results[task_id][1] for task_id, _, _ in tasks]
        failed = sum(1 for v in values if v["status"] != "completed")
        return {
            "tasks": len(tasks),
            "texts": texts,
            "seconds": t1 - t0,
            "send_seconds": sent - t0,
            "texts_per_s": texts / (t1 - t0),
            "failed": failed,
            "mean_embed_ms": statistics.mean(v["timings"]["embed_ms"] for v in values),
            "mean_store_ms": statistics.mean(v["timings"]["store_ms"] for v in values),
            "t0": t0,
            "t1": t1,
        }

    async def latency(self, texts: list[str], prefix: str, collection: str | None = None) -> dict[str, float]:
        """One task at a time, each sent after the previous result came back."""
        times = []
        for i, text in enumerate(texts):
            task_id, value, _ = text_task(f"{prefix}-{i}", text, collection)
            waiter = self._waiters[task_id] = asyncio.get_running_loop().create_future()
            t0 = time.monotonic()
            await self.prompt.send_and_wait(self.tasks_topic, value, key=task_id.encode())
            await asyncio.wait_for(waiter, 60)
            times.append((time.monotonic() - t0) * 1000)
        timings = [self.results[f"{prefix}-{i}"][1]["timings"] for i in range(len(texts))]
        inside = {f"worker_{k}_p50": statistics.median(t[k] for t in timings) for k in timings[0]}
        return {"p50_ms": statistics.median(times), "p99_ms": percentile(times, 99), **inside}

    async def stop(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.producer.stop()
        await self.prompt.stop()
        await self.consumer.stop()
