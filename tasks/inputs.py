"""What each task turns into before and after the model: texts to embed, and the records to store.

Each task's type (:mod:`tasks.types`; the built-in ones in :mod:`tasks.builtin_types`) says how:

* text / batch tasks (and, unless they say otherwise, plugin text types): one
  text per item; a text over the model's limit is rejected or truncated per
  ``long_text`` (reported as ``truncated_items``).
* document tasks: the content in token-aware chunks (:mod:`tasks.chunking`),
  plus a document vector (the mean of the chunk vectors) per ``document_vector``.
* image tasks: one image (loaded by :mod:`tasks.images`).

:class:`TextPreparer` runs the tokenizer on the model's thread (Hugging Face
tokenizers are not safe to use while the same model encodes on another thread).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.errors import PermanentError
from core.metadata_contract import MetadataContract
from core.versioning import ModelIdentity
from models.base import l2_normalize
from models.manager import ModelManager
from sinks.base import VectorRecord
from tasks import types as task_types
from tasks.chunking import TextTokenizer, surely_fits
from tasks.schema import Task
from tasks.types import Prepared

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("worker.task_processor")
_UNCHECKED = 1 << 62  # the "limit" of a model without a tokenizer

__all__ = ["Prepared", "TextPreparer", "add_document_vectors", "build_records"]


class _Outcome(Protocol):
    """The fields of the pipeline's Outcome that preparation reads and writes."""

    item: Any
    texts: list[str]
    model: str
    prepared: Prepared | None
    error: BaseException | None
    vectors: np.ndarray | None


class TextPreparer:
    """Fills ``texts``/``prepared`` (or ``error``) of text-lane outcomes; see the module doc."""

    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self._manager = manager
        self._settings = settings
        self._limits: dict[str, int] = {}  # model -> content tokens that fit (learned on first use)

    async def prepare(self, outcomes: list[_Outcome]) -> None:
        groups: dict[str, list[_Outcome]] = defaultdict(list)
        for out in outcomes:
            groups[out.model].append(out)
        for model, members in groups.items():
            limit = self._limits.get(model)
            if limit is not None and all(self._short(out, limit) for out in members):
                for out in members:  # the common case: short texts (already split at intake), no tokenizer call
                    out.prepared = Prepared(texts=out.texts)
                continue
            await self._manager.run(lambda model=model, members=members: self._prepare_sync(model, members))

    @staticmethod
    def _short(out: _Outcome, limit: int) -> bool:
        return task_types.of(out.item.task).fitted_texts and all(surely_fits(t, limit) for t in out.texts)

    def _prepare_sync(self, model: str, members: list[_Outcome]) -> None:
        with ExitStack() as stack:
            try:  # held: not closed by an unload on another device thread while its tokenizer is made
                embedder = stack.enter_context(self._manager.holding(model))
            except Exception as exc:  # noqa: BLE001 - a model that cannot load fails these tasks only
                for out in members:
                    out.error = exc
                return
            make = getattr(embedder, "text_tokenizer", None)
            tokenizer: TextTokenizer | None = make() if make is not None else None
        # without a tokenizer texts go unchecked: remember that too, so they skip this thread next time
        self._limits[model] = tokenizer.max_tokens if tokenizer is not None else _UNCHECKED
        for out in members:
            try:
                out.prepared = self.prepare_task(out.item.task, tokenizer, model)
                out.texts = out.prepared.texts
            except Exception as exc:  # noqa: BLE001 - one task's bad input never fails its batch mates
                if not isinstance(exc, PermanentError):
                    log.exception("Preparing the texts of task %s failed", out.item.task.task_id)
                out.error = exc

    def prepare_task(self, task: Task, tokenizer: TextTokenizer | None, model: str) -> Prepared:
        """Blocking: the texts of one task, chunked or fitted to ``tokenizer``'s limit (its type's
        :meth:`~tasks.types.TaskType.prepare`)."""
        return task_types.of(task).prepare(task, tokenizer, model=model, settings=self._settings)


def add_document_vectors(outcomes: list[_Outcome]) -> None:
    """Append the document vector (mean of the chunk vectors) to each embedded document's vectors.

    The mean is L2-normalised when the chunks are (the task asked for it, or
    the model normalises by default), so it lives on the same sphere as its
    chunks; ``normalize: false`` keeps the plain mean.
    """
    for out in outcomes:
        prepared = out.prepared
        if out.error is not None or out.vectors is None or prepared is None or not prepared.document_vector:
            continue
        mean = out.vectors.mean(axis=0, keepdims=True).astype(np.float32)
        normalize = out.item.task.normalize
        if normalize is None:  # the model's default decided: follow what the chunks show
            normalize = bool(np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-3))
        if normalize:
            mean = l2_normalize(mean)
        out.vectors = np.concatenate([out.vectors, mean])


def build_records(
    task: Task,
    prepared: Prepared | None,
    vectors: np.ndarray,
    *,
    model: str,
    worker_id: str,
    contract: MetadataContract | None = None,
    collection: str | None = None,
    identity: ModelIdentity | None = None,
) -> list[VectorRecord]:
    """The records to store for one task, with deterministic ids (see :mod:`core.ids`), made by its type's
    :meth:`~tasks.types.TaskType.records` from the payload fields every record has.

    Every record names the model that made it: ``model``, and with its ``identity`` (None when it could not
    be computed) ``model_revision`` (the first 16 hex of the revision) and ``normalize`` (whether the vectors
    were L2-normalised by the worker: the task's ``normalize``, else the model's default).

    The whole ``metadata`` goes into every record's payload; the fields ``contract`` declares filterable in
    ``collection`` are also checked and carried as the records' ``filterable`` values. A declared field of
    the wrong type raises :class:`~core.errors.InvalidTaskError` (this task fails alone, nothing is written).
    """
    filterable: dict[str, Any] = {}
    if contract is not None and collection is not None:
        filterable = contract.extract(task.metadata, collection=collection, task_id=task.task_id)
    base: dict[str, Any] = {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "model": model,
        **_versioned(task, identity),
        "worker_id": worker_id,
        "created_at": time.time(),
        "metadata": dict(task.metadata),
    }
    return task_types.of(task).records(task, prepared, vectors, base=base, filterable=filterable)


def _versioned(task: Task, identity: ModelIdentity | None) -> dict[str, Any]:
    """The payload keys that say which revision of the model made a task's vectors, and how."""
    if identity is None:
        return {} if task.normalize is None else {"normalize": task.normalize}
    normalize = task.normalize if task.normalize is not None else bool(identity.normalize)
    return {"model_revision": identity.record_revision, "normalize": normalize}
