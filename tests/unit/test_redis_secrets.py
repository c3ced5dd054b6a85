"""Redis credentials reach the client and nothing else: not logs, not heartbeats, not the ``workers`` command."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from pydantic import SecretStr

from app.commands import worker_table
from ops.heartbeat import Heartbeat, redis_client


def _options(client: Any) -> dict[str, Any]:
    return client.connection_pool.connection_kwargs


async def test_the_password_setting_replaces_the_one_in_the_url() -> None:
    client = redis_client("redis://user:from-url@localhost:6379/0", password=SecretStr("from-setting"))
    assert _options(client)["password"] == "from-setting" and _options(client)["username"] == "user"
    await client.aclose()
    client = redis_client("redis://:from-url@localhost:6379/0")
    assert _options(client)["password"] == "from-url"
    await client.aclose()


async def test_a_ca_file_verifies_rediss_and_is_refused_loudly_for_plain_redis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis_client("rediss://localhost:6380/0", ssl_ca_file="/etc/ssl/ca.pem")
    assert _options(client)["ssl_ca_certs"] == "/etc/ssl/ca.pem"
    await client.aclose()
    with caplog.at_level(logging.WARNING, logger="worker.heartbeat"):
        client = redis_client("redis://:pw@localhost:6379/0", ssl_ca_file="/etc/ssl/ca.pem")
    assert "ssl_ca_certs" not in _options(client)
    assert (
        "not rediss://" in caplog.text and "redis://:***@localhost:6379/0" in caplog.text and "pw@" not in caplog.text
    )
    await client.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_failed_heartbeat_logs_the_url_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()  # nothing listens: the connection is refused at once
    beat = Heartbeat(
        f"redis://user:url-pw@127.0.0.1:{port}/0", "w-1", dict, interval=1, password=SecretStr("setting-pw")
    )
    with caplog.at_level(logging.WARNING, logger="worker.heartbeat"):
        assert await beat.beat() is False
    assert f"redis://user:***@127.0.0.1:{port}/0" in caplog.text
    assert "url-pw" not in caplog.text and "setting-pw" not in caplog.text
    assert "url-pw" not in str(beat.payload()) and beat.url == f"redis://user:***@127.0.0.1:{port}/0"
    await beat.stop()


def test_the_workers_command_prints_heartbeats_without_terminal_escapes() -> None:
    lines = worker_table(
        [
            {"worker_id": "w\x1b[2J-1", "host": "h", "pid": {"x": 1}, "processed": 3, "loaded_models": ["m\n"]},
            {"worker_id": "w-2", "loaded_models": "not-a-list"},
        ]
    )
    assert len(lines) == 4 and lines[-1] == "2 live worker(s)"
    assert all("\x1b" not in line and "\n" not in line for line in lines)
    assert lines[1].startswith("w?[2J-1") and lines[1].rstrip().endswith("m?")
