"""The metadata contract: which metadata fields of a collection are filterable, and of what type.

A task's ``metadata`` is free-form JSON. Turning every key into a store field
let one task grow a database's schema without bound (100,000 Weaviate
properties held its schema loop for minutes) and let the first value of a key
fix its type for good. So the operator declares, per collection or for all
(``"*"``), the few fields that must be filterable, each with a type::

    stores:
      filterable:
        "*":  {lang: string}
        docs: {year: int, tags: string_list}

(``VECTORIZE_WORKER_FILTERABLE`` takes the same mapping as JSON.) Those become
native, indexed fields named ``meta_<name>`` in every store; the prefix keeps
them apart from the worker's own payload fields. All metadata, declared or not,
also stays whole in the payload, so nothing is lost and nothing else becomes
schema. A collection's own entry overrides ``"*"`` field by field.

Imports nothing of ours but :mod:`core.errors`: settings validate with it, and
both the record builder and the store adapters use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

from core.errors import InvalidTaskError

FieldType = Literal["string", "int", "float", "bool", "datetime", "string_list"]
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)
#: native field name = prefix + declared name; no worker payload field starts with it
FIELD_PREFIX = "meta_"
ALL_COLLECTIONS = "*"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
COLLECTION = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")  # as settings.default_collection
MAX_FIELDS = 64  # per collection ("*" included): each one is an index in every store
MAX_STRING_BYTES = 2048  # a string value, or one item of a string list (Milvus needs a bound)
MAX_LIST_ITEMS = 256
_INT64 = (-(2**63), 2**63 - 1)
_ORIGIN = "stores.filterable / VECTORIZE_WORKER_FILTERABLE"


#: a physical collection of a model behind an alias (core.versioning.physical_name): ``<alias>__<slug>_<rev8>``;
#: it has the declared fields of its alias
_PHYSICAL = re.compile(r"^(.+?)__[a-z0-9_]+_[0-9a-f]{8}$", re.IGNORECASE)


class WrongType(ValueError):
    """A value that does not fit a declared type; ``given`` describes what it is instead."""

    def __init__(self, given: str) -> None:
        super().__init__(given)
        self.given = given


def native_name(name: str) -> str:
    """The store field of declared field ``name``."""
    return FIELD_PREFIX + name


def parse_filterable(raw: Any) -> dict[str, dict[str, FieldType]]:
    """Validate a ``filterable`` setting; raise ValueError naming every bad entry."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(
            'must map collection names (or "*") to {field: type}, e.g. {"*": {"lang": "string"}, '
            f'"docs": {{"year": "int"}}}}; got {type(raw).__name__}'
        )
    problems: list[str] = []
    parsed: dict[str, dict[str, FieldType]] = {}
    for collection, fields in raw.items():
        if collection != ALL_COLLECTIONS and not (isinstance(collection, str) and COLLECTION.match(collection)):
            problems.append(f'collection {collection!r} is not "*" nor a collection name ({COLLECTION.pattern})')
            continue
        if not isinstance(fields, Mapping):
            problems.append(f"collection {collection!r} must map field names to types, got {type(fields).__name__}")
            continue
        if len(fields) > MAX_FIELDS:
            problems.append(f"collection {collection!r} declares {len(fields)} fields, over the limit of {MAX_FIELDS}")
        parsed[collection] = {}
        for name, kind in fields.items():
            if not (isinstance(name, str) and NAME.match(name)):
                problems.append(f"field {name!r} of {collection!r}: names must match {NAME.pattern}")
            elif kind not in FIELD_TYPES:
                problems.append(
                    f"field {name!r} of {collection!r}: type {kind!r} is not one of {', '.join(FIELD_TYPES)}"
                )
            else:
                parsed[collection][name] = kind
    if problems:
        raise ValueError("; ".join(problems))
    return parsed


class _Declares(Protocol):
    """What :meth:`MetadataContract.from_settings` reads of the settings (core.settings imports this module)."""

    filterable: Mapping[str, Mapping[str, Any]] | None


