"""The state of a collection's model migration, and the view every worker keeps of it (issue 16).

One :class:`MigrationState` per alias (the collection name tasks and readers
use) says which physical collection is live, which one is being filled for a
new model (``shadow``), which one the switch left behind for a rollback
(``old``), the phase the migration is in, the backfill's cursor and the
stores already switched. The states live in the compacted Kafka topic
``vectorization-migrations``, keyed by alias (:mod:`app.migration_state`
reads and writes it); here they are pure data:

* :meth:`MigrationState.to_json` / :meth:`MigrationState.from_json`: one JSON
  object of at most :data:`MAX_STATE_BYTES`, validated strictly (unknown keys,
  a wrong type or a structure its phase forbids are refused);
* :func:`advance`: the only way from one state to the next, along
  :data:`TRANSITIONS`; an illegal step (a switch before verify, a rollback
  without an old collection) raises :class:`IllegalTransition` saying what is
  allowed instead;
* :class:`MigrationView`: the latest state per alias, fed record by record
  (a malformed record is skipped with a log line naming where it was, never
  raised), and the answers the worker needs: where a task's vectors go
  (:meth:`MigrationView.targets`) and which collection a search reads
  (:meth:`MigrationView.physical_for_reads`).

The phases (docs/migration.md)::

    bound ─▶ shadow_created ─▶ dual_write ─▶ backfill ─▶ verify ─▶ switched ─▶ cleaned ─▶ shadow_created …
                 │                 │             │    ◀────┘ │          │
                 └────────┬────────┴─────────────┴───────────┘          └─▶ rolled_back ─▶ cleaned
                          ▼
                       aborted ─▶ cleaned

No Kafka, no Faust, no I/O: the engine layer.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.versioning import ModelIdentity

log = logging.getLogger("worker.migrations")

#: the compacted topic that holds the states, keyed by alias (its name when no setting says otherwise)
MIGRATIONS_TOPIC = "vectorization-migrations"
#: the largest encoded state, in bytes: a bigger record is refused when written and skipped when read
MAX_STATE_BYTES = 64 * 1024
#: the longest alias, physical collection name, store name or owner
MAX_NAME_CHARS = 255
#: the longest backfill cursor (a store's paging token)
MAX_CURSOR_CHARS = 1024
#: the most store names in ``switched``
MAX_STORES = 32

Phase = Literal[
    "bound", "shadow_created", "dual_write", "backfill", "verify", "switched", "aborted", "rolled_back", "cleaned"
]
PHASES: tuple[str, ...] = (
    "bound",
    "shadow_created",
    "dual_write",
    "backfill",
    "verify",
    "switched",
    "aborted",
    "rolled_back",
    "cleaned",
)

#: where each phase may go next (staying in the same phase records progress: a cursor, a store switched)
TRANSITIONS: dict[str, frozenset[str]] = {
    "bound": frozenset({"bound", "shadow_created"}),
    "shadow_created": frozenset({"shadow_created", "dual_write", "aborted"}),
    "dual_write": frozenset({"dual_write", "backfill", "aborted"}),
    "backfill": frozenset({"backfill", "verify", "aborted"}),
    "verify": frozenset({"verify", "backfill", "switched", "aborted"}),
    "switched": frozenset({"switched", "rolled_back", "cleaned"}),
    "aborted": frozenset({"aborted", "cleaned"}),
    "rolled_back": frozenset({"rolled_back", "cleaned"}),
    "cleaned": frozenset({"cleaned", "shadow_created"}),
}

#: phases in which every write goes to the live collection and the shadow (the new model's)
DUAL_WRITE_PHASES = frozenset({"dual_write", "backfill", "verify"})
#: phases that need a shadow collection; ``switched`` needs an old one instead
_SHADOW_PHASES = frozenset({"shadow_created", "dual_write", "backfill", "verify", "aborted", "rolled_back"})
#: what each phase means, for messages
_MEANING = {
    "bound": "bound to its live collection, no migration",
    "shadow_created": "shadow collection created",
    "dual_write": "writing to both collections",
    "backfill": "re-embedding the stored records into the shadow",
    "verify": "verifying the shadow (and switching store by store)",
    "switched": "switched to the new model, the old collection kept for a rollback",
    "aborted": "aborted before the switch",
    "rolled_back": "rolled back to the old model",
    "cleaned": "cleaned up, bound to its live collection",
}
_FIELDS = frozenset({"alias", "epoch", "phase", "live", "shadow", "old", "backfill", "switched", "owner", "updated_at"})


class MigrationStateError(ValueError):
    """A state record is not valid: a field missing, mistyped, too long, or contradicting its phase."""


class IllegalTransition(MigrationStateError):
    """:func:`advance` was asked for a step the phases do not allow."""


# -- the record -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collection:
    """A physical collection (the same name in every store) and the model identity it is bound to."""

    physical: str
    identity: ModelIdentity

    def to_dict(self) -> dict[str, Any]:
        return {"physical": self.physical, "identity": self.identity.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Collection:
        if not isinstance(data, Mapping):
            raise MigrationStateError(f"{where} must be an object {{physical, identity}}, not {_kind(data)}")
        extra = set(data) - {"physical", "identity"}
        if extra:
            raise MigrationStateError(f"{where} has unknown keys {sorted(extra)}: only physical and identity")
        physical = _name(data.get("physical"), f"{where}.physical")
        try:
            identity = ModelIdentity.from_dict(data.get("identity"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise MigrationStateError(f"{where}.identity: {exc}") from None
        return cls(physical, identity)


@dataclass(frozen=True)
class Backfill:
    """Where the backfill stands: the store it scans, the scan's cursor (None: from the start) and how many
    re-embedding tasks it has produced."""

    store: str | None = None
    cursor: str | int | None = None
    produced: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "cursor": self.cursor, "produced": self.produced}

    @classmethod
    def from_dict(cls, data: Any) -> Backfill:
        if not isinstance(data, Mapping):
            raise MigrationStateError(f"backfill must be an object {{store, cursor, produced}}, not {_kind(data)}")
        extra = set(data) - {"store", "cursor", "produced"}
        if extra:
            raise MigrationStateError(f"backfill has unknown keys {sorted(extra)}: only store, cursor and produced")
        store, cursor, produced = data.get("store"), data.get("cursor"), data.get("produced", 0)
        return cls(
            store=None if store is None else _name(store, "backfill.store"),
            cursor=_cursor(cursor),
            produced=_count(produced, "backfill.produced"),
        )


@dataclass(frozen=True)
class Target:
    """One collection a task's vectors are written to: ``live`` (the task's own outcome) or a twin's
    (``shadow`` before the switch, ``old`` after it)."""

    physical: str
    identity: ModelIdentity | None
    role: Literal["live", "shadow", "old"]


@dataclass(frozen=True)
class MigrationState:
    """The state of one alias: its phase, its collections, the backfill's progress and who wrote it when.

    ``epoch`` grows by one whenever the phase or a collection changes (:func:`advance`); workers report the
    epoch they apply, and a record older than the one a view holds is ignored (:meth:`MigrationView.apply`).
    Built states are valid: the constructor checks the fields and that they fit the phase.
    """

    alias: str
    phase: Phase
    live: Collection
    epoch: int = 0
    shadow: Collection | None = None
    old: Collection | None = None
    backfill: Backfill = field(default_factory=Backfill)
    switched: tuple[str, ...] = ()
    owner: str = ""
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        _name(self.alias, "alias")
        where = f"the state of alias {self.alias!r}"
        if self.phase not in TRANSITIONS:
            raise MigrationStateError(f"{where}: unknown phase {self.phase!r}; one of {', '.join(PHASES)}")
        _count(self.epoch, "epoch")
        if not isinstance(self.live, Collection):
            raise MigrationStateError(f"{where}: live must be a Collection, not {_kind(self.live)}")
        for name in ("shadow", "old"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Collection):
                raise MigrationStateError(f"{where}: {name} must be a Collection or None, not {_kind(value)}")
        if not isinstance(self.backfill, Backfill):
            raise MigrationStateError(f"{where}: backfill must be a Backfill, not {_kind(self.backfill)}")
        object.__setattr__(self, "switched", _stores(self.switched))
        if not isinstance(self.owner, str) or len(self.owner) > MAX_NAME_CHARS:
            raise MigrationStateError(f"{where}: owner must be a string of at most {MAX_NAME_CHARS} characters")
        stamp = self.updated_at
        if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp) or stamp < 0:
            raise MigrationStateError(f"{where}: updated_at must be a Unix time in seconds, not {stamp!r}")
        object.__setattr__(self, "updated_at", float(stamp))
        problem = _phase_problem(self)
        if problem:
            raise MigrationStateError(f"{where} in phase {self.phase!r}: {problem}")

    # -- forms -----------------------------------------------------------------------------------------------
    @classmethod
    def bound(cls, alias: str, live: Collection, *, owner: str = "", now: float | None = None) -> MigrationState:
        """The first state of an alias: bound to ``live``, epoch 0, no migration."""
        return cls(alias, "bound", live, owner=owner, updated_at=time.time() if now is None else now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "epoch": self.epoch,
            "phase": self.phase,
            "live": self.live.to_dict(),
            "shadow": None if self.shadow is None else self.shadow.to_dict(),
            "old": None if self.old is None else self.old.to_dict(),
            "backfill": self.backfill.to_dict(),
            "switched": list(self.switched),
            "owner": self.owner,
            "updated_at": self.updated_at,
        }

    def to_json(self) -> bytes:
        """The record's value: UTF-8 JSON, keys sorted, no spaces; :class:`MigrationStateError` over
        :data:`MAX_STATE_BYTES`."""
        data = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) > MAX_STATE_BYTES:
            raise MigrationStateError(
                f"The state of alias {self.alias!r} takes {len(data)} bytes, over the {MAX_STATE_BYTES} a state "
                "record may hold: shorten the backfill cursor or the owner."
            )
        return data

    @classmethod
    def from_dict(cls, data: Any) -> MigrationState:
        """The state :meth:`to_dict` wrote; :class:`MigrationStateError` naming the first bad field."""
        if not isinstance(data, Mapping):
            raise MigrationStateError(f"a migration state must be a JSON object, not {_kind(data)}")
        missing = sorted(_FIELDS - {"shadow", "old", "owner", "backfill", "switched"} - set(data))
        if missing:
            raise MigrationStateError(f"a migration state lacks {', '.join(missing)}")
        extra = sorted(set(data) - _FIELDS)
        if extra:
            raise MigrationStateError(f"a migration state has unknown keys {extra}: only {', '.join(sorted(_FIELDS))}")
        alias = _name(data["alias"], "alias")
        phase = data["phase"]
        if not isinstance(phase, str) or phase not in TRANSITIONS:  # a dict or list is not even hashable
            raise MigrationStateError(f"alias {alias!r}: unknown phase {_shown(phase)}; one of {', '.join(PHASES)}")
        switched = data.get("switched", [])
        if not isinstance(switched, list):
            raise MigrationStateError(f"alias {alias!r}: switched must be a list of store names, not {_kind(switched)}")
        shadow, old = data.get("shadow"), data.get("old")
        return cls(
            alias=alias,
            phase=phase,
            epoch=_count(data["epoch"], "epoch"),
            live=Collection.from_dict(data["live"], "live"),
            shadow=None if shadow is None else Collection.from_dict(shadow, "shadow"),
            old=None if old is None else Collection.from_dict(old, "old"),
            backfill=Backfill.from_dict(data.get("backfill", Backfill().to_dict())),
            switched=tuple(switched),
            owner=data.get("owner", ""),
            updated_at=data["updated_at"],
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> MigrationState:
        """The state :meth:`to_json` wrote; :class:`MigrationStateError` when it is not one (too large, not
        UTF-8 JSON, a bad field)."""
        size = len(data.encode() if isinstance(data, str) else data)
        if size > MAX_STATE_BYTES:
            raise MigrationStateError(f"a state record takes {size} bytes, over the limit of {MAX_STATE_BYTES}")
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MigrationStateError(f"a state record is not UTF-8 JSON ({exc})") from None
        except RecursionError:  # e.g. 60,000 nested brackets: under the size limit, too deep for the parser
            raise MigrationStateError("a state record nests too deeply to be a state") from None
        return cls.from_dict(parsed)

    # -- what it means ------------------------------------------------------------------------------------
    def describe(self) -> str:
        """``docs: backfill (re-embedding …), epoch 3, live docs__a_1111, shadow docs__b_2222``, for messages."""
        parts = [f"{self.alias}: {self.phase} ({_MEANING[self.phase]}), epoch {self.epoch}"]
        parts.append(f"live {self.live.physical}")
        if self.shadow is not None:
            parts.append(f"shadow {self.shadow.physical}")
        if self.old is not None:
            parts.append(f"old {self.old.physical}")
        return ", ".join(parts)

    def targets(self) -> tuple[Target, ...]:
        """Where a task's vectors go: the live collection, plus the shadow during ``dual_write`` … ``verify``,
        plus the old collection once ``switched`` (so a rollback finds every write since), until cleanup."""
        live = Target(self.live.physical, self.live.identity, "live")
        if self.phase in DUAL_WRITE_PHASES and self.shadow is not None:
            return (live, Target(self.shadow.physical, self.shadow.identity, "shadow"))
        if self.phase == "switched" and self.old is not None:
            return (live, Target(self.old.physical, self.old.identity, "old"))
        return (live,)

    def physical_for_reads(self, store: str | None = None) -> str:
        """The collection a search of ``store`` reads. While the stores are switched one by one (``switched``
        lists those done), a store already switched reads the new model's collection; with no store named, the
        answer of the phase (the live collection until ``switched``, then the new live one)."""
        if store is not None and self.phase == "verify" and store in self.switched and self.shadow is not None:
            return self.shadow.physical  # switched ahead of the others
        if store is not None and self.phase == "switched" and store not in self.switched and self.old is not None:
            return self.old.physical  # not switched (a rollback in progress pointed it back already)
        return self.live.physical


def _phase_problem(state: MigrationState) -> str | None:
    """What about ``state`` its phase forbids; None when it fits."""
    phase = state.phase
    if phase in _SHADOW_PHASES and state.shadow is None:
        return "it needs a shadow collection (the new model's)"
    if phase not in _SHADOW_PHASES and state.shadow is not None:
        return f"it has no shadow collection, yet shadow is {state.shadow.physical!r}"
    if phase == "switched" and state.old is None:
        return "it needs the old collection (kept for a rollback)"
    if phase != "switched" and state.old is not None:
        return f"only a switched alias keeps an old collection, yet old is {state.old.physical!r}"
    if phase not in ("verify", "switched") and state.switched:
        return f"no store is switched before verify or after a rollback, yet switched is {list(state.switched)}"
    for other in (state.shadow, state.old):
        if other is not None and other.physical == state.live.physical:
            return f"the collection {other.physical!r} cannot be live and shadow/old at once"
    return None


# -- the steps ----------------------------------------------------------------------------------------------------
_ADVICE = {
    "switched": "the switch comes after verify: finish the backfill and verify the shadow first",
    "rolled_back": "only a switched alias has an old collection to roll back to; before the switch, abort instead",
    "aborted": "only a migration before its switch can be aborted; after it, roll back (then clean up)",
    "cleaned": "clean up after a switch, an abort or a rollback",
    "shadow_created": "a new migration starts from a bound or cleaned alias: finish or abort the running one first",
    "verify": "verify follows the backfill",
    "backfill": "the backfill starts once every worker writes to both collections (dual_write)",
    "dual_write": "dual writing starts once the shadow collection exists (shadow_created)",
    "bound": "an alias is bound again only by cleaning up its migration",
}


def advance(state: MigrationState, to_phase: str, *, now: float | None = None, **changes: Any) -> MigrationState:
    """The state after ``state`` moves to ``to_phase`` (or records progress in its own phase).

    ``changes`` may set ``backfill`` (a :class:`Backfill` or its dict), ``switched`` (store names), ``owner``;
    ``shadow`` (a :class:`Collection`) only into ``shadow_created``; ``live`` only in a ``bound`` or ``cleaned``
    alias (a re-binding). The roles move by themselves: into ``switched`` the shadow becomes live and the live
    collection old; into ``rolled_back`` the old collection is live again and the new model's is kept as the
    shadow (for cleanup to drop); into ``cleaned`` the shadow or old collection is gone. The epoch grows by one
    when the phase or a collection changes; ``updated_at`` becomes ``now``.

    Raises :class:`IllegalTransition` for a step the phases do not allow, naming the steps that are.
    """
    alias, here = state.alias, state.phase
    if to_phase not in TRANSITIONS:
        raise IllegalTransition(
            f"Cannot move alias {alias!r} to phase {to_phase!r}: no such phase (one of {', '.join(PHASES)})."
        )
    allowed = TRANSITIONS[here]
    if to_phase not in allowed:
        nexts = ", ".join(sorted(allowed - {here})) or "nowhere"
        raise IllegalTransition(
            f"Cannot move the migration of alias {alias!r} from phase {here!r} ({_MEANING[here]}, epoch "
            f"{state.epoch}) to {to_phase!r}: from {here!r} it can go to {nexts}. {_ADVICE[to_phase].capitalize()}."
        )
    unknown = set(changes) - {"backfill", "switched", "owner", "shadow", "live"}
    if unknown:
        raise IllegalTransition(
            f"advance() of alias {alias!r} cannot set {sorted(unknown)}: only backfill, switched, owner, shadow "
            "(into shadow_created) and live (re-binding a bound alias); the epoch, old and the roles follow the phase."
        )
    if "shadow" in changes and to_phase != "shadow_created":
        raise IllegalTransition(
            f"The shadow collection of alias {alias!r} is set when it is created (phase shadow_created), not in "
            f"{to_phase!r}: abort the migration and start a new one for another model."
        )
    if "live" in changes and not (to_phase == here and here in ("bound", "cleaned")):
        raise IllegalTransition(
            f"The live collection of alias {alias!r} changes only by a switch or a rollback, not by {here!r} -> "
            f"{to_phase!r}: re-binding is for an alias with no migration (bound or cleaned)."
        )
    live, shadow, old = state.live, state.shadow, state.old
    backfill, switched = state.backfill, state.switched
    if to_phase != here:
        if to_phase == "shadow_created":
            shadow, backfill, switched = changes.get("shadow"), Backfill(), ()
            if not isinstance(shadow, Collection):
                raise IllegalTransition(
                    f"Creating the shadow of alias {alias!r} needs shadow=Collection(physical, identity) of the new "
                    f"model, not {_kind(shadow)}."
                )
            if shadow.identity.accepts(live.identity):
                raise IllegalTransition(
                    f"Alias {alias!r} is already bound to model {live.identity.describe()} in {live.physical!r}: a "
                    "migration needs another model (or another revision of it)."
                )
        elif to_phase == "switched":
            live, old, shadow = state.shadow, state.live, None  # type: ignore[assignment]
        elif to_phase == "rolled_back":
            live, shadow, old, switched = state.old, state.live, None, ()  # type: ignore[assignment]
        elif to_phase == "aborted":
            if state.switched:
                raise IllegalTransition(
                    f"Cannot abort the migration of alias {alias!r}: the stores {list(state.switched)} already read "
                    "the new model. Finish the switch and roll back, or point those stores back first (then record "
                    "switched=[])."
                )
        elif to_phase == "cleaned":
            shadow, old, switched = None, None, ()
    if "live" in changes:
        live = changes["live"]
        if not isinstance(live, Collection):
            raise IllegalTransition(f"live of alias {alias!r} must be a Collection, not {_kind(live)}")
    if "backfill" in changes:
        value = changes["backfill"]
        backfill = value if isinstance(value, Backfill) else Backfill.from_dict(value)
    if "switched" in changes:
        switched = _stores(changes["switched"])
    if to_phase == "switched" and here != "switched" and not switched:
        raise IllegalTransition(
            f"Cannot record the switch of alias {alias!r} with no store switched: point each store's alias at "
            f"{state.shadow.physical if state.shadow else 'the new collection'!r} and pass switched=[the stores]."
        )
    if to_phase in ("backfill", "dual_write", "shadow_created") and here == "verify" and switched:
        raise IllegalTransition(
            f"Cannot move the migration of alias {alias!r} back from verify to {to_phase!r}: the stores "
            f"{list(switched)} already read the new model. Point them back first (then record switched=[])."
        )
    epoch = state.epoch
    if to_phase != here or (live, shadow, old) != (state.live, state.shadow, state.old):
        epoch += 1
    return MigrationState(
        alias=alias,
        phase=to_phase,  # type: ignore[arg-type]
        live=live,
        epoch=epoch,
        shadow=shadow,
        old=old,
        backfill=backfill,
        switched=switched,
        owner=changes.get("owner", state.owner),
        updated_at=time.time() if now is None else now,
    )


# -- the view -----------------------------------------------------------------------------------------------------
Listener = Callable[[str, "MigrationState | None"], None]


class MigrationView:
    """The latest state per alias, as read from the topic, and what follows from it for writes and reads.

    Records are applied in topic order. A state with a lower epoch than the one held (a stale writer), or
    the same epoch in another phase (two writers raced from the same state), is ignored with a warning: the
    first record of an epoch wins. A tombstone (no value) forgets the alias. An alias the view does not hold
    is its own physical collection (a collection created before migrations, or not migrated yet).
    """

    def __init__(self) -> None:
        self._states: dict[str, MigrationState] = {}
        self._listeners: list[Listener] = []
        #: records applied, and records skipped (malformed or stale), since the start
        self.applied = 0
        self.skipped = 0

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(alias, state)`` after each change (``state`` None: the alias was forgotten)."""
        self._listeners.append(listener)

    # -- feeding ----------------------------------------------------------------------------------------------
    def apply(self, state: MigrationState, where: str = "") -> bool:
        """Hold ``state`` as its alias's latest, unless it is older than the held one; whether it was taken."""
        held = self._states.get(state.alias)
        if held is not None and (
            state.epoch < held.epoch or (state.epoch == held.epoch and not _progress(held, state))
        ):
            self.skipped += 1
            log.warning(
                "Ignored the migration state of alias %r at %s: epoch %d (%s) is behind the state held, epoch %d "
                "(%s); a stale or racing writer wrote it. Nothing to do unless it repeats: then one migrate command "
                "runs against an old view; stop it.",
                state.alias,
                where or "?",
                state.epoch,
                state.phase,
                held.epoch,
                held.phase,
            )
            return False
        self._states[state.alias] = state
        self.applied += 1
        self._notify(state.alias, state)
        return True

    def forget(self, alias: str) -> bool:
        """Drop ``alias`` (a tombstone); whether it was held."""
        if self._states.pop(alias, None) is None:
            return False
        self.applied += 1
        self._notify(alias, None)
        return True

    def apply_record(self, key: bytes | None, value: bytes | None, where: str) -> bool:
        """One record of the topic (``where``: ``topic[partition]@offset``, for the log); whether it changed the
        view. A malformed record (no key, a key that is not its alias, a value that is not a valid state) is
        skipped with a warning naming ``where`` and the problem; nothing here raises for a record."""
        state = decode_record(key, value, where)
        if state is not None:
            return self.apply(state, where)
        alias = _decoded_key(key)
        if value is None and alias is not None:
            return self.forget(alias)  # a tombstone
        self.skipped += 1
        return False

    # -- answers ------------------------------------------------------------------------------------------------
    def get(self, alias: str) -> MigrationState | None:
        return self._states.get(alias)

    def states(self) -> dict[str, MigrationState]:
        """A copy of the latest state per alias."""
        return dict(self._states)

    def epochs(self) -> dict[str, int]:
        """The epoch applied per alias (what a worker reports)."""
        return {alias: state.epoch for alias, state in self._states.items()}

    def migrating(self) -> list[str]:
        """The aliases whose writes go to more than one collection."""
        return sorted(alias for alias, state in self._states.items() if len(state.targets()) > 1)

    def targets(self, alias: str) -> tuple[Target, ...]:
        """Where a task's vectors for ``alias`` go, the live collection first (see :meth:`MigrationState.targets`);
        an alias with no state: the collection of that name."""
        state = self._states.get(alias)
        if state is None:
            return (Target(alias, None, "live"),)
        return state.targets()

    def physical_for_reads(self, alias: str, store: str | None = None) -> str:
        """The collection a search of ``alias`` (in ``store``) reads; an alias with no state: itself."""
        state = self._states.get(alias)
        return alias if state is None else state.physical_for_reads(store)

    def read_target(self, alias: str, store: str | None = None) -> tuple[str, ModelIdentity | None]:
        """The collection a search of ``alias`` in ``store`` reads and the identity it is bound to (None: an alias
        with no state, read under its own name, whose model the caller decides)."""
        state = self._states.get(alias)
        if state is None:
            return alias, None
        physical = state.physical_for_reads(store)
        for collection in (state.live, state.shadow, state.old):
            if collection is not None and collection.physical == physical:
                return physical, collection.identity
        return physical, None

    def _notify(self, alias: str, state: MigrationState | None) -> None:
        for listener in self._listeners:
            try:
                listener(alias, state)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the view
                log.exception("A migration state listener failed on alias %r; the view goes on", alias)


