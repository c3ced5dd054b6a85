"""Every private interface of faust-streaming, aiokafka and mode the worker touches, and the start-up check.

The worker's delivery guarantee rests on Faust internals: the offset guard
replaces ``Consumer._add_gap``, wraps ``Consumer.__init__`` and hides
``Consumer._read_offset`` (:func:`install_offset_guard`), offsets without a
record are acknowledged in Faust's own ack lists
(:func:`ack_offsets_without_records`), and the intake asks aiokafka for
committed offsets and positions through Faust's consumer thread
(:func:`broker_committed_offset`, :func:`consumer_positions`). None of that
is public API: a release may rename it (the worker then fails obscurely) or
change what it means (the worker then loses or stalls tasks without an
error).

So every touch lives here, in a small named function the agents call (no
module of ``app/`` or ``agents/`` reaches into a private attribute of a
Faust, aiokafka, mode or asyncio object itself; tests/unit/test_compat.py
checks it), each use is listed in :data:`PRIVATE_USES` with the versions it
was checked on, and :func:`check_versions` (run when the App is built,
``app.faust_app.build_app``) refuses to start a worker on any other version,
naming each use and what to do.

There is deliberately no setting to start anyway: the failure this prevents
is silent (tasks committed without being processed), and the way to a new
version is to re-read each listed interface in its source, run the chaos
test (``make chaos``) and add the version here.

Nothing here imports faust on import; each function imports what it touches.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from core.errors import ConfigError

FAUST, AIOKAFKA, MODE = "faust-streaming", "aiokafka", "mode-streaming"

#: the versions every use below was read and tested on (unit, integration and chaos tests)
VERIFIED: dict[str, tuple[str, ...]] = {FAUST: ("0.15.3",), AIOKAFKA: ("0.14.0",), MODE: ("0.7.1",)}


@dataclass(frozen=True)
class PrivateUse:
    """One private interface the worker relies on.

    ``target`` is ``module:Object.attribute``; the attribute must exist on
    the object, be declared in a class's annotations or be assigned in a
    class's ``__init__`` (see :func:`_exists`). ``verified`` empty means the
    package is not pinned (the standard library) and only the structure is
    checked.
    """

    package: str
    target: str
    use: str  # replaced | wrapped | read | written | called | relied on
    where: str
    why: str
    verified: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Short name for messages: ``Consumer._add_gap``."""
        return self.target.split(":", 1)[1]


_C = "faust.transport.consumer:Consumer"
_HERE = "app/compat.py"
_GUARD = f"{_HERE} install_offset_guard"
_ACK_MISSING = f"{_HERE} ack_offsets_without_records"
_BROKER_COMMITTED = f"{_HERE} broker_committed_offset"
_POSITIONS = f"{_HERE} consumer_positions"
_SIGTERM = f"{_HERE} mode_sigterm_handler"
_F, _A, _M = VERIFIED[FAUST], VERIFIED[AIOKAFKA], VERIFIED[MODE]

