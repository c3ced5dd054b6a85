"""The ``reembed`` task type: one task's stored records, embedded again with another model (issue 16).

A migration (docs/migration.md) fills a collection for a new model with the records of the live one. Both
ways it does so use this type:

* the backfill: ``faust -A app migrate`` reads the live collection and sends one ``reembed`` record per
  task on the tasks topic, keyed by the task id, so any worker takes it, in order with the task's own
  updates and deletes;
* the dual write: a worker that has just stored a task in the live collection makes the same record in
  memory (a *twin*) for the other collection of a migrating alias, and acknowledges the task only once
  both are written.

The record carries the task's stored records (ids, texts, payloads, and the content digest each had in
the source), so the vectors written to the target have the same ids, texts, chunks and metadata as
those of the source, with the model fields of the new model. A document's own vector is the mean of its
new chunk vectors (:func:`tasks.inputs.add_document_vectors`). Nothing is published for a ``reembed``
task that succeeds (no status or result under the user's task id); one that fails is dead-lettered
only. The engine checks, right before writing, that the migration still has ``target`` as its new (or
old) collection and that the source still holds these records unchanged (``check_source``); if not, a
later twin or the task's delete has done the work and this one writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import InvalidTaskError
from sinks.base import MAX_TASK_RECORDS, VectorRecord
from tasks.schema import ImageTask, TaskBase
from tasks.types import TaskType

if TYPE_CHECKING:
    import numpy as np

    from tasks.schema import Task
    from tasks.types import Prepared

#: the payload fields a reembed writes anew (the model's, the worker's, the text as fitted) rather than copies
REPLACED = frozenset(
    {"metadata", "model", "model_revision", "normalize", "worker_id", "created_at", "content_digest", "truncated"}
)
#: a physical collection name: an alias's own name or ``<alias>__<slug>_<rev8>`` (core.versioning.physical_name)
PHYSICAL_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,254}$"


class ReembedMigration(BaseModel):
    """Which migration made the record, where the records are read and where they are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epoch: int = Field(ge=0, description="The epoch of the migration state that made this record.")
    source: str = Field(pattern=PHYSICAL_PATTERN, description="The physical collection the records were read from.")
    target: str = Field(pattern=PHYSICAL_PATTERN, description="The physical collection they are written to.")
    check_source: bool = Field(
        True,
        description="Write only if the source still holds exactly these records with these digests "
        "(false for the twins a worker makes of what it has just written).",
    )

    @field_validator("check_source")
    @classmethod
    def _always_checked(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "a reembed record from Kafka is always checked against its source; check_source false is only for "
                "the twins a worker makes in memory: leave the field out"
            )
        return value


class ReembedItem(BaseModel):
    """One stored record of the task."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=100, description="The record's id, kept in the target.")
    digest: str | None = Field(None, max_length=128, description="Its content digest in the source.")
    payload: dict[str, Any] = Field(description="Its stored payload without 'metadata'.")


class ReembedTask(TaskBase):
    """The stored records of task ``task_id`` of ``collection``, to embed with ``model_name`` into
    ``migration.target`` (made by ``faust -A app migrate`` and by workers during a migration)."""

    task_type: Literal["reembed"]
    model_name: str = Field(min_length=1, max_length=500, description="The model of the target collection.")
    collection: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$", description="The alias being migrated.")
    migration: ReembedMigration
    items: Annotated[list[ReembedItem], Field(min_length=1, max_length=MAX_TASK_RECORDS)]


def _is_document_vector(item: ReembedItem) -> bool:
    return item.payload.get("vector_kind") == "document"


class ReembedType(TaskType):
    """``reembed``: a task's stored texts (and chunks) embedded with another model; see the module docs."""

    name = "reembed"
    model = ReembedTask
    lane = "text"
    reports: ClassVar[bool] = False  # nothing under the user's task id: success is silent, failure dead-lettered

    def texts(self, task: Task) -> list[str]:
        """The stored texts, in item order; a record without one (an image's) or a malformed document raises
        :class:`~core.errors.InvalidTaskError` (the reembed is dead-lettered, the user's task keeps its status)."""
        assert isinstance(task, ReembedTask)
        where = f"Task {task.task_id} (reembed of collection {task.collection!r})"
        texts = []
        documents = 0
        for index, item in enumerate(task.items):
            if _is_document_vector(item):
                documents += 1
                continue
            text = item.payload.get("text")
            if not isinstance(text, str) or not text:
                kind = item.payload.get("vector_kind") or item.payload.get("source") or "record"
                raise InvalidTaskError(
                    f"{where}: record {item.id} ({kind}, item {index}) has no stored text to embed again and is "
                    "not one image record (docs/migration.md, 'Images'): send the task again after the switch.",
                    task_id=task.task_id,
                )
            texts.append(text)
        if documents > 1 or (documents and not texts):
            raise InvalidTaskError(
                f"{where}: {documents} document vector record(s) and {len(texts)} chunk(s); a document has one "
                "document vector and at least one chunk. Run the migration's verify again (it re-sends the task).",
                task_id=task.task_id,
            )
        return texts

    def records(
        self,
        task: Task,
        prepared: Prepared | None,
        vectors: np.ndarray,
        *,
        base: dict[str, Any],
        filterable: dict[str, Any],
    ) -> list[VectorRecord]:
        """The task's records again, same ids and payloads, with the new model's vectors and model fields."""
        assert isinstance(task, ReembedTask)
        texts = prepared.texts if prepared is not None else self.texts(task)
        truncated = set(prepared.truncated) if prepared is not None else set()
        fresh = {k: v for k, v in base.items() if k in REPLACED}  # model, revision, normalize, worker, time, metadata
        text_items = [item for item in task.items if not _is_document_vector(item)]
        records = []
        for index, (item, text) in enumerate(zip(text_items, texts, strict=True)):
            payload = {k: v for k, v in item.payload.items() if k not in REPLACED} | fresh | {"text": text}
            if index in truncated:
                payload["truncated"] = True
            records.append(
                VectorRecord(id=item.id, vector=vectors[index].tolist(), payload=payload, filterable=filterable)
            )
        for item in task.items:
            if _is_document_vector(item):  # the mean of the new chunk vectors, as tasks.inputs.add_document_vectors
                payload = {k: v for k, v in item.payload.items() if k not in REPLACED} | fresh
                vector = _document_vector(vectors[: len(text_items)], task.normalize)
                records.append(VectorRecord(id=item.id, vector=vector, payload=payload, filterable=filterable))
        return records


