"""Shared test set-up: no test reaches the internet."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Before anything imports huggingface_hub or the app: offline, no downloads,
# and a configuration that does not depend on the developer's faust.yml.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["VECTORIZE_WORKER_MODELS_ALLOW_DOWNLOAD"] = "false"
os.environ["VECTORIZE_WORKER_CONFIG"] = str(ROOT / "faust.yml")
os.environ.setdefault("VECTORIZE_WORKER_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _unfreeze_the_heap() -> Iterator[None]:
    """A test that builds the worker's model manager freezes the heap at each load (models/device.py);
    the tests after it get Python's ordinary collector back."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
