"""Records the worker writes to Kafka: status updates, results and dead letters.

``python -m tasks.records`` regenerates ``docs/records.schema.json``.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from core.errors import MAX_ERROR_CHARS, cap_message

Status = Literal["received", "processing", "completed", "failed"]


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="permanent, invalid_task, model_load, store_rejected, ...")
    error_class: str
    message: str

    @classmethod
    def of(cls, exc: BaseException, limit: int = MAX_ERROR_CHARS) -> ErrorInfo:
        """The error as it travels in records: its message cut to ``limit`` characters, always valid UTF-8."""
        kind = getattr(exc, "kind", None) if isinstance(getattr(exc, "kind", None), str) else "internal"
        message = safe_text(str(exc) or repr(exc))
        error_class = getattr(exc, "error_class", None) or type(exc).__name__
        return cls(kind=kind, error_class=error_class, message=cap_message(message, limit))


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) written as escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class StatusRecord(BaseModel):
    """One step of a task: received -> processing -> completed | failed (topic vectorization-status)."""

    model_config = ConfigDict(extra="forbid")
    task_id: str
    status: Status
    worker_id: str
    timestamp: float = Field(default_factory=time.time, description="Unix time in seconds")
    task_type: str | None = None
    error: ErrorInfo | None = None


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue_ms: float = 0.0
    embed_ms: float = 0.0
    store_ms: float = 0.0
    total_ms: float = 0.0


class ModelIdentityInfo(BaseModel):
    """Which model made a task's vectors (core.versioning.ModelIdentity): the collection is bound to it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    revision: str = Field(
        description="SHA-256 hex of the model's name, family, dimension, vector settings, weights and configuration; "
        "stored records carry its first 16 hex as model_revision"
    )
    dim: int
    normalize: bool | None = Field(None, description="The model's default L2 normalisation (null: none set)")
    pooling: str | None = Field(None, description="The pooling the family chose (mean, cls; null: the model's own)")
    family: str = ""


class ResultRecord(BaseModel):
    """The final outcome of a task (topic vectorization-results)."""

    model_config = ConfigDict(extra="forbid")
    task_id: str
    status: Literal["completed", "failed"]
    worker_id: str
    task_type: str | None = None
    model: str | None = None
    dimension: int | None = None
    model_identity: ModelIdentityInfo | None = Field(
        None, description="The identity of the model that made the vectors (null when it could not be computed)"
    )
    count: int = 0
    vector_ids: list[str] = Field(default_factory=list)
    collection: str | None = None
    stores: list[str] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    vectors: list[list[float]] | None = Field(None, description="Only when processing.include_vectors is on")
    truncated_items: list[int] = Field(
        default_factory=list,
        description="Indices of texts cut to the model's token limit (processing.long_text: truncate)",
    )
    chunks: int | None = Field(
        None,
        description="Document tasks: number of chunks; vector_ids lists the chunks in order, then the document vector",
    )
    deleted: dict[str, int] | None = Field(
        None,
        description="Vectors each store removed (by store): the stale ones an update left (chunks or items the new "
        "version no longer has), or every vector of a delete task",
    )
    error: ErrorInfo | None = None
    timestamp: float = Field(default_factory=time.time)


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str
    partition: int
    offset: int


class DeadLetterRecord(BaseModel):
    """A task that cannot succeed, with its original payload (topic vectorization-tasks-dlq)."""

    model_config = ConfigDict(extra="forbid")
    task_id: str | None
    worker_id: str
    error: ErrorInfo
    attempts: int = 1
    payload: str = Field(description="The original record value, as UTF-8 text or base64 (see payload_encoding)")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_bytes: int = Field(0, description="Size of the original record value in bytes")
    payload_truncated: bool = Field(
        False, description="True when payload holds only the first bytes; the whole record stays at `source`"
    )
    source: SourceInfo | None = None
    timestamp: float = Field(default_factory=time.time)

    @staticmethod
    def encode_payload(raw: bytes | str | None, limit: int) -> tuple[str, Literal["utf-8", "base64"], int, bool]:
        """(payload text, encoding, original size, truncated) with at most ``limit`` bytes of the original."""
        if raw is None:
            return "", "utf-8", 0, False
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        size, truncated = len(data), len(data) > limit
        if truncated:
            data = data[:limit]
        try:
            return data.decode("utf-8"), "utf-8", size, truncated
        except UnicodeDecodeError:
            if truncated:  # a cut through a multi-byte character is still text
                text = data.decode("utf-8", errors="ignore")
                if len(text.encode("utf-8")) >= len(data) - 3:
                    return text, "utf-8", size, truncated
            return base64.b64encode(data).decode("ascii"), "base64", size, truncated


def to_bytes(record: BaseModel) -> bytes:
    """The record as compact UTF-8 JSON: pydantic-core's serializer (a fifth of ``json.dumps`` of ``model_dump``,
    two records per one-text task), or escaped ASCII JSON when a text holds a lone surrogate UTF-8 cannot carry."""
    try:
        return record.__pydantic_serializer__.to_json(record)
    except PydanticSerializationError:  # a lone surrogate somewhere: escaped, the record stays valid UTF-8 JSON
        return json.dumps(record.model_dump(mode="json", exclude_none=False), ensure_ascii=True).encode("ascii")


def json_schemas() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "vectorize-worker output records",
        "status": StatusRecord.model_json_schema(),
        "result": ResultRecord.model_json_schema(),
        "dead_letter": DeadLetterRecord.model_json_schema(),
    }


def fold_status(entry: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """A task's ``task-status`` table entry after one more status record (a decoded :class:`StatusRecord`).

    The record's fields, plus ``history``: the task's last 10 statuses with their timestamps, oldest first.
    Idempotent: the tracker reads the status topic at least once (after a rebalance Faust re-reads the
    records it had not committed, whose fold the changelog already holds), so a record already in the
    history (same status and timestamp) leaves the entry as it is. A redelivered task's new records
    carry new timestamps and are added.
    """
    step = {"status": record["status"], "timestamp": record["timestamp"]}
    history = (entry or {}).get("history", [])
    if entry is not None and step in history:
        return entry
    return {**record, "history": [*history, step][-10:]}