def decode_record(key: bytes | None, value: bytes | None, where: str) -> MigrationState | None:
    """The state one record holds; None, with a warning naming ``where``, when it holds none that is valid
    (a tombstone of a valid key returns None without a warning)."""
    alias = _decoded_key(key)
    if alias is None:
        log.warning(
            "Skipped the record at %s of the migration state topic: its key %s is not an alias (UTF-8, 1-%d "
            "characters); only the migrate command writes this topic: delete what wrote it.",
            where,
            _shown(key),
            MAX_NAME_CHARS,
        )
        return None
    if value is None:
        return None
    try:
        state = MigrationState.from_json(value)
    except MigrationStateError as exc:
        log.warning(
            "Skipped the record at %s of the migration state topic (key %r): %s. The alias keeps its previous "
            "state; write a valid one (the migrate command) or a tombstone to reset it.",
            where,
            alias,
            exc,
        )
        return None
    if state.alias != alias:
        log.warning(
            "Skipped the record at %s of the migration state topic: its key %r is not the alias it holds (%r); "
            "states are keyed by their alias.",
            where,
            alias,
            state.alias,
        )
        return None
    return state


# -- checks -------------------------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise MigrationStateError(
            f"{what} must be a non-empty string of at most {MAX_NAME_CHARS} characters, not {_shown(value)}"
        )
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MigrationStateError(f"{what} must be an integer >= 0, not {_shown(value)}")
    return value


