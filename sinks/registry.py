"""Create vector stores by name; adapters register through Python entry points.

A third-party adapter declares, in its own pyproject.toml::

    [project.entry-points."vectorize_worker.vector_dbs"]
    mydb = "mypackage.mydb:create"

where ``create(settings) -> BaseVectorDB``. Built-ins register the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from core import plugins
from core.errors import ConfigError
from sinks.base import BaseVectorDB

if TYPE_CHECKING:
    from core.settings import Settings

ENTRY_POINT_GROUP = "vectorize_worker.vector_dbs"
#: used when the project runs from a checkout that is not pip-installed
BUILTINS = {
    "qdrant": "sinks.qdrant:create",
    "chroma": "sinks.chroma:create",
    "weaviate": "sinks.weaviate:create",
    "milvus": "sinks.milvus:create",
}


def available() -> dict[str, str]:
    return plugins.installed(ENTRY_POINT_GROUP, BUILTINS, entry_points)


def _factory(name: str) -> Callable[[Any], BaseVectorDB]:
    target = available().get(name)
    if target is None:
        raise ConfigError(
            f"Unknown vector database {name!r} in vector_dbs; available: {', '.join(sorted(available()))}. "
            f"Install its adapter package or fix VECTORIZE_WORKER_VECTOR_DBS."
        )
    try:
        return plugins.load(target)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise ConfigError(f"Vector database {name!r} cannot be used: {exc}") from None


def create_stores(settings: Settings) -> list[BaseVectorDB]:
    """One adapter per name in ``settings.vector_dbs``, in order."""
    return [_factory(name)(settings) for name in settings.vector_dbs]
