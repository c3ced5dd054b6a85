"""The web port's guards: bearer token on every route (Faust's own included), access log, /search/ that
never loads a model, bounded inputs, one-hop peer lookups, secrets kept out of Redis messages.

No Kafka: a fresh Faust app's aiohttp application runs in aiohttp's test server, peers are aiohttp test
servers, the views are called with fakes at the ports.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import aiohttp
import faust
import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from pydantic import SecretStr, TypeAdapter, ValidationError

from agents import Agents, web
from agents.web_security import (
    FORWARDED_HEADER,
    BadInput,
    ask_peers,
    bearer_matches,
    dashboard_headers,
    forward_headers,
    parse_search,
    select_peers,
    unauthorized_body,
    valid_task_id,
)
from app.faust_app import WorkerApp
from core.settings import load_settings
from engine.migrations import MigrationView
from models.manager import ModelManager
from ops.task_status import TaskStatusError
from sinks.base import StoredPoint
from tasks.schema import _TaskBase
from tests.fakes import FakeEmbedder
from tests.unit.built import build_worker

TOKEN = "s3cret-Token_0123"


class Web:
    """Faust's web driver, reduced to what the views build: (body, status, headers)."""

    def json(self, body: Any, *, status: int = 200, **kwargs: Any) -> tuple[Any, int]:
        return body, status

    def html(self, body: str, *, status: int = 200, headers: Any = None, **kwargs: Any) -> tuple[Any, int]:
        return body, status


# -- pure checks ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer  {TOKEN} ", True),
        (None, False),
        ("", False),
        (TOKEN, False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        ("Bearer ", False),
        ("Bearer sécret", False),  # not ASCII: compared as bytes, no TypeError
    ],
)
def test_bearer_matches(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, TOKEN) is ok


def test_the_401_names_the_header_and_the_setting_never_the_token() -> None:
    for header in (None, "Bearer wrong"):
        body = unauthorized_body(header)
        assert "Authorization: Bearer <token>" in body["error"] and "VECTORIZE_WORKER_WEB_AUTH_TOKEN" in body["error"]
        assert TOKEN not in str(body) and "wrong" not in str(body)


