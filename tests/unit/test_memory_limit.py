"""worker_memory_limit_bytes: the cgroup's memory limit (v2, then v1) when set, else the machine's memory."""

from __future__ import annotations

from pathlib import Path

from ops.metrics import Metrics, memory_limit_bytes


def meminfo(tmp_path: Path, kib: int = 8 * 1024 * 1024) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {kib} kB\nMemFree:        1024 kB\n")
    return path


def test_a_cgroup_v2_limit_is_the_limit(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.max"
    v2.write_text("4294967296\n")
    assert memory_limit_bytes((v2,), meminfo(tmp_path)) == 4 << 30


def test_no_cgroup_limit_means_the_machines_memory(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.max"
    v2.write_text("max\n")
    v1 = tmp_path / "limit_in_bytes"
    v1.write_text("1073741824\n")  # never read: v2 said there is no limit
    assert memory_limit_bytes((v2, v1), meminfo(tmp_path)) == 8 << 30
    assert memory_limit_bytes((tmp_path / "absent",), meminfo(tmp_path)) == 8 << 30


def test_cgroup_v1_and_its_no_limit_value(tmp_path: Path) -> None:
    v1 = tmp_path / "limit_in_bytes"
    v1.write_text("2147483648\n")
    assert memory_limit_bytes((tmp_path / "absent", v1), meminfo(tmp_path)) == 2 << 30
    v1.write_text("9223372036854771712\n")  # v1's "unlimited"
    assert memory_limit_bytes((v1,), meminfo(tmp_path)) == 8 << 30


def test_a_limit_above_the_machine_is_the_machine(tmp_path: Path) -> None:
    v2 = tmp_path / "memory.max"
    v2.write_text(str(64 << 30))
    assert memory_limit_bytes((v2,), meminfo(tmp_path)) == 8 << 30


def test_nothing_readable_gives_none(tmp_path: Path) -> None:
    assert memory_limit_bytes((tmp_path / "absent",), tmp_path / "no-meminfo") is None


def test_the_gauge_is_set_with_the_memory_usage() -> None:
    metrics = Metrics()
    metrics.refresh_memory()
    limit = metrics.registry.get_sample_value("worker_memory_limit_bytes")
    usage = metrics.registry.get_sample_value("worker_memory_usage_bytes")
    assert limit is not None and usage is not None and 0 < usage < limit
