"""Task types by name; every type, built-in or not, registers through a Python entry point.

A task type is one :class:`TaskType` object: its name (the ``task_type`` value), its pydantic model
(the task's fields, ``data`` included, so it is part of the task schema), the lane it runs in, how a
task turns into the texts the model embeds, and how the records of its vectors are built. A
third-party package declares, in its own pyproject.toml::

    [project.entry-points."vectorize_worker.task_types"]
    qa_pair_vectorization = "mypackage.task_types:QaPairType"

where ``QaPairType`` is a :class:`TaskType` subclass (instantiated once, without arguments) or an
instance of one, whose ``name`` is the entry point's name. The built-in types register the same way
(this project's pyproject.toml); :data:`BUILTINS` stands in for those entry points when the project
runs from a checkout that is not pip-installed. An entry point of a built-in name replaces the
built-in type, as with the vector-database adapters (sinks/registry.py) and model families
(models/registry.py). The installed types are read once per process.
"""

from __future__ import annotations

import threading
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from core import plugins
from core.errors import PermanentError, UnsupportedTaskError
from core.ids import vector_id
from sinks.base import WORKER_FIELDS, VectorRecord
from tasks.chunking import fit_text

if TYPE_CHECKING:
    import numpy as np
    from pydantic import BaseModel

    from core.settings import Settings
    from tasks.chunking import Chunk, TextTokenizer
    from tasks.images import LoadedImage
    from tasks.schema import Task

ENTRY_POINT_GROUP = "vectorize_worker.task_types"
#: used when the project runs from a checkout that is not pip-installed (in the order errors list them)
BUILTINS = {
    "text_vectorization": "tasks.builtin_types:TextType",
    "batch_vectorization": "tasks.builtin_types:BatchType",
    "image_vectorization": "tasks.builtin_types:ImageType",
    "document_vectorization": "tasks.builtin_types:DocumentType",
    "delete": "tasks.builtin_types:DeleteType",
    "reembed": "tasks.reembed:ReembedType",
}
#: the lanes a type can run in: the engine's text lane (engine/lane.py), its image lane (engine/image_lane.py),
#: and "delete", no model at all: the store writer removes the task's vectors (the built-in delete only)
LANES = ("text", "image", "delete")
#: the payload fields the worker writes itself; a type's :meth:`TaskType.item_payload` may not set them
RESERVED_PAYLOAD = frozenset({*WORKER_FIELDS, "metadata"})


@dataclass
class Prepared:
    """A task's inputs as the model gets them."""

    texts: list[str] = field(default_factory=list)
    chunks: list[Chunk] | None = None  # document tasks
    truncated: list[int] = field(default_factory=list)  # item indices cut to the model's limit
    document_vector: bool = False  # vectors end with the document vector (documents)
    image: LoadedImage | None = None  # image tasks


