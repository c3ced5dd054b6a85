"""GPU monitoring (ops/gpu.py) with a fake NVML in ``sys.modules['pynvml']``: readings per device, the
``worker_gpu_*`` gauges, the heartbeat's ``gpus``, the dashboard's GPU section; nothing on a CPU worker or
without nvidia-ml-py. No GPU here: every NVML call is the fake's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisError

from ops.gpu import GpuMonitor, GpuReading, visible_devices
from ops.heartbeat import Heartbeat
from ops.metrics import Metrics

GiB = 2**30


class FakeNVMLError(Exception):
    pass


def fake_nvml(*, init_error: bool = False) -> types.ModuleType:
    """Two GPUs as nvidia-ml-py's pynvml shows them; GPU 1 cannot report its power (as on some boards)."""
    gpus = [
        {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa1111", "util": 37, "used": 7.5, "total": 80.0, "temp": 61,
         "mw": 250_400},
        {"name": b"NVIDIA A10", "uuid": "GPU-bbbb2222", "util": 0, "used": 0.5, "total": 24.0, "temp": 40, "mw": None},
    ]  # fmt: skip
    nvml = types.ModuleType("pynvml")
    nvml.calls = []  # type: ignore[attr-defined]
    nvml.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nvml.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]

    def init() -> None:
        nvml.calls.append("init")  # type: ignore[attr-defined]
        if init_error:
            raise FakeNVMLError("Driver Not Loaded")

    def power(handle: int) -> int:
        if gpus[handle]["mw"] is None:
            raise FakeNVMLError("Not Supported")
        return gpus[handle]["mw"]  # type: ignore[return-value]

    def temperature(handle: int, sensor: int) -> int:
        assert sensor == 0
        return gpus[handle]["temp"]  # type: ignore[return-value]

    functions: dict[str, Any] = {
        "nvmlInit": init,
        "nvmlShutdown": lambda: nvml.calls.append("shutdown"),  # type: ignore[attr-defined]
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": lambda index: index,
        "nvmlDeviceGetName": lambda h: gpus[h]["name"],
        "nvmlDeviceGetUUID": lambda h: gpus[h]["uuid"],
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=gpus[h]["util"], memory=3),
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(
            used=int(gpus[h]["used"] * GiB), total=int(gpus[h]["total"] * GiB), free=0
        ),
        "nvmlDeviceGetTemperature": temperature,
        "nvmlDeviceGetPowerUsage": power,
    }
    for name, function in functions.items():
        setattr(nvml, name, function)
    return nvml


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return module


def test_readings_per_visible_device(nvml: types.ModuleType) -> None:
    monitor = GpuMonitor.open("cuda")
    assert monitor is not None
    first, second = monitor.sample()
    assert first == GpuReading(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-aaaa1111",
        utilization_percent=37.0,
        memory_used_bytes=int(7.5 * GiB),
        memory_total_bytes=80 * GiB,
        temperature_celsius=61.0,
        power_watts=250.4,
    )
    assert (second.index, second.name, second.power_watts, second.temperature_celsius) == (1, "NVIDIA A10", None, 40.0)
    monitor.close()
    monitor.close()
    assert nvml.calls == ["init", "shutdown"]


@pytest.mark.parametrize(
    ("visible", "indices"),
    [
        (None, [0, 1]),
        ("1", [1]),
        ("1,0", [1, 0]),
        (" 0 , 1 ", [0, 1]),
        ("GPU-bbbb", [1]),  # a unique UUID prefix, as CUDA takes it
        ("gpu-AAAA1111", [0]),
        ("0,-1,1", [0]),  # CUDA stops at the first entry naming no GPU
        ("-1", []),
        ("", []),
        ("GPU-", []),  # a prefix of both: ambiguous
        ("7", []),
        ("MIG-0f0f", []),
    ],
)
def test_cuda_visible_devices_picks_the_gpus(nvml: types.ModuleType, visible: str | None, indices: list[int]) -> None:
    assert [index for index, _ in visible_devices(nvml, visible)] == indices


