#!/usr/bin/env python3
"""`make demo`: with a worker running, send the documentation's four example tasks and a
dozen real sentences, wait for their results, print them, and ask the worker's
store for the nearest neighbours of a question.

Reads the same configuration as the worker (faust.yml / VECTORIZE_WORKER_*).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from app.kafka_security import aiokafka_security_kwargs  # noqa: E402
from core.settings import load_settings  # noqa: E402

EXAMPLES = [
    {
        "task_type": "text_vectorization",
        "data": "这是需要向量化的文本",
        "model_name": "sentence-transformers/all-MiniLM-L6-v2",
    },
    {"task_type": "batch_vectorization", "data": ["文本1", "文本2", "文本3"], "batch_size": 32},
    {"task_type": "image_vectorization", "data": "/path/to/image.jpg", "model_name": "ViT-B/32"},
    {"task_type": "document_vectorization", "data": {"title": "文档标题", "content": "文档内容..."}},
]
# A dozen everyday sentences in six topics, two per topic.
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was sleeping in the sunshine by the window.",
    "The central bank raised interest rates by half a point.",
    "Stock markets fell after the inflation report.",
    "She baked fresh bread with rosemary and olive oil.",
    "The recipe calls for flour, yeast, water and salt.",
    "The football team won the championship in extra time.",
    "Fans celebrated in the streets after the final whistle.",
    "The telescope captured images of a distant galaxy.",
    "Astronomers discovered a new exoplanet orbiting a red dwarf.",
    "Heavy rain caused flooding in several coastal towns.",
    "The storm brought strong winds and power outages.",
]
QUERY = "Which pet likes to nap near the window?"


async def send_and_wait(settings, tasks: list[dict], timeout: float = 180) -> dict[str, dict]:
    ids = {t["task_id"] for t in tasks}
    security = aiokafka_security_kwargs(settings)  # the worker's SASL/TLS settings
    consumer = AIOKafkaConsumer(
        settings.results_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
        metadata_max_age_ms=1000,
        **security,
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", **security)
    await producer.start()
    try:
        await consumer.seek_to_end()
        for task in tasks:
            await producer.send_and_wait(settings.tasks_topic, json.dumps(task, ensure_ascii=False).encode())
        print(f"sent {len(tasks)} tasks to {settings.tasks_topic}; waiting for results on {settings.results_topic} ...")
        results: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while ids - results.keys() and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    record = json.loads(m.value)
                    if record["task_id"] in ids:
                        results[record["task_id"]] = record
        missing = ids - results.keys()
        if missing:
            raise SystemExit(
                f"demo: no result within {timeout:.0f}s for {len(missing)} task(s); is a worker running? (make run)"
            )
        return results
    finally:
        await producer.stop()
        await consumer.stop()


def search(settings, query: str, k: int = 3) -> dict:
    url = f"http://127.0.0.1:{settings.web_port}/search/?" + urllib.parse.urlencode({"q": query, "k": k})
    request = urllib.request.Request(url)
    if settings.web_auth_token is not None:
        request.add_header("Authorization", f"Bearer {settings.web_auth_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own worker on localhost
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            f"demo: the worker's /search/ answered {exc.code}: {exc.read().decode(errors='replace')[:300]} "
            "(`make run` turns search on; elsewhere set VECTORIZE_WORKER_WEB_SEARCH_ENABLED=true)"
        ) from None


def main() -> int:
    settings = load_settings()
    run = uuid.uuid4().hex[:6]
    tasks = [{**t, "task_id": f"demo-{run}-example-{i}"} for i, t in enumerate(EXAMPLES)]
    tasks += [
        {
            "task_type": "text_vectorization",
            "data": s,
            "task_id": f"demo-{run}-s{i:02d}",
            "metadata": {"source": "demo", "topic_pair": i // 2},
        }
        for i, s in enumerate(SENTENCES)
    ]
    results = asyncio.run(send_and_wait(settings, tasks))
    print(f"\n{'task':<24} {'type':<24} {'status':<10} {'dim':>4} {'n':>3} {'ms':>7}  detail")
    for task in tasks:
        r = results[task["task_id"]]
        detail = r["error"]["message"][:60] if r.get("error") else (r["vector_ids"][0] if r["vector_ids"] else "")
        print(
            f"{task['task_id']:<24} {task['task_type']:<24} {r['status']:<10} {r['dimension'] or '-':>4} "
            f"{r['count']:>3} {r['timings']['total_ms']:>7.1f}  {detail}"
        )
    answer = search(settings, QUERY)
    print(f"\nnearest neighbours of {QUERY!r} in {answer['collection']} ({answer['store']}):")
    for rank, hit in enumerate(answer["hits"], 1):
        print(f"  {rank}. {hit['score']:.3f}  {hit['text']}")
    top = answer["hits"][0]["text"] if answer["hits"] else None
    ok = top in SENTENCES[:2]
    print("\nthe closest sentence is " + ("about the cat, as it should be" if ok else f"unexpected: {top!r}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
