"""Every private touch of faust-streaming/aiokafka/mode in one place (app/compat.py), and its start-up check.

The installed versions pass; a faked other version, or an attribute a
release removed, refuses with a message that names each affected use and the
version to pin; building the app on another version exits 2 with that
message before anything is created. No module of app/ or agents/ but
app/compat.py reaches into a private attribute (read from their source), and
the compat functions do what their callers rely on.
"""

from __future__ import annotations

import ast
import asyncio
import signal
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from app import compat
from app.compat import AIOKAFKA, FAUST, MODE, PRIVATE_USES, VERIFIED, PrivateUse, check_versions
from app.faust_app import build_app
from core.errors import ConfigError
from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def fake_versions(monkeypatch: pytest.MonkeyPatch, **versions: str | None) -> None:
    """importlib.metadata.version answers ``versions`` (package name with _ for -; None: not installed)."""
    real = metadata.version
    wanted = {name.replace("_", "-"): v for name, v in versions.items()}

    def version(package: str) -> str:
        if package in wanted:
            if wanted[package] is None:
                raise metadata.PackageNotFoundError(package)
            return str(wanted[package])
        return real(package)

    monkeypatch.setattr(metadata, "version", version)


def test_the_installed_versions_are_the_verified_ones_and_pass() -> None:
    for package in (FAUST, AIOKAFKA, MODE):
        assert metadata.version(package) in VERIFIED[package]
    assert compat.problems() == []
    check_versions()  # does not raise


def test_every_listed_interface_exists_in_the_installed_packages() -> None:
    """The structural half on its own: each target resolves (no silent typo in the table)."""
    for use in PRIVATE_USES:
        assert compat._exists(use.target), use.target


def test_another_faust_version_refuses_naming_each_override(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, faust_streaming="0.16.0")
    with pytest.raises(ConfigError) as info:
        check_versions()
    message = str(info.value)
    assert "faust-streaming 0.16.0 is installed" in message
    assert "pip install 'faust-streaming==0.15.3'" in message
    for name in ("Consumer._add_gap", "Consumer.__init__", "Consumer._read_offset", "ack_lock", "_ensure_consumer"):
        assert name in message, name
    assert "app/compat.py install_offset_guard" in message  # where each one is touched
    assert "aiokafka" not in message.split("faust-streaming internals")[0]  # only the wrong package is blamed


def test_each_wrong_package_is_named_with_its_own_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, aiokafka="0.12.0", mode_streaming=None)
    message = str(pytest.raises(ConfigError, check_versions).value)
    assert "aiokafka 0.12.0 is installed" in message and "pip install 'aiokafka==0.14.0'" in message
    assert "AIOKafkaConsumer.committed" in message
    assert "mode-streaming is not installed" in message and "pip install 'mode-streaming==0.7.1'" in message
    assert "Worker._on_sigterm" in message
    assert "faust-streaming 0" not in message  # the right one is not blamed


def test_a_missing_attribute_refuses_even_on_the_verified_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """A patched or vendored build can lack what the version number promises."""
    from faust.transport.consumer import Consumer

    monkeypatch.delattr(Consumer, "_add_gap")
    message = str(pytest.raises(ConfigError, check_versions).value)
    assert "faust-streaming 0.15.3 lacks what the worker uses" in message
    assert "Consumer._add_gap (replaced in app/compat.py install_offset_guard" in message
    assert "--force-reinstall 'faust-streaming==0.15.3'" in message


def test_declared_instance_attributes_count_and_undeclared_ones_do_not() -> None:
    """Faust sets _committed_offset in __init__ and declares it on the class: found; Web.web_app is only
    assigned in __init__: found; a made-up name is not."""
    assert compat._exists("faust.transport.consumer:Consumer._committed_offset")
    assert compat._exists("faust.web.drivers.aiohttp:Web.web_app")
    assert compat._exists("asyncio.unix_events:_UnixSelectorEventLoop._signal_handlers")
    assert not compat._exists("faust.transport.consumer:Consumer._no_such_attribute")
    assert not compat._exists("faust.no_such_module:Thing.attr")
    uses = (PrivateUse("python", "asyncio.events:Handle._gone", "read", "nowhere", "a test"),)
    message = compat.problems(uses)[0]
    assert "Handle._gone" in message and "CPython 3.11" in message


