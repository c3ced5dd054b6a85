"""The start-up check of faust-streaming/aiokafka/mode internals (app/compat.py).

The installed versions pass; a faked other version, or an attribute a
release removed, refuses with a message that names each affected use and the
version to pin. A subprocess shows a worker import refusing to go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from app import compat
from app.compat import AIOKAFKA, FAUST, MODE, PRIVATE_USES, VERIFIED, PrivateUse, check_versions
from core.errors import ConfigError

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
    assert "app/faust_app.py guard_offsets" in message  # where each one is used
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
    assert "Consumer._add_gap (replaced in app/faust_app.py guard_offsets" in message
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


def test_a_worker_import_on_another_faust_version_exits_with_the_message(tmp_path: Path) -> None:
    """guard_offsets runs the check when app.faust_app is imported: exit 2, one message, no traceback."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VECTORIZE_WORKER_")},
        "VECTORIZE_WORKER_DATA_DIR": str(tmp_path),
    }
    code = (
        "from importlib import metadata; real = metadata.version; "
        "metadata.version = lambda p: '0.16.0' if p == 'faust-streaming' else real(p); "
        "import app.faust_app"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vectorize-worker: Unsupported Kafka client libraries: faust-streaming 0.16.0")
    assert "Consumer._add_gap" in proc.stderr and "Traceback" not in proc.stderr