class TaskType:
    """One task type: subclass it, set :attr:`name`, :attr:`model` and :attr:`lane`, override the hooks you need.

    The engine calls the hooks; everything else (intake, batching across tasks, the model, the embedding
    cache, the stores, deterministic vector ids, status and result records, acknowledgements) is the same
    for every type.
    """

    #: the ``task_type`` value tasks of this type send
    name: ClassVar[str] = ""
    #: the task's pydantic model: a :class:`tasks.schema.TaskBase` subclass (the common optional fields) with
    #: ``task_type: Literal[<name>]`` and its own ``data``; extra fields are refused by the base's config
    model: ClassVar[type[BaseModel]]
    #: ``"text"``: :meth:`texts` go to the text model, batched with other tasks' texts; ``"image"``: the task's
    #: ``data`` (a path, URL or inline image, loaded by tasks/images.py) goes to the image model
    lane: ClassVar[str] = "text"
    #: True: the model embeds :meth:`texts` as they are, each fitted to the model's limit (``long_text``) like a
    #: batch item, so short texts skip the tokenizer and the embedding cache serves them before fitting.
    #: False: :meth:`prepare` makes other inputs (the document type cuts chunks) and always runs
    fitted_texts: ClassVar[bool] = True
    #: False: nothing is published for a task of this type that succeeds, and one that fails gets a dead letter
    #: only (the built-in ``reembed`` of migrations, whose task id is the user's task)
    reports: ClassVar[bool] = True

    def texts(self, task: Task) -> list[str]:
        """The texts a task of this type asks to embed, in item order (text lane types)."""
        raise TypeError(f"{task.task_type} tasks carry no texts")

    def check(self, task: Task, limits: Any) -> None:
        """Bounds that depend on settings (``limits``: :class:`tasks.schema.Limits`), beyond the model's
        own rules; raise :class:`~core.errors.InvalidTaskError` naming the field. Runs at intake."""

    def prepare(self, task: Task, tokenizer: TextTokenizer | None, *, model: str, settings: Settings) -> Prepared:
        """Blocking, on the model's thread: the inputs of one task. The default fits each of :meth:`texts` to
        ``tokenizer``'s limit per ``settings.long_text`` (refused, or truncated and listed in ``truncated``)."""
        texts = self.texts(task)
        if tokenizer is None:
            return Prepared(texts=texts)
        fitted, truncated = [], []
        for index, text in enumerate(texts):
            where = f"Task {task.task_id}: text item {index} (model {model})"
            text, cut = fit_text(text, tokenizer, policy=settings.long_text, where=where)
            fitted.append(text)
            if cut:
                truncated.append(index)
        return Prepared(texts=fitted, truncated=truncated)

    def item_payload(self, task: Task, index: int) -> dict[str, Any]:
        """Extra payload fields stored with the vector of item ``index`` (besides the worker's own fields, the
        item's ``text`` and the task's ``metadata``); JSON values, stored and read back, not filterable."""
        return {}

    def records(
        self,
        task: Task,
        prepared: Prepared | None,
        vectors: np.ndarray,
        *,
        base: dict[str, Any],
        filterable: dict[str, Any],
    ) -> list[VectorRecord]:
        """The records to store: one per vector, id ``vector_id(task_id, index)``, payload ``base`` (task_id,
        task_type, model, model_revision, normalize, worker_id, created_at, metadata) plus the item's fields and :meth:`item_payload`."""
        if self.lane == "image":
            image = prepared.image if prepared else None
            payload = {**base, "item_index": 0}
            if image is not None:
                payload |= {"source": image.source, "width": image.size[0], "height": image.size[1]}
                if image.source != "data":
                    payload["image_ref"] = image.ref
            payload |= self._extra(task, 0, payload)
            return [
                VectorRecord(
                    id=vector_id(task.task_id, 0), vector=vectors[0].tolist(), payload=payload, filterable=filterable
                )
            ]
        texts = prepared.texts if prepared else self.texts(task)
        truncated = set(prepared.truncated) if prepared else set()
        records = []
        for index, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            payload = {**base, "item_index": index, "text": text}
            if index in truncated:
                payload["truncated"] = True
            payload |= self._extra(task, index, payload)
            records.append(
                VectorRecord(
                    id=vector_id(task.task_id, index), vector=vector.tolist(), payload=payload, filterable=filterable
                )
            )
        return records

    def _extra(self, task: Task, index: int, payload: dict[str, Any]) -> dict[str, Any]:
        extra = self.item_payload(task, index)
        if not extra:
            return {}
        taken = sorted(k for k in extra if k in RESERVED_PAYLOAD or k in payload)
        if taken:
            raise PermanentError(
                f"Task {task.task_id}: task type {self.name!r} ({type(self).__module__}) sets the worker's own "
                f"payload field(s) {', '.join(taken)} in item_payload; nothing was stored. Rename them in the "
                f"package that provides the type (reserved: {', '.join(sorted(RESERVED_PAYLOAD))})."
            )
        return extra


_lock = threading.RLock()  # re-entrant: a plugin module may look a type up while it is imported
_available: dict[str, str] | None = None  # name -> "module:attr", read once per process
_types: dict[str, TaskType] = {}  # target -> the type object, made once per process
_broken: dict[str, str] = {}  # target -> why it cannot be used (a failed import is not tried again per task)


def _installed() -> dict[str, str]:
    global _available
    found = _available
    if found is None:
        with _lock:
            if _available is None:
                _available = plugins.installed(ENTRY_POINT_GROUP, BUILTINS, entry_points)
            found = _available
    return found


