"""A worker app built in-process with the settings a test gives (no subprocess, no Kafka)."""

from __future__ import annotations

from pathlib import Path

import pytest

import agents
from agents import Agents
from app.faust_app import WorkerApp, build_app
from core.settings import load_settings


def build_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> tuple[WorkerApp, Agents]:
    """The Faust app and its agents for the environment's settings plus ``env`` (``web_port="7000"`` sets
    ``VECTORIZE_WORKER_WEB_PORT``), with its data under ``tmp_path``. Use with the ``clean_env`` fixture."""
    monkeypatch.setenv("VECTORIZE_WORKER_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(f"VECTORIZE_WORKER_{name.upper()}", value)
    worker = build_app(load_settings())
    return worker, agents.register(worker)