def _document_vector(chunks: np.ndarray, normalize: bool | None) -> list[float]:
    """The mean of a document's chunk vectors, L2-normalised when they are (or ``normalize`` says so)."""
    import numpy as np

    mean = chunks.mean(axis=0).astype(np.float32)
    if normalize is None:
        normalize = bool(np.allclose(np.linalg.norm(chunks, axis=1), 1.0, atol=1e-3))
    norm = float(np.linalg.norm(mean))
    if normalize and norm > 0:
        mean = mean / norm
    return [float(x) for x in mean]


def image_task(task: ReembedTask) -> ImageTask | None:
    """The image task that embeds ``task``'s one image record again (its image read again from the path or URL
    it was stored with, under the worker's image rules); None when ``task`` holds texts. An image sent inline is
    not kept by the stores: :class:`~core.errors.InvalidTaskError` (the reembed is dead-lettered, verify lists
    the task)."""
    images = [item for item in task.items if "text" not in item.payload and item.payload.get("vector_kind") is None]
    if not images or len(task.items) != 1:
        return None
    payload = images[0].payload
    ref = payload.get("image_ref")
    if not isinstance(ref, str) or not ref:
        raise InvalidTaskError(
            f"Task {task.task_id} (reembed of collection {task.collection!r}): its image cannot be read again: it "
            f"was sent inline (source {payload.get('source', 'unknown')!r}) or its path or URL was not stored, and no "
            "store keeps the image itself; send the image task again after the switch (docs/migration.md, "
            "'Images').",
            task_id=task.task_id,
        )
    return ImageTask(
        task_type="image_vectorization",
        task_id=task.task_id,
        data=ref,
        model_name=task.model_name,
        collection=task.collection,
        metadata=task.metadata,
        normalize=task.normalize,
    )


def twin_of(
    *,
    task_id: str,
    collection: str,
    model: str,
    epoch: int,
    source: str,
    target: str,
    records: list[VectorRecord],
    normalize: bool | None,
) -> ReembedTask:
    """The in-memory reembed of records a worker has just written to ``source`` (the dual write)."""
    metadata: dict[str, Any] = {}
    items = []
    for record in records:
        payload = dict(record.payload)
        metadata = payload.pop("metadata", metadata) or {}
        items.append(ReembedItem.model_construct(id=record.id, digest=payload.get("content_digest"), payload=payload))
    return ReembedTask.model_construct(
        task_id=task_id,
        task_type="reembed",
        model_name=model,
        metadata=dict(metadata),
        collection=collection,
        normalize=normalize,
        migration=ReembedMigration.model_construct(epoch=epoch, source=source, target=target, check_source=False),
        items=items,
    )
