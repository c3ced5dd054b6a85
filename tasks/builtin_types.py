"""The built-in task types: the four of the product documentation and ``delete``.

Each registers under the entry-point group ``vectorize_worker.task_types`` (this project's pyproject.toml,
and :data:`tasks.types.BUILTINS` for a checkout that is not pip-installed), exactly as a plugin's does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.errors import InvalidTaskError, PermanentError
from core.ids import DOCUMENT_VECTOR, vector_id
from sinks.base import VectorRecord
from tasks.chunking import chunk_text
from tasks.schema import BatchTask, DeleteTask, DocumentTask, ImageTask, Task, TextTask
from tasks.types import Prepared, TaskType

if TYPE_CHECKING:
    import numpy as np

    from core.settings import Settings
    from tasks.chunking import TextTokenizer
    from tasks.schema import Limits


class TextType(TaskType):
    """``text_vectorization``: one text, one vector."""

    name = "text_vectorization"
    model = TextTask
    lane = "text"

    def texts(self, task: Task) -> list[str]:
        assert isinstance(task, TextTask)
        return [task.data]


class BatchType(TaskType):
    """``batch_vectorization``: many texts, one vector each."""

    name = "batch_vectorization"
    model = BatchTask
    lane = "text"

    def texts(self, task: Task) -> list[str]:
        assert isinstance(task, BatchTask)
        return list(task.data)


class ImageType(TaskType):
    """``image_vectorization``: one image (path, inline data or URL), one vector, in the image lane."""

    name = "image_vectorization"
    model = ImageTask
    lane = "image"


class DocumentType(TaskType):
    """``document_vectorization``: the content in token-aware chunks, plus the document's mean vector."""

    name = "document_vectorization"
    model = DocumentTask
    lane = "text"
    fitted_texts = False  # chunked on the model's thread, never fitted as sent

    def texts(self, task: Task) -> list[str]:
        """The document as one text (what intake counts before chunking, and what a model without a
        tokenizer would get)."""
        assert isinstance(task, DocumentTask)
        title = task.data.title.strip()
        return [f"{title}\n\n{task.data.content}" if title else task.data.content]

    def check(self, task: Task, limits: Limits) -> None:
        assert isinstance(task, DocumentTask)
        if len(task.data.title) > limits.max_title_chars:
            raise InvalidTaskError(
                f"Task {task.task_id}: field 'data.title' is {len(task.data.title)} characters, over the limit of "
                f"{limits.max_title_chars} (VECTORIZE_WORKER_MAX_TITLE_CHARS; it is stored with every chunk); "
                "shorten it or move the text into content.",
                task_id=task.task_id,
            )

    def prepare(self, task: Task, tokenizer: TextTokenizer | None, *, model: str, settings: Settings) -> Prepared:
        assert isinstance(task, DocumentTask)
        if tokenizer is None:
            raise PermanentError(
                f"Task {task.task_id}: model {model} offers no tokenizer, so the document cannot be cut "
                "into chunks that fit it; use a text model such as sentence-transformers/all-MiniLM-L6-v2."
            )
        size = settings.chunk_tokens or tokenizer.max_tokens
        try:
            chunks = chunk_text(task.data.content, tokenizer, size=size, overlap=settings.chunk_overlap_tokens)
        except PermanentError as exc:
            raise PermanentError(f"Task {task.task_id} (document, model {model}): {exc}") from None
        return Prepared(
            texts=[c.text for c in chunks], chunks=chunks, document_vector=settings.document_vector == "mean"
        )

    def records(
        self,
        task: Task,
        prepared: Prepared | None,
        vectors: np.ndarray,
        *,
        base: dict[str, Any],
        filterable: dict[str, Any],
    ) -> list[VectorRecord]:
        assert isinstance(task, DocumentTask)
        if prepared is None or prepared.chunks is None:
            return super().records(task, prepared, vectors, base=base, filterable=filterable)
        chunks = prepared.chunks
        title = task.data.title
        records = []
        for chunk, vector in zip(chunks, vectors, strict=False):
            payload = {
                **base,
                "item_index": chunk.index,
                "vector_kind": "chunk",
                "chunk_index": chunk.index,
                "chunk_count": len(chunks),
                "char_start": chunk.char_start,
                "char_end": chunk.char_end,
                "token_count": chunk.token_count,
                "text": chunk.text,
                "title": title,
            }
            chunk_id = vector_id(task.task_id, chunk.index)
            records.append(VectorRecord(id=chunk_id, vector=vector.tolist(), payload=payload, filterable=filterable))
        if prepared.document_vector:
            payload = {**base, "vector_kind": "document", "chunk_count": len(chunks), "title": title}
            doc = VectorRecord(
                id=vector_id(task.task_id, DOCUMENT_VECTOR),
                vector=vectors[len(chunks)].tolist(),
                payload=payload,
                filterable=filterable,
            )
            records.append(doc)
        return records


class DeleteType(TaskType):
    """``delete``: no model; the store writer removes every vector of the task id (docs/sync.md)."""

    name = "delete"
    model = DeleteTask
    lane = "delete"