def _schema_accepts(field: str, value: str) -> bool:
    info = _TaskBase.model_fields[field]
    try:
        TypeAdapter(Annotated[str, *info.metadata]).validate_python(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("task_id", ["t-1", "task-" + "a" * 195, "a" * 201, "", "bad\nid", "x\x7f", "ünï cödé/✓"])
def test_task_ids_are_checked_like_the_task_schema(task_id: str) -> None:
    assert valid_task_id(task_id) is _schema_accepts("task_id", task_id)


@pytest.mark.parametrize("collection", ["docs", "Docs_2-x", "a" * 63, "a" * 64, "1docs", "do cs", "d/../x", ""])
def test_search_collections_are_checked_like_the_task_schema(collection: str) -> None:
    try:
        parse_search({"q": "hi", "collection": collection}, default_model="m", default_collection="default")
        accepted = True
    except BadInput:
        accepted = False
    # an empty parameter means the default collection, which is valid
    assert accepted is (_schema_accepts("collection", collection) or collection == "")


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({}, "missing query parameter q"),
        ({"q": "   "}, "missing query parameter q"),
        ({"q": "x" * 2001}, "at most 2000"),
        ({"q": "x", "k": "0"}, "from 1 to 100"),
        ({"q": "x", "k": "101"}, "from 1 to 100"),
        ({"q": "x", "k": "-1"}, "from 1 to 100"),
        ({"q": "x", "k": "ten"}, "from 1 to 100"),
        ({"q": "x", "k": "\u00b2"}, "from 1 to 100"),  # '²'.isdigit() is true, int('²') raises: once a 500
        ({"q": "x", "k": "1" * 5000}, "from 1 to 100"),  # beyond int()'s digit limit: once a 500
        ({"q": "x", "k": "0005"}, "from 1 to 100"),
        ({"q": "x", "model": "m" * 501}, "model must be"),
        ({"q": "x", "model": "bad\x00"}, "model must be"),
    ],
)
def test_search_inputs_are_bounded(query: dict[str, str], problem: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_search(query, default_model="m", default_collection="docs")
    assert problem in str(info.value) and info.value.status == 400


def test_search_defaults() -> None:
    params = parse_search({"q": " hello ", "k": "100"}, default_model="m", default_collection="docs")
    assert (params.q, params.k, params.model, params.collection) == ("hello", 100, "m", "docs")


def test_peers_come_only_from_well_formed_heartbeats_of_other_workers_of_the_group() -> None:
    beats = [
        {"worker_id": "me", "group": "g", "web_url": "http://me:6066"},
        {"worker_id": "a", "group": "g", "web_url": "http://10.0.0.2:6066"},
        {"worker_id": "a2", "group": "g", "web_url": "http://10.0.0.2:6066/"},  # same origin: asked once
        {"worker_id": "b", "group": "other", "web_url": "http://10.0.0.3:6066"},
        {"worker_id": "c", "group": "g", "web_url": "http://user:pw@evil:6066"},
        {"worker_id": "d", "group": "g", "web_url": "http://evil:6066/admin?x=1"},
        {"worker_id": "e", "group": "g", "web_url": "file:///etc/passwd"},
        {"worker_id": "f", "group": "g", "web_url": "http://no-port"},
        {"worker_id": "g", "group": "g", "web_url": 42},
        {"worker_id": "h", "group": "g"},
        {"worker_id": "i", "web_url": "https://[::1]:7000"},
        {"worker_id": "j", "group": "g", "web_url": "http://host:99999"},
    ]
    assert select_peers(beats, self_id="me", group="g") == ["http://10.0.0.2:6066", "https://[::1]:7000"]


def test_forwarded_requests_are_marked_and_carry_the_token() -> None:
    assert forward_headers(None) == {FORWARDED_HEADER: "1"}
    assert forward_headers(TOKEN) == {FORWARDED_HEADER: "1", "Authorization": f"Bearer {TOKEN}"}


def test_the_dashboard_page_renders_nothing_as_html_and_its_policy_allows_only_its_own_script() -> None:
    html = web.DASHBOARD
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in html
    policy = dashboard_headers(html)["Content-Security-Policy"]
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy and "connect-src 'self'" in policy
    assert dashboard_headers(html.replace("refresh();", "refresh(); alert(1);"))["Content-Security-Policy"] != policy


# -- the guards on a Faust app's aiohttp application ------------------------------------------
@pytest.fixture
async def guarded(clean_env: pytest.MonkeyPatch) -> AsyncIterator[TestClient[Any, Any]]:
    """A fresh Faust app (its built-in /router/ and /table/ views included) with the worker's guards."""
    fresh = faust.App("web-guard-test", broker="kafka://127.0.0.1:9", store="memory://", autodiscover=False)

    @fresh.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        return view.json({"status": "ok"})

    @fresh.page("/workers")
    async def workers(view: Any, request: Any) -> Any:
        return view.json({"workers": ["private"]})

    @fresh.page("/")
    async def dashboard(view: Any, request: Any) -> Any:
        return view.html("<p>page</p>")

    clean_env.setenv("VECTORIZE_WORKER_WEB_AUTH_TOKEN", TOKEN)
    clean_env.setenv("VECTORIZE_WORKER_WEB_ACCESS_LOG", "true")
    web.install_guards(fresh, load_settings())
    fresh.web.init_server()  # adds Faust's blueprints, as the worker's web server does when it starts
    async with TestClient(TestServer(fresh.web.web_app)) as client:
        yield client


@pytest.fixture
def built(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> tuple[WorkerApp, Agents]:
    """The worker's own app and views, built in-process with a token."""
    return build_worker(clean_env, tmp_path, web_auth_token=TOKEN, table_store="memory")


async def test_the_workers_own_routes_are_served_and_guarded(built: tuple[WorkerApp, Agents]) -> None:
    worker, _ = built
    worker.app.web.init_server()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(worker.app.web.web_app)) as client:
        health = await client.get("/healthz")  # a probe: open, and down while no consumer runs
        assert health.status == 503 and (await health.json())["consumer"] is False
        assert (await client.get("/state")).status == 401
        state = await client.get("/state", headers=auth)
        assert state.status == 200 and (await state.json())["worker_id"] == worker.settings.worker_id
        bad = await client.get("/tasks/bad%01id", headers=auth)
        assert bad.status == 400 and "invalid task id" in (await bad.json())["error"]


@pytest.mark.parametrize(
    "path", ["/workers", "/router/", "/router/topics", "/table/", "/table/task-status/x/", "/no-such-route"]
)
async def test_every_route_but_the_open_ones_needs_the_token(guarded: TestClient[Any, Any], path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await guarded.get(path, headers=headers)
        body = await response.json()
        assert response.status == 401, (path, headers)
        assert "Authorization: Bearer <token>" in body["error"] and TOKEN not in str(body)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status != 401


async def test_the_probes_and_the_page_are_open(guarded: TestClient[Any, Any]) -> None:
    assert (await guarded.get("/healthz")).status == 200
    assert (await guarded.get("/")).status == 200
    assert (await guarded.post("/", data=b"x")).status == 401  # only GET/HEAD of the page are open


async def test_one_access_line_per_request_without_query_or_token(
    guarded: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.web.access"):
        await guarded.get(f"/workers?token={TOKEN}&x=1", headers={"Authorization": f"Bearer {TOKEN}"})
        await guarded.get("/router/")
        await guarded.get("/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.web.access"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("GET /workers 200 ") and lines[0].endswith("ms 127.0.0.1")
    assert lines[1].startswith("GET /router/ 401 ") and lines[2].startswith("GET /healthz 200 ")
    assert all(TOKEN not in line and "?" not in line for line in lines)


# -- peers ----------------------------------------------------------------------------------
async def _serve(routes: dict[str, Any]) -> TestServer:
    application = aiohttp_web.Application()
    for path, handler in routes.items():
        application.router.add_get(path, handler)
    server = TestServer(application)
    await server.start_server()
    return server


class Peer:
    """A fake worker: answers /tasks/known when asked as a forwarded, authorized request; logs each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def task(self, request: aiohttp_web.Request) -> aiohttp_web.Response:
        self.requests.append((request.path, dict(request.headers)))
        authorized = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        if request.match_info["task_id"] == "known" and authorized and request.headers.get(FORWARDED_HEADER) == "1":
            return aiohttp_web.json_response({"task_id": "known", "status": "completed", "served_by": "peer"})
        return aiohttp_web.json_response({"error": "unknown"}, status=404)


async def test_peers_are_asked_once_with_the_token_and_redirects_are_not_followed() -> None:
    peer = Peer()
    good = await _serve({"/tasks/{task_id}": peer.task})
    redirect_to = str(good.make_url("/tasks/known"))

    async def redirect(request: aiohttp_web.Request) -> aiohttp_web.Response:
        raise aiohttp_web.HTTPFound(redirect_to)

    async def huge(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.Response(body=b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', content_type="application/json")

    redirecting = await _serve({"/tasks/{task_id}": redirect})
    oversized = await _serve({"/tasks/{task_id}": huge})
    base = lambda server: str(server.make_url("")).rstrip("/")  # noqa: E731
    try:
        async with aiohttp.ClientSession() as session:
            found = await ask_peers(session, [base(redirecting), base(oversized)], "/tasks/known", token=TOKEN)
            assert found is None and peer.requests == []  # the redirect to the good peer was not followed
            found = await ask_peers(
                session, [base(redirecting), base(oversized), base(good)], "/tasks/known", token=TOKEN
            )
            assert found == {"task_id": "known", "status": "completed", "served_by": "peer"}
            assert len(peer.requests) == 1
            path, headers = peer.requests[0]
            assert path == "/tasks/known" and headers[FORWARDED_HEADER] == "1"
            assert await ask_peers(session, [base(good)], "/tasks/known", token=None) is None  # no token: 404
    finally:
        for server in (good, redirecting, oversized):
            await server.close()


def _request(path: str, headers: dict[str, str] | None = None) -> Any:
    return make_mocked_request("GET", path, headers=headers or {})


@pytest.fixture
def built_table(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> tuple[WorkerApp, Agents]:
    """As ``built``, with the statuses in Faust's task-status table instead of Redis."""
    return build_worker(
        clean_env,
        tmp_path,
        web_auth_token=TOKEN,
        table_store="memory",
        task_status_table="true",
        task_status_redis="false",
    )


async def test_task_view_validates_ids_and_forwards_at_most_one_hop(
    monkeypatch: pytest.MonkeyPatch, built_table: tuple[WorkerApp, Agents]
) -> None:
    worker, parts = built_table
    views, settings = parts.web, worker.settings
    peer = Peer()
    server = await _serve({"/tasks/{task_id}": peer.task})
    heartbeats = [
        {"worker_id": settings.worker_id, "group": settings.kafka_group_id, "web_url": "http://self:1"},
        {"worker_id": "peer", "group": settings.kafka_group_id, "web_url": str(server.make_url("")).rstrip("/")},
    ]
    asked: list[int] = []

    async def live() -> list[dict[str, Any]]:
        asked.append(1)
        return heartbeats

    monkeypatch.setattr(views, "_live_workers", live)
    assert settings.task_status_table and not settings.task_status_redis  # the table is empty: "known" is on the peer
    try:
        async with aiohttp.ClientSession() as session:
            monkeypatch.setattr(worker.app, "http_client", session)
            body, status = await views.task(Web(), _request("/tasks/bad"), task_id="bad\x01id")
            assert status == 400 and "invalid task id" in body["error"] and asked == []
            body, status = await views.task(Web(), _request("/tasks/known", {FORWARDED_HEADER: "1"}), task_id="known")
            assert status == 404 and asked == [] and peer.requests == []  # a forwarded request stays here
            body, status = await views.task(Web(), _request("/tasks/known"), task_id="known")
            assert status == 200 and body["served_by"] == "peer" and len(peer.requests) == 1
            assert peer.requests[0][1]["Authorization"] == f"Bearer {TOKEN}"
    finally:
        await server.close()


class FakeStatuses:
    """The task-status store's port as the views use it (ops/task_status.py is tested on a real Redis)."""

    def __init__(self, entries: dict[str, dict[str, Any]], error: Exception | None = None) -> None:
        self.entries, self.error = entries, error
        self.asked: list[int] = []

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        self.asked.append(limit)
        if self.error is not None:
            raise self.error
        return list(reversed(self.entries.values()))[:limit]

    async def get(self, task_id: str) -> dict[str, Any] | None:
        return (await self.get_many([task_id]))[0]

    async def get_many(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        if self.error is not None:
            raise self.error
        return [self.entries.get(t) for t in task_ids]


async def test_task_view_answers_from_the_redis_statuses_without_asking_peers(
    monkeypatch: pytest.MonkeyPatch, built: tuple[WorkerApp, Agents]
) -> None:
    worker, parts = built
    views, settings = parts.web, worker.settings
    assert settings.task_status_redis and not settings.task_status_table  # the defaults

    async def no_peers() -> list[dict[str, Any]]:
        raise AssertionError("a worker with the Redis statuses asks no peer")

    monkeypatch.setattr(views, "_live_workers", no_peers)
    body, status = await views.task(Web(), _request("/tasks/t1"), task_id="t1")
    assert status == 503 and "starting" in body["error"]  # the runtime has not opened the store yet
    body, status = await views.recent_tasks(Web(), _request("/tasks"))
    assert status == 200 and body["tasks"] == [] and "starting" in body["error"]
    entry = {"task_id": "t1", "status": "completed", "history": [{"status": "completed", "timestamp": 1.0}]}
    views.runtime().task_status = FakeStatuses({"t1": entry, "t0": {**entry, "task_id": "t0"}})
    body, status = await views.task(Web(), _request("/tasks/t1"), task_id="t1")
    assert status == 200 and body == {**entry, "served_by": settings.worker_id}
    body, status = await views.task(Web(), _request("/tasks/t2"), task_id="t2")
    assert status == 404 and "Redis holds no status" in body["error"]
    body, status = await views.recent_tasks(Web(), _request("/tasks"))
    assert status == 200 and [t["task_id"] for t in body["tasks"]] == ["t0", "t1"]  # newest first
    assert body["task_status_redis"] is True and body["error"] is None and body["scope"] == "group"
    body, status = await views.recent_tasks(Web(), _request("/tasks?limit=1"))
    assert status == 200 and [t["task_id"] for t in body["tasks"]] == ["t0"]
    assert views.runtime().task_status.asked == [100, 1]
    for bad in ("0", "1001", "x", "%C2%B2", "-3"):
        body, status = await views.recent_tasks(Web(), _request(f"/tasks?limit={bad}"))
        assert status == 400 and "limit must be a whole number from 1 to 1000" in body["error"], bad
    views.runtime().task_status = FakeStatuses({}, error=TaskStatusError("Failed to connect to Redis at redis://x"))
    body, status = await views.task(Web(), _request("/tasks/t1"), task_id="t1")
    assert status == 503 and "Failed to connect to Redis" in body["error"] and settings.status_topic in body["error"]
    body, status = await views.recent_tasks(Web(), _request("/tasks"))
    assert status == 200 and body["tasks"] == [] and "Failed to connect to Redis" in body["error"]


async def test_task_view_without_any_status_store_says_which_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    worker, parts = build_worker(clean_env, tmp_path, table_store="memory", task_status_redis="false")
    body, status = await parts.web.task(Web(), _request("/tasks/t1"), task_id="t1")
    assert status == 404
    assert "redis.task_status" in body["error"] and "kafka.task_status_table" in body["error"], body
    assert worker.settings.status_topic in body["error"]


# -- /search/ ---------------------------------------------------------------------------------
class Store:
    name = "fake"

    def __init__(self) -> None:
        self.searches: list[tuple[str, int]] = []

    def search(self, collection: str, vector: list[float], k: int = 10, filter: Any = None) -> list[StoredPoint]:
        self.searches.append((collection, k))
        return [StoredPoint(id="p1", vector=None, payload={"text": "<b>hi</b>", "task_id": "t", "metadata": {}})]

    def describe(self) -> str:
        return "fake"


async def test_search_is_off_unless_enabled(built: tuple[WorkerApp, Agents]) -> None:
    views = built[1].web
    assert views.settings.web_search_enabled is False  # the default
    body, status = await views.search(Web(), _request("/search/?q=x"))
    assert status == 404 and "VECTORIZE_WORKER_WEB_SEARCH_ENABLED" in body["error"]


async def test_search_never_loads_a_model(monkeypatch: pytest.MonkeyPatch, built: tuple[WorkerApp, Agents]) -> None:
    views = built[1].web
    loads: list[str] = []

    def loader(name: str) -> FakeEmbedder:
        loads.append(name)
        return FakeEmbedder(name)

    manager = ModelManager(loader, max_loaded=2, warmup=False)
    store = Store()

    async def in_store_thread(func: Any, store: Any) -> Any:
        return func()

    pipeline = SimpleNamespace(in_store_thread=in_store_thread)
    monkeypatch.setattr(
        views,
        "runtime",
        lambda: SimpleNamespace(pipeline=pipeline, manager=manager, stores=[store], migrations=MigrationView()),
    )
    monkeypatch.setattr(views.settings, "web_search_enabled", True)
    try:
        body, status = await views.search(Web(), _request("/search/?q=hello&model=m&collection=docs"))
        assert status == 409 and "'m' is not loaded" in body["error"] and "never loads" in body["error"]
        assert loads == [] and store.searches == []
        body, status = await views.search(Web(), _request("/search/?q=hello&k=101"))
        assert status == 400 and "from 1 to 100" in body["error"]
        manager.get_sync("m")  # as a task would
        body, status = await views.search(Web(), _request("/search/?q=hello&model=m&collection=docs&k=3"))
        assert status == 200 and body["model"] == "m" and body["hits"][0]["text"] == "<b>hi</b>"
        assert loads == ["m"] and store.searches == [("docs", 3)]
    finally:
        manager.close()


# -- Redis: secrets stay out of messages -------------------------------------------------------
async def test_workers_view_shows_the_redis_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch, built: tuple[WorkerApp, Agents]
) -> None:
    views = built[1].web

    async def down() -> list[dict[str, Any]]:
        raise ConnectionError("Error 111 connecting to redis:6379 (auth pw-in-url, pw-in-setting). Refused.")

    monkeypatch.setattr(views, "_live_workers", down)
    monkeypatch.setattr(views.settings, "redis_url", "redis://user:pw-in-url@redis:6379/0")
    monkeypatch.setattr(views.settings, "redis_password", SecretStr("pw-in-setting"))
    body, status = await views.workers(Web(), _request("/workers"))
    assert status == 200 and body["workers"] == []
    error = body["redis_error"]
    assert "redis://user:***@redis:6379/0" in error and "pw-in-url" not in error and "pw-in-setting" not in error
