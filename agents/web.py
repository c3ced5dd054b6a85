"""Web views on Faust's port (6066): JSON endpoints and the dashboard.

``/healthz`` liveness, ``/readyz`` readiness, ``/workers`` live workers
(Redis heartbeats), ``/tasks/{task_id}`` a task's status (Faust table, routed
to the worker that owns the key), ``/models`` loaded models, ``/state`` this
worker, ``/search/?q=`` nearest neighbours (off unless ``web.search_enabled``), ``/`` the dashboard.

With ``web.auth_token`` every route but the probes and the dashboard's page needs
``Authorization: Bearer <token>`` (agents/web_security.py holds the guards).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web as aiohttp_web

from agents.intake import runtime
from agents.status import recent_task_ids, table_get, task_status, worker_stats
from agents.web_security import (
    FORWARDED_HEADER,
    SEARCH_SETTING,
    BadInput,
    access_log_middleware,
    ask_peers,
    auth_middleware,
    dashboard_headers,
    parse_search,
    select_peers,
    task_path,
    valid_task_id,
)
from app.faust_app import app, settings
from core.errors import ConfigError, VectorizeError
from core.secrets import reveal
from ops.heartbeat import live_workers, redis_error

log = logging.getLogger("worker.web")
DASHBOARD = (Path(__file__).resolve().parent / "dashboard.html").read_text(encoding="utf-8")
DASHBOARD_HEADERS = dashboard_headers(DASHBOARD)
STARTED = time.time()
TOKEN = reveal(settings.web_auth_token)


def _aiohttp_application() -> aiohttp_web.Application:
    """The one touch of Faust's web internals: Faust's aiohttp driver keeps its ``aiohttp.web.Application``
    as ``app.web.web_app`` (faust/web/drivers/aiohttp.py). Every route, Faust's own blueprints
    (``/router/``, ``/table/``) included, runs through that application's middlewares."""
    application = getattr(app.web, "web_app", None)
    if not isinstance(application, aiohttp_web.Application):
        raise ConfigError(
            f"Cannot guard the web port: Faust's web driver is {type(app.web).__name__}, not aiohttp's; "
            "the worker supports Faust's default aiohttp web driver only (web_transport/web driver settings)."
        )
    return application