def _cursor(value: Any) -> str | int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and len(value) <= MAX_CURSOR_CHARS:
        return value
    raise MigrationStateError(
        f"backfill.cursor must be null, an integer or a string of at most {MAX_CURSOR_CHARS} characters, "
        f"not {_shown(value)}"
    )


def _stores(value: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise MigrationStateError(f"switched must be a list of store names, not {_shown(value)}")
    names = tuple(value)
    if len(names) > MAX_STORES:
        raise MigrationStateError(f"switched lists {len(names)} stores, more than {MAX_STORES}")
    for name in names:
        _name(name, "a store name in switched")
    if len(set(names)) != len(names):
        raise MigrationStateError(f"switched names a store twice: {list(names)}")
    return names


def _decoded_key(key: bytes | None) -> str | None:
    if key is None or not 0 < len(key) <= MAX_NAME_CHARS * 4:
        return None
    try:
        alias = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return alias if len(alias) <= MAX_NAME_CHARS else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _progress(held: MigrationState, state: MigrationState) -> bool:
    """Whether ``state``, of the same epoch as ``held``, moves it on: the same phase and collections (two
    writers racing from one state to the same phase both write epoch E+1: the first one written wins), the
    backfill's count not going back and, before the ``switched`` phase, no store leaving the switched list
    (in ``switched`` a rollback points the stores back one by one)."""
    return (
        state.phase == held.phase
        and (state.live, state.shadow, state.old) == (held.live, held.shadow, held.old)
        and state.backfill.produced >= held.backfill.produced
        and (state.phase == "switched" or set(held.switched) <= set(state.switched))
    )
