"""A real worker with web.auth_token: the guard wraps every route of the running Faust web server,
search stays off, and the access log never holds the token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Topics, WorkerProcess

pytestmark = pytest.mark.integration
TOKEN = "it-web-token-7f3a"


def _get(w: WorkerProcess, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{w.web_port}{path}", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_token_guards_every_route_of_a_running_worker(topics: Topics, tmp_path: Path) -> None:
    w = WorkerProcess(topics, tmp_path / "w", VECTORIZE_WORKER_WEB_AUTH_TOKEN=TOKEN).start()
    try:
        w.wait_ready()  # /readyz answers without the token
        assert _get(w, "/healthz")[0] == 200
        status, page = _get(w, "/")
        assert status == 200 and b"vectorize-worker" in page
        for path in ("/workers", "/state", "/models", "/tasks", "/tasks/x", "/table/", "/router/", "/search/?q=x"):
            status, body = _get(w, path)
            assert status == 401, (path, body)
            assert "VECTORIZE_WORKER_WEB_AUTH_TOKEN" in json.loads(body)["error"]
            assert _get(w, path, "wrong")[0] == 401
        status, body = _get(w, "/workers", TOKEN)
        assert status == 200 and json.loads(body)["this_worker"] == "worker-it"
        status, body = _get(w, f"/search/?q=hello&token={TOKEN}", TOKEN)
        assert status == 404 and "VECTORIZE_WORKER_WEB_SEARCH_ENABLED" in json.loads(body)["error"]
        log = w.log()
        assert "worker.web.access - INFO - GET /workers 200 " in log
        assert "GET /search/ 404 " in log and "GET /table/ 401 " in log
        assert TOKEN not in log
    finally:
        w.stop()
        w.kill()