def install_guards() -> None:
    """Access log and bearer token on every route; added before the web server starts (aiohttp freezes
    the middleware list then)."""
    if settings.web_auth_token is not None and not TOKEN:
        raise ConfigError(
            "web.auth_token (VECTORIZE_WORKER_WEB_AUTH_TOKEN) is set but empty; set a token or unset the setting."
        )
    middlewares = _aiohttp_application().middlewares
    if settings.web_access_log:
        middlewares.append(access_log_middleware(logging.getLogger("worker.web.access")))
    if TOKEN:
        middlewares.append(auth_middleware(TOKEN))
    elif not _loopback(settings.web_host):
        log.warning(
            "The web port listens on %s without a token: anyone who reaches it reads task statuses and "
            "worker state. Set VECTORIZE_WORKER_WEB_AUTH_TOKEN or bind 127.0.0.1 (VECTORIZE_WORKER_WEB_HOST).",
            settings.web_host,
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _live_workers() -> list[dict[str, Any]]:
    """The live workers of this worker's group (a Redis shared by several groups holds theirs too)."""
    beats = await live_workers(
        settings.redis_url, password=settings.redis_password, ssl_ca_file=settings.redis_ssl_ca_file
    )
    return [w for w in beats if w.get("group") == settings.kafka_group_id]


def _redis_error(exc: Exception) -> str:
    return redis_error(settings.redis_url, exc, settings.redis_password)


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
        live = await _live_workers()
        error = None
    except Exception as exc:  # noqa: BLE001 - Redis down: say so, keep serving
        live, error = [], _redis_error(exc)
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


def _owned_here(task_id: str) -> bool:
    """Whether this worker actively owns the table partition of ``task_id``: Faust keeps the local copy of a
    partition that moved to another worker, and a read there would answer a stale status.

    The status records are keyed by task id with Kafka's default partitioner (murmur2), as is the table."""
    from aiokafka.partitioner import murmur2

    changelog = task_status.changelog_topic.get_topic_name()
    owned = [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog]
    count = app.consumer.topic_partitions(settings.status_topic) if owned else None
    if not count:
        return bool(owned)
    return (murmur2(task_id.encode("utf-8")) & 0x7FFFFFFF) % count in owned


@app.page("/tasks/{task_id}")
async def task(web: Any, request: Any, task_id: str) -> Any:
    """A task's status from the table. The key lives on the worker that owns its partition:
    when it is not here, ask the other live workers (from their heartbeats), one hop at most."""
    if not valid_task_id(task_id):
        return web.json(
            {"error": "invalid task id: 1-200 characters without control characters (the task schema's rule)"},
            status=400,
        )
    if not settings.task_status_table:
        return web.json(
            {
                "task_id": task_id,
                "error": "this worker keeps no task-status table (kafka.task_status_table is false); "
                f"read the task's records on {settings.status_topic} or turn the table on",
            },
            status=404,
        )
    value = table_get(task_status, task_id) if _owned_here(task_id) else None
    if value is not None:
        return web.json({**value, "served_by": settings.worker_id})
    forwarded = FORWARDED_HEADER in request.headers or request.query.get("local") == "1"
    if not forwarded:
        try:
            peers = select_peers(await _live_workers(), self_id=settings.worker_id, group=settings.kafka_group_id)
        except Exception as exc:  # noqa: BLE001 - without Redis there is no peer list
            log.warning("Cannot ask the other workers for task %r: %s", task_id[:200], _redis_error(exc))
            peers = []
        found = await ask_peers(app.http_client, peers, task_path(task_id), token=TOKEN)
        if found is not None:
            return web.json(found)
    return web.json({"task_id": task_id, "error": "unknown task id (not seen yet by any live worker)"}, status=404)


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
    """The page only (no data): it reads the token from ``#token=…`` or asks for it, and sends it on its fetches."""
    return web.html(DASHBOARD, headers=dict(DASHBOARD_HEADERS))


class _NotLoaded(Exception):
    pass


@app.page("/search/")
async def search(web: Any, request: Any) -> Any:
    """Nearest neighbours of a query, with a model the worker has already loaded (never loads one:
    a load can take minutes and gigabytes, and would evict a model the tasks use)."""
    if not settings.web_search_enabled:
        return web.json(
            {
                "error": f"/search/ is disabled on this worker; set {SEARCH_SETTING}=true to turn it on "
                "(it returns stored text to anyone who can call the web port)"
            },
            status=404,
        )
    rt = runtime()
    if rt.pipeline is None or rt.manager is None or not rt.stores:
        return web.json({"error": "worker is starting; try again in a few seconds"}, status=503)
    try:
        params = parse_search(
            request.query, default_model=settings.default_model, default_collection=settings.default_collection
        )
    except BadInput as exc:
        return web.json({"error": str(exc)}, status=exc.status)
    manager, store = rt.manager, rt.stores[0]

    def embed_query() -> Any:
        # on the device thread, where every load and eviction runs: the model cannot go away in between
        model = manager.loaded_model(params.model)
        if model is None:
            raise _NotLoaded
        return model.embed_texts([params.q], batch_size=1, normalize=None), model.info

    try:
        vectors, info = await manager.run(embed_query)
        hits = await rt.pipeline.in_store_thread(
            lambda: store.search(params.collection, vectors[0].tolist(), k=params.k, filter=params.filter), store
        )
    except _NotLoaded:
        loaded = ", ".join(m.name for m in manager.loaded()) or "none"
        return web.json(
            {
                "error": f"model {params.model!r} is not loaded on this worker and /search/ never loads one; "
                f"use a loaded model (model=…; loaded: {loaded}) or ask again once a task has loaded it",
            },
            status=409,
        )
    except VectorizeError as exc:
        return web.json({"error": str(exc), "kind": exc.kind}, status=422)
    return web.json(
        {
            "query": params.q,
            "model": info.name,
            "collection": params.collection,
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


install_guards()
