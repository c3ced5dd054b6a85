"""vectorize-worker: the Faust application (``faust -A app worker``).

Importing this package is light (no torch): models load inside the worker.
"""

from __future__ import annotations

import os

# torch's OpenMP threads sleep at their barriers instead of spinning: the
# event loop, the store client and the Kafka client share the cores with them,
# and spinning threads took that time away (docs/performance.md). Must be set
# before torch loads; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import agents  # noqa: E402,F401  (registers the agents on `app`)
from app import commands as _commands  # noqa: E402,F401  (registers `faust -A app doctor`)
from app.faust_app import app, settings, tasks_topic

__all__ = ["app", "settings", "tasks_topic"]
