"""Headless Chromium renders the dashboard against hostile data behind the token: every string shows as
text, none becomes markup; the page takes the token from ``#token=`` and asks for it when missing.

The data endpoints are aiohttp fakes (no worker, no Kafka); the page, its headers (CSP) and the token
middleware are the worker's own.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestServer

from agents.web_security import auth_middleware, dashboard_headers

DASHBOARD = (Path(__file__).resolve().parents[2] / "agents" / "dashboard.html").read_text(encoding="utf-8")
TOKEN = "dash-Token-42"
HOSTILE = '<img src=x onerror="document.title=1">'

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt install chromium)")


def _app() -> aiohttp_web.Application:
    async def page(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.Response(text=DASHBOARD, content_type="text/html", headers=dashboard_headers(DASHBOARD))

    async def workers(request: aiohttp_web.Request) -> aiohttp_web.Response:
        beat = {
            "worker_id": "w-" + HOSTILE,
            "host": HOSTILE,
            "web_port": "<svg onload=alert(1)>",
            "status": "running",
            "ready": True,
            "processed": "<b>7</b>",
            "failed": 1,
            "device": HOSTILE,
            "loaded_models": [HOSTILE],
            "timestamp": "<i>now</i>",
            "consumer_lag": HOSTILE,  # not a number: the lag chart leaves it out
        }
        return aiohttp_web.json_response({"workers": [beat], "this_worker": "me", "redis_error": HOSTILE})

    async def models(request: aiohttp_web.Request) -> aiohttp_web.Response:
        info = {"name": "model-" + HOSTILE, "family": HOSTILE, "dim": "<u>384</u>", "device": "cpu", "source": HOSTILE}
        return aiohttp_web.json_response({"loaded": [info]})

    async def state(request: aiohttp_web.Request) -> aiohttp_web.Response:
        failure = {"at": 1.0, "task_id": "task-" + HOSTILE, "task_type": HOSTILE, "kind": HOSTILE, "error": HOSTILE}
        return aiohttp_web.json_response({"recent_failures": [failure], "time": 1.0})

    application = aiohttp_web.Application(middlewares=[auth_middleware(TOKEN)])
    application.router.add_get("/", page)
    application.router.add_get("/workers", workers)
    application.router.add_get("/models", models)
    application.router.add_get("/state", state)
    return application


async def _dump_dom(url: str, profile: Path) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    process = await asyncio.create_subprocess_exec(
        "chromium", *flags, "--dump-dom", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


async def test_hostile_strings_render_as_text_with_the_token_from_the_fragment(tmp_path: Path) -> None:
    server = TestServer(_app(), host="127.0.0.1")
    await server.start_server()
    try:
        dom = await _dump_dom(str(server.make_url("/")) + f"#token={TOKEN}", tmp_path / "profile")
    finally:
        await server.close()
    assert '<td>w-&lt;img src=x onerror="document.title=1"&gt;</td>' in dom, dom[-3000:]  # rows came: token used
    assert "<td>task-&lt;img" in dom and "<td>model-&lt;img" in dom
    assert "<img" not in dom and "<svg onload" not in dom and "<b>7" not in dom and "<u>384" not in dom
    assert '<form id="login" hidden="">' in dom  # the token worked: no prompt
    assert "<title>vectorize-worker</title>" in dom
    assert 'id="chart-lag"' in dom and "not reported" in dom  # no worker reported a lag it could draw


async def test_without_a_token_the_page_asks_for_it(tmp_path: Path) -> None:
    server = TestServer(_app(), host="127.0.0.1")
    await server.start_server()
    try:
        dom = await _dump_dom(str(server.make_url("/")), tmp_path / "profile")
    finally:
        await server.close()
    assert '<form id="login">' in dom and "needs the web token" in dom, dom[-3000:]
    assert "w-&lt;img" not in dom


def _moving_app(served: list[dict[str, float]]) -> aiohttp_web.Application:
    """Two workers whose counts grow by 10 tasks every 2 s of the state's clock while their lag shrinks."""

    async def page(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.Response(text=DASHBOARD, content_type="text/html", headers=dashboard_headers(DASHBOARD))

    async def workers(request: aiohttp_web.Request) -> aiohttp_web.Response:
        n = len(served)
        served.append({"processed": 20.0 * n, "lag": 1000.0 - 100 * n})
        beats = [
            {"worker_id": f"w{i}", "processed": 10 * n, "failed": 0, "consumer_lag": 500 - 50 * n, "ready": True}
            for i in (1, 2)
        ]
        return aiohttp_web.json_response({"workers": beats, "this_worker": "w1"})

    async def models(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.json_response({"loaded": []})

    async def state(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.json_response({"recent_failures": [], "time": 1000.0 + 2 * (len(served) - 1)})

    application = aiohttp_web.Application()
    for path, view in (("/", page), ("/workers", workers), ("/models", models), ("/state", state)):
        application.router.add_get(path, view)
    return application


async def test_throughput_and_lag_are_drawn_over_the_last_minutes(tmp_path: Path) -> None:
    served: list[dict[str, float]] = []
    server = TestServer(_moving_app(served), host="127.0.0.1")
    await server.start_server()
    try:
        dom = await _dump_dom(str(server.make_url("/")), tmp_path / "profile")
    finally:
        await server.close()
    assert len(served) >= 3, f"the page refreshed {len(served)} times in 5 s of virtual time"
    throughput = re.search(r'id="chart-throughput">(.*?)</figure>', dom, re.DOTALL)
    lag = re.search(r'id="chart-lag">(.*?)</figure>', dom, re.DOTALL)
    assert throughput and lag, dom[-3000:]
    # 20 tasks (two workers) per 2 s of the workers' clock: 10 tasks/s, shown as the latest value
    assert '<b class="now">10.0</b>' in throughput.group(1)
    assert f'<b class="now">{served[-1]["lag"]:.0f}</b>' in lag.group(1)  # the sum of both workers' lag
    for figure, samples in ((throughput.group(1), len(served) - 1), (lag.group(1), len(served))):
        line = re.search(r'<polyline points="([^"]+)"[^>]*data-samples="(\d+)"', figure)
        assert line, figure
        assert int(line.group(2)) == samples
        points = [tuple(map(float, p.split(","))) for p in line.group(1).split()]
        assert all(0 <= x <= 300 and 0 <= y <= 72 for x, y in points)
        assert points[-1][0] == 300.0  # the newest sample at the right edge
    lag_points = [
        float(p.split(",")[1]) for p in re.search(r'<polyline points="([^"]+)"', lag.group(1)).group(1).split()
    ]
    assert lag_points == sorted(lag_points)  # shrinking lag: the line goes down (SVG y grows downwards)
    assert lag_points[0] < lag_points[-1]
    assert '<span class="span">last 60 s</span>' in lag.group(1)  # the window: a minute until more is seen
