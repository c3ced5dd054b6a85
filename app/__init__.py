"""vectorize-worker: the Faust application (``faust -A app worker``).

Importing this package is light (no torch): models load inside the worker.
"""

from __future__ import annotations

import agents  # noqa: E402,F401  (registers the agents on `app`)
from app import commands as _commands  # noqa: E402,F401  (registers `faust -A app doctor`)
from app.faust_app import app, settings, tasks_topic

__all__ = ["app", "settings", "tasks_topic"]