def test_the_cuda_device_order_of_the_environment_is_followed(
    nvml: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monitor = GpuMonitor.open("cuda:0")
    assert monitor is not None and [r.index for r in monitor.sample()] == [1]


def test_no_monitor_off_cuda_and_nvml_is_never_touched(nvml: types.ModuleType) -> None:
    for device in ("cpu", "mps"):
        assert GpuMonitor.open(device) is None
    assert nvml.calls == []


def test_without_nvidia_ml_py_or_a_driver_there_is_no_monitor_and_one_line_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with caplog.at_level(logging.INFO, logger="worker.gpu"):
        assert GpuMonitor.open("cuda") is None
    assert "nvidia-ml-py" in caplog.text and "pip install nvidia-ml-py" in caplog.text
    caplog.clear()
    broken = fake_nvml(init_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    with caplog.at_level(logging.INFO, logger="worker.gpu"):
        assert GpuMonitor.open("cuda") is None
    assert "NVML did not start (FakeNVMLError: Driver Not Loaded)" in caplog.text and "nvidia-smi" in caplog.text
    caplog.clear()
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with caplog.at_level(logging.INFO, logger="worker.gpu"):
        assert GpuMonitor.open("cuda") is None
    assert "CUDA_VISIBLE_DEVICES='5'" in caplog.text
    assert sys.modules["pynvml"].calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_gauges_are_labelled_by_device_and_leave_out_what_nvml_cannot_tell(nvml: types.ModuleType) -> None:
    metrics = Metrics()
    monitor = GpuMonitor.open("cuda")
    assert monitor is not None
    metrics.set_gpus(monitor.sample())
    value = metrics.registry.get_sample_value
    assert value("worker_gpu_utilization_percent", {"gpu": "0"}) == 37.0
    assert value("worker_gpu_memory_used_bytes", {"gpu": "0"}) == int(7.5 * GiB)
    assert value("worker_gpu_memory_total_bytes", {"gpu": "1"}) == 24 * GiB
    assert value("worker_gpu_temperature_celsius", {"gpu": "1"}) == 40.0
    assert value("worker_gpu_power_watts", {"gpu": "0"}) == 250.4
    assert value("worker_gpu_power_watts", {"gpu": "1"}) is None
    # a value that NVML stops giving disappears instead of staying at its last reading
    metrics.set_gpus([GpuReading(0, "x", "u", 1.0, 1, 2, 3.0, None)])
    assert (
        value("worker_gpu_power_watts", {"gpu": "0"}) is None
        and value("worker_gpu_utilization_percent", {"gpu": "0"}) == 1.0
    )


class FakeRedis:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.values: dict[str, Any] = {}

    async def set(self, key: str, value: str, ex: int) -> None:
        if self.fail:
            raise RedisError("Connection refused")
        self.values[key] = json.loads(value)

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def aclose(self) -> None:
        pass


def _heartbeat(redis: FakeRedis, device: str = "cpu") -> Heartbeat:
    beat = Heartbeat("redis://127.0.0.1:1/0", "w-1", lambda: {"device": device}, interval=1)
    beat._redis = redis  # type: ignore[assignment]
    return beat


async def test_the_heartbeat_carries_the_gpus_and_sets_the_gauges(nvml: types.ModuleType) -> None:
    redis, metrics = FakeRedis(), Metrics()
    beat = _heartbeat(redis, "cuda")
    beat.watch_gpus("cuda", metrics)
    assert await beat.beat() is True
    payload = redis.values["worker:w-1:heartbeat"]
    assert [g["index"] for g in payload["gpus"]] == [0, 1]
    assert payload["gpus"][0]["utilization_percent"] == 37.0 and payload["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert payload["gpus"][1]["power_watts"] is None and payload["gpus"][1]["memory_total_bytes"] == 24 * GiB
    assert metrics.registry.get_sample_value("worker_gpu_temperature_celsius", {"gpu": "0"}) == 61.0
    await beat.beat()
    assert nvml.calls == ["init"]  # NVML started once, not at every beat
    await beat.stop()
    assert nvml.calls == ["init", "shutdown"]


async def test_gauges_follow_the_gpus_while_redis_is_away(nvml: types.ModuleType) -> None:
    metrics = Metrics()
    beat = _heartbeat(FakeRedis(fail=True), "cuda")
    beat.watch_gpus("cuda", metrics)
    assert await beat.beat() is False
    assert metrics.registry.get_sample_value("worker_gpu_utilization_percent", {"gpu": "0"}) == 37.0
    await beat.stop()


async def test_a_cpu_worker_or_an_unwatched_heartbeat_has_no_gpus(nvml: types.ModuleType) -> None:
    for watch in (None, "cpu"):
        redis = FakeRedis()
        beat = _heartbeat(redis)
        if watch is not None:
            beat.watch_gpus(watch, Metrics())
        assert await beat.beat() is True
        assert "gpus" not in redis.values["worker:w-1:heartbeat"]
        await beat.stop()
    assert nvml.calls == []


async def test_a_failing_nvml_never_stops_the_heartbeat(
    nvml: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    redis = FakeRedis()
    beat = _heartbeat(redis, "cuda")
    beat.watch_gpus("cuda", Metrics())
    await beat.beat()

    def broken() -> list[GpuReading]:
        raise RuntimeError("GPU is lost")

    assert beat._gpu_monitor is not None
    beat._gpu_monitor.sample = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="worker.heartbeat"):
        assert await beat.beat() is True
        assert await beat.beat() is True
    assert caplog.text.count("Reading the GPUs through NVML failed") == 1  # once per run of failures
    assert redis.values["worker:w-1:heartbeat"]["gpus"][0]["index"] == 0  # the last good reading
    await beat.stop()


async def test_a_hanging_nvml_does_not_hold_the_heartbeat_up(
    nvml: types.ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    import ops.heartbeat

    monkeypatch.setattr(ops.heartbeat, "GPU_SAMPLE_TIMEOUT", 0.1)
    redis = FakeRedis()
    beat = _heartbeat(redis, "cuda")
    beat.watch_gpus("cuda", Metrics())
    await beat.beat()
    release, calls = threading.Event(), []

    def wedged() -> list[GpuReading]:
        calls.append(1)
        release.wait(10)
        return []

    assert beat._gpu_monitor is not None
    beat._gpu_monitor.sample = wedged  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING, logger="worker.heartbeat"):
            assert await beat.beat() is True  # sent anyway, with the last readings
            assert await beat.beat() is True
        assert calls == [1]  # no second reading piles up behind the hung one
        assert caplog.text.count("took over") == 1
        assert redis.values["worker:w-1:heartbeat"]["gpus"][0]["index"] == 0
    finally:
        release.set()
    await beat.stop()


# -- the dashboard's GPU section, rendered by headless Chromium (as tests/unit/test_dashboard_render.py) --------
DASHBOARD = (Path(__file__).resolve().parents[2] / "agents" / "dashboard.html").read_text(encoding="utf-8")
HOSTILE = '<img src=x onerror="document.title=1">'


async def _render(workers: list[dict[str, Any]], profile: Path) -> str:
    from aiohttp import web as aiohttp_web
    from aiohttp.test_utils import TestServer

    from agents.web_security import dashboard_headers

    async def page(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.Response(text=DASHBOARD, content_type="text/html", headers=dashboard_headers(DASHBOARD))

    async def data(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.json_response(
            {"workers": workers, "this_worker": "w-1", "loaded": [], "recent_failures": [], "time": 1.0}
        )

    application = aiohttp_web.Application()
    application.router.add_get("/", page)
    for path in ("/workers", "/models", "/state"):
        application.router.add_get(path, data)
    server = TestServer(application, host="127.0.0.1")
    await server.start_server()
    try:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
        flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
        process = await asyncio.create_subprocess_exec(
            "chromium",
            *flags,
            "--virtual-time-budget=5000",
            "--dump-dom",
            str(server.make_url("/")),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        await server.close()
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt install chromium)")
async def test_the_dashboard_shows_a_gpu_section_only_for_workers_with_gpus(tmp_path: Path) -> None:
    gpu = GpuReading(0, "NVIDIA H100 " + HOSTILE, "GPU-a", 37.0, int(7.5 * GiB), 80 * GiB, 61.0, 250.4).as_dict()
    beat = {"worker_id": "w-gpu", "status": "running", "ready": True, "device": "cuda", "timestamp": 1.0}
    dom = await _render([{**beat, "gpus": [gpu, None, "x"]}, {"worker_id": "w-cpu", "device": "cpu"}], tmp_path / "a")
    assert '<div id="gpu-section">' in dom, dom[-3000:]
    row = "<tr><td>w-gpu</td><td>0</td><td>NVIDIA H100 &lt;img"
    assert row in dom and "<td>37%</td><td>7.5 / 80.0 GiB</td><td>61 °C</td><td>250 W</td>" in dom, dom[-3000:]
    assert "<img" not in dom and dom.count("<td>w-gpu</td>") == 2  # one GPU row, one worker row
    dom = await _render([beat, {"worker_id": "w-cpu", "device": "cpu", "gpus": []}], tmp_path / "b")
    assert '<div id="gpu-section" hidden="">' in dom and "<td>w-cpu</td>" in dom, dom[-3000:]
