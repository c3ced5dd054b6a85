"""Web views on Faust's port (6066): JSON endpoints and the dashboard.

``/healthz`` liveness, ``/readyz`` readiness, ``/workers`` live workers
(Redis heartbeats), ``/tasks/{task_id}`` a task's status (from Redis; with
``kafka.task_status_table`` from the Faust table, routed to the worker that owns
the key), ``/models`` loaded models, ``/state`` this worker, ``/search/?q=``
nearest neighbours (off unless ``web.search_enabled``), ``/`` the dashboard.

With ``web.auth_token`` every route but the probes and the dashboard's page needs
``Authorization: Bearer <token>`` (agents/web_security.py holds the guards).

:func:`register` adds the views to a built app and guards its web port;
nothing happens on import but reading the dashboard's page.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from agents.status import StatusTables, table_get
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
    whole_number,
)
from app import compat
from app.faust_app import WorkerApp
from app.runtime import WorkerRuntime
from core.errors import ConfigError, VectorizeError
from core.secrets import reveal
from core.settings import Settings
from ops.heartbeat import live_workers, redis_error
from ops.task_status import RECENT_KEPT, TaskStatusError

log = logging.getLogger("worker.web")
DASHBOARD = (Path(__file__).resolve().parent / "dashboard.html").read_text(encoding="utf-8")
DASHBOARD_HEADERS = dashboard_headers(DASHBOARD)

View = Callable[..., Awaitable[Any]]  # (faust's view, request, **match_info) -> response


def _identity(manager: Any, name: str) -> dict[str, Any] | None:
    record = manager.identity_record(name) if manager is not None else None
    return record.to_dict() if record is not None else None


def install_guards(app: Any, settings: Settings) -> None:
    """Access log and bearer token on every route of ``app``'s web server; added before the server starts
    (aiohttp freezes the middleware list then)."""
    token = reveal(settings.web_auth_token)
    if settings.web_auth_token is not None and not token:
        raise ConfigError(
            "web.auth_token (VECTORIZE_WORKER_WEB_AUTH_TOKEN) is set but empty; set a token or unset the setting."
        )
    middlewares = compat.aiohttp_application(app).middlewares
    if settings.web_access_log:
        middlewares.append(access_log_middleware(logging.getLogger("worker.web.access")))
    if token:
        middlewares.append(auth_middleware(token))
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


class _NotLoaded(Exception):
    pass


class WebViews:
    """The worker's views, each ``async (web, request, **match_info) -> response`` (``web``: Faust's view, which
    builds the responses); :meth:`routes` pairs them with their paths."""

    def __init__(
        self, settings: Settings, app: Any, runtime: Callable[[], WorkerRuntime], tables: StatusTables
    ) -> None:
        self.settings = settings
        self.app = app
        self.runtime = runtime
        self.tables = tables
        self.token = reveal(settings.web_auth_token)
        self.started = time.time()

    def routes(self) -> list[tuple[str, View]]:
        return [
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/workers", self.workers),
            ("/tasks", self.recent_tasks),
            ("/tasks/{task_id}", self.task),
            ("/models", self.models),
            ("/state", self.state),
            ("/", self.dashboard),
            ("/search/", self.search),
        ]

    async def _live_workers(self) -> list[dict[str, Any]]:
        """The live workers of this worker's group (a Redis shared by several groups holds theirs too)."""
        s = self.settings
        beats = await live_workers(s.redis_url, password=s.redis_password, ssl_ca_file=s.redis_ssl_ca_file)
        return [w for w in beats if w.get("group") == s.kafka_group_id]

    def _redis_error(self, exc: Exception) -> str:
        return redis_error(self.settings.redis_url, exc, self.settings.redis_password)

    def _consumer_alive(self) -> bool:
        consumer = compat.app_consumer(self.app)
        return consumer is not None and not consumer.should_stop

    def _kafka_assigned(self) -> bool:
        if not self._consumer_alive():
            return False
        try:
            return bool(self.app.consumer.assignment())
        except Exception:  # noqa: BLE001 - Faust's consumer thread is still starting (ConsumerNotStarted): not ready
            return False

    async def healthz(self, web: Any, request: Any) -> Any:
        consumer = self._consumer_alive()
        stuck = self.tables.recovery_watch.stuck  # a table recovery that restarts did not unstick
        alive = consumer and stuck is None
        body: dict[str, Any] = {"status": "ok" if alive else "down", "consumer": consumer}
        if stuck is not None:
            body["table_recovery"] = stuck
        return web.json({**body, "uptime_s": time.time() - self.started}, status=200 if alive else 503)

    async def readyz(self, web: Any, request: Any) -> Any:
        rt = self.runtime()
        checks = {
            "model_warmed": rt.model_ready,
            "store_reachable": rt.store_up is True,
            "kafka_assigned": self._kafka_assigned(),
        }
        ready = all(checks.values())
        return web.json({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def workers(self, web: Any, request: Any) -> Any:
        try:
            live = await self._live_workers()
            error = None
        except Exception as exc:  # noqa: BLE001 - Redis down: say so, keep serving
            live, error = [], self._redis_error(exc)
        local = dict(self.tables.worker_stats.items())
        return web.json(
            {"workers": live, "table_stats": local, "redis_error": error, "this_worker": self.settings.worker_id}
        )

    def _status_partitions(self) -> list[int]:
        """The partitions of the task-status table this worker actively owns."""
        if self.tables.task_status is None:
            return []
        changelog = self.tables.task_status.changelog_topic.get_topic_name()
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == changelog)

    async def recent_tasks(self, web: Any, request: Any) -> Any:
        """The most recent tasks, newest first (``?limit=``, 1 to 1,000, default 100): with the Redis statuses the
        group's (any worker answers alike), with the table the tasks whose status this worker's tracker read.

        Not a scan: Redis keeps an index of the group's newest 1,000 tasks; the table's tracker its last 1,000.
        """
        s = self.settings
        try:
            limit = whole_number(request.query.get("limit", "100"), "limit", 1, RECENT_KEPT)
        except BadInput as exc:
            return web.json({"error": str(exc)}, status=400)
        store = self.runtime().task_status if s.task_status_redis else None
        error = None
        if store is not None:
            try:
                found = await store.recent(limit)
            except TaskStatusError as exc:
                found, error = [], str(exc)
        elif s.task_status_redis:
            found, error = [], "this worker is starting (its task-status store is not open); ask again"
        elif self.tables.task_status is not None:
            ids = list(dict.fromkeys(reversed(self.tables.recent_task_ids)))[:limit]  # newest first, each once
            # None once its partition moved to another worker
            found = [v for v in (table_get(self.tables.task_status, task_id) for task_id in ids) if v is not None]
        else:
            found = []
        return web.json(
            {
                "worker_id": s.worker_id,
                "scope": "group" if s.task_status_redis else "this worker",
                "task_status_redis": s.task_status_redis,
                "task_status_table": s.task_status_table,
                "tasks": found,
                "partitions": self._status_partitions(),
                "error": error,
            }
        )

    def _owned_here(self, task_id: str) -> bool:
        """Whether this worker actively owns the table partition of ``task_id``: Faust keeps the local copy of a
        partition that moved to another worker, and a read there would answer a stale status.

        The status records are keyed by task id with Kafka's default partitioner (murmur2), as is the table."""
        from aiokafka.partitioner import murmur2

        owned = self._status_partitions()
        count = self.app.consumer.topic_partitions(self.settings.status_topic) if owned else None
        if not count:
            return bool(owned)
        return (murmur2(task_id.encode("utf-8")) & 0x7FFFFFFF) % count in owned

    async def task(self, web: Any, request: Any, task_id: str) -> Any:
        """A task's status: from Redis (``redis.task_status``, any worker answers), else from the table, whose key
        lives on the worker that owns its partition: when it is not here, ask the other live workers (from their
        heartbeats), one hop at most."""
        s = self.settings
        if not valid_task_id(task_id):
            return web.json(
                {"error": "invalid task id: 1-200 characters without control characters (the task schema's rule)"},
                status=400,
            )
        if s.task_status_redis:
            store = self.runtime().task_status
            if store is None:
                return web.json(
                    {
                        "task_id": task_id,
                        "error": "this worker is starting (its task-status store is not open); ask again",
                    },
                    status=503,
                )
            try:
                found = await store.get(task_id)
            except TaskStatusError as exc:
                return web.json(
                    {"task_id": task_id, "error": f"{exc}; the task's records are on {s.status_topic}"}, status=503
                )
            if found is not None:
                return web.json({**found, "served_by": s.worker_id})
            if not s.task_status_table:
                return web.json(
                    {
                        "task_id": task_id,
                        "error": "unknown task id: Redis holds no status for it (not sent yet, or older than "
                        "kafka.task_status_retention_hours)",
                    },
                    status=404,
                )
        if not s.task_status_table:
            return web.json(
                {
                    "task_id": task_id,
                    "error": "this worker keeps no task statuses (redis.task_status and kafka.task_status_table are "
                    f"false); read the task's records on {s.status_topic} or turn one on",
                },
                status=404,
            )
        value = table_get(self.tables.task_status, task_id) if self._owned_here(task_id) else None
        if value is not None:
            return web.json({**value, "served_by": s.worker_id})
        forwarded = FORWARDED_HEADER in request.headers or request.query.get("local") == "1"
        if not forwarded:
            try:
                peers = select_peers(await self._live_workers(), self_id=s.worker_id, group=s.kafka_group_id)
            except Exception as exc:  # noqa: BLE001 - without Redis there is no peer list
                log.warning("Cannot ask the other workers for task %r: %s", task_id[:200], self._redis_error(exc))
                peers = []
            found = await ask_peers(self.app.http_client, peers, task_path(task_id), token=self.token)
            if found is not None:
                return web.json(found)
        return web.json({"task_id": task_id, "error": "unknown task id (not seen yet by any live worker)"}, status=404)

    async def models(self, web: Any, request: Any) -> Any:
        rt = self.runtime()
        loaded = rt.manager.loaded() if rt.manager else []
        return web.json(
            {
                "worker_id": self.settings.worker_id,
                "device": rt.device,
                "max_loaded": self.settings.max_loaded_models,
                "default": self.settings.default_model,
                # models.parallel_calls as resolved here: calls at once and torch threads each (null: torch's own)
                "parallel_calls": rt.manager.parallel_calls if rt.manager else None,
                "threads_per_call": rt.manager.call_threads if rt.manager else None,
                # each with its identity record (core.versioning.ModelIdentity): what its vectors are stored under
                "loaded": [{**asdict(info), "identity": _identity(rt.manager, info.name)} for info in loaded],
            }
        )

    async def state(self, web: Any, request: Any) -> Any:
        rt = self.runtime()
        failures = list(rt.pipeline.recent_failures) if rt.pipeline else []
        return web.json({**rt.state(), "recent_failures": failures, "time": time.time()})

    async def dashboard(self, web: Any, request: Any) -> Any:
        """The page only (no data): it reads the token from ``#token=…`` or asks for it, and sends it on its
        fetches."""
        return web.html(DASHBOARD, headers=dict(DASHBOARD_HEADERS))

    async def search(self, web: Any, request: Any) -> Any:
        """Nearest neighbours of a query, with a model the worker has already loaded (never loads one:
        a load can take minutes and gigabytes, and would evict a model the tasks use)."""
        s = self.settings
        if not s.web_search_enabled:
            return web.json(
                {
                    "error": f"/search/ is disabled on this worker; set {SEARCH_SETTING}=true to turn it on "
                    "(it returns stored text to anyone who can call the web port)"
                },
                status=404,
            )
        rt = self.runtime()
        if rt.pipeline is None or rt.manager is None or not rt.stores:
            return web.json({"error": "worker is starting; try again in a few seconds"}, status=503)
        try:
            params = parse_search(request.query, default_model=s.default_model, default_collection=s.default_collection)
        except BadInput as exc:
            return web.json({"error": str(exc)}, status=exc.status)
        manager, store, pipeline = rt.manager, rt.stores[0], rt.pipeline
        # a migrated collection is read where its migration state says, with that collection's model unless the
        # query names one (docs/migration.md)
        physical, identity = rt.migrations.read_target(params.collection, store.name)
        if identity is not None and not request.query.get("model"):
            params = replace(params, model=identity.name)

        def embed_query() -> Any:
            # never loads; the manager keeps the model from closing while the query uses it
            embedded = manager.embed_loaded_sync(params.model, [params.q], batch_size=1, normalize=None)
            if embedded is None:
                raise _NotLoaded
            return embedded

        try:
            vectors, info = await manager.run(embed_query)
            hits = await pipeline.in_store_thread(
                lambda: store.search(physical, vectors[0].tolist(), k=params.k, filter=params.filter), store
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


def _page(handler: View) -> View:
    """A plain ``async (web, request, **match_info)`` function for Faust's ``app.page``, which makes the view class
    from a function (a bound method would not get the view as its first argument)."""

    @functools.wraps(handler)
    async def view(web: Any, request: Any, **match_info: Any) -> Any:
        return await handler(web, request, **match_info)

    return view


def register(worker: WorkerApp, runtime: Callable[[], WorkerRuntime], tables: StatusTables) -> WebViews:
    """Add the views to ``worker``'s app and guard its web port (token, access log)."""
    views = WebViews(worker.settings, worker.app, runtime, tables)
    for path, handler in views.routes():
        worker.app.page(path)(_page(handler))
    install_guards(worker.app, worker.settings)
    return views
