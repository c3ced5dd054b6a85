"""A model's identity record, and the one model a collection is bound to (issue 16).

Every stored vector names the model that made it (payload keys ``model``,
``model_revision``, ``normalize``), and every collection the worker writes is
bound to one :class:`ModelIdentity`, kept by the store itself (docs/stores.md,
"One model per collection"). A task whose model is not the collection's
fails with :func:`mismatch_message`.

The identity's ``revision`` is :func:`models.fingerprint.model_identity`: a
SHA-256 over the model's name, family, dimension, vector settings, weights
and configuration. Two identities are the same model when their name,
revision, dimension, default normalisation and pooling are equal (the
family only describes; a change of what the revision hashes is a new
revision anyway).

A collection a task names (``docs``) may also be an alias, or a pointer, to a
*physical* collection named after the model whose vectors it holds:
:func:`physical_name` (docs/stores.md, "Aliases and pointers").

A leaf: pure data and messages, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import StoreRejectedError

#: the hex digits of the revision every stored record carries (payload key ``model_revision``)
RECORD_REVISION_CHARS = 16
#: the hex digits of a revision shown in messages
SHOWN_REVISION_CHARS = 12
#: where a store's collection-level text holds the binding: ``... model={json}``
BINDING_MARKER = "model="
#: a collection name, as tasks and settings accept it (``collection``, ``stores.default_collection``)
COLLECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
#: between the alias and the model in a physical collection's name
PHYSICAL_SEPARATOR = "__"
#: the longest model slug in a physical collection's name
SLUG_CHARS = 40
#: the hex digits of the revision in a physical collection's name
NAME_REVISION_CHARS = 8
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a collection's vectors: name, revision (SHA-256 hex), dimension, default normalisation,
    pooling and family.

    ``partial`` marks an identity read back from one stored record (:meth:`from_record`) instead of a
    collection's binding: it knows only the name, the first :data:`RECORD_REVISION_CHARS` hex of the revision (empty for a record
    written before revisions) and the collection's dimension.
    """

    name: str
    revision: str
    dim: int
    normalize: bool | None = None
    pooling: str | None = None
    family: str = ""
    partial: bool = field(default=False, compare=False)

    # -- forms -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able values (what result records, ``/models`` and the stores hold)."""
        return {
            "name": self.name,
            "revision": self.revision,
            "dim": self.dim,
            "normalize": self.normalize,
            "pooling": self.pooling,
            "family": self.family,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelIdentity:
        """The record :meth:`to_dict` wrote; ``ValueError`` naming the field when one is missing or mistyped."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a model identity must be a JSON object, not {type(data).__name__}")
        name, revision, dim = data.get("name"), data.get("revision"), data.get("dim")
        normalize, pooling, family = data.get("normalize"), data.get("pooling"), data.get("family", "")
        problems = []
        if not isinstance(name, str) or not name:
            problems.append(f"name must be a non-empty string (got {name!r})")
        if not isinstance(revision, str):
            problems.append(f"revision must be a string (got {revision!r})")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            problems.append(f"dim must be a positive integer (got {dim!r})")
        if normalize is not None and not isinstance(normalize, bool):
            problems.append(f"normalize must be true, false or null (got {normalize!r})")
        if pooling is not None and not isinstance(pooling, str):
            problems.append(f"pooling must be a string or null (got {pooling!r})")
        if not isinstance(family, str):
            problems.append(f"family must be a string (got {family!r})")
        if problems:
            raise ValueError("invalid model identity: " + "; ".join(problems))
        return cls(name=name, revision=revision, dim=dim, normalize=normalize, pooling=pooling, family=family)

    def to_json(self) -> str:
        """One line of JSON, keys sorted, no spaces: how the stores keep a binding."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ModelIdentity:
        """The identity :meth:`to_json` wrote; ``ValueError`` when ``text`` is not one."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"a model identity is not valid JSON ({exc}): {str(text)[:200]!r}") from None
        return cls.from_dict(data)

    @classmethod
    def from_record(cls, payload: Mapping[str, Any], dim: int) -> ModelIdentity | None:
        """What one stored record says of the model that made it (its ``model`` and ``model_revision`` payload
        keys), in a collection of dimension ``dim``; None when it names no model."""
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            return None
        revision = payload.get("model_revision")
        return cls(name=name, revision=revision if isinstance(revision, str) else "", dim=dim, partial=True)

    # -- what is shown and stored -------------------------------------------------------------------
    @property
    def record_revision(self) -> str:
        """The revision as every stored record carries it (``model_revision``)."""
        return self.revision[:RECORD_REVISION_CHARS]

    def describe(self) -> str:
        """``name (rev 3f2a9c1d0e11, dim 384)``, for messages."""
        shown = self.revision[:SHOWN_REVISION_CHARS] or "unknown"
        return f"{self.name} (rev {shown}, dim {self.dim})"

    # -- comparison --------------------------------------------------------------------------------
    def accepts(self, wanted: ModelIdentity) -> bool:
        """Whether vectors of ``wanted`` may join a collection bound to this identity.

        A binding: the same name, revision, dimension, default normalisation and pooling. An identity read
        from a stored record: the same name and dimension, and a revision that starts as the record's (a
        record written before revisions says nothing against it).
        """
        if self.partial:
            return (
                self.name == wanted.name
                and self.dim == wanted.dim
                and (not self.revision or wanted.revision.startswith(self.revision))
            )
        return (self.name, self.revision, self.dim, self.normalize, self.pooling) == (
            wanted.name,
            wanted.revision,
            wanted.dim,
            wanted.normalize,
            wanted.pooling,
        )


def binding_text(identity: ModelIdentity) -> str:
    """What a store's collection-level text (a description) carries of the binding."""
    return f"{BINDING_MARKER}{identity.to_json()}"


