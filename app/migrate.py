"""``faust -A app migrate``: move a collection (its alias) to another model while it keeps serving (issue 16).

    faust -A app migrate COLLECTION --to-model NAME [--yes] [--store NAME] [--wait-seconds S] [--stall-seconds S]
    faust -A app migrate COLLECTION --status | --abort | --rollback | --cleanup [--yes]

The steps (docs/migration.md, "The migrate command"), each published as the alias's state on the migrations
topic before the next begins, so a command that stops anywhere resumes where the state says when run again:

1. **plan**: the live collection and its model, the target model (loaded here as a worker loads it), the
   records per store, an estimate (tokens and time at the speed measured here), the warnings; confirmation;
2. **shadow_created**: the new model's physical collection in every store;
3. **dual_write**: every live worker (heartbeats) writes to both, checked by the epoch each reports;
4. **backfill**: the live collection scanned (one store), one ``reembed`` record per task produced on the tasks
   topic (the cursor kept in the state), then the shadow's counts watched until they reach the live ones;
5. **verify**: ids compared per store (missing tasks sent again, extra records deleted), a top-10 overlap of
   sample queries reported;
6. **switch**: each store's alias pointed at the new collection, then phase ``switched``.

``--status`` shows the state; ``--abort`` (before the switch), ``--rollback`` (after it) and ``--cleanup``
(drops the collection left over) end a migration.

Everything here is written over ports (:class:`MigratePorts`: the stores, the state, a record producer, the
model manager, the workers' heartbeats, a question to the operator) so unit tests drive it with fakes;
:func:`open_ports` builds the real ones from the settings, and :func:`run_migrate` is the command. Store calls
block: they run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

from core.errors import ConfigError, StoreUnavailableError, VectorizeError
from core.versioning import ModelIdentity, physical_name
from engine.migrations import (
    MIGRATIONS_TOPIC,
    Backfill,
    Collection,
    IllegalTransition,
    MigrationState,
    MigrationStateError,
    advance,
)
from sinks.base import MAX_TASK_RECORDS, POINTER_COLLECTION, SCAN_PAGE, BaseVectorDB, StoredPoint

if TYPE_CHECKING:
    import numpy as np

    from core.settings import Settings

T = TypeVar("T")

#: how long the command waits for every live worker to apply a state's epoch (``--wait-seconds``)
WAIT_SECONDS = 600.0
#: how long the shadow's counts may stand still before the command stops watching them (``--stall-seconds``)
STALL_SECONDS = 60.0
#: stored texts sampled for the estimate, texts embedded to measure the speed, sample queries for the overlap
ESTIMATE_SAMPLE = 1000
SPEED_SAMPLE = 256
OVERLAP_QUERIES = 50
OVERLAP_K = 10
#: rounds in which verify sends the missing tasks again before it gives up
REPAIR_ROUNDS = 3
#: the backfill cursor recorded once the scan has read the whole live collection (a resumed command then only
#: waits for the workers instead of scanning again)
SCAN_DONE = "vw:scan-done"
#: tasks whose records are read in one ``task_records`` call (fewer when they hold many records), ids per
#: ``retrieve`` call
TASKS_PER_LOOKUP = 100
IDS_PER_RETRIEVE = 1000
#: task ids shown in a message before "and N more"
SHOWN_IDS = 50
#: the reembed record's key for the target model (tasks/reembed.py ``ReembedTask.model_name``)
MODEL_KEY = "model_name"
MIGRATING = ("shadow_created", "dual_write", "backfill", "verify")


class MigrateError(Exception):
    """A step refused or failed; the message says what, where and what to do (exit code 1)."""


class UsageError(Exception):
    """The command line asks for something the command does not do (exit code 2)."""


# -- ports --------------------------------------------------------------------------------------------------------
class StatePort(Protocol):
    """The migration states: the latest one per alias (read whole at start) and the way to publish one."""

    def get(self, alias: str) -> MigrationState | None: ...

    async def publish(self, state: MigrationState) -> None: ...


class RecordProducer(Protocol):
    """Sends records (key, value) to the tasks topic and returns once the broker has every one of them: the keys
    of those the broker refused for their size (it keeps none of those); any other failure raises."""

    async def produce(self, records: Sequence[tuple[str, bytes]]) -> list[str]: ...

    async def consumed(self) -> bool | None:
        """Whether the workers' consumer group has committed past every record this producer sent (they are then
        processed: a worker commits a record once it is written); None when it cannot tell (nothing sent, or Kafka
        did not answer)."""
        ...


class ModelPort(Protocol):
    """What the command needs of :class:`models.manager.ModelManager`."""

    async def get(self, name: str) -> Any: ...

    def identity_record(self, name: str) -> ModelIdentity | None: ...

    async def token_lengths(self, name: str, texts: Sequence[str]) -> list[int] | None: ...

    async def embed_texts(
        self, name: str, texts: Sequence[str], *, batch_size: int, normalize: bool | None
    ) -> tuple[np.ndarray, Any]: ...


Heartbeats = Callable[[], Awaitable[list[dict[str, Any]]]]
Ask = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class Timing:
    """Pauses of the command's polls (seconds); tests make them short."""

    poll: float = 1.0  # between two reads of the heartbeats while waiting for epochs
    report: float = 5.0  # between two lines naming the workers still behind
    progress: float = 2.0  # between two reads of the counts while the shadow fills
    retry: float = 2.0  # before a store call that failed for an outage is tried again
    confirm: float = 5.0  # before ids found only in the shadow are looked at again (a twin may be on its way)


@dataclass
class MigratePorts:
    """Everything the command talks to. ``ask`` is None when there is no terminal to ask on; ``manager`` is
    needed only to start or resume a migration."""

    stores: Sequence[BaseVectorDB]
    state: StatePort
    producer: RecordProducer
    heartbeats: Heartbeats
    manager: ModelPort | None = None
    ask: Ask | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    timing: Timing = field(default_factory=Timing)
    owner: str = field(default_factory=lambda: f"migrate@{socket.gethostname()}:{os.getpid()}")


@dataclass(frozen=True)
class MigrateOptions:
    """The command line: ``COLLECTION`` and one of ``--to-model``, ``--status``, ``--abort``, ``--rollback``,
    ``--cleanup``."""

    collection: str
    to_model: str | None = None
    yes: bool = False
    store: str | None = None
    status: bool = False
    abort: bool = False
    rollback: bool = False
    cleanup: bool = False
    drop_unmigratable: bool = False
    wait_seconds: float = WAIT_SECONDS
    stall_seconds: float = STALL_SECONDS

    def action(self) -> str:
        """``migrate``, ``status``, ``abort``, ``rollback`` or ``cleanup``; :class:`UsageError` unless exactly one
        is asked for."""
        asked = [name for name in ("status", "abort", "rollback", "cleanup") if getattr(self, name)]
        if self.to_model:
            asked.insert(0, "migrate")
        usage = (
            "usage: faust -A app migrate COLLECTION --to-model NAME [--yes] [--store NAME], or "
            "faust -A app migrate COLLECTION --status | --abort | --rollback | --cleanup [--yes]"
        )
        if len(asked) != 1:
            what = "nothing" if not asked else " and ".join("--to-model" if a == "migrate" else f"--{a}" for a in asked)
            raise UsageError(f"migrate {self.collection}: asked for {what}; give exactly one. {usage}")
        if self.store is not None and asked[0] != "migrate":
            raise UsageError(f"migrate {self.collection}: --store goes with --to-model (the store to scan). {usage}")
        if self.drop_unmigratable and asked[0] != "migrate":
            raise UsageError(f"migrate {self.collection}: --drop-unmigratable goes with --to-model. {usage}")
        if self.wait_seconds <= 0 or self.stall_seconds <= 0:
            raise UsageError(f"migrate {self.collection}: --wait-seconds and --stall-seconds must be above 0.")
        return asked[0]


