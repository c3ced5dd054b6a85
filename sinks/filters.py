"""One filter language over a collection's declared metadata fields, parsed once, translated by each adapter.

A filter maps declared field names to a condition; all conditions must hold::

    {"lang": "en", "year": {"gte": 2020, "lt": 2025}, "tags": {"in": ["a", "b"]}}

* a bare value, or ``{"eq": v}``: equal (for a ``string_list`` field: the list holds ``v``);
* ``gt``, ``gte``, ``lt``, ``lte``: ranges, for ``int``, ``float`` and ``datetime`` fields
  (datetimes as ISO 8601 strings);
* ``in``: one of the listed values (for a ``string_list`` field: the list holds any of them).

A record without the field matches no condition on it. Only declared fields
can be filtered: they are the only ones stored as native fields, and a filter
on anything else would either fail in one store or scan everything in another.
The parser checks names, operators and value types against the contract and
raises :class:`InvalidFilterError` (permanent: the caller's request is wrong).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import PermanentError
from core.metadata_contract import FieldType, WrongType, check_value, describe_type, native_name

Op = Literal["eq", "gt", "gte", "lt", "lte", "in"]
RANGE_OPS = ("gt", "gte", "lt", "lte")
OPS: tuple[str, ...] = ("eq", *RANGE_OPS, "in")
MAX_IN_VALUES = 1024
_RANGED = ("int", "float", "datetime")


class InvalidFilterError(PermanentError):
    """A search filter names an undeclared field, an unknown operator or a value of the wrong type."""

    kind = "invalid_filter"


@dataclass(frozen=True)
class Condition:
    """One checked condition: ``field`` is the native (prefixed) name, ``value`` is normalised
    (a datetime for datetime fields, a float for float fields, a tuple for ``in``)."""

    name: str
    field: str
    kind: FieldType
    op: Op
    value: Any

    @property
    def is_list(self) -> bool:
        return self.kind == "string_list"


def parse_filter(
    filter: Mapping[str, Any] | None, fields: Mapping[str, FieldType], *, collection: str
) -> list[Condition]:
    """The conditions of ``filter`` over ``fields`` (the collection's declared fields); [] for no filter."""
    if not filter:
        return []
    if not isinstance(filter, Mapping):
        raise InvalidFilterError(
            f'A filter on collection {collection!r} must be a JSON object such as {{"lang": "en"}}, '
            f"not {type(filter).__name__}."
        )
    conditions: list[Condition] = []
    for name, spec in filter.items():
        kind = fields.get(name)
        if kind is None:
            declared = ", ".join(f"{n} ({k})" for n, k in sorted(fields.items())) or "none"
            raise InvalidFilterError(
                f"Cannot filter collection {collection!r} on {name!r}: only declared metadata fields are filterable "
                f"(declared: {declared}); declare it in stores.filterable / VECTORIZE_WORKER_FILTERABLE."
            )
        ops = spec if isinstance(spec, Mapping) else {"eq": spec}
        if not ops:
            raise InvalidFilterError(f"Filter on {name!r} in collection {collection!r} is an empty object.")
        for op, operand in ops.items():
            conditions.append(_condition(name, kind, op, operand, collection))
    return conditions


def _condition(name: str, kind: FieldType, op: Any, operand: Any, collection: str) -> Condition:
    where = f"Filter on {name!r} ({kind}) in collection {collection!r}"
    if op not in OPS:
        raise InvalidFilterError(f"{where}: unknown operator {op!r}; use one of {', '.join(OPS)}.")
    if op in RANGE_OPS and kind not in _RANGED:
        raise InvalidFilterError(f"{where}: {op} needs an int, float or datetime field; use eq or in.")
    item_kind = "string" if kind == "string_list" else kind
    if op == "in":
        if not isinstance(operand, list) or not operand or len(operand) > MAX_IN_VALUES:
            raise InvalidFilterError(f"{where}: 'in' takes a list of 1 to {MAX_IN_VALUES} values.")
        value: Any = tuple(_operand(item_kind, v, where) for v in operand)
    else:
        value = _operand(item_kind, operand, where)
    return Condition(name=name, field=native_name(name), kind=kind, op=op, value=value)


def _operand(kind: str, value: Any, where: str) -> Any:
    try:
        checked = check_value(kind, value)
    except WrongType as exc:
        raise InvalidFilterError(f"{where}: the value must be {describe_type(kind)} but is {exc.given}.") from None
    return checked
