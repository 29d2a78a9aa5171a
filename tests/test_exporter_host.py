"""Host collector on fake /proc and cgroup trees: v2, v1, no limit, and the runbook override."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.collectors.host import HostCollector

GIB = 1024**3


def fake_proc(root: Path, cgroup_line: str = "0::/") -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        "MemTotal:       16777216 kB\nMemFree:         1048576 kB\n"
        "MemAvailable:    4194304 kB\n")
    # user nice system idle iowait irq softirq steal: 1000+0+500+9000+100+0+0+0 ticks
    (proc / "stat").write_text("cpu  1000 0 500 9000 100 0 0 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    return proc


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_container_not_the_host(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/kubepods/pod1")
    cg = tmp_path / "cgroup"
    write(cg / "cgroup.controllers", "cpu memory\n")
    own = cg / "kubepods" / "pod1"
    write(own / "cgroup.controllers", "cpu memory\n")
    write(own / "memory.max", str(2 * GIB))
    write(own / "memory.current", str(GIB + 100 * 1024**2))
    write(own / "memory.stat", f"anon 1\ninactive_file {100 * 1024**2}\n")
    write(own / "cpu.max", "150000 100000\n")
    write(own / "cpu.stat", "usage_usec 12500000\nuser_usec 1\n")
    s = HostCollector(proc_root=str(proc), cgroup_root=str(cg)).read()
    assert s.memory_limit == 2 * GIB
    assert s.memory_used == GIB
    assert s.cpu_limit_cores == 1.5
    assert s.cpu_seconds == 12.5


def test_cgroup_v2_without_limits_falls_back_to_the_host(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    cg = tmp_path / "cgroup"
    write(cg / "cgroup.controllers", "cpu memory\n")
    write(cg / "memory.max", "max\n")
    write(cg / "memory.current", "123\n")
    write(cg / "cpu.max", "max 100000\n")
    s = HostCollector(proc_root=str(proc), cgroup_root=str(cg)).read()
    assert s.memory_limit == 16 * GIB
    assert s.memory_used == 12 * GIB  # MemTotal - MemAvailable
    assert s.cpu_seconds == pytest.approx(1500 / 100)  # busy ticks at USER_HZ 100
    assert s.cpu_limit_cores >= 1


def test_cgroup_v1_limit_and_quota(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc")
    cg = tmp_path / "cgroup"
    mem = cg / "memory" / "docker" / "abc"
    write(mem / "memory.limit_in_bytes", str(512 * 1024**2))
    write(mem / "memory.usage_in_bytes", str(300 * 1024**2))
    write(mem / "memory.stat", f"cache 5\ntotal_inactive_file {44 * 1024**2}\n")
    cpu = cg / "cpu,cpuacct" / "docker" / "abc"
    write(cpu / "cpu.cfs_quota_us", "50000\n")
    write(cpu / "cpu.cfs_period_us", "100000\n")
    write(cpu / "cpuacct.usage", "3000000000\n")
    s = HostCollector(proc_root=str(proc), cgroup_root=str(cg)).read()
    assert s.memory_limit == 512 * 1024**2
    assert s.memory_used == 256 * 1024**2
    assert s.cpu_limit_cores == 0.5
    assert s.cpu_seconds == 3.0


def test_cgroup_v1_unlimited_is_the_host(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "12:memory:/\n11:cpu,cpuacct:/")
    cg = tmp_path / "cgroup"
    write(cg / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(cg / "memory" / "memory.usage_in_bytes", "1\n")
    write(cg / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    write(cg / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    s = HostCollector(proc_root=str(proc), cgroup_root=str(cg)).read()
    assert s.memory_limit == 16 * GIB
    assert s.memory_used == 12 * GIB


def test_runbook_memory_limit_overrides(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    s = HostCollector(proc_root=str(proc), cgroup_root=str(tmp_path / "none"),
                      memory_limit=4 * GIB).read()
    assert s.memory_limit == 4 * GIB


async def test_disk_and_families(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    c = HostCollector(mounts=("/", str(tmp_path)), proc_root=str(proc),
                      cgroup_root=str(tmp_path / "none"))
    families = {f.name: f for f in await c.collect()}
    disk = families["runbook_host_disk_size_bytes"]
    assert {s.labels["mount"] for s in disk.samples} == {"/", str(tmp_path)}
    assert all(s.value > 0 for s in disk.samples)
    assert families["runbook_host_cpu_seconds"].type == "counter"