# -- the command --------------------------------------------------------------------------------------------------
async def run_migrate(
    settings: Settings,
    options: MigrateOptions,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    ports: MigratePorts | None = None,
) -> int:
    """Run the command; its exit code: 0 done, 1 a step refused or failed (one message on ``err``), 2 bad usage.

    Without ``ports`` they are built from ``settings`` (:func:`open_ports`) and closed at the end.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else (sys.stderr if out is sys.stdout else out)
    try:
        action = options.action()
    except UsageError as exc:
        print(f"vectorize-worker: {exc}", file=err)
        return 2
    close: Callable[[], Awaitable[None]] | None = None
    try:
        if ports is None:
            ports, close = await open_ports(settings, need_model=action == "migrate")
        await Migrator(settings, options, ports, out).run(action)
        return 0
    except (MigrateError, ConfigError, MigrationStateError) as exc:  # IllegalTransition is one: its reason
        print(f"vectorize-worker: migrate {options.collection}: {exc}", file=err)
        return 1
    except VectorizeError as exc:  # a store or Kafka that failed in a way the steps did not catch
        print(
            f"vectorize-worker: migrate {options.collection}: {type(exc).__name__}: {exc} Run the command again "
            "once that is fixed: a migration resumes from the state it published.",
            file=err,
        )
        return 1
    finally:
        if close is not None:
            await close()


class Migrator:
    """The command's steps for one alias, over :class:`MigratePorts`."""

    def __init__(self, settings: Settings, options: MigrateOptions, ports: MigratePorts, out: TextIO) -> None:
        self.settings = settings
        self.options = options
        self.ports = ports
        self.out = out
        self.alias = options.collection
        self.state: MigrationState | None = None
        self.unmigratable: list[str] = []

    # -- helpers ----------------------------------------------------------------------------------------------
    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    @property
    def stores(self) -> Sequence[BaseVectorDB]:
        return self.ports.stores

    async def call(self, store: BaseVectorDB, what: str, func: Callable[[], T], *, tries: int = 3) -> T:
        """``func()`` (a blocking store call) in a thread; an outage is tried ``tries`` times, then (like a
        refusal) becomes a :class:`MigrateError` naming the store and what was done."""
        for attempt in range(1, tries + 1):
            try:
                return await asyncio.to_thread(func)
            except StoreUnavailableError as exc:
                if attempt == tries:
                    raise MigrateError(
                        f"{what} on {store.describe()} failed {tries} times: {exc} Once the store answers, run the "
                        "command again: it resumes from the state it published."
                    ) from None
                await self.ports.sleep(self.ports.timing.retry)
            except VectorizeError as exc:
                raise MigrateError(f"{what} on {store.describe()} was refused: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(self, state: MigrationState) -> MigrationState:
        """Publish ``state`` (after checking nobody else moved the alias on meanwhile); it becomes the current one."""
        seen = self.ports.state.get(self.alias)
        held = self.state
        if seen is not None and held is not None and seen.epoch > held.epoch:
            raise MigrateError(
                f"the state of alias {self.alias!r} moved on while this command ran (now {seen.describe()}; this "
                f"command held epoch {held.epoch}): another migrate command runs for it. Stop one of them, then run "
                "this command again (it resumes from the state published)."
            )
        await self.ports.state.publish(state)
        self.state = state
        return state

    async def confirm(self, question: str) -> None:
        """Go on when ``--yes`` was given or the operator answers yes; else :class:`MigrateError`."""
        if self.options.yes:
            return
        ask = self.ports.ask
        if ask is None:
            raise MigrateError(
                f"{question.rstrip('?')}: the command asks for confirmation and there is no terminal to ask on. "
                "Run it again with --yes to go ahead without asking."
            )
        if not await ask(f"{question} [y/N] "):
            raise MigrateError("stopped: not confirmed. Nothing was changed by this run after the plan.")

    def store_named(self, name: str) -> BaseVectorDB:
        for store in self.stores:
            if store.name == name:
                return store
        raise MigrateError(
            f"no configured store is named {name!r} (configured: {', '.join(s.name for s in self.stores)}); "
            "give one of those (VECTORIZE_WORKER_VECTOR_DBS lists them)."
        )

    # -- dispatch ---------------------------------------------------------------------------------------------
    async def run(self, action: str) -> None:
        if not self.stores:
            raise MigrateError("no vector store is configured (VECTORIZE_WORKER_VECTOR_DBS is empty).")
        self.state = self.ports.state.get(self.alias)
        if action == "status":
            await self.status()
        elif action == "abort":
            await self.abort()
        elif action == "rollback":
            await self.rollback()
        elif action == "cleanup":
            await self.cleanup()
        else:
            await self.migrate()

    # -- 1. plan ----------------------------------------------------------------------------------------------
    async def legacy_identity(self) -> ModelIdentity:
        """The model of the alias's collection of its own name (made before migrations), as the stores say."""
        bound: dict[str, ModelIdentity] = {}
        unbound: list[str] = []
        for store in self.stores:
            identity = await self.call(
                store,
                f"reading the model bound to collection {self.alias!r}",
                lambda s=store: s.bound_identity(self.alias),
            )
            if identity is None:
                unbound.append(store.describe())
            else:
                bound[store.describe()] = identity
        if not bound:
            raise MigrateError(
                f"collection {self.alias!r} is bound to no model in any store ({', '.join(unbound)}): it does not "
                "exist, or no task has been written to it since bindings exist. Send a task to it (that binds it), "
                "or check the collection name."
            )
        first_where, first = next(iter(bound.items()))
        disagree = [f"{where}: {ident.describe()}" for where, ident in bound.items() if not ident.accepts(first)]
        if disagree:
            shown = "; ".join([f"{first_where}: {first.describe()}", *disagree])
            raise MigrateError(
                f"the stores disagree on the model of collection {self.alias!r} ({shown}). A migration moves one "
                "model's collection; make the stores hold the same model first (delete the collection where it is "
                "wrong and send its tasks again)."
            )
        if unbound:
            self.say(
                f"Note: collection {self.alias!r} is bound to no model in {', '.join(unbound)} (missing or empty "
                "there); its records in the other stores are migrated, and verify compares every store."
            )
        return first

    async def load_target(self, name: str) -> ModelIdentity:
        manager = self.ports.manager
        if manager is None:  # pragma: no cover - open_ports builds one for migrate
            raise MigrateError("no model manager: the command was built without one.")
        try:
            await manager.get(name)
        except Exception as exc:  # noqa: BLE001 - whatever a loader raises, one clear line
            raise MigrateError(
                f"cannot load model {name!r} in this process ({type(exc).__name__}: {exc}). The command loads it "
                "as a worker does (the same settings: models.cache_dir, models.allow_download, custom models): make "
                "it available there (every worker needs it too), or fix the name."
            ) from None
        identity = manager.identity_record(name)
        if identity is None:
            raise MigrateError(
                f"model {name!r} loaded, but its identity (revision) could not be computed, so no collection can be "
                "bound to it; the log says why (its weight files unreadable?)."
            )
        return identity

    async def plan(self, name: str) -> tuple[Collection, ModelIdentity, bool]:
        """Print the plan; the live collection, the target identity, whether the live one is legacy-named."""
        state = self.state
        if state is None:
            live = Collection(self.alias, await self.legacy_identity())
        else:
            live = state.live
        legacy = live.physical == self.alias
        target = await self.load_target(name)
        shadow = physical_name(self.alias, target)
        self.say(f"Migration of collection {self.alias!r}")
        if state is not None:
            self.say(f"  state:   {state.describe()}")
        else:
            self.say(f"  state:   none yet (collection {self.alias!r} was made before migrations: legacy)")
        self.say(f"  live:    {live.physical}, model {live.identity.describe()}")
        self.say(f"  new:     {shadow}, model {target.describe()}")
        counts = {}
        for store in self.stores:
            counts[store.name] = await self.call(
                store, f"counting {live.physical}", lambda s=store: s.count(live.physical)
            )
            self.say(
                f"  {store.describe()}: {counts[store.name]} records in {live.physical} ({store.alias_kind} aliases)"
            )
        no_alias = [s.describe() for s in self.stores if s.alias_kind not in ("native", "pointer")]
        if no_alias:
            raise MigrateError(
                f"{', '.join(no_alias)} keep no aliases, so collection {self.alias!r} cannot be switched there; "
                'update those adapters (docs/stores.md, "Aliases and pointers") or leave them out of '
                "VECTORIZE_WORKER_VECTOR_DBS."
            )
        await self.estimate(name, live, counts[self.stores[0].name])
        native = [s.describe() for s in self.stores if s.alias_kind == "native"]
        if legacy and native and not live.identity.accepts(target):
            raise MigrateError(
                f"Collection {self.alias!r} was made before migrations and {', '.join(native)} keep native aliases: "
                "an alias cannot have a collection's name, so the switch would have to drop the old model's vectors "
                "there, and no rollback would be possible. Adopt it first: "
                f"`faust -A app migrate {self.alias} --to-model {live.identity.name}` (the same model, re-embedded "
                f"into {physical_name(self.alias, live.identity)} behind the alias {self.alias!r}), then migrate it "
                f"to {name}."
            )
        if legacy and native:
            self.say(self.legacy_warning(native, live, target, name))
        return live, target, legacy

    def legacy_warning(self, native: list[str], live: Collection, target: ModelIdentity, name: str) -> str:
        lines = [
            f"Warning: {', '.join(native)} keep native aliases, and an alias cannot have a collection's name: the "
            f"switch drops the legacy collection {self.alias!r} there (the new one holds every record by then) and "
            f"creates the alias {self.alias} -> {physical_name(self.alias, target)}. In those stores a rollback is "
            "then impossible, and an external reader sees one failed request at the switch."
        ]
        return "\n".join(lines)

    async def estimate(self, name: str, live: Collection, count: int) -> None:
        """Tokens and time for ``count`` records, from a sample of the stored texts and the speed measured here."""
        manager = self.ports.manager
        assert manager is not None
        store = self.stores[0]
        points, _ = await self.call(
            store, f"reading a sample of {live.physical}", lambda: store.scan(live.physical, None, ESTIMATE_SAMPLE)
        )
        texts = [t for p in points if isinstance(t := p.payload.get("text"), str) and t]
        images = sum(1 for p in points if p.payload.get("vector_kind") == "image")
        if not texts:
            self.say(f"  estimate: no stored text in a sample of {len(points)} records of {store.describe()}")
            return
        lengths = await manager.token_lengths(name, texts)
        speed_texts = texts[:SPEED_SAMPLE]
        started = time.perf_counter()
        await manager.embed_texts(name, speed_texts, batch_size=32, normalize=None)
        seconds = max(time.perf_counter() - started, 1e-6)
        per_second = len(speed_texts) / seconds
        scale = count / len(points) if points else 0.0
        items = round(len(texts) * scale)
        tokens = f"{round(sum(lengths) * scale):,} tokens" if lengths is not None else "tokens unknown (no tokenizer)"
        self.say(
            f"  estimate: about {items:,} texts to embed again, {tokens}; {_duration(items / per_second)} at "
            f"{per_second:,.0f} texts/s (measured here on {len(speed_texts)} sample texts: one worker of this "
            "machine; N workers share the work)"
        )
        if images:
            self.say(
                f"  note: {images} of the {len(points)} sampled records are image vectors: they are re-embedded "
                "only where the worker can read their image again (docs/migration.md, 'Images')."
            )

    # -- start or resume ----------------------------------------------------------------------------------------
    async def migrate(self) -> None:
        name = self.options.to_model
        assert name is not None
        state = self.state
        if self.options.store is not None:
            self.store_named(self.options.store)
        if state is not None and state.phase in MIGRATING and state.shadow is not None:
            if state.shadow.identity.name != name:
                raise MigrateError(
                    f"alias {self.alias!r} is migrating to {state.shadow.identity.describe()} ({state.describe()}). "
                    f"Finish that migration (`faust -A app migrate {self.alias} --to-model "
                    f"{state.shadow.identity.name}`) or give it up (`faust -A app migrate {self.alias} --abort`, then "
                    f"--cleanup) before migrating to {name}."
                )
        elif state is not None and state.phase in ("aborted", "rolled_back"):
            raise MigrateError(
                f"alias {self.alias!r} is {state.phase} ({state.describe()}): its leftover collection is dropped by "
                f"`faust -A app migrate {self.alias} --cleanup`; migrate again after that."
            )
        elif state is not None and state.phase == "switched":
            if state.live.identity.name == name:
                self.say(f"Alias {self.alias!r} is already switched to {state.live.identity.describe()}.")
                await self.final_line(state)
                self.say(
                    f"The old collection {state.old.physical if state.old else '?'} is kept for a rollback "
                    f"(--rollback) until --cleanup."
                )
                return
            raise MigrateError(
                f"alias {self.alias!r} was just switched ({state.describe()}): end that migration first "
                f"(`faust -A app migrate {self.alias} --cleanup`, or --rollback), then migrate to {name}."
            )
        live, target, legacy = await self.plan(name)
        resuming = state is not None and state.phase in MIGRATING
        if resuming:
            assert state is not None and state.shadow is not None
            if not state.shadow.identity.accepts(target):
                raise MigrateError(
                    f"alias {self.alias!r} is migrating to {state.shadow.identity.describe()}, but model {name} "
                    f"loads here as {target.describe()} (another revision). Workers must load the revision the "
                    "migration was started with; or abort it and start again."
                )
        elif live.identity.accepts(target) and not legacy:
            raise MigrateError(
                f"alias {self.alias!r} is already bound to {target.describe()} in {live.physical}: nothing to "
                "migrate. Give another model (or another revision of it)."
            )
        elif live.identity.accepts(target):
            self.say(
                f"  adoption: the same model, re-embedded into {physical_name(self.alias, target)} so that "
                f"{self.alias!r} is an alias afterwards (later migrations can then be rolled back everywhere)."
            )
        await self.confirm("Resume?" if resuming else "Start?")
        if not resuming:
            await self.create_shadow(live, target)
        await self.resume()

    async def resume(self) -> None:
        state = self.state
        assert state is not None and state.shadow is not None
        if state.phase == "shadow_created":
            await self.ensure_shadow(state.shadow)
            state = await self.publish(advance(state, "dual_write", owner=self.ports.owner))
            self.say(f"Phase dual_write (epoch {state.epoch}): workers write to both collections.")
        if state.phase == "dual_write":
            await self.wait_for_workers(state.epoch, "write to both collections")
            store = self.backfill_store()
            state = await self.publish(
                advance(state, "backfill", backfill=Backfill(store=store.name, cursor=None, produced=0))
            )
        if state.phase == "backfill":
            await self.backfill()
            state = await self.publish(advance(self.current(), "verify"))
        if state.phase == "verify":
            if not state.switched:
                await self.verify()
            else:
                self.say(f"Resuming the switch: {', '.join(state.switched)} already switched.")
            await self.switch()

    def current(self) -> MigrationState:
        assert self.state is not None
        return self.state

    # -- 2. shadow ----------------------------------------------------------------------------------------------
    async def ensure_shadow(self, shadow: Collection) -> None:
        for store in self.stores:
            await self.call(
                store,
                f"creating collection {shadow.physical}",
                lambda s=store: s.ensure_collection(shadow.physical, shadow.identity.dim, identity=shadow.identity),
            )

    async def create_shadow(self, live: Collection, target: ModelIdentity) -> None:
        shadow = Collection(physical_name(self.alias, target), target)
        await self.ensure_shadow(shadow)
        owner = self.ports.owner
        if self.state is None:
            await self.publish(MigrationState.bound(self.alias, live, owner=owner))
        state = self.current()
        try:
            created = advance(state, "shadow_created", shadow=shadow, owner=owner)
        except IllegalTransition:
            if not (live.physical == self.alias and live.identity.accepts(target)):
                raise
            # an adoption (the same model, from a legacy-named collection into a versioned one): advance() refuses
            # a shadow of the live model, but the collections differ; the state it would build otherwise
            created = MigrationState(
                alias=self.alias,
                phase="shadow_created",
                live=state.live,
                epoch=state.epoch + 1,
                shadow=shadow,
                owner=owner,
                updated_at=time.time(),
            )
        await self.publish(created)
        self.say(f"Phase shadow_created (epoch {created.epoch}): {shadow.physical} exists in every store.")

    # -- 3. workers ---------------------------------------------------------------------------------------------
    async def workers(self) -> list[dict[str, Any]]:
        try:
            return await self.ports.heartbeats()
        except MigrateError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear line
            raise MigrateError(
                f"cannot read the workers' heartbeats ({type(exc).__name__}: {exc}); the command needs Redis to "
                "know which epoch each worker applies. Check VECTORIZE_WORKER_REDIS_URL, then run it again."
            ) from None

    def applied(self, beat: Mapping[str, Any]) -> int | None:
        epochs = beat.get("migrations")
        value = epochs.get(self.alias) if isinstance(epochs, Mapping) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    async def wait_for_workers(self, epoch: int, why: str) -> None:
        """Return once every live worker applies ``epoch`` of the alias; none alive: a warning, and go on."""
        timing = self.ports.timing
        deadline = time.monotonic() + self.options.wait_seconds
        next_report = 0.0
        while True:
            beats = await self.workers()
            if not beats:
                self.say(
                    f"Warning: no live worker (no heartbeat in Redis): none can be writing to {self.alias!r}; "
                    f"going on. Workers started from now on read the state first."
                )
                return
            behind = [beat for beat in beats if _behind(self.applied(beat), epoch)]
            if not behind:
                self.say(f"All {len(beats)} live worker(s) apply epoch {epoch} of {self.alias!r}.")
                return
            listed = ", ".join(
                f"{beat.get('worker_id', '?')} (epoch {self.applied(beat) if self.applied(beat) is not None else 'none'})"
                for beat in behind
            )
            now = time.monotonic()
            if now >= deadline:
                raise MigrateError(
                    f"{len(behind)} of {len(beats)} live worker(s) did not apply epoch {epoch} of alias {self.alias!r} "
                    f"(they must {why}) within {self.options.wait_seconds:.0f} s: {listed}. A worker of an older "
                    "version never does: upgrade it. Otherwise see their logs (`faust -A app workers`). The state "
                    "stays; run the command again to wait again (--wait-seconds sets how long)."
                )
            if now >= next_report:
                self.say(f"Waiting for {len(behind)} of {len(beats)} worker(s) to apply epoch {epoch}: {listed}")
                next_report = now + timing.report
            await self.ports.sleep(timing.poll)

    # -- 4. backfill --------------------------------------------------------------------------------------------
    def backfill_store(self) -> BaseVectorDB:
        state = self.state
        held = state.backfill.store if state is not None and state.phase == "backfill" else None
        wanted = self.options.store
        if held is not None and wanted is not None and wanted != held:
            raise MigrateError(
                f"the backfill of {self.alias!r} scans store {held} (its cursor is that store's); run the command "
                f"without --store, or with --store {held}."
            )
        return self.store_named(held or wanted or self.stores[0].name)

    async def backfill(self) -> None:
        state = self.current()
        assert state.shadow is not None
        store = self.backfill_store()
        live, shadow = state.live.physical, state.shadow.physical
        cursor, produced = state.backfill.cursor, state.backfill.produced
        if cursor == SCAN_DONE:
            self.say(f"Backfill: the scan of {live} was done ({produced} reembed task(s) produced); waiting for them.")
            await self.watch_counts(live, shadow)
            return
        total = await self.call(store, f"counting {live}", lambda: store.count(live))
        where = f"from cursor {cursor!r}, {produced} produced before" if cursor is not None else "from the start"
        self.say(f"Backfill: scanning {live} on {store.describe()} ({total} records) {where}.")
        bar = _bar(self.out, total, f"scan {store.name}", "rec")
        try:
            while True:
                page_cursor = None if cursor is None else str(cursor)
                points, next_cursor = await self.call(
                    store, f"scanning {live}", lambda c=page_cursor: store.scan(live, c, SCAN_PAGE)
                )
                firsts = _unique(
                    str(p.payload["task_id"])
                    for p in points
                    if p.payload.get("item_index") == 0 and isinstance(p.payload.get("task_id"), str)
                )
                records = await self.reembed_records(store, state, firsts)
                produced += await self.produce(records) if records else 0
                done = next_cursor if next_cursor is not None else SCAN_DONE
                state = await self.publish(
                    advance(self.current(), "backfill", backfill=Backfill(store.name, done, produced))
                )
                bar.update(len(points))
                if next_cursor is None:
                    break
                cursor = next_cursor
        finally:
            bar.close()
        self.say(f"Backfill: {produced} reembed task(s) produced to {self.settings.tasks_topic}.")
        if self.unmigratable:
            self.say(self.unmigratable_line())
        await self.watch_counts(live, shadow)

    def unmigratable_line(self) -> str:
        return (
            f"Unmigratable: {len(self.unmigratable)} task(s) whose reembed record would be over "
            f"{self.settings.max_task_bytes} bytes (VECTORIZE_WORKER_MAX_TASK_BYTES) or over what the broker accepts "
            f"on {self.settings.tasks_topic} (max.message.bytes): {_shown(self.unmigratable)}. Raise the limit "
            "(workers and command alike) or send those tasks again after the switch."
        )

    async def produce(self, records: Sequence[tuple[str, bytes]]) -> int:
        """Produce ``records``; how many the broker took (those it refused for their size are unmigratable)."""
        try:
            refused = await self.ports.producer.produce(records)
        except MigrateError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear line
            raise MigrateError(
                f"producing {len(records)} reembed record(s) to topic {self.settings.tasks_topic} on "
                f"{self.settings.kafka_bootstrap_servers} failed ({type(exc).__name__}: {exc}). Run the command again "
                "once Kafka answers: it resumes at the last page recorded (a page produced twice is harmless)."
            ) from None
        for key in refused:
            if key not in self.unmigratable:
                self.unmigratable.append(key)
        return len(records) - len(refused)

    async def task_points(
        self, store: BaseVectorDB, physical: str, task_ids: Sequence[str]
    ) -> dict[str, list[StoredPoint]]:
        """Every record of each of ``task_ids`` in ``physical`` (payloads, no vectors), by task id."""
        ids: list[str] = []
        pending = [list(task_ids[i : i + TASKS_PER_LOOKUP]) for i in range(0, len(task_ids), TASKS_PER_LOOKUP)]
        while pending:
            group = pending.pop()
            found = await self.call(
                store,
                f"reading the records of {len(group)} task(s) of {physical}",
                lambda g=group: store.task_records(physical, g),
            )
            if sum(len(records) for records in found.values()) >= MAX_TASK_RECORDS and len(group) > 1:
                half = len(group) // 2  # the answer may be cut at the store's window: ask in halves
                pending += [group[:half], group[half:]]
                continue
            for records in found.values():
                ids.extend(records)
        grouped: dict[str, list[StoredPoint]] = {}
        for point in await self.read(store, physical, ids):
            task_id = point.payload.get("task_id")
            if isinstance(task_id, str):
                grouped.setdefault(task_id, []).append(point)
        return grouped

    async def reembed_records(
        self, store: BaseVectorDB, state: MigrationState, task_ids: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        """The reembed records (key, value) of ``task_ids``, read from the live collection of ``store``; a task
        whose record would be over the size limit is added to :attr:`unmigratable` instead."""
        if not task_ids:
            return []
        assert state.shadow is not None
        grouped = await self.task_points(store, state.live.physical, task_ids)
        records = []
        for task_id in task_ids:
            points = grouped.get(task_id)
            if not points:
                continue  # deleted since the scan: nothing to migrate
            value = reembed_record(
                task_id,
                points,
                alias=self.alias,
                model=state.shadow.identity.name,
                epoch=state.epoch,
                source=state.live.physical,
                target=state.shadow.physical,
                live_normalize=state.live.identity.normalize,
            )
            if len(value) > self.settings.max_task_bytes:
                if task_id not in self.unmigratable:
                    self.unmigratable.append(task_id)
                continue
            records.append((task_id, value))
        return records

    async def counts(self, *physicals: str) -> list[list[int]]:
        rows = []
        for store in self.stores:
            rows.append([await self.call(store, f"counting {p}", lambda s=store, p=p: s.count(p)) for p in physicals])
        return rows

    async def watch_counts(self, live: str, shadow: str) -> bool:
        """Show the shadow's count against the live one per store until they match everywhere, or the workers'
        consumer group has committed past every reembed record this command produced (with traffic going on the
        two counts need not ever match at one instant: verify looks at the ids), or the counts stand still for
        ``--stall-seconds``; whether the shadow caught up."""
        timing = self.ports.timing
        rows = await self.counts(live, shadow)
        bars = [
            _bar(self.out, max(n_live, 1), f"{s.name} {shadow}", "rec")
            for s, (n_live, _) in zip(self.stores, rows, strict=True)
        ]
        last, since = rows, time.monotonic()
        shown = 0.0
        try:
            while True:
                now = time.monotonic()
                if self.out.isatty() or now - shown >= timing.report:  # a log file gets a line per report, not a bar
                    shown = now
                    for bar, (n_live, n_shadow) in zip(bars, rows, strict=True):
                        bar.total = max(n_live, 1)
                        bar.n = min(n_shadow, n_live)
                        bar.refresh()
                if all(n_shadow >= n_live for n_live, n_shadow in rows):
                    return True
                if await self.ports.producer.consumed():
                    self.say("The workers have processed every reembed task produced; verify compares the ids.")
                    return True
                if rows != last:
                    last, since = rows, time.monotonic()
                elif time.monotonic() - since >= self.options.stall_seconds:
                    behind = "; ".join(
                        f"{s.name}: {n_shadow} of {n_live}"
                        for s, (n_live, n_shadow) in zip(self.stores, rows, strict=True)
                    )
                    self.say(
                        f"The shadow's counts stood still for {self.options.stall_seconds:.0f} s ({behind}); verify "
                        "finds what is missing and sends it again."
                    )
                    return False
                await self.ports.sleep(timing.progress)
                rows = await self.counts(live, shadow)
        finally:
            for bar in bars:
                bar.close()

    # -- 5. verify ----------------------------------------------------------------------------------------------
    async def all_ids(self, store: BaseVectorDB, physical: str) -> set[str]:
        ids: set[str] = set()
        cursor: str | None = None
        while True:
            page, cursor = await self.call(
                store, f"reading the ids of {physical}", lambda c=cursor: store.scan_ids(physical, c, SCAN_PAGE)
            )
            ids.update(page)
            if cursor is None:
                return ids

    async def diff(
        self, suspects: Mapping[str, set[str]] | None = None
    ) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Per store, the live ids missing from the shadow, and the ids only in the shadow.

        Both are looked at twice, ``timing.confirm`` seconds apart, since traffic goes on while verify reads:
        an id missing from the shadow is missing only if it still is at the second look (a task written to the
        live collection between the two id scans has its twin on the way) and is still live (not deleted since).
        Ids only in the shadow are deleted from it only when an earlier round (``suspects``) found them too: a
        task written to the new model's collection first has its twin in the live one on its way (a task naming
        the new model)."""
        state = self.current()
        assert state.shadow is not None
        live, shadow = state.live.physical, state.shadow.physical
        missing: dict[str, set[str]] = {}
        extras: dict[str, set[str]] = {}
        counted: dict[str, tuple[int, int]] = {}
        for store in self.stores:
            live_ids = await self.all_ids(store, live)
            shadow_ids = await self.all_ids(store, shadow)
            extra = sorted(shadow_ids - live_ids)
            if extra:  # written to the live one since its ids were read? ask it again
                again = await self.call(
                    store,
                    f"reading {len(extra)} record(s) of {live}",
                    lambda s=store, e=extra: s.retrieve(live, e, with_vectors=False),
                )
                extra = sorted(set(extra) - {p.id for p in again})
            doomed = sorted(set(extra) & (suspects or {}).get(store.name, set()))
            if doomed:
                await self.call(
                    store,
                    f"deleting {len(doomed)} record(s) from {shadow}",
                    lambda s=store, e=doomed: s.delete(shadow, e),
                )
                self.say(f"Verify: {store.describe()}: deleted {len(doomed)} record(s) of {shadow} absent from {live}.")
            if set(extra) - set(doomed):
                extras[store.name] = set(extra) - set(doomed)
            counted[store.name] = (len(live_ids), len(shadow_ids) - len(doomed))
            if live_ids - shadow_ids:
                missing[store.name] = live_ids - shadow_ids
        if missing:
            await self.ports.sleep(self.ports.timing.confirm)
            for name in list(missing):
                still = await self.still_missing(self.store_named(name), live, shadow, missing[name])
                if still:
                    missing[name] = still
                else:
                    del missing[name]
        for store in self.stores:
            n_live, n_shadow = counted[store.name]
            self.say(
                f"Verify: {store.describe()}: {n_live} records live, {n_shadow} in the shadow, "
                f"{len(missing.get(store.name, ()))} missing from it"
                + (f", {len(extras[store.name])} only in it (looked at again)" if store.name in extras else "")
                + "."
            )
        return missing, extras

    async def still_missing(self, store: BaseVectorDB, live: str, shadow: str, ids: set[str]) -> set[str]:
        """Of ``ids`` (missing from ``shadow`` at the first look), those the shadow still lacks and the live
        collection still holds."""
        arrived = {p.id for p in await self.read(store, shadow, ids)}
        absent = set(ids) - arrived
        return {p.id for p in await self.read(store, live, absent)} if absent else set()

    async def read(self, store: BaseVectorDB, physical: str, ids: Iterable[str]) -> list[StoredPoint]:
        """The records of ``ids`` that ``physical`` holds (payloads, no vectors), ``IDS_PER_RETRIEVE`` a call."""
        ordered = sorted(ids)
        points: list[StoredPoint] = []
        for start in range(0, len(ordered), IDS_PER_RETRIEVE):
            chunk = ordered[start : start + IDS_PER_RETRIEVE]
            points += await self.call(
                store,
                f"reading {len(chunk)} record(s) of {physical}",
                lambda c=chunk: store.retrieve(physical, c, with_vectors=False),
            )
        return points

    async def verify(self) -> None:
        state = self.current()
        assert state.shadow is not None
        missing, extras = await self.diff()
        for attempt in range(1, REPAIR_ROUNDS + 2):  # one more round than re-sends: extras are confirmed once
            if not missing and not extras:
                break
            if missing and attempt <= REPAIR_ROUNDS:
                tasks = await self.resend(missing)
                self.say(
                    f"Verify, round {attempt} of {REPAIR_ROUNDS}: sent {tasks} task(s) again for the missing records."
                )
                await self.watch_counts(state.live.physical, state.shadow.physical)
            await self.ports.sleep(self.ports.timing.confirm)
            missing, extras = await self.diff(extras)
        if missing:
            task_ids = await self.missing_tasks(missing)
            where = "; ".join(f"{name}: {len(ids)} record(s)" for name, ids in missing.items())
            listed = f"tasks {_shown(task_ids)}" if task_ids else "no task id readable"
            if not self.options.drop_unmigratable:
                too_big = f" {self.unmigratable_line()}" if self.unmigratable else ""
                raise MigrateError(
                    f"the shadow {state.shadow.physical} still lacks records after {REPAIR_ROUNDS} rounds ({where}; "
                    f"{listed}). The workers' dead letters say why (e.g. an image that cannot be read again). Fix "
                    "that and run the command again (it resumes at verify), or give --drop-unmigratable to switch "
                    f"without them (they are then absent from {self.alias!r}), or give up with --abort.{too_big}"
                )
            self.say(
                f"Warning: switching without {len(task_ids)} unmigratable task(s) (--drop-unmigratable; {where}): "
                f"{_shown(task_ids)}. Send them again after the switch to have them in {self.alias!r}."
            )
        await self.overlap()

    async def missing_tasks(self, missing: Mapping[str, set[str]]) -> list[str]:
        state = self.current()
        task_ids: list[str] = []
        for name, ids in missing.items():
            points = await self.read(self.store_named(name), state.live.physical, ids)
            task_ids.extend(str(p.payload["task_id"]) for p in points if isinstance(p.payload.get("task_id"), str))
        return _unique(task_ids)

    async def resend(self, missing: Mapping[str, set[str]]) -> int:
        """Produce the reembed records of the tasks of the missing ids again; how many."""
        state = self.current()
        sent = 0
        done: set[str] = set()
        for name, ids in missing.items():
            store = self.store_named(name)
            task_ids = [t for t in await self.missing_tasks({name: ids}) if t not in done]
            done.update(task_ids)
            records = await self.reembed_records(store, state, task_ids)
            sent += await self.produce(records) if records else 0
        return sent

    async def overlap(self) -> None:
        """The top-10 overlap of sample queries between live and shadow, per store (reported, not a gate)."""
        state = self.current()
        assert state.shadow is not None and self.ports.manager is not None
        manager = self.ports.manager
        live_model, new_model = state.live.identity.name, state.shadow.identity.name
        store = self.stores[0]
        points, _ = await self.call(
            store, f"reading sample texts of {state.live.physical}", lambda: store.scan(state.live.physical, None, 200)
        )
        texts = [t for p in points if isinstance(t := p.payload.get("text"), str) and t][:OVERLAP_QUERIES]
        if not texts:
            self.say("Overlap: no stored text to query with; not measured.")
            return
        try:
            await manager.get(live_model)
            vectors_a, _ = await manager.embed_texts(live_model, texts, batch_size=32, normalize=None)
        except Exception as exc:  # noqa: BLE001 - reported, not a gate
            self.say(
                f"Overlap: not measured: the live model {live_model} cannot be loaded here ({type(exc).__name__}: {exc})."
            )
            return
        loaded = manager.identity_record(live_model)
        if loaded is not None and not state.live.identity.accepts(loaded):
            self.say(
                f"Overlap: note: {live_model} loads here as {loaded.describe()}, not the live collection's "
                f"{state.live.identity.describe()}; the overlap below compares with that revision."
            )
        vectors_b, _ = await manager.embed_texts(new_model, texts, batch_size=32, normalize=None)
        for store in self.stores:
            shares = []
            for va, vb in zip(vectors_a, vectors_b, strict=True):
                hits_a = await self.call(
                    store,
                    f"searching {state.live.physical}",
                    lambda s=store, v=va: s.search(state.live.physical, v.tolist(), OVERLAP_K),
                )
                hits_b = await self.call(
                    store,
                    f"searching {state.shadow.physical}",
                    lambda s=store, v=vb: s.search(state.shadow.physical, v.tolist(), OVERLAP_K),
                )
                if hits_a:
                    shares.append(len({h.id for h in hits_a} & {h.id for h in hits_b}) / len(hits_a))
            if shares:
                self.say(
                    f"Overlap of the top {OVERLAP_K} ({len(shares)} sample queries, {store.describe()}): mean "
                    f"{sum(shares) / len(shares):.2f}, min {min(shares):.2f} (reported, not a gate: another model "
                    "ranks differently)."
                )
            else:
                self.say(f"Overlap ({store.describe()}): the live collection answered no sample query.")

    # -- 6. switch ----------------------------------------------------------------------------------------------
    async def switch(self) -> None:
        state = self.current()
        assert state.shadow is not None
        shadow = state.shadow
        legacy = state.live.physical == self.alias
        # stores whose legacy collection must be dropped go last: the shortest time between their switch and the
        # switched state
        order = sorted(self.stores, key=lambda s: legacy and s.alias_kind == "native")
        for store in order:
            if store.name in state.switched:
                continue
            if store.alias_kind == "native" and legacy:
                await self.replace_legacy(store, shadow)
            else:
                await self.call(
                    store,
                    f"pointing alias {self.alias} at {shadow.physical}",
                    lambda s=store: s.point(self.alias, shadow.physical, identity=shadow.identity),
                )
            state = await self.publish(advance(state, "verify", switched=(*state.switched, store.name)))
            self.say(f"Switched {store.describe()}: {self.alias} -> {shadow.physical}.")
        state = await self.publish(advance(state, "switched"))
        self.say(f"Phase switched (epoch {state.epoch}): {self.alias!r} serves model {state.live.identity.describe()}.")
        await self.final_line(state)
        self.say(
            f"The old collection {state.old.physical if state.old else '?'} is kept (and written by the workers) for a "
            f"rollback: `faust -A app migrate {self.alias} --rollback`; drop it with --cleanup."
        )

    async def replace_legacy(self, store: BaseVectorDB, shadow: Collection) -> None:
        """Drop the legacy collection named like the alias, then create the alias; a worker's write may make the
        collection again in between (its twin is in the shadow): then once more."""
        for attempt in range(1, 4):
            resolved = await self.call(store, f"resolving alias {self.alias}", lambda: store.resolve(self.alias))
            if resolved is not None and resolved == store.store_name(shadow.physical):
                return  # done by an earlier run that stopped before it published it
            await self.call(store, f"dropping the legacy collection {self.alias}", lambda: store.drop(self.alias))
            try:
                await asyncio.to_thread(store.point, self.alias, shadow.physical, identity=shadow.identity)
                return
            except VectorizeError as exc:
                if attempt == 3:
                    raise MigrateError(
                        f"creating alias {self.alias} -> {shadow.physical} on {store.describe()} after dropping the "
                        f"legacy collection {self.alias!r} failed 3 times: {exc} Run the command again: it resumes "
                        "the switch."
                    ) from None

    async def final_line(self, state: MigrationState) -> None:
        for store in self.stores:
            resolved = await self.call(store, f"resolving alias {self.alias}", lambda s=store: s.resolve(self.alias))
            self.say(f"  {store.describe()}: {self.alias} -> {resolved or '(none)'} ({store.alias_kind} alias)")

    # -- status, abort, rollback, cleanup ------------------------------------------------------------------------
    async def status(self) -> None:
        state = self.state
        if state is None:
            self.say(
                f"{self.alias}: no migration state: the collection of that name is used as it is (made before "
                "migrations, or never migrated)."
            )
            collections = [("live", self.alias)]
        else:
            self.say(state.describe())
            for role, collection in (("live", state.live), ("shadow", state.shadow), ("old", state.old)):
                if collection is not None:
                    self.say(f"  {role}: {collection.physical}, model {collection.identity.describe()}")
            if state.phase == "backfill":
                bf = state.backfill
                self.say(f"  backfill: store {bf.store}, cursor {bf.cursor!r}, {bf.produced} reembed task(s) produced")
            if state.switched:
                self.say(f"  switched: {', '.join(state.switched)}")
            self.say(
                f"  owner {state.owner or '?'}, updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.updated_at))}"
            )
            collections = [
                (role, c.physical)
                for role, c in (("live", state.live), ("shadow", state.shadow), ("old", state.old))
                if c is not None
            ]
        for store in self.stores:
            parts = []
            for role, physical in collections:
                count = await self.call(store, f"counting {physical}", lambda s=store, p=physical: s.count(p))
                parts.append(f"{role} {count}")
            self.say(f"  {store.describe()}: {', '.join(parts)} records")
        try:
            beats = await self.workers()
        except MigrateError as exc:
            self.say(f"  workers: unknown: {exc}")
            return
        epoch = state.epoch if state is not None else None
        for beat in beats:
            applied = self.applied(beat)
            mark = "" if epoch is None or (applied is not None and applied >= epoch) else "  (behind)"
            self.say(f"  worker {beat.get('worker_id', '?')}: epoch {applied if applied is not None else 'none'}{mark}")
        self.say(f"  {len(beats)} live worker(s)")

    def need_state(self, what: str) -> MigrationState:
        if self.state is None:
            raise MigrateError(
                f"alias {self.alias!r} has no migration state, so there is nothing to {what}. `faust -A app migrate "
                f"{self.alias} --status` shows what there is."
            )
        return self.state

    async def abort(self) -> None:
        state = self.need_state("abort")
        aborted = advance(state, "aborted", owner=self.ports.owner)  # IllegalTransition: its message, exit 1
        self.say(state.describe())
        if state.phase != "aborted":
            await self.confirm(f"Abort the migration of {self.alias!r}?")
            state = await self.publish(aborted)
            self.say(
                f"Phase aborted (epoch {state.epoch}): workers stop writing to {aborted.shadow.physical if aborted.shadow else '?'}."
            )
        await self.wait_for_workers(state.epoch, "stop writing to the shadow")
        self.say(
            f"The shadow {state.shadow.physical if state.shadow else '?'} stays until `faust -A app migrate "
            f"{self.alias} --cleanup` drops it."
        )

    async def rollback(self) -> None:
        state = self.need_state("roll back")
        if state.phase == "rolled_back":
            self.say(f"{state.describe()}: rolled back already; --cleanup drops the new model's collection.")
            return
        advance(state, "rolled_back")  # refused before anything changes when it is not switched
        assert state.old is not None
        old = state.old
        if old.physical == self.alias:
            gone = [s.describe() for s in self.stores if s.alias_kind == "native"]
            if gone:
                raise MigrateError(
                    f"cannot roll {self.alias!r} back: its old collection {old.physical!r} was a legacy one, dropped at "
                    f"the switch in {', '.join(gone)} (native aliases cannot take a collection's name). Nothing was "
                    f"changed. To go back to {old.identity.name}, migrate to it: `faust -A app migrate {self.alias} "
                    f"--to-model {old.identity.name}` after --cleanup."
                )
        self.say(state.describe())
        await self.confirm(f"Roll {self.alias!r} back to {old.physical}?")
        for store in self.stores:
            if store.name not in state.switched:
                continue  # pointed back already by an earlier run
            if old.physical == self.alias:  # a legacy collection in a pointer store: readers use it with no pointer
                await self.call(store, f"removing pointer {self.alias}", lambda s=store: s.unpoint(self.alias))
            else:
                await self.call(
                    store,
                    f"pointing alias {self.alias} back at {old.physical}",
                    lambda s=store: s.point(self.alias, old.physical, identity=old.identity),
                )
            remaining = tuple(name for name in state.switched if name != store.name)
            state = await self.publish(advance(state, "switched", switched=remaining))
            self.say(f"Rolled back {store.describe()}: {self.alias} -> {old.physical}.")
        state = await self.publish(advance(state, "rolled_back", owner=self.ports.owner))
        self.say(
            f"Phase rolled_back (epoch {state.epoch}): {self.alias!r} serves {state.live.identity.describe()} again."
        )
        await self.final_line(state)
        self.say(f"The new model's collection {state.shadow.physical if state.shadow else '?'} stays until --cleanup.")

    async def cleanup(self) -> None:
        state = self.need_state("clean up")
        if state.phase in ("bound", "cleaned"):
            self.say(f"{state.describe()}: nothing to clean up.")
            return
        cleaned = advance(state, "cleaned", owner=self.ports.owner)  # IllegalTransition before the end of a migration
        leftover = state.old if state.phase == "switched" else state.shadow
        assert leftover is not None
        self.say(state.describe())
        await self.confirm(f"Drop collection {leftover.physical} in every store?")
        state = await self.publish(cleaned)
        self.say(f"Phase cleaned (epoch {state.epoch}): workers stop writing to {leftover.physical}.")
        try:
            await self.wait_for_workers(state.epoch, f"stop writing to {leftover.physical}")
        except MigrateError as exc:
            raise MigrateError(
                f"{exc} Collection {leftover.physical} was NOT dropped (a worker behind could make it again): once "
                "they have caught up, drop it in each store with the store's own tools."
            ) from None
        for store in self.stores:
            if leftover.physical == POINTER_COLLECTION:  # pragma: no cover - no physical name can be it
                continue
            if leftover.physical == self.alias and store.alias_kind == "native":
                continue  # the legacy collection was dropped at the switch: the name is the alias now
            await self.call(
                store, f"dropping collection {leftover.physical}", lambda s=store: s.drop(leftover.physical)
            )
            self.say(f"Dropped {leftover.physical} on {store.describe()}.")
        self.say(
            f"{self.alias!r} is bound to {state.live.physical} ({state.live.identity.describe()}), nothing else left."
        )


# -- the reembed record -------------------------------------------------------------------------------------------
def reembed_record(
    task_id: str,
    points: Sequence[StoredPoint],
    *,
    alias: str,
    model: str,
    epoch: int,
    source: str,
    target: str,
    live_normalize: bool | None = None,
) -> bytes:
    """The ``reembed`` record (UTF-8 JSON) of task ``task_id`` from its stored records ``points`` (tasks/reembed.py).

    ``normalize`` is carried only where the stored records say the task asked for other than the live model's
    default (a task's own choice); otherwise the new model's default applies."""
    ordered = sorted(points, key=_record_order)
    metadata: dict[str, Any] = {}
    items = []
    for point in ordered:
        payload = dict(point.payload)
        stored = payload.pop("metadata", None)
        if isinstance(stored, dict) and not metadata:
            metadata = stored
        digest = payload.get("content_digest")
        items.append({"id": point.id, "digest": digest if isinstance(digest, str) else None, "payload": payload})
    record: dict[str, Any] = {
        "task_type": "reembed",
        "task_id": task_id,
        "collection": alias,
        MODEL_KEY: model,
        "migration": {"epoch": epoch, "source": source, "target": target},
        "metadata": metadata,
        "items": items,
    }
    normalize = ordered[0].payload.get("normalize") if ordered else None
    if isinstance(normalize, bool) and live_normalize is not None and normalize != live_normalize:
        record["normalize"] = normalize
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


# -- the real ports -----------------------------------------------------------------------------------------------
class KafkaState:
    """:class:`StatePort` over the migrations topic: a reader caught up at start, a writer."""

    def __init__(self, settings: Settings) -> None:
        from app.migration_state import MigrationStateReader, MigrationStateWriter

        topic = getattr(settings, "migrations_topic", MIGRATIONS_TOPIC)
        self.reader = MigrationStateReader(settings, topic)
        self.writer = MigrationStateWriter(settings, topic)

    async def start(self, timeout: float = 60.0) -> None:
        await self.reader.start()
        await self.reader.caught_up(timeout)
        await self.writer.start()

    def get(self, alias: str) -> MigrationState | None:
        return self.reader.view.get(alias)

    async def publish(self, state: MigrationState) -> None:
        try:
            await self.writer.publish(state)
        except MigrationStateError as exc:
            raise MigrateError(str(exc)) from None

    async def stop(self) -> None:
        await self.writer.stop()
        await self.reader.stop()


class KafkaRecords:
    """:class:`RecordProducer` on the tasks topic: an aiokafka producer with the worker's security settings,
    ``acks=all``, started at its first records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: Any = None
        self.admin: Any = None
        self.sent: dict[int, int] = {}  # partition of the tasks topic -> the highest offset produced to it

    async def produce(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
        if self.producer is None:
            from aiokafka import AIOKafkaProducer

            from app.kafka_security import aiokafka_security_kwargs

            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                client_id=f"vectorize-worker-{self.settings.worker_id}-migrate",
                acks="all",
                max_request_size=self.settings.max_task_bytes + 64 * 1024,
                **aiokafka_security_kwargs(self.settings),
            )
            await producer.start()
            self.producer = producer
        from aiokafka.errors import MessageSizeTooLargeError

        topic = self.settings.tasks_topic
        futures = [await self.producer.send(topic, value, key=key.encode()) for key, value in records]
        results = await asyncio.gather(*futures, return_exceptions=True)
        refused = [
            key
            for (key, _), result in zip(records, results, strict=True)
            if isinstance(result, MessageSizeTooLargeError)
        ]
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, MessageSizeTooLargeError)]
        if failed:
            raise failed[0]
        for result in results:
            if not isinstance(result, BaseException):
                self.sent[result.partition] = max(self.sent.get(result.partition, -1), result.offset)
        return refused

    async def consumed(self) -> bool | None:
        if not self.sent:
            return None
        from aiokafka.errors import KafkaError
        from aiokafka.structs import TopicPartition

        try:
            if self.admin is None:
                from aiokafka.admin import AIOKafkaAdminClient

                from app.kafka_security import aiokafka_security_kwargs

                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    client_id=f"vectorize-worker-{self.settings.worker_id}-migrate-admin",
                    request_timeout_ms=10_000,
                    **aiokafka_security_kwargs(self.settings),
                )
                await admin.start()
                self.admin = admin
            committed = await self.admin.list_consumer_group_offsets(self.settings.kafka_group_id)
        except (KafkaError, OSError, TimeoutError):
            return None  # the counts still say how far the shadow is
        topic = self.settings.tasks_topic
        for partition, offset in self.sent.items():
            at = committed.get(TopicPartition(topic, partition))
            if at is None or at.offset <= offset:
                return False
        return True

    async def stop(self) -> None:
        producer, self.producer = self.producer, None
        admin, self.admin = self.admin, None
        if producer is not None:
            await producer.stop()
        if admin is not None:
            await admin.close()


