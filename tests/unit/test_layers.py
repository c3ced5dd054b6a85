"""The layers hold at run time too: importing everything below ``app`` loads no Faust, and importing ``app`` and
``agents`` builds nothing.

Each test runs a fresh interpreter: what an import loads or does is only visible in a process that has not
imported it yet (this one has).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LOWER_LAYERS = [
    "core.errors",
    "core.settings",
    "core.secrets",
    "core.ids",
    "core.retry",
    "core.metadata_contract",
    "models.base",
    "models.manager",
    "models.families",
    "sinks.base",
    "tasks.records",
    "engine.publisher",
    "ops.heartbeat",
    "sinks.qdrant",
    "sinks.chroma",
    "sinks.weaviate",
    "sinks.milvus",
    "sinks.registry",
    "tasks.schema",
    "tasks.inputs",
    "tasks.records",
    "tasks.images",
    "ops.metrics",
    "ops.logs",
    "ops.heartbeat",
    "engine.pipeline",
    "engine.reporting",
    "engine.publisher",
]


def test_importing_the_layers_below_app_loads_no_faust_and_no_app() -> None:  # a fresh interpreter: see above
    code = (
        "import importlib, sys\n"
        f"for name in {LOWER_LAYERS!r}: importlib.import_module(name)\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'faust', 'mode', 'app', 'agents'})\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", f"importing the lower layers loaded {done.stdout.strip()}"


def test_the_kernel_does_nothing_on_import(tmp_path: Path) -> None:
    """No settings read, no folder made: a bad environment cannot stop an import of core."""
    code = "import core.settings, core.errors, core.ids, core.retry, core.secrets; print('ok')"
    env = {"PATH": "/usr/bin:/bin", "VECTORIZE_WORKER_DEVICE": "not-a-device", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


APP_AND_AGENTS = [
    "app",
    "app.__main__",
    "app.commands",
    "app.compat",
    "app.doctor",
    "app.faust_app",
    "app.kafka_check",
    "app.kafka_security",
    "app.offsets",
    "app.runtime",
    "agents",
    "agents.intake",
    "agents.lifecycle",
    "agents.recovery_watch",
    "agents.status",
    "agents.web",
    "agents.web_security",
]


def test_importing_app_and_agents_builds_nothing(tmp_path: Path) -> None:
    """No settings read (an invalid one does not stop an import), no data folder, no faust.App, no torch; the
    worker is built when ``app.app`` is asked for. ``OMP_WAIT_POLICY`` is set on import (before torch can load),
    unless the environment sets it."""
    code = (
        "import gc, importlib, os, sys\n"
        f"for name in {APP_AND_AGENTS!r}: importlib.import_module(name)\n"
        "import faust\n"
        "apps = sum(isinstance(o, faust.App) for o in gc.get_objects())\n"
        "print(apps, os.path.exists(os.environ['VECTORIZE_WORKER_DATA_DIR']), 'torch' in sys.modules)\n"
        "print(os.environ['OMP_WAIT_POLICY'])\n"
        "os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'\n"
        "importlib.reload(sys.modules['app'])\n"
        "print(os.environ['OMP_WAIT_POLICY'])\n"
        "try:\n"
        "    sys.modules['app'].app\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "VECTORIZE_WORKER_DEVICE": "not-a-device",
        "VECTORIZE_WORKER_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:4] == ["0 False False", "PASSIVE", "ACTIVE", "exit 2"], done.stdout
    assert "VECTORIZE_WORKER_DEVICE" in done.stderr  # the build, not the import, read the settings
    assert not (tmp_path / "data").exists()
