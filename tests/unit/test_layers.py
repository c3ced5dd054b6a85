"""The layers hold at run time too: importing everything below ``app`` builds no Faust app."""

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


def test_importing_the_layers_below_app_loads_no_faust_and_no_app() -> None:
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
