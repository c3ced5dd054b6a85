"""The work that travels through the engine: a task taken in (:class:`WorkItem`) and its outcome in a
batch (:class:`Outcome`). A leaf: the lanes, the store writer and the reporter import these types, and
this module imports none of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.versioning import ModelIdentity
from engine.acks import Ticket
from models.base import EmbedderInfo
from sinks.base import VectorRecord
from tasks import types as task_types
from tasks.inputs import Prepared
from tasks.records import Status
from tasks.reembed import ReembedTask
from tasks.schema import Task, task_texts

#: where a record came from: (topic, partition, offset)
Source = tuple[str, int, int]
#: a text's token estimate is capped here: models truncate (all-MiniLM-L6-v2 at 256)
MAX_TOKENS_PER_TEXT = 512


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: about four characters per token, plus [CLS] and [SEP]."""
    return min(len(text) // 4 + 2, MAX_TOKENS_PER_TEXT)


@dataclass(eq=False)
class WorkItem:
    task: Task
    raw: bytes | str | None
    ticket: Ticket
    source: Source | None
    received_at: float = field(default_factory=time.monotonic)
    pending: list[Awaitable[Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokens: int = 0  # estimated (engine.lane.estimate_tokens)
    # a migration's reembed carried out as another task (an image read again): where and whether to write, silent
    reembed: ReembedTask | None = None
    # received/processing held back for kafka.status_delay_ms (engine.reporting.Reporter.early_status)
    held_statuses: list[Status] = field(default_factory=list)
    statuses_due: bool = False  # the delay has passed: statuses go out as they come
    status_sender: asyncio.Task[None] | None = None
    closing: bool = False  # its final records are on their way: no early status may follow them

    def __post_init__(self) -> None:
        if not self.texts and task_types.of(self.task).lane == "text":
            self.texts = task_texts(self.task)
            self.tokens = sum(estimate_tokens(t) for t in self.texts)

    @property
    def kind(self) -> str:
        """The task type its records are reported under: ``reembed`` for a migration's (silent), else its own."""
        return "reembed" if self.reembed is not None else self.task.task_type

    @property
    def weight(self) -> int:
        return len(self.texts)


@dataclass(eq=False)
class Outcome:
    item: WorkItem
    texts: list[str]
    model: str
    vectors: np.ndarray | None = None
    info: EmbedderInfo | None = None
    error: BaseException | None = None
    ids: list[str] = field(default_factory=list)
    embed_ms: float = 0.0
    store_ms: float = 0.0
    prepared: Prepared | None = None  # chunks, truncation, image (tasks/inputs.py)
    deleted: dict[str, int] = field(default_factory=dict)  # store -> stale vectors of an earlier version removed
    identity: ModelIdentity | None = None  # the model that made the vectors (set by the store writer)
    records: list[VectorRecord] | None = None  # what the store writer wrote (the twin of a migration copies them)
    physical: str | None = None  # the physical collection written (the live one of its alias, or a reembed's target)
    skipped: bool = False  # a migration's reembed with nothing to do (its source changed, or the migration moved on)
    handed_over: bool = False  # its partition was revoked (a rebalance): its new owner writes and reports it
