"""What the three plugin registries share: the installed names of an entry-point group, and loading a target.

The vector-database adapters (sinks/registry.py), the model families (models/registry.py) and the task
types (tasks/types.py) each register through an entry-point group; a checkout that is not pip-installed
has no entry points of its own, so each registry passes its built-ins, which installed entry points of
the same name replace. Each registry wraps the errors of :func:`load` in its own message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any


def installed(
    group: str, builtins: Mapping[str, str], read: Callable[..., Iterable[EntryPoint]] = entry_points
) -> dict[str, str]:
    """Name -> ``module:attr`` of every installed member of ``group``: the built-ins first, then the entry
    points by name (one of a built-in's name replaces it). ``read`` is :func:`importlib.metadata.entry_points`
    (a registry passes its own reference so that tests can stand in for the installed packages)."""
    found = dict(builtins)
    for ep in sorted(read(group=group), key=lambda ep: ep.name):
        found[ep.name] = ep.value
    return found


def load(target: str) -> Any:
    """The object ``module:attr`` (``attr`` may be dotted) names; raises whatever importing it raises."""
    module_name, _, attr = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        found = getattr(found, part)
    return found
