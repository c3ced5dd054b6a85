"""A collection of its own for every measured case, dropped when the bench ends.

A vector store's cost per written vector grows with what its index already holds: Weaviate's HNSW spent
0.8 ms of CPU per one-text task into an empty collection and 2.4–4.2 ms into the default collection once
earlier bench runs had left 240,000 vectors in it (the same machine, docs/performance.md). On a 2-core machine
the store shares the cores with the worker, so a case's texts/s depended on how many runs came before it, and
on what earlier benches left behind. Each case therefore writes into a fresh collection (made before its
clock starts, by one task of its own), so every run of every case meets the store in the same state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

from core.errors import VectorizeError
from core.settings import load_settings
from sinks.base import BaseVectorDB
from sinks.registry import create_stores

ROOT = Path(__file__).resolve().parents[1]
#: the pid file of each server the project's scripts start (scripts/<name>.sh); Qdrant runs in the worker
PID_FILES = {
    "weaviate": "weaviate/weaviate.pid",
    "chroma": "chroma/chroma.pid",
    "kafka": "kafka/kafka.pid",
    "redis": "redis/redis.pid",
}


class CaseCollections:
    """Names fresh collections (``bench_<case>_<stamp>``) and drops every one it named at :meth:`drop_all`."""

    def __init__(self, store: str, env: dict[str, str]) -> None:
        self.store = store
        self.env = env
        self.stamp = f"{os.getpid()}_{int(time.time())}"
        self.names: list[str] = []

    def new(self, case: str) -> str:
        name = f"bench_{case}_{self.stamp}"
        self.names.append(name)
        return name

    def _adapter(self) -> BaseVectorDB | None:
        """The bench's own adapter for the store the workers wrote to; None for Qdrant, whose local mode is
        each worker's folder of its own (nothing outlives the worker's data folder)."""
        if self.store == "qdrant":
            return None
        with mock.patch.dict(os.environ, self.env):
            return create_stores(load_settings())[0]

    def drop_all(self) -> list[str]:
        """Drop every named collection (its alias, then the collection behind it); the lines say what failed."""
        problems: list[str] = []
        if not self.names:
            return problems
        adapter = self._adapter()
        if adapter is None:
            return problems
        try:
            for name in self.names:
                try:
                    physical = adapter.resolve(name)
                    if physical is not None:
                        adapter.unpoint(name)
                        adapter.drop(physical)
                    elif adapter.has_collection(name):
                        adapter.drop(name)
                except VectorizeError as exc:  # a bench leftover is reported, never fatal to the report
                    problems.append(f"bench collection {name} in {self.store} was not dropped: {exc!r}")
        finally:
            adapter.close()
        self.names.clear()
        return problems


def server_pid(name: str) -> int | None:
    """The pid of the server (a store, ``kafka`` or ``redis``) the project's scripts started (None: in the worker, or not
    running)."""
    relative = PID_FILES.get(name)
    if relative is None:
        return None
    path = Path(os.environ.get("VW_STATE", ROOT / ".state")) / relative
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None