#: every private interface of faust/aiokafka/mode (and asyncio) the worker touches or relies on; ``where`` names
#: the function of this module that touches it (or, for "relied on", the code that depends on its behaviour)
PRIVATE_USES: tuple[PrivateUse, ...] = (
    PrivateUse(FAUST, f"{_C}.__init__", "wrapped", _GUARD, "to swap in the guarded read offsets", _F),
    PrivateUse(
        FAUST,
        f"{_C}._read_offset",
        "replaced",
        _GUARD,
        "read as None for the tasks topic and the changelogs: no record dropped",
        _F,
    ),
    PrivateUse(FAUST, f"{_C}._add_gap", "replaced", _GUARD, "no offset gap acknowledged for the tasks topic", _F),
    PrivateUse(
        FAUST,
        "faust.tables.recovery:Recovery._slurp_changelogs",
        "relied on",
        f"{_HERE} deliver_every_changelog_record",
        "applies a changelog record only above the offset it applied last: a record delivered twice is skipped",
        _F,
    ),
    PrivateUse(
        FAUST, f"{_C}._drain_messages", "relied on", _GUARD, "reads _read_offset[tp] and calls _add_gap per record", _F
    ),
    PrivateUse(
        FAUST,
        f"{_C}._new_offset",
        "relied on",
        "engine/acks.py (ordered acks)",
        "commits past an unacked head: faust#606",
        _F,
    ),
    PrivateUse(FAUST, "faust.types.tuples:ack_lock", "called", _ACK_MISSING, "Faust's lock around its ack lists", _F),
    PrivateUse(
        FAUST,
        f"{_C}._committed_offset",
        "read",
        f"{_ACK_MISSING} and {_HERE} committed_offset",
        "the last committed offset per partition (the intake's fallback start offset and its consumer lag)",
        _F,
    ),
    PrivateUse(FAUST, f"{_C}._acked", "written", _ACK_MISSING, "offsets without a record acknowledged", _F),
    PrivateUse(FAUST, f"{_C}._acked_index", "written", _ACK_MISSING, "offsets without a record acknowledged", _F),
    PrivateUse(FAUST, f"{_C}._n_acked", "written", _ACK_MISSING, "counts toward Faust's commit_every", _F),
    PrivateUse(FAUST, f"{_C}.flow_active", "read", _POSITIONS, "no positions read mid-rebalance", _F),
    PrivateUse(
        FAUST,
        "faust.transport.consumer:ThreadDelegateConsumer._thread",
        "read",
        f"{_BROKER_COMMITTED} and consumer_positions",
        "aiokafka lives on Faust's consumer thread",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._ensure_consumer",
        "called",
        f"{_BROKER_COMMITTED} and consumer_positions",
        "the aiokafka consumer, to ask committed offsets and positions",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.app.base:App._consumer",
        "read",
        f"{_HERE} app_consumer",
        "the consumer, without creating one (agents/web.py liveness)",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.web.drivers.aiohttp:Web.web_app",
        "read",
        f"{_HERE} aiohttp_application",
        "the aiohttp application, to add the access log and token middlewares (agents/web.py)",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.streams:Stream._set_current_event",
        "called",
        f"{_HERE} set_current_event",
        "the table writes to the partition of each folded record (agents/status.py)",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.transport.producer:ProducerBuffer.wait_until_ebb",
        "relied on",
        "ops/logs.py ProducerBufferNoise",
        "its log texts 'producer buffer full size' and 'producer flush took' are matched",
        _F,
    ),
    PrivateUse(
        MODE,
        "mode.threads:QueueServiceThread.call_thread",
        "called",
        f"{_BROKER_COMMITTED} and consumer_positions",
        "runs aiokafka calls on Faust's consumer thread",
        _M,
    ),
    PrivateUse(
        MODE,
        "mode.worker:Worker._on_sigterm",
        "relied on",
        _SIGTERM,
        "mode's SIGTERM handler is taken from the loop and called after the drain (agents/lifecycle.py)",
        _M,
    ),
    PrivateUse(
        AIOKAFKA,
        "aiokafka:AIOKafkaConsumer.committed",
        "called",
        f"{_BROKER_COMMITTED} (on Faust's consumer thread)",
        "where a reassigned partition resumes",
        _A,
    ),
    PrivateUse(
        AIOKAFKA,
        "aiokafka:AIOKafkaConsumer.position",
        "called",
        f"{_POSITIONS} (on Faust's consumer thread)",
        "the offset guard's stall check",
        _A,
    ),
    PrivateUse("python", "asyncio.events:Handle._callback", "read", _SIGTERM, "mode's SIGTERM handler"),
    PrivateUse(
        "python",
        "asyncio.unix_events:_UnixSelectorEventLoop._signal_handlers",
        "read",
        _SIGTERM,
        "where mode's SIGTERM handler is found",
    ),
)


