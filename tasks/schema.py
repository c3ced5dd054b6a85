"""Task schema: the four task kinds of the product documentation, ``delete``, and the installed plugins' types.

``parse_task`` turns the raw bytes of a Kafka record into a validated task or
raises :class:`~core.errors.InvalidTaskError` with a message that names every
problem. Which ``task_type`` values exist, and the model each validates with,
comes from the task-type registry (:mod:`tasks.types`). ``make schemas``
(scripts/gen_schemas.py) writes the built-in types' JSON Schema to
``docs/task.schema.json``; ``python -m tasks.schema`` prints the schema of every
type installed in this environment, plugins included.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from functools import reduce
from operator import or_
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.errors import InvalidTaskError, UnsupportedTaskError, VectorizeError, cap_message
from tasks import types as task_types

if TYPE_CHECKING:
    from core.settings import Settings

#: the built-in task types; :func:`tasks.types.names` lists every installed one (plugins too)
TASK_TYPES = tuple(task_types.BUILTINS)
MAX_TEXTS_PER_TASK = 10_000
MAX_JSON_DEPTH = 64
#: at most this many field errors are listed in one message (the rest are counted)
MAX_LISTED_ERRORS = 10
TASK_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
_TASK_ID_RE = re.compile(TASK_ID_PATTERN)


@dataclass(frozen=True)
class Limits:
    """What one record may hold, beyond the schema's own rules; the defaults are the settings' defaults."""

    max_task_bytes: int = 4 * 1024 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_keys: int = 256
    max_metadata_depth: int = 8
    max_title_chars: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_task_bytes=settings.max_task_bytes,
            max_metadata_bytes=settings.max_metadata_bytes,
            max_metadata_keys=settings.max_metadata_keys,
            max_metadata_depth=settings.max_metadata_depth,
            max_title_chars=settings.max_title_chars,
        )


NonEmptyText = Annotated[str, Field(min_length=1)]


def new_task_id() -> str:
    return f"task-{uuid.uuid4().hex}"


class TaskBase(BaseModel):
    """The fields every vectorization task has; a task type's model (a plugin's too) subclasses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(
        default_factory=new_task_id,
        min_length=1,
        max_length=200,
        pattern=TASK_ID_PATTERN,
        description="Unique id of the task; generated when absent. Vector ids derive from it.",
    )
    model_name: str | None = Field(
        None, min_length=1, max_length=500, description="Model to use; the worker's default model when absent."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Stored with every vector of the task (JSON values)."
    )
    collection: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="Target collection/class; the worker's default collection when absent.",
    )
    normalize: bool | None = Field(
        None, description="L2-normalise the vectors; when absent the model's own output is kept."
    )


_TaskBase = TaskBase  # the earlier name


class TextTask(TaskBase):
    """One text to embed."""

    task_type: Literal["text_vectorization"]
    data: NonEmptyText


class BatchTask(TaskBase):
    """Many texts to embed; ``batch_size`` caps the model batch for this task."""

    task_type: Literal["batch_vectorization"]
    data: Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_TEXTS_PER_TASK)]
    batch_size: int | None = Field(None, ge=1, le=4096)


class ImageTask(TaskBase):
    """One image: a local path, a ``data:``/base64 string or an http(s) URL."""

    task_type: Literal["image_vectorization"]
    data: NonEmptyText


class DocumentData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = ""
    content: NonEmptyText


class DocumentTask(TaskBase):
    """A document: ``title`` and ``content``."""

    task_type: Literal["document_vectorization"]
    data: DocumentData


