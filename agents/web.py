"""Web views on Faust's port (6066): JSON endpoints and the dashboard.

``/healthz`` liveness, ``/readyz`` readiness, ``/workers`` live workers
(Redis heartbeats), ``/tasks/{task_id}`` a task's status (Faust table, routed
to the worker that owns the key), ``/models`` loaded models, ``/state`` this
worker, ``/search/?q=`` nearest neighbours, ``/`` the dashboard.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from agents.intake import runtime
from agents.status import recent_task_ids, table_get, task_status, worker_stats
from app.errors import VectorizeError
from app.faust_app import app, settings
from sinks.heartbeat import live_workers

DASHBOARD = (Path(__file__).resolve().parent / "dashboard.html").read_text(encoding="utf-8")
STARTED = time.time()


def _consumer_alive() -> bool:
    consumer = app._consumer
    return consumer is not None and not consumer.should_stop


def _kafka_assigned() -> bool:
    if not _consumer_alive():
        return False
    try:
        return bool(app.consumer.assignment())
    except Exception:  # noqa: BLE001 - Faust's consumer thread is still starting (ConsumerNotStarted): not ready
        return False


@app.page("/healthz")
async def healthz(web: Any, request: Any) -> Any:
    alive = _consumer_alive()
    return web.json(
        {"status": "ok" if alive else "down", "consumer": alive, "uptime_s": time.time() - STARTED},
        status=200 if alive else 503,
    )


@app.page("/readyz")
async def readyz(web: Any, request: Any) -> Any:
    rt = runtime()
    checks = {
        "model_warmed": rt.model_ready,
        "store_reachable": rt.store_up is True,
        "kafka_assigned": _kafka_assigned(),
    }
    ready = all(checks.values())
    return web.json({"ready": ready, "checks": checks}, status=200 if ready else 503)


@app.page("/workers")
async def workers(web: Any, request: Any) -> Any:
    try:
        live = await live_workers(settings.redis_url)
        error = None
    except Exception as exc:  # noqa: BLE001 - Redis down: say so, keep serving
        live, error = [], f"Failed to connect to Redis at {settings.redis_url}: {exc}"
    local = dict(worker_stats.items())
    return web.json({"workers": live, "table_stats": local, "redis_error": error, "this_worker": settings.worker_id})


@app.page("/tasks")
async def local_tasks(web: Any, request: Any) -> Any:
    """The last 100 tasks whose status this worker's tracker wrote, newest first.

    Not a scan of the table: it holds ``task_status_retention_hours`` of tasks.
    """
    tasks: list[dict[str, Any]] = []
    seen: set[str] = set()
    for task_id in reversed(recent_task_ids):
        if task_id in seen:
            continue
        seen.add(task_id)
        value = table_get(task_status, task_id)  # None once its partition moved to another worker
        if value is not None:
            tasks.append(value)
            if len(tasks) == 100:
                break
    return web.json(
        {
            "worker_id": settings.worker_id,
            "task_status_table": settings.task_status_table,
            "tasks": tasks,
            "partitions": sorted(
                tp.partition
                for tp in app.assignor.assigned_actives()
                if tp.topic == task_status.changelog_topic.get_topic_name()
            ),
        }
    )


@app.page("/tasks/{task_id}")
async def task(web: Any, request: Any, task_id: str) -> Any:
    """A task's status from the table. The key lives on the worker that owns its partition:
    when it is not here, ask the other live workers (from their heartbeats)."""
    if not settings.task_status_table:
        return web.json(
            {
                "task_id": task_id,
                "error": "this worker keeps no task-status table (kafka.task_status_table is false); "
                f"read the task's records on {settings.status_topic} or turn the table on",
            },
            status=404,
        )
    value = table_get(task_status, task_id)
    if value is not None:
        return web.json({**value, "served_by": settings.worker_id})
    if request.query.get("local") != "1":
        found = await _ask_peers(f"/tasks/{task_id}?local=1")
        if found is not None:
            return web.json(found)
    return web.json({"task_id": task_id, "error": "unknown task id (not seen yet by any live worker)"}, status=404)


async def _ask_peers(path: str) -> dict[str, Any] | None:
    try:
        peers = [w for w in await live_workers(settings.redis_url) if w.get("worker_id") != settings.worker_id]
    except Exception:  # noqa: BLE001 - without Redis there is no peer list
        return None
    for peer in peers:
        url = peer.get("web_url")
        if not url:
            continue
        try:
            async with app.http_client.get(url + path, timeout=aiohttp.ClientTimeout(total=3)) as response:
                if response.status == 200:
                    return await response.json()
        except (aiohttp.ClientError, TimeoutError):
            continue
    return None


@app.page("/models")
async def models(web: Any, request: Any) -> Any:
    rt = runtime()
    loaded = rt.manager.loaded() if rt.manager else []
    return web.json(
        {
            "worker_id": settings.worker_id,
            "device": rt.device,
            "max_loaded": settings.max_loaded_models,
            "default": settings.default_model,
            "loaded": [asdict(info) for info in loaded],
        }
    )


@app.page("/state")
async def state(web: Any, request: Any) -> Any:
    rt = runtime()
    failures = list(rt.pipeline.recent_failures) if rt.pipeline else []
    return web.json({**rt.state(), "recent_failures": failures, "time": time.time()})


@app.page("/")
async def dashboard(web: Any, request: Any) -> Any:
    return web.html(DASHBOARD)


@app.page("/search/")
async def search(web: Any, request: Any) -> Any:
    rt = runtime()
    if rt.pipeline is None or rt.manager is None or not rt.stores:
        return web.json({"error": "worker is starting; try again in a few seconds"}, status=503)
    query = request.query.get("q", "").strip()
    if not query:
        return web.json({"error": "missing query parameter q, e.g. /search/?q=hello&k=5"}, status=400)
    try:
        k = max(1, min(100, int(request.query.get("k", "5"))))
    except ValueError:
        return web.json({"error": "k must be a whole number between 1 and 100"}, status=400)
    model = request.query.get("model") or settings.default_model
    collection = request.query.get("collection") or settings.default_collection
    store = rt.stores[0]
    try:
        vectors, info = await rt.manager.embed_texts(model, [query], batch_size=1, normalize=None)
        hits = await rt.pipeline.in_store_thread(lambda: store.search(collection, vectors[0].tolist(), k=k), store)
    except VectorizeError as exc:
        return web.json({"error": str(exc), "kind": exc.kind}, status=422)
    return web.json(
        {
            "query": query,
            "model": info.name,
            "collection": collection,
            "store": store.describe(),
            "hits": [
                {
                    "id": h.id,
                    "score": h.score,
                    "text": h.payload.get("text"),
                    "task_id": h.payload.get("task_id"),
                    "metadata": h.payload.get("metadata"),
                }
                for h in hits
            ],
        }
    )
