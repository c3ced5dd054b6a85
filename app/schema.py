"""Task schema: the four task kinds of the product documentation.

``parse_task`` turns the raw bytes of a Kafka record into a validated task or
raises :class:`~app.errors.InvalidTaskError` with a message that names every
problem. ``python -m app.schema`` regenerates ``docs/task.schema.json``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from app.errors import InvalidTaskError

TASK_TYPES = ("text_vectorization", "batch_vectorization", "image_vectorization", "document_vectorization")
MAX_TEXTS_PER_TASK = 10_000
MAX_JSON_DEPTH = 64

NonEmptyText = Annotated[str, Field(min_length=1)]


def new_task_id() -> str:
    return f"task-{uuid.uuid4().hex}"


class _TaskBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(
        default_factory=new_task_id,
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
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

    @field_validator("metadata")
    @classmethod
    def _no_nul(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class TextTask(_TaskBase):
    """One text to embed."""

    task_type: Literal["text_vectorization"]
    data: NonEmptyText


class BatchTask(_TaskBase):
    """Many texts to embed; ``batch_size`` caps the model batch for this task."""

    task_type: Literal["batch_vectorization"]
    data: Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_TEXTS_PER_TASK)]
    batch_size: int | None = Field(None, ge=1, le=4096)


class ImageTask(_TaskBase):
    """One image: a local path, a ``data:``/base64 string or an http(s) URL."""

    task_type: Literal["image_vectorization"]
    data: NonEmptyText


class DocumentData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: str = ""
    content: NonEmptyText


class DocumentTask(_TaskBase):
    """A document: ``title`` and ``content``."""

    task_type: Literal["document_vectorization"]
    data: DocumentData


Task = Annotated[TextTask | BatchTask | ImageTask | DocumentTask, Field(discriminator="task_type")]
TASK_ADAPTER: TypeAdapter[Task] = TypeAdapter(Task)


def task_texts(task: Task) -> list[str]:
    """The texts a text-family task asks to embed, in item order."""
    if isinstance(task, TextTask):
        return [task.data]
    if isinstance(task, BatchTask):
        return list(task.data)
    if isinstance(task, DocumentTask):
        title = task.data.title.strip()
        return [f"{title}\n\n{task.data.content}" if title else task.data.content]
    raise TypeError(f"{task.task_type} tasks carry no texts")


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def decode_payload(raw: bytes | str | None, *, max_bytes: int) -> dict[str, Any]:
    """Bytes of a Kafka record -> JSON object, or :class:`InvalidTaskError`."""
    if raw is None:
        raise InvalidTaskError("Invalid task: the Kafka record has no value; send a JSON object.")
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
        value = json.loads(raw)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            # A producer that JSON-encodes an already-encoded string (e.g. Faust's
            # json codec around a str) double-wraps the object: unwrap once.
            value = json.loads(value)
    except RecursionError:
        raise InvalidTaskError(f"Invalid task: JSON nested deeper than {MAX_JSON_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise InvalidTaskError(
            f"Invalid task: payload is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "send one JSON object per record."
        ) from None
    if not isinstance(value, dict):
        raise InvalidTaskError(
            f"Invalid task: payload must be a JSON object with task_type and data, not {type(value).__name__}."
        )
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidTaskError(f"Invalid task: JSON nested deeper than {MAX_JSON_DEPTH} levels.")
    return value


def validate_task(value: dict[str, Any]) -> Task:
    """JSON object -> typed task, or :class:`InvalidTaskError` naming each bad field."""
    task_id = value.get("task_id") if isinstance(value.get("task_id"), str) else None
    task_type = value.get("task_type")
    if task_type is None:
        raise InvalidTaskError(
            f"Invalid task: field 'task_type' is missing; expected one of {', '.join(TASK_TYPES)}.", task_id=task_id
        )
    if task_type not in TASK_TYPES:
        raise InvalidTaskError(
            f"Invalid task: unknown task_type {task_type!r}; expected one of {', '.join(TASK_TYPES)}.",
            task_id=task_id,
        )
    try:
        return TASK_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise InvalidTaskError(format_task_errors(exc, str(task_type)), task_id=task_id) from None


def parse_task(raw: bytes | str | None, *, max_bytes: int = 4 * 1024 * 1024) -> Task:
    """Raw record value -> validated task. Raises :class:`InvalidTaskError`."""
    return validate_task(decode_payload(raw, max_bytes=max_bytes))


def format_task_errors(exc: ValidationError, task_type: str) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if str(p) != task_type]
        where = ".".join(loc) or "(task)"
        detail = "unknown field; remove it or check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
        got = err.get("input")
        shown = (
            f" (got {type(got).__name__} {_short(got)})" if err["type"] not in ("missing", "extra_forbidden") else ""
        )
        parts.append(f"field '{where}': {detail}{shown}")
    return f"Invalid {task_type} task: " + "; ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_schema() -> dict[str, Any]:
    schema = TASK_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vectorize-worker task"
    return schema


def dump_schema(path: Path) -> None:
    path.write_text(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