def available() -> dict[str, str]:
    """Every installed task type: name -> ``module:attr``; the built-ins first, then plugins by name."""
    return dict(_installed())


def names() -> tuple[str, ...]:
    """The ``task_type`` values this worker accepts, in :func:`available`'s order."""
    return tuple(_installed())


def forget() -> None:
    """Read the entry points again at the next lookup (tests; a process sees its installed packages once)."""
    global _available
    with _lock:
        _available = None
        _types.clear()
        _broken.clear()


def get(name: str) -> TaskType:
    """The type registered as ``name`` (imported at its first use).

    Raises :class:`KeyError` for a name no installed package registers (callers list :func:`names`), and
    :class:`~core.errors.UnsupportedTaskError` when its entry point cannot be imported or is not a valid type.
    """
    target = _installed()[name]
    known = _types.get(target)
    if known is not None:
        return known
    with _lock:
        known = _types.get(target)
        if known is None:
            if target in _broken:
                raise UnsupportedTaskError(_broken[target])
            try:
                known = _types[target] = _make(name, target)
            except UnsupportedTaskError as exc:
                _broken[target] = str(exc)
                raise
        return known


def of(task: Task) -> TaskType:
    """The type of a validated task."""
    return get(task.task_type)


def builtin(name: str) -> TaskType:
    """The built-in type ``name`` itself, even where an entry point replaces it (the published schema)."""
    target = BUILTINS[name]
    with _lock:
        known = _types.get(target)
        if known is None:
            known = _types[target] = _make(name, target)
        return known


def _make(name: str, target: str) -> TaskType:
    where = f"the task type {name!r} ({target}, entry-point group {ENTRY_POINT_GROUP})"
    try:
        found: object = plugins.load(target)
        if isinstance(found, type) and issubclass(found, TaskType):
            found = found()
    except Exception as exc:  # noqa: BLE001 - whatever a plugin's import raises, its tasks fail with it
        raise UnsupportedTaskError(
            f"Task type {name!r} is installed but cannot be used: importing {where} failed "
            f"({type(exc).__name__}: {exc}); reinstall the package that provides it, or check its dependencies."
        ) from None
    if not isinstance(found, TaskType):
        raise UnsupportedTaskError(
            f"Task type {name!r} is installed but cannot be used: {where} is a {type(found).__name__}, not a "
            "tasks.types.TaskType subclass or instance; fix the entry point in the package that provides it."
        )
    problem = _problem(found, name)
    if problem:
        raise UnsupportedTaskError(
            f"Task type {name!r} is installed but cannot be used: {where} {problem}; fix the package that provides it."
        )
    return found


def _problem(kind: TaskType, name: str) -> str | None:
    """What is wrong with a type object registered as ``name``, or None."""
    from pydantic import BaseModel

    from tasks.schema import DeleteTask, TaskBase

    if kind.name != name:
        return f"is named {kind.name!r}, not {name!r} (its name must be the entry point's name)"
    if kind.lane not in LANES:
        return f"runs in lane {kind.lane!r}; a type runs in 'text' or 'image'"
    if kind.fitted_texts and type(kind).prepare is not TaskType.prepare:
        return (
            "overrides prepare() but keeps fitted_texts = True, so prepare() would be skipped for short texts and "
            "cache hits; set fitted_texts = False"
        )
    model = getattr(kind, "model", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "has no pydantic model (set its model to a tasks.schema.TaskBase subclass)"
    tag = model.model_fields.get("task_type")
    if tag is None or typing.get_args(tag.annotation) != (name,):
        return f"has a model ({model.__name__}) whose task_type field is not Literal[{name!r}]"
    if kind.lane == "delete" and not issubclass(model, DeleteTask):
        return "runs in lane 'delete' (only a tasks.schema.DeleteTask model can)"
    if kind.lane != "delete" and not issubclass(model, TaskBase):
        return f"has a model ({model.__name__}) that is not a tasks.schema.TaskBase subclass"
    if kind.lane == "image" and "data" not in model.model_fields:
        return f"runs in the image lane with a model ({model.__name__}) without data (the image to load)"
    return None
