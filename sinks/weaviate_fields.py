"""What a Weaviate collection of ours holds: its properties, with types made explicit, and filters on them.

Every property is created with the collection (see :mod:`sinks.weaviate`), so
no object ever makes Weaviate's auto-schema add one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.versioning import ModelIdentity
from sinks.base import PAYLOAD_KEY, WORKER_FIELDS
from sinks.filters import Condition

try:
    from weaviate.classes.config import DataType, Property, Tokenization
    from weaviate.classes.query import Filter
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"The Weaviate store needs weaviate-client v4: pip install weaviate-client ({exc})") from exc

#: in a collection's description: made with every property explicit (older ones relied on auto-schema)
LAYOUT = "layout=2"
TYPES = {
    "string": DataType.TEXT,
    "text": DataType.TEXT,
    "int": DataType.INT,
    "float": DataType.NUMBER,
    "bool": DataType.BOOL,
    "datetime": DataType.DATE,
    "string_list": DataType.TEXT_ARRAY,
}
_RANGES = {"gt": "greater_than", "gte": "greater_or_equal", "lt": "less_than", "lte": "less_or_equal"}


def make_property(name: str, kind: str, *, ranged: bool = False) -> Property:
    """A property of our type ``kind``: keywords match whole values, long text is only searchable."""
    if kind == "text":
        return Property(
            name=name,
            data_type=DataType.TEXT,
            tokenization=Tokenization.WORD,
            index_filterable=False,
            index_searchable=True,
        )
    if kind in ("string", "string_list"):
        return Property(
            name=name,
            data_type=TYPES[kind],
            tokenization=Tokenization.FIELD,
            index_filterable=True,
            index_searchable=False,
        )
    return Property(
        name=name,
        data_type=TYPES[kind],
        index_filterable=True,
        index_range_filters=ranged and kind in ("int", "float", "datetime"),
    )


PAYLOAD_PROPERTY = Property(name=PAYLOAD_KEY, data_type=DataType.TEXT, index_filterable=False, index_searchable=False)


@dataclass
class Layout:
    """What a collection holds, read once per process: dimension, layout, property types, its description
    (``vectorize-worker dim=… layout=2 model={…}``), the model it is bound to (None: not known yet) and the
    class name Weaviate reported (an alias's is its target's: "" when not read)."""

    dim: int | None
    legacy: bool
    props: dict[str, DataType] = field(default_factory=dict)
    description: str = ""
    binding: ModelIdentity | None = None
    name: str = ""

    def fixed(self) -> set[str]:
        """Worker fields written natively: those of the new layout whose property has our type."""
        if self.legacy:
            return set()
        return {name for name, kind in WORKER_FIELDS.items() if self.props.get(name) == TYPES[kind]}


def weaviate_filter(conditions: Sequence[Condition]) -> Any:
    """The conditions as one Weaviate filter (None for none)."""
    parts = []
    for c in conditions:
        prop = Filter.by_property(c.field)
        if c.op == "eq":
            parts.append(prop.contains_any([c.value]) if c.is_list else prop.equal(c.value))
        elif c.op == "in":
            if c.is_list:
                parts.append(prop.contains_any(list(c.value)))
            else:
                equals = [prop.equal(v) for v in c.value]
                parts.append(equals[0] if len(equals) == 1 else Filter.any_of(equals))
        else:
            parts.append(getattr(prop, _RANGES[c.op])(c.value))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)