class DeleteTask(BaseModel):
    """Remove every vector of ``task_id`` from every store (a Kafka tombstone keyed by the task id does the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task_type: Literal["delete"]
    task_id: str = Field(
        min_length=1, max_length=200, pattern=TASK_ID_PATTERN, description="The task whose vectors to remove."
    )
    collection: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="Where the task's vectors are; the worker's default collection when absent.",
    )


BuiltinTask = Annotated[TextTask | BatchTask | ImageTask | DocumentTask | DeleteTask, Field(discriminator="task_type")]
TASK_ADAPTER: TypeAdapter[BuiltinTask] = TypeAdapter(BuiltinTask)
#: a validated task: a built-in one, or a plugin type's (a :class:`TaskBase` subclass)
Task = TaskBase | DeleteTask


def task_texts(task: Task) -> list[str]:
    """The texts a text-lane task asks to embed, in item order (its type's :meth:`~tasks.types.TaskType.texts`)."""
    return task_types.of(task).texts(task)


def _check_json(value: Any) -> None:
    """Refuse what JSON parses but no store or Kafka record can carry: NUL characters, lone surrogates
    (not encodable as UTF-8) and nesting deeper than :data:`MAX_JSON_DEPTH`; the message names where."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidTaskError(f"Invalid task: JSON nested deeper than {MAX_JSON_DEPTH} levels at '{where}'.")
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, f"{where}.{_shown_key(key)}" if where else _shown_key(key), is_key=True)
                stack.append((child, f"{where}.{_shown_key(key)}" if where else _shown_key(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))


def _shown_key(key: str) -> str:
    """A key as it may appear in a message: printable, short, never a lone surrogate."""
    return _short(key, 40)[1:-1] if not key.isidentifier() else key[:40]


def _check_text(text: str, where: str, *, is_key: bool = False) -> None:
    what = f"key '{where}'" if is_key else f"field '{where or '(payload)'}'"
    if "\x00" in text:
        raise InvalidTaskError(f"Invalid task: {what} contains a NUL character; remove it.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTaskError(
            f"Invalid task: {what} holds a lone UTF-16 surrogate ({text[exc.start]!a} at character {exc.start}) "
            "that cannot be stored as UTF-8; send valid Unicode text (escape pairs \\ud83d\\ude00 are fine)."
        ) from None


def _refuse_constant(name: str) -> Any:
    raise InvalidTaskError(f"Invalid task: {name} is not a JSON number; send finite numbers only.")


def decode_payload(raw: bytes | str | None, *, max_bytes: int) -> dict[str, Any]:
    """Bytes of a Kafka record -> JSON object, or :class:`InvalidTaskError`."""
    if raw is None:
        raise InvalidTaskError(
            "Invalid task: the Kafka record has no value and no key; send a JSON object, or a tombstone keyed by "
            "the task id to delete that task's vectors."
        )
    size = len(raw)
    if size > max_bytes:
        raise InvalidTaskError(
            f"Invalid task: payload is {size} bytes, over the limit of {max_bytes} bytes "
            "(VECTORIZE_WORKER_MAX_TASK_BYTES); split it into several tasks."
        )
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidTaskError(f"Invalid task: payload is not UTF-8 text ({exc}); send UTF-8 JSON.") from None
    if "\x00" in raw:
        raise InvalidTaskError("Invalid task: payload contains NUL bytes; send plain UTF-8 JSON.")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            # A producer that JSON-encodes an already-encoded string (e.g. Faust's
            # json codec around a str) double-wraps the object: unwrap once.
            value = json.loads(value, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidTaskError(f"Invalid task: JSON nested deeper than {MAX_JSON_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise InvalidTaskError(
            f"Invalid task: payload is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "send one JSON object per record."
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise InvalidTaskError(
            f"Invalid task: payload holds a value JSON cannot be read as ({_short(str(exc), 120)}); "
            "send numbers of ordinary size (integers up to 4,300 digits, finite floats)."
        ) from None
    if not isinstance(value, dict):
        raise InvalidTaskError(
            f"Invalid task: payload must be a JSON object with task_type and data, not {type(value).__name__}."
        )
    _check_json(value)
    return value


def validate_task(value: dict[str, Any], limits: Limits | None = None) -> Task:
    """JSON object -> typed task, or :class:`InvalidTaskError` naming each bad field (checked by
    :func:`decode_payload` first: no NUL, no lone surrogate, bounded depth)."""
    raw_id = value.get("task_id")
    task_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 200 and _TASK_ID_RE.match(raw_id) else None
    task_type = value.get("task_type")
    installed = task_types.names()
    if not isinstance(task_type, str | None):
        raise InvalidTaskError(
            f"Invalid task: field 'task_type' must be a string, one of {', '.join(installed)} "
            f"(got {type(task_type).__name__}).",
            task_id=task_id,
        )
    if task_type is None:
        raise InvalidTaskError(
            f"Invalid task: field 'task_type' is missing; expected one of {', '.join(installed)}.", task_id=task_id
        )
    if task_type not in installed:
        raise InvalidTaskError(
            f"Invalid task: unknown task_type {_short(task_type)}; expected one of {', '.join(installed)} "
            "(the task types installed on this worker; a plugin's type needs its package installed, docs/tasks.md).",
            task_id=task_id,
        )
    try:
        kind = task_types.get(task_type)
    except UnsupportedTaskError as exc:
        raise UnsupportedTaskError(str(exc), task_id=task_id) from None
    try:
        task = kind.model.model_validate(value)
    except ValidationError as exc:
        raise InvalidTaskError(format_task_errors(exc, str(task_type)), task_id=task_id) from None
    check_limits(task, limits or Limits())
    return task


def check_limits(task: Task, limits: Limits) -> None:
    """Bounds that depend on settings: metadata (bytes, keys, depth, copied into every vector) and title."""
    where = f"Task {task.task_id}"
    if isinstance(task, DeleteTask):
        return
    if task.metadata:
        size = len(json.dumps(task.metadata, ensure_ascii=False).encode("utf-8"))
        if size > limits.max_metadata_bytes:
            raise InvalidTaskError(
                f"{where}: field 'metadata' is {size} bytes of JSON, over the limit of {limits.max_metadata_bytes} "
                "(VECTORIZE_WORKER_MAX_METADATA_BYTES; it is copied into every vector of the task); "
                "store large data elsewhere and put a reference in metadata.",
                task_id=task.task_id,
            )
        keys, depth = _shape(task.metadata)
        if keys > limits.max_metadata_keys:
            raise InvalidTaskError(
                f"{where}: field 'metadata' has {keys} keys, over the limit of {limits.max_metadata_keys} "
                "(VECTORIZE_WORKER_MAX_METADATA_KEYS); send fewer keys or a list of values under one key.",
                task_id=task.task_id,
            )
        if depth > limits.max_metadata_depth:
            raise InvalidTaskError(
                f"{where}: field 'metadata' is nested {depth} levels deep, over the limit of "
                f"{limits.max_metadata_depth} (VECTORIZE_WORKER_MAX_METADATA_DEPTH); flatten it.",
                task_id=task.task_id,
            )
    kind = task_types.of(task)
    try:
        kind.check(task, limits)
    except VectorizeError as exc:
        if exc.task_id is None:
            exc.task_id = task.task_id
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's check that breaks fails this task, under its own id
        raise UnsupportedTaskError(
            cap_message(
                f"{where}: the check of task type {kind.name!r} ({type(kind).__module__}) failed "
                f"({type(exc).__name__}: {exc}); fix the package that provides the type."
            ),
            task_id=task.task_id,
        ) from None


def _shape(value: Any) -> tuple[int, int]:
    """(keys at every level, nesting depth) of a JSON value; the object itself is depth 1."""
    keys, deepest = 0, 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            keys += len(item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return keys, deepest


def tombstone(key: bytes | str) -> DeleteTask:
    """A Kafka tombstone (a record with no value) keyed by a task id: that task's delete."""
    try:
        task_id = key.decode("utf-8") if isinstance(key, bytes) else key
        return DeleteTask(task_type="delete", task_id=task_id)
    except (UnicodeDecodeError, ValidationError):
        raise InvalidTaskError(
            f"Invalid task: a tombstone (a record with no value) deletes the task named by its key, and its key "
            f"{_short(key)} is not a task id (1-200 characters of UTF-8 without control characters)."
        ) from None


def parse_task(raw: bytes | str | None, *, limits: Limits | None = None) -> Task:
    """Raw record value -> validated task. Raises :class:`InvalidTaskError`."""
    limits = limits or Limits()
    return validate_task(decode_payload(raw, max_bytes=limits.max_task_bytes), limits)


def format_task_errors(exc: ValidationError, task_type: str) -> str:
    parts = []
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_LISTED_ERRORS]:
        loc = [str(p) for p in err["loc"] if str(p) != task_type]
        where = ".".join(loc) or "(task)"
        detail = "unknown field; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
        got = err.get("input")
        shown = (
            f" (got {type(got).__name__} {_short(got)})" if err["type"] not in ("missing", "extra_forbidden") else ""
        )
        parts.append(f"field '{_short(where, 120)[1:-1]}': {_short(detail, 300)[1:-1]}{shown}")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more error(s) of the same task")
    return cap_message(f"Invalid {_short(task_type, 60)[1:-1]} task: " + "; ".join(parts))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_schema(*, installed: bool = False) -> dict[str, Any]:
    """The JSON Schema of a task: of the built-in types (what docs/task.schema.json holds), or with
    ``installed`` of every type installed in this environment, plugins included (``python -m tasks.schema``).
    Raises :class:`~core.errors.UnsupportedTaskError` for an installed type that cannot be loaded."""
    kinds = (
        [task_types.get(name) for name in task_types.names()]
        if installed
        else [task_types.builtin(n) for n in TASK_TYPES]
    )
    union: Any = reduce(or_, [kind.model for kind in kinds])
    schema = TypeAdapter(Annotated[union, Field(discriminator="task_type")]).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vectorize-worker task"
    return schema


def dump_schema(path: Path, *, installed: bool = False) -> None:
    path.write_text(json.dumps(json_schema(installed=installed), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.schema [--list]``: the task schema with every installed type, or the types themselves."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m tasks.schema",
        description="Print the JSON Schema of a task, with every task type installed here (plugins included).",
    )
    parser.add_argument("--list", action="store_true", help="list the installed task types, their lanes and sources")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for name, target in task_types.available().items():
                print(f"{name}\t{task_types.get(name).lane}\t{target}")
        else:
            print(json.dumps(json_schema(installed=True), indent=2, ensure_ascii=False))
    except UnsupportedTaskError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
