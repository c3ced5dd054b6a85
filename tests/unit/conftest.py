"""Fixtures shared by the settings tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No VECTORIZE_WORKER_* variables, and a working directory without a faust.yml."""
    for key in list(os.environ):
        if key.startswith("VECTORIZE_WORKER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(text, encoding="utf-8")
    return path
