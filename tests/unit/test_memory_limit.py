"""worker_memory_limit_bytes: the lowest cgroup memory limit along the process's cgroup path (v2, else v1),
else the machine's memory."""

from __future__ import annotations

from pathlib import Path

from ops.metrics import Metrics, memory_limit_bytes

GIB = 1 << 30


def machine(tmp_path: Path, *, cgroup: str, files: dict[str, str], total_gib: int = 8) -> dict[str, Path]:
    """A fake /sys/fs/cgroup tree, /proc/self/cgroup and /proc/meminfo under ``tmp_path``."""
    root = tmp_path / "cgroup"
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content + "\n")
    (tmp_path / "proc_cgroup").write_text(cgroup)
    (tmp_path / "meminfo").write_text(f"MemTotal:       {total_gib * 1024 * 1024} kB\nMemFree:  1024 kB\n")
    return {"cgroup_root": root, "proc_cgroup": tmp_path / "proc_cgroup", "meminfo": tmp_path / "meminfo"}


def test_a_container_limit_at_the_root_of_its_namespace(tmp_path: Path) -> None:
    where = machine(tmp_path, cgroup="0::/\n", files={"memory.max": str(4 * GIB)})
    assert memory_limit_bytes(**where) == 4 * GIB


def test_a_systemd_units_limit_below_the_root(tmp_path: Path) -> None:
    unit = "system.slice/worker.service"
    where = machine(
        tmp_path,
        cgroup=f"0::/{unit}\n",
        files={"memory.max": "max", "system.slice/memory.max": str(6 * GIB), f"{unit}/memory.max": str(2 * GIB)},
    )
    assert memory_limit_bytes(**where) == 2 * GIB  # the lowest along the path


def test_a_parents_limit_counts_when_the_own_cgroup_has_none(tmp_path: Path) -> None:
    where = machine(
        tmp_path,
        cgroup="0::/kubepods/pod1/ctr\n",
        files={"kubepods/pod1/memory.max": str(3 * GIB), "kubepods/pod1/ctr/memory.max": "max"},
    )
    assert memory_limit_bytes(**where) == 3 * GIB


def test_no_limit_anywhere_means_the_machines_memory(tmp_path: Path) -> None:
    where = machine(tmp_path, cgroup="0::/user.slice\n", files={"memory.max": "max", "user.slice/memory.max": "max"})
    assert memory_limit_bytes(**where) == 8 * GIB


def test_cgroup_v1_and_its_no_limit_value(tmp_path: Path) -> None:
    where = machine(
        tmp_path,
        cgroup="12:cpu,cpuacct:/x\n4:memory:/docker/abc\n",
        files={
            "memory/docker/abc/memory.limit_in_bytes": str(2 * GIB),
            "memory/memory.limit_in_bytes": "9223372036854771712",
        },
    )
    assert memory_limit_bytes(**where) == 2 * GIB
    (where["cgroup_root"] / "memory/docker/abc/memory.limit_in_bytes").write_text("9223372036854771712")
    assert memory_limit_bytes(**where) == 8 * GIB  # v1's "unlimited" everywhere


def test_a_limit_above_the_machine_is_the_machine(tmp_path: Path) -> None:
    where = machine(tmp_path, cgroup="0::/\n", files={"memory.max": str(64 * GIB)})
    assert memory_limit_bytes(**where) == 8 * GIB


def test_nothing_readable_gives_none(tmp_path: Path) -> None:
    assert memory_limit_bytes(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None


def test_the_gauge_is_set_with_the_memory_usage() -> None:
    metrics = Metrics()
    metrics.refresh_memory()
    limit = metrics.registry.get_sample_value("worker_memory_limit_bytes")
    usage = metrics.registry.get_sample_value("worker_memory_usage_bytes")
    assert limit is not None and usage is not None and 0 < usage < limit