class MetadataContract:
    """The declared filterable fields, resolved per collection (see the module doc)."""

    def __init__(self, declared: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._declared = parse_filterable(declared or {})
        self._resolved: dict[str, dict[str, FieldType]] = {}

    @classmethod
    def from_settings(cls, settings: _Declares) -> MetadataContract:
        return cls(getattr(settings, "filterable", None) or {})

    def __bool__(self) -> bool:
        return any(self._declared.values())

    def fields(self, collection: str) -> dict[str, FieldType]:
        """Declared name -> type for ``collection``: ``"*"`` overridden by the collection's own entry."""
        found = self._resolved.get(collection)
        if found is None:
            named = collection
            physical = _PHYSICAL.match(collection)
            if collection not in self._declared and physical is not None:  # a model's collection behind an alias
                alias = physical.group(1)  # in Weaviate's class form too (Docs__… for docs)
                named = next((k for k in self._declared if k.lower() == alias.lower()), alias)
            found = {**self._declared.get(ALL_COLLECTIONS, {}), **self._declared.get(named, {})}
            self._resolved[collection] = found
        return found

    def extract(self, metadata: Mapping[str, Any], *, collection: str, task_id: str) -> dict[str, Any]:
        """The declared fields of one task's ``metadata``, checked and normalised (datetimes parsed, floats as
        float); a missing or null field is left out (it matches no filter).

        Raises :class:`~core.errors.InvalidTaskError` naming the field, the collection, the expected and the
        given type: the task fails alone, before anything is written.
        """
        values: dict[str, Any] = {}
        for name, kind in self.fields(collection).items():
            value = metadata.get(name)
            if value is None:
                continue
            try:
                checked = check_value(kind, value)
            except WrongType as exc:
                raise InvalidTaskError(
                    f"Task {task_id}: metadata field {name!r} must be {describe_type(kind)} in collection "
                    f"{collection!r} (declared in {_ORIGIN}) but is {exc.given}; send a {kind} value, leave the "
                    "field out, or change the declaration.",
                    task_id=task_id,
                ) from None
            if checked is not None:
                values[name] = checked
        return values


def describe_type(kind: str) -> str:
    if kind == "datetime":
        return "datetime (an ISO 8601 string such as 2024-05-01T12:00:00Z)"
    if kind == "string_list":
        return f"string_list (at most {MAX_LIST_ITEMS} strings)"
    return kind


def check_value(kind: str, value: Any) -> Any:
    """``value`` as declared type ``kind`` (None for an empty list: stores keep no empty lists); else WrongType."""
    if kind == "string":
        return _string(value)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
            return value
        big = isinstance(value, int) and not isinstance(value, bool)
        raise WrongType("an int outside the 64-bit range" if big else _given(value))
    if kind == "float":
        number = finite_float(value)
        if number is not None:
            return number
        number_like = isinstance(value, int | float) and not isinstance(value, bool)
        raise WrongType("a number that is not finite" if number_like else _given(value))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise WrongType(_given(value))
    if kind == "datetime":
        return parse_datetime(value)
    if kind == "string_list":
        if not isinstance(value, list):
            raise WrongType(_given(value))
        if len(value) > MAX_LIST_ITEMS:
            raise WrongType(f"a list of {len(value)} items")
        items = []
        for item in value:
            try:
                items.append(_string(item))
            except WrongType as exc:
                raise WrongType(f"a list with an item that is {exc.given}") from None
        return items or None
    raise WrongType(f"of unknown declared type {kind!r}")  # pragma: no cover - parse_filterable rules it out


def finite_float(value: Any) -> float | None:
    """A JSON number (not a bool) as a finite float, else None (NaN, infinities, ints beyond float range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_datetime(value: Any) -> datetime:
    """An ISO 8601 string as an aware UTC datetime (a string without a zone is read as UTC)."""
    if not isinstance(value, str):
        raise WrongType(_given(value))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise WrongType(f"the string {_short(value)} that is not an ISO 8601 date-time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def epoch_micros(value: datetime) -> int:
    """Microseconds since 1970 (UTC): how stores without a date type keep a datetime, exactly and ordered."""
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise WrongType(_given(value))
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_STRING_BYTES:
        raise WrongType(f"a string of {size} bytes (at most {MAX_STRING_BYTES})")
    return value


def _given(value: Any) -> str:
    """What a JSON value is, for messages: its JSON type and a short excerpt."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a bool ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an int ({value})" if abs(value) < 10**12 else "an int"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    return f"a {type(value).__name__}"


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