def test_building_the_app_on_another_faust_version_exits_with_the_message(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """build_app runs the check first: exit 2, one message on stderr, nothing created (no data folder)."""
    clean_env.setenv("VECTORIZE_WORKER_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    fake_versions(clean_env, faust_streaming="0.16.0")
    with pytest.raises(SystemExit) as stopped:
        build_app(settings)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vectorize-worker: Unsupported Kafka client libraries: faust-streaming 0.16.0"), err
    assert "Consumer._add_gap" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()


# -- the touches live in app/compat.py only ---------------------------------------------------------------------
#: The rule: outside app/compat.py, no module of app/ or agents/ reads, writes or calls an attribute whose name
#: starts with one underscore (``consumer._committed_offset``, ``stream._set_current_event``, ``app._consumer``,
#: ``Consumer._add_gap``, ``thread._ensure_consumer``, ``handle._callback``) on anything but ``self``/``cls``,
#: nor names one in getattr/setattr/hasattr/delattr (``getattr(loop, "_signal_handlers")``), nor assigns a
#: dunder of another object (``Consumer.__init__ = ...``). Our own objects' privates count too: a reach-in
#: is a reach-in. The one exception is ``os._exit``, public API despite its name.
ALLOWED = {("os", "_exit")}
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def reach_ins(source: str) -> list[tuple[int, str, str]]:
    """(line, code, attribute name) of each private touch ``source`` makes by the rule above, in line order."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in ("self", "cls") or (owner, node.attr) in ALLOWED:
                continue
            dunder_write = node.attr.startswith("__") and isinstance(node.ctx, ast.Store)
            if _private(node.attr) or dunder_write:
                found.append((node.lineno, ast.unparse(node), node.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS:
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _private(name.value):
                found.append((node.lineno, ast.unparse(node), name.value))
    return sorted(found)


def test_the_rule_finds_each_kind_of_reach_in() -> None:
    source = (
        "x = consumer._committed_offset.get(tp)\n"
        "stream._set_current_event(event)\n"
        "Consumer._add_gap = patched\n"
        "Consumer.__init__ = wrapped\n"
        "handlers = getattr(loop, '_signal_handlers', {})\n"
        "self._mine = 1\n"
        "os._exit(2)\n"
        "name = type(x).__name__\n"
    )
    assert [(line, name) for line, _, name in reach_ins(source)] == [
        (1, "_committed_offset"),
        (2, "_set_current_event"),
        (3, "_add_gap"),
        (4, "__init__"),
        (5, "_signal_handlers"),
    ]


def test_no_module_of_app_or_agents_but_compat_touches_a_private_attribute() -> None:
    modules = sorted([*(ROOT / "app").glob("*.py"), *(ROOT / "agents").glob("*.py")])
    assert ROOT / "app" / "compat.py" in modules and ROOT / "agents" / "intake.py" in modules
    touches = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in modules
        if path != ROOT / "app" / "compat.py"
        for line, text, _ in reach_ins(path.read_text(encoding="utf-8"))
    ]
    assert not touches, (
        "private attributes touched outside app/compat.py; put each touch in a named function there and list it "
        "in PRIVATE_USES: " + "; ".join(touches)
    )


def test_every_touch_in_compat_is_listed() -> None:
    """Each private name app/compat.py touches is the attribute of a PRIVATE_USES entry, so the start-up check
    covers it."""
    listed = {use.name.rsplit(".", 1)[-1] for use in PRIVATE_USES}
    touched = {name for _, _, name in reach_ins((ROOT / "app" / "compat.py").read_text(encoding="utf-8"))}
    assert {"_committed_offset", "_thread", "_set_current_event", "_consumer", "_callback"} <= touched
    unlisted = touched - listed
    assert not unlisted, f"app/compat.py touches {sorted(unlisted)} without a PRIVATE_USES entry"


# -- the touches do what their callers rely on -------------------------------------------------------------------
class FakeThread:
    """Faust's consumer thread: ``call_thread`` runs a function there; ``_ensure_consumer`` is aiokafka's."""

    def __init__(self, kafka: Any) -> None:
        self.kafka = kafka
        self.calls = 0

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        self.calls += 1
        return await fun(*args)

    def _ensure_consumer(self) -> Any:
        return self.kafka


class FakeKafka:
    def __init__(self, committed: dict[str, int], positions: dict[str, int]) -> None:
        self._committed, self._positions = committed, positions

    async def committed(self, tp: str) -> int | None:
        return self._committed.get(tp)

    async def position(self, tp: str) -> int:
        if tp not in self._positions:
            raise RuntimeError("no position yet")
        return self._positions[tp]


class FakeConsumer:
    def __init__(self, kafka: FakeKafka, *, flow_active: bool = True) -> None:
        self._thread = FakeThread(kafka)
        self._committed_offset: defaultdict[str, int | None] = defaultdict(lambda: None, {"p0": 7})
        self.flow_active = flow_active


def test_offsets_and_positions_are_asked_on_fausts_consumer_thread() -> None:
    consumer = FakeConsumer(FakeKafka({"p0": 40}, {"p0": 45, "p1": 3}))
    assert asyncio.run(compat.broker_committed_offset(consumer, "p0")) == 40
    assert asyncio.run(compat.broker_committed_offset(consumer, "p9")) is None
    assert asyncio.run(compat.consumer_positions(consumer, ["p0", "p1", "p2"])) == {"p0": 45, "p1": 3}
    assert consumer._thread.calls == 3
    assert compat.committed_offset(consumer, "p0") == 7 and compat.committed_offset(consumer, "p1") is None
    paused = FakeConsumer(FakeKafka({}, {"p0": 1}), flow_active=False)  # a rebalance: no positions
    assert asyncio.run(compat.consumer_positions(paused, ["p0"])) == {} and paused._thread.calls == 0


def test_the_sigterm_handler_on_the_loop_is_found() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert compat.mode_sigterm_handler(loop) is None

        def handler() -> None: ...

        loop.add_signal_handler(signal.SIGTERM, handler)
        assert compat.mode_sigterm_handler(loop) is handler
        loop.remove_signal_handler(signal.SIGTERM)
    finally:
        loop.close()


def test_the_app_consumer_is_read_without_creating_one(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("VECTORIZE_WORKER_DATA_DIR", str(tmp_path))
    worker = build_app(load_settings())
    assert compat.app_consumer(worker.app) is None
    consumer = worker.app.consumer  # Faust creates it on first access
    assert compat.app_consumer(worker.app) is consumer
    assert type(compat.aiohttp_application(worker.app)).__name__ == "Application"