def binding_in(text: str | None) -> ModelIdentity | None:
    """The binding a collection-level text holds (see :func:`binding_text`); None when it holds none.

    ``ValueError`` when the text holds a binding that cannot be read.
    """
    if not text:
        return None
    at = text.find(BINDING_MARKER + "{")
    if at < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text, at + len(BINDING_MARKER))
    except json.JSONDecodeError as exc:
        raise ValueError(f"the model binding is not valid JSON ({exc}): {text[at : at + 200]!r}") from None
    return ModelIdentity.from_dict(data)


def mismatch_message(*, collection: str, store: str, bound: ModelIdentity, wanted: ModelIdentity) -> str:
    """Why vectors of ``wanted`` cannot go into ``collection`` of ``store`` (bound to ``bound``), and the way out."""
    held = "holds vectors of" if bound.partial else "is bound to"
    return (
        f"Collection {collection!r} on {store} {held} model {bound.describe()}; this task's vectors come from "
        f"model {wanted.describe()}. A collection holds the vectors of one model. Send the task to another "
        f"collection (its `collection` field), or delete collection {collection!r} and send its tasks again."
    )


def check_binding(bound: ModelIdentity | None, wanted: ModelIdentity, *, collection: str, store: str) -> None:
    """Raise :class:`StoreRejectedError` (permanent: the task fails alone) when ``bound`` refuses ``wanted``."""
    if bound is not None and not bound.accepts(wanted):
        raise StoreRejectedError(mismatch_message(collection=collection, store=store, bound=bound, wanted=wanted))


def unreadable_binding(*, collection: str, store: str, where: str, problem: BaseException) -> StoreRejectedError:
    """The error for a collection whose stored binding cannot be read (edited by hand?)."""
    return StoreRejectedError(
        f"Collection {collection!r} on {store}: its model binding ({where}) cannot be read: {problem}. Restore it, "
        "or send the task to another collection."
    )


def model_slug(name: str) -> str:
    """The model's name as it appears in a physical collection's name: the last part of its path, lower case,
    every run of characters outside ``[a-z0-9]`` one ``_``, at most :data:`SLUG_CHARS` characters
    (``sentence-transformers/all-MiniLM-L6-v2`` -> ``all_minilm_l6_v2``); ``model`` when nothing is left."""
    last = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9]+", "_", last.lower()).strip("_")[:SLUG_CHARS].strip("_")
    return slug or "model"


def physical_name(alias: str, identity: ModelIdentity) -> str:
    """The physical collection that holds ``identity``'s vectors for the collection (alias) ``alias``:
    ``<alias>__<slug>_<rev8>``, e.g. ``docs__all_minilm_l6_v2_3f2a9c1d``.

    Valid in every store when ``alias`` is a collection name (:data:`COLLECTION_NAME`): at most 114
    characters of ``[A-Za-z0-9_-]``, starting with a letter and ending with a hex digit (Weaviate makes it a
    class name, ``Docs__all_minilm_l6_v2_3f2a9c1d``, and Weaviate and Milvus write ``-`` as ``_``, as they do
    for any collection). ``ValueError`` naming the problem when ``alias`` is not a collection name or
    ``identity`` has no revision (an identity read from a stored record, or a model of unknown revision)."""
    if not isinstance(alias, str) or not COLLECTION_NAME.match(alias):
        raise ValueError(
            f"cannot name a physical collection for {alias!r}: a collection name starts with a letter and has at "
            f"most 63 letters, digits, '_' or '-' ({COLLECTION_NAME.pattern})"
        )
    revision = identity.revision[:NAME_REVISION_CHARS].lower()
    if identity.partial or len(revision) < NAME_REVISION_CHARS or not _HEX.match(revision):
        raise ValueError(
            f"cannot name a physical collection of {alias!r} for model {identity.name}: its revision "
            f"{identity.revision!r} is not a hex digest of at least {NAME_REVISION_CHARS} digits (use the identity "
            "of the loaded model, models.fingerprint.identity_record, not one read from a stored record)"
        )
    return f"{alias}{PHYSICAL_SEPARATOR}{model_slug(identity.name)}_{revision}"
