"""Host collector on fake /proc and cgroup trees: v2, v1, no limit, and the runbook override."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from prometheus_client.core import Metric

from exporter.collectors.host import DiskUsage, HostCollector
from exporter.scrape import Scraper, deadline_from_header

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


def samples(families: list[Metric], name: str) -> dict[str, float]:
    """The family's values by mount."""
    family = next(f for f in families if f.name == name)
    return {s.labels["mount"]: s.value for s in family.samples}


class Usage(NamedTuple):
    """A statvfs reading as psutil.disk_usage gives it (total includes root's reserve)."""

    total: int
    used: int
    free: int


async def test_disk_size_leaves_out_root_reserved_blocks(tmp_path: Path) -> None:
    """used/size is df's Use%: a mount with 60 GiB reserved for root, 39 GiB used and 61 GiB
    free is 39 % full, not 39/160."""
    proc = fake_proc(tmp_path)
    reserved = Usage(total=160 * GIB, used=39 * GIB, free=61 * GIB)
    c = HostCollector(mounts=("/data",), proc_root=str(proc),
                      cgroup_root=str(tmp_path / "none"), disk_usage=lambda mount: reserved)
    families = await c.collect()
    used = samples(families, "runbook_host_disk_used_bytes")["/data"]
    size = samples(families, "runbook_host_disk_size_bytes")["/data"]
    assert size == 100 * GIB
    assert used / size == pytest.approx(0.39)
    # And on this machine's real root, the ratio is psutil's percent (what df shows).
    c = HostCollector(proc_root=str(proc), cgroup_root=str(tmp_path / "none"))
    families = await c.collect()
    ratio = samples(families, "runbook_host_disk_used_bytes")["/"] \
        / samples(families, "runbook_host_disk_size_bytes")["/"]
    assert ratio * 100 == pytest.approx(psutil.disk_usage("/").percent, abs=1.0)


async def test_a_missing_mount_is_flagged_and_the_rest_still_reported(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    gone = str(tmp_path / "unmounted")
    c = HostCollector(mounts=("/", gone), proc_root=str(proc),
                      cgroup_root=str(tmp_path / "none"))
    families = await c.collect()
    assert samples(families, "runbook_host_disk_up") == {"/": 1.0, gone: 0.0}
    assert set(samples(families, "runbook_host_disk_size_bytes")) == {"/"}
    assert set(samples(families, "runbook_host_disk_used_bytes")) == {"/"}
    memory = next(f for f in families if f.name == "runbook_host_memory_used_bytes")
    assert memory.samples[0].value == 12 * GIB
    errors = c.detail()["disk_errors"]
    assert isinstance(errors, dict)
    assert errors[gone].startswith("FileNotFoundError")


class HangingProbe:
    """psutil.disk_usage, except that one mount blocks its thread until released, as statvfs
    does on a stale NFS mount."""

    def __init__(self, hung: str) -> None:
        self.hung = hung
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()

    def __call__(self, mount: str) -> DiskUsage:
        self.calls[mount] += 1
        if mount == self.hung:
            self.release.wait(30)
        return psutil.disk_usage(mount)


async def test_a_hung_mount_is_reported_down_and_not_probed_again(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    hung = str(tmp_path)
    probe = HangingProbe(hung)
    c = HostCollector(timeout=0.4, mounts=("/", hung), proc_root=str(proc),
                      cgroup_root=str(tmp_path / "none"), disk_usage=probe)
    scraper = Scraper([c])
    try:
        for _ in range(3):
            started = time.perf_counter()
            families = await scraper.scrape(2.0)
            assert time.perf_counter() - started < 1.0
            assert scraper.health[("host", "host")].up
            assert samples(families, "runbook_host_disk_up") == {"/": 1.0, hung: 0.0}
            assert "runbook_host_memory_used_bytes" in {f.name for f in families}
        assert probe.calls == {"/": 3, hung: 1}  # no thread piled up per scrape
        probe.release.set()
        for _ in range(50):
            families = await scraper.scrape(2.0)
            if samples(families, "runbook_host_disk_up")[hung] == 1.0:
                break
            await asyncio.sleep(0.02)
        assert samples(families, "runbook_host_disk_size_bytes")[hung] > 0
        assert probe.calls[hung] == 2
    finally:
        probe.release.set()


async def test_a_hung_mount_does_not_hold_the_scrape_past_its_deadline(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    probe = HangingProbe("/")
    c = HostCollector(timeout=10.0, proc_root=str(proc), cgroup_root=str(tmp_path / "none"),
                      disk_usage=probe)
    scraper = Scraper([c])
    try:
        started = time.perf_counter()
        families = await scraper.scrape(0.2)
        assert time.perf_counter() - started < 1.0
        # The disks got half of the 0.2 s, not half of the 10 s timeout: the rest arrived.
        assert scraper.health[("host", "host")].up
        assert samples(families, "runbook_host_disk_up") == {"/": 0.0}
    finally:
        probe.release.set()


async def test_a_hung_mount_leaves_memory_and_cpu_within_a_1s_scrape_timeout(
        tmp_path: Path) -> None:
    """Prometheus' 1 s scrape timeout leaves the collector 0.5 s: the disk wait is half of that
    (half of the collector's own 2 s timeout would outlast it and lose memory and CPU too)."""
    proc = fake_proc(tmp_path)
    probe = HangingProbe("/")
    c = HostCollector(proc_root=str(proc), cgroup_root=str(tmp_path / "none"), disk_usage=probe)
    assert c.timeout == 2.0
    scraper = Scraper([c])
    try:
        started = time.perf_counter()
        families = await scraper.scrape(deadline_from_header("1"))
        took = time.perf_counter() - started
        assert 0.2 <= took < 0.5  # waited for the disk about half of the 0.5 s it had
        assert scraper.health[("host", "host")].up
        names = {f.name for f in families}
        assert {"runbook_host_memory_used_bytes", "runbook_host_cpu_seconds"} <= names
        assert samples(families, "runbook_host_disk_up") == {"/": 0.0}
        assert c.detail()["disk_errors"] == {"/": "timed out"}
    finally:
        probe.release.set()


async def test_outside_a_scrape_the_disk_wait_is_half_the_collector_timeout(
        tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    probe = HangingProbe("/")
    c = HostCollector(timeout=0.4, proc_root=str(proc), cgroup_root=str(tmp_path / "none"),
                      disk_usage=probe)
    try:
        started = time.perf_counter()
        families = await c.collect()
        assert 0.15 <= time.perf_counter() - started < 0.4
        assert samples(families, "runbook_host_disk_up") == {"/": 0.0}
    finally:
        probe.release.set()
