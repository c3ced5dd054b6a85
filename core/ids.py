"""Deterministic vector ids: a redelivered task overwrites, never duplicates."""

from __future__ import annotations

import json
import uuid

#: Fixed namespace for vectorize-worker ids. Changing it would change every id
#: ever written, so it is part of the storage contract.
VECTOR_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/vectorize-worker/vector-id")

#: the "index" of a document's own vector (its chunks use 0, 1, 2, ...); a string never equals a chunk index
DOCUMENT_VECTOR = "document"


def vector_id(task_id: str, index: int | str, chunk: int | None = None) -> str:
    """Return the UUID (as a string) of item ``index`` (and ``chunk``) of a task.

    ``index`` is an item or chunk number, or :data:`DOCUMENT_VECTOR` for a
    document's own vector; ``json`` keeps ``0`` and ``"0"`` apart.

    The same task id, index and chunk always give the same id, on every worker,
    so storing a task twice overwrites its points instead of adding new ones.
    """
    # JSON keeps the parts apart: ("a/0", 1) and ("a", 0, 1) never collide.
    key = json.dumps([task_id, index] if chunk is None else [task_id, index, chunk], ensure_ascii=False)
    return str(uuid.uuid5(VECTOR_ID_NAMESPACE, key))
