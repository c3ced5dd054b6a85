"""Every private interface of faust-streaming, aiokafka and mode the worker touches, and the start-up check.

The worker's delivery guarantee rests on Faust internals: the offset guard
replaces ``Consumer._add_gap``, wraps ``Consumer.__init__`` and hides
``Consumer._read_offset`` (app/faust_app.py), the intake asks aiokafka for
committed offsets and positions through Faust's consumer thread
(agents/intake.py). None of that is public API: a release may rename it (the
worker then fails obscurely) or change what it means (the worker then loses
or stalls tasks without an error). So each use is listed here with the
versions it was checked on, and :func:`check_versions` refuses to start a
worker on any other version, naming each use and what to do.

There is deliberately no setting to start anyway: the failure this prevents
is silent (tasks committed without being processed), and the way to a new
version is to re-read each listed interface in its source, run the chaos
test (``make chaos``) and add the version here.

Nothing here imports faust on import; :func:`check_versions` imports the
listed modules to look the attributes up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

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
_GUARD = "app/faust_app.py guard_offsets"
_ACK_MISSING = "app/faust_app.py ack_missing_offsets"
_F, _A, _M = VERIFIED[FAUST], VERIFIED[AIOKAFKA], VERIFIED[MODE]

#: every private touch of faust/aiokafka/mode in app/, agents/ and sinks/ (keep in step with the code)
PRIVATE_USES: tuple[PrivateUse, ...] = (
    PrivateUse(FAUST, f"{_C}.__init__", "wrapped", _GUARD, "to swap in the guarded read offsets", _F),
    PrivateUse(
        FAUST, f"{_C}._read_offset", "replaced", _GUARD, "read as None for the tasks topic: no record dropped", _F
    ),
    PrivateUse(FAUST, f"{_C}._add_gap", "replaced", _GUARD, "no offset gap acknowledged for the tasks topic", _F),
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
        f"{_ACK_MISSING}, agents/intake.py _start_offset and consumer_lag",
        "the last committed offset per partition",
        _F,
    ),
    PrivateUse(FAUST, f"{_C}._acked", "written", _ACK_MISSING, "offsets without a record acknowledged", _F),
    PrivateUse(FAUST, f"{_C}._acked_index", "written", _ACK_MISSING, "offsets without a record acknowledged", _F),
    PrivateUse(FAUST, f"{_C}._n_acked", "written", _ACK_MISSING, "counts toward Faust's commit_every", _F),
    PrivateUse(
        FAUST, f"{_C}.flow_active", "read", "agents/intake.py _positions", "no positions read mid-rebalance", _F
    ),
    PrivateUse(
        FAUST,
        "faust.transport.consumer:ThreadDelegateConsumer._thread",
        "read",
        "agents/intake.py _start_offset and _positions",
        "aiokafka lives on Faust's consumer thread",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._ensure_consumer",
        "called",
        "agents/intake.py _start_offset and _positions",
        "the aiokafka consumer, to ask committed offsets and positions",
        _F,
    ),
    PrivateUse(
        FAUST, "faust.app.base:App._consumer", "read", "agents/web.py _consumer_alive", "without creating one", _F
    ),
    PrivateUse(
        FAUST,
        "faust.web.drivers.aiohttp:Web.web_app",
        "read",
        "agents/web.py _aiohttp_application",
        "the aiohttp application, to add the access log and token middlewares",
        _F,
    ),
    PrivateUse(
        FAUST,
        "faust.streams:Stream._set_current_event",
        "called",
        "agents/status.py track_task_status",
        "the table writes to the partition of each folded record",
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
        "agents/intake.py _start_offset and _positions",
        "runs aiokafka calls on Faust's consumer thread",
        _M,
    ),
    PrivateUse(
        MODE,
        "mode.worker:Worker._on_sigterm",
        "relied on",
        "agents/lifecycle.py install_sigterm_drain",
        "mode's SIGTERM handler is taken from the loop and called after the drain",
        _M,
    ),
    PrivateUse(
        AIOKAFKA,
        "aiokafka:AIOKafkaConsumer.committed",
        "called",
        "agents/intake.py _start_offset (on Faust's consumer thread)",
        "where a reassigned partition resumes",
        _A,
    ),
    PrivateUse(
        AIOKAFKA,
        "aiokafka:AIOKafkaConsumer.position",
        "called",
        "agents/intake.py _positions (on Faust's consumer thread)",
        "the offset guard's stall check",
        _A,
    ),
    PrivateUse("python", "asyncio.events:Handle._callback", "read", "agents/lifecycle.py", "mode's SIGTERM handler"),
    PrivateUse(
        "python",
        "asyncio.unix_events:_UnixSelectorEventLoop._signal_handlers",
        "read",
        "agents/lifecycle.py",
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

    Called before the consumer is patched (:func:`app.faust_app.guard_offsets`),
    so a worker on an unverified faust-streaming, aiokafka or mode-streaming
    never starts consuming.
    """
    found = problems(uses)
    if found:
        raise ConfigError("Unsupported Kafka client libraries: " + " | ".join(found))