async def _ask_on_terminal(question: str) -> bool:
    answer = await asyncio.to_thread(input, question)
    return answer.strip().lower() in ("y", "yes")


async def open_ports(settings: Settings, *, need_model: bool) -> tuple[MigratePorts, Callable[[], Awaitable[None]]]:
    """The real ports for ``settings`` (the stores, the migrations topic, the tasks topic, Redis heartbeats, the
    model manager when ``need_model``) and the coroutine function that closes them."""
    from ops.heartbeat import live_workers, redis_error
    from sinks.registry import create_stores

    stores = await asyncio.to_thread(create_stores, settings)
    state = KafkaState(settings)
    records = KafkaRecords(settings)
    manager: Any = None

    async def close() -> None:
        await records.stop()
        await state.stop()
        for store in stores:
            await asyncio.to_thread(store.close)
        if manager is not None:
            manager.close()

    try:
        try:
            await state.start()
        except VectorizeError:
            raise
        except Exception as exc:  # noqa: BLE001 - one clear line
            raise MigrateError(
                f"cannot read the migration states from Kafka at {settings.kafka_bootstrap_servers} "
                f"({type(exc).__name__}: {exc}): is the broker running? (VECTORIZE_WORKER_KAFKA_BOOTSTRAP_SERVERS)"
            ) from None
        if need_model:
            from models.device import resolve_device
            from models.families import build_manager

            device = await asyncio.to_thread(resolve_device, settings.device)
            manager = build_manager(settings, device)
    except BaseException:
        await close()
        raise

    async def heartbeats() -> list[dict[str, Any]]:
        """The live workers of this consumer group (kafka.group_id): other groups sharing Redis take other tasks."""
        try:
            beats = await live_workers(
                settings.redis_url, password=settings.redis_password, ssl_ca_file=settings.redis_ssl_ca_file
            )
            return [beat for beat in beats if beat.get("group") == settings.kafka_group_id]
        except Exception as exc:  # noqa: BLE001 - one clear line, no password
            raise MigrateError(
                f"{redis_error(settings.redis_url, exc, settings.redis_password)} The command reads the workers' "
                "heartbeats there to know which migration epoch each applies."
            ) from None

    ports = MigratePorts(
        stores=stores,
        state=state,
        producer=records,
        heartbeats=heartbeats,
        manager=manager,
        ask=_ask_on_terminal if sys.stdin.isatty() else None,
    )
    return ports, close


# -- small helpers ------------------------------------------------------------------------------------------------
def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _behind(applied: int | None, epoch: int) -> bool:
    return applied is None or applied < epoch


def _record_order(point: StoredPoint) -> tuple[bool, int, int, str]:
    """Items first, then chunks by index, a document's own vector (no item index) last."""
    item = _int(point.payload.get("item_index"))
    return (item < 0, item, _int(point.payload.get("chunk_index")), point.id)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _shown(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def _bar(out: TextIO, total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=out, leave=True, dynamic_ncols=False, mininterval=0.5)


__all__ = [
    "MIGRATING",
    "STALL_SECONDS",
    "WAIT_SECONDS",
    "KafkaRecords",
    "KafkaState",
    "MigrateError",
    "MigrateOptions",
    "MigratePorts",
    "Migrator",
    "ModelPort",
    "RecordProducer",
    "StatePort",
    "Timing",
    "UsageError",
    "open_ports",
    "reembed_record",
    "run_migrate",
]