def installed_version(package: str) -> str | None:
    """The installed distribution's version, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _exists(target: str) -> bool:
    """``module:Object.attribute`` resolves: on the object, in a class's annotations, or assigned in an
    ``__init__`` of the class (an instance attribute: the name is among that code's attribute names)."""
    module_name, _, path = target.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError:
        return False
    *parents, attribute = path.split(".")
    for part in parents:
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    if hasattr(obj, attribute):
        return True
    for klass in obj.__mro__ if isinstance(obj, type) else ():
        init = vars(klass).get("__init__")
        if attribute in vars(klass).get("__annotations__", {}) or attribute in getattr(
            getattr(init, "__code__", None), "co_names", ()
        ):
            return True
    return False


def _listing(uses: list[PrivateUse]) -> str:
    return "; ".join(f"{u.name} ({u.use} in {u.where}: {u.why})" for u in uses)


def _version_problems(uses: tuple[PrivateUse, ...]) -> list[str]:
    found: list[str] = []
    for package in dict.fromkeys(u.package for u in uses if u.verified):
        mine = [u for u in uses if u.package == package]
        installed = installed_version(package)
        unverified = [u for u in mine if installed not in u.verified]
        if not unverified:
            continue
        supported = sorted(set.intersection(*(set(u.verified) for u in mine)))
        pin = f"{package}=={supported[-1]}" if supported else f"{package} at a version listed in app/compat.py"
        state = f"{package} {installed} is installed" if installed else f"{package} is not installed"
        found.append(
            f"{state}, but the worker relies on {package} internals verified only on "
            f"{', '.join(supported) or 'no common version'}: {_listing(unverified)}. On another version they can "
            f"lose or stall tasks without an error. Install the verified version (pip install '{pin}', as "
            f"requirements.lock pins it), or re-check each of these in the {package} source, run "
            f"the chaos test (make chaos) and add the version to PRIVATE_USES in app/compat.py."
        )
    return found


def _structure_problems(uses: tuple[PrivateUse, ...]) -> list[str]:
    missing = [u for u in uses if not _exists(u.target)]
    found: list[str] = []
    for package in dict.fromkeys(u.package for u in missing):
        gone = [u for u in missing if u.package == package]
        version = installed_version(package) if package != "python" else None
        where = f"{package} {version}" if version else package
        if package in VERIFIED:
            todo = (
                f"Reinstall the verified version: pip install --force-reinstall '{package}=={VERIFIED[package][-1]}'."
            )
        else:
            todo = "Run the worker on CPython 3.11 or later on Linux (the Dockerfile's image)."
        found.append(f"{where} lacks what the worker uses: {_listing(gone)}. {todo}")
    return found


def problems(uses: tuple[PrivateUse, ...] = PRIVATE_USES) -> list[str]:
    """Every mismatch between the installed packages and ``uses``: wrong versions first, then missing attributes."""
    return _version_problems(uses) + _structure_problems(uses)


def check_versions(uses: tuple[PrivateUse, ...] = PRIVATE_USES) -> None:
    """Raise :class:`ConfigError` naming each private use that the installed versions do not support.

    Called when the App is built (``app.faust_app.build_app``), before the
    consumer is patched (:func:`install_offset_guard`), so a worker on an
    unverified faust-streaming, aiokafka or mode-streaming never starts
    consuming.
    """
    found = problems(uses)
    if found:
        raise ConfigError("Unsupported Kafka client libraries: " + " | ".join(found))


# -- the touches: each private interface above is reached through one of these ---------------------------------

_GUARDED = "_vw_guarded_topics"  # set on faust's Consumer class once the guard is installed


_UNFILTERED = "_vw_unfiltered_topics"  # the guarded topics and the tables' changelogs: read offsets hidden


class _ReadOffsets(defaultdict):  # type: ignore[type-arg]
    """Faust's per-partition read offsets, hidden (read as None) for ``topics``: the guarded topics and the
    tables' changelogs (:func:`deliver_every_changelog_record`)."""

    def __init__(self, topics: set[str], *args: Any) -> None:
        super().__init__(lambda: None, *args)
        self.topics = topics

    def __getitem__(self, tp: Any) -> Any:
        if tp.topic in self.topics:
            return None
        return super().__getitem__(tp)


def install_offset_guard(topic: str) -> None:
    """Hand ``topic``'s offset bookkeeping from Faust to the intake's :class:`~app.offsets.OffsetGuard`.

    faust-streaming 0.15.3 drops fetched records below its read offset and
    counts any jump above it as a hole to acknowledge (``Consumer._add_gap``).
    Around rebalances its read offset is wrong both ways: records fetched
    before the rebalance push it up, so the re-read records are dropped (a
    stalled partition), or records it lost make a jump (unprocessed tasks
    committed). For ``topic`` every fetched record now reaches the agent,
    whose guard admits offsets strictly in order and seeks back over holes;
    offsets it confirmed hold no record reach Faust, acknowledged in order
    through :func:`ack_offsets_without_records`.

    Patches faust's ``Consumer`` class once per process; later calls add
    their topic to the same patch. Run :func:`check_versions` first
    (``build_app`` does): on an unverified version the patch could lose tasks
    silently.
    """
    from faust.transport.consumer import Consumer

    guarded: set[str] | None = getattr(Consumer, _GUARDED, None)
    if guarded is not None:
        guarded.add(topic)
        getattr(Consumer, _UNFILTERED).add(topic)
        return
    guarded = {topic}
    unfiltered = {topic}
    init, add_gap = Consumer.__init__, Consumer._add_gap

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._read_offset = _ReadOffsets(unfiltered, self._read_offset)

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if tp.topic not in guarded:
            await add_gap(self, tp, offset_from, offset_to)

    Consumer.__init__ = __init__  # type: ignore[method-assign]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    setattr(Consumer, _GUARDED, guarded)
    setattr(Consumer, _UNFILTERED, unfiltered)


def deliver_every_changelog_record(topics: set[str]) -> None:
    """Faust's consumer delivers every fetched record of the changelog ``topics`` to table recovery.

    faust-streaming 0.15.3 drops a fetched record below its read offset, and
    around rebalances that offset is wrong for changelogs as for the tasks
    topic: records fetched before a rebalance push it up, the recovery that
    follows seeks back below it, and the records it re-reads are dropped.
    Recovery then waits for them for ever ("No event received for active tp
    ... since recovery start") and the worker takes no task (seen in the
    chaos test). Recovery skips a record at or below the offset it applied
    last, so a record delivered twice does no harm. Call after
    :func:`install_offset_guard` (``build_app``), before the consumer starts.
    """
    from faust.transport.consumer import Consumer

    unfiltered: set[str] | None = getattr(Consumer, _UNFILTERED, None)
    if unfiltered is None:
        raise RuntimeError("install_offset_guard must run first (app.faust_app.build_app does)")
    unfiltered.update(topics)


def unfiltered_topics() -> frozenset[str]:
    """The topics whose fetched records Faust's consumer never drops in this process (empty before the guard)."""
    from faust.transport.consumer import Consumer

    return frozenset(getattr(Consumer, _UNFILTERED, ()))


def guarded_topics() -> frozenset[str]:
    """The topics whose offsets :func:`install_offset_guard` took from Faust in this process (empty before)."""
    from faust.transport.consumer import Consumer

    return frozenset(getattr(Consumer, _GUARDED, ()))


def ack_offsets_without_records(consumer: Any, tp: Any, first: int, last: int) -> None:
    """Acknowledge offsets ``first..last`` of ``tp``, which hold no record, so Faust's commits pass them.

    What ``Consumer.ack`` does for a record, done for offsets without one (a
    transaction marker the offset guard confirmed). Called in partition order
    (the ack tracker releases it after every earlier record of ``tp``), so
    Faust never sees them ahead of a record still in flight (faust#606).
    Faust's own gap list would not do: it is merged only below an acked
    record, so a marker at the end of a partition was never committed.
    """
    from faust.types.tuples import ack_lock

    with ack_lock:
        committed = consumer._committed_offset[tp]
        index, acked = consumer._acked_index[tp], consumer._acked[tp]
        for offset in range(first if committed is None else max(first, committed), last + 1):
            if offset not in index:
                index.add(offset)
                acked.append(offset)
                consumer._n_acked += 1


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """Faust's record of the offset committed for ``tp`` (None when it has none yet; Faust has no public accessor)."""
    committed = consumer._committed_offset.get(tp)
    return None if committed is None else int(committed)


async def broker_committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset the broker has committed for ``tp`` (None when none), asked by aiokafka on Faust's consumer
    thread, where aiokafka lives. Raises what aiokafka raises (not started, broker unreachable)."""
    thread = consumer._thread
    committed = await thread.call_thread(thread._ensure_consumer().committed, tp)
    return None if committed is None else int(committed)


async def consumer_positions(consumer: Any, tps: list[Any], timeout: float = 0.5) -> dict[Any, int]:
    """The consumer's position (next offset to fetch) of each of ``tps``, asked at once on Faust's consumer thread
    within ``timeout`` seconds; a partition without a position yet is left out, and none while Faust's flow is
    paused (a rebalance). Raises what aiokafka raises (not started)."""
    if not consumer.flow_active or not tps:
        return {}
    thread = consumer._thread
    kafka = thread._ensure_consumer()

    async def read() -> dict[Any, int]:
        found = await asyncio.wait_for(
            asyncio.gather(*(kafka.position(tp) for tp in tps), return_exceptions=True), timeout=timeout
        )
        return {tp: p for tp, p in zip(tps, found, strict=True) if isinstance(p, int)}

    result: dict[Any, int] = await thread.call_thread(read)
    return result


def app_consumer(app: Any) -> Any | None:
    """The App's consumer if it has one, without creating one (``app.consumer`` would)."""
    return app._consumer


def set_current_event(stream: Any, event: Any) -> None:
    """Make ``event`` the stream's current event (None: none), so table reads and writes go to its partition."""
    stream._set_current_event(event)


def aiohttp_application(app: Any) -> Any:
    """The ``aiohttp.web.Application`` behind the App's web server, which Faust's aiohttp driver keeps as
    ``app.web.web_app`` (faust/web/drivers/aiohttp.py). Every route, Faust's own blueprints (``/router/``,
    ``/table/``) included, runs through its middlewares. :class:`ConfigError` for another web driver."""
    from aiohttp import web

    application = getattr(app.web, "web_app", None)
    if not isinstance(application, web.Application):
        raise ConfigError(
            f"Cannot guard the web port: Faust's web driver is {type(app.web).__name__}, not aiohttp's; "
            "the worker supports Faust's default aiohttp web driver only (web_transport/web driver settings)."
        )
    return application


def mode_sigterm_handler(loop: asyncio.AbstractEventLoop) -> Callable[[], Any] | None:
    """The SIGTERM handler mode's worker installed on ``loop`` (it calls ``Worker._on_sigterm``), None when there
    is none (no mode worker). The loop keeps its handlers privately; asyncio has no way to read one back."""
    handle = getattr(loop, "_signal_handlers", {}).get(signal.SIGTERM)
    return handle._callback if handle is not None else None
