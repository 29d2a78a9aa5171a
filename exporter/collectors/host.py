"""Host or container memory, CPU and disk, aware of cgroup v2 and v1 limits."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import psutil
from prometheus_client.core import Metric

from exporter.collectors.base import Collector, counter, gauge

# cgroup v1 writes a huge page-aligned number when there is no memory limit.
_V1_UNLIMITED = 1 << 62
# The share of the time the scrape gives the collector that the disk probes may take, so that
# memory and CPU still arrive when a mount hangs (a stale NFS mount blocks statvfs for minutes).
_DISK_SHARE = 0.5


class DiskUsage(Protocol):
    """What a disk probe gives for a mount (psutil.disk_usage's answer has both)."""

    @property
    def used(self) -> int: ...

    @property
    def free(self) -> int: ...


DiskProbe = Callable[[str], DiskUsage]


@dataclass(frozen=True)
class HostSample:
    """One reading of the host's resources."""

    memory_used: float
    memory_limit: float
    cpu_seconds: float
    cpu_limit_cores: float


class HostCollector(Collector):
    """Memory used and limit, CPU seconds and cores, disk used and size per mount.

    `disk_usage` measures one mount (psutil.disk_usage unless given): it runs in a worker
    thread, and while one for a mount is still running no other is started for that mount:
    a thread stuck in statvfs cannot be stopped, so each scrape would leave one more.
    """

    kind = "host"

    def __init__(self, target: str = "host", timeout: float = 2.0, *,
                 mounts: tuple[str, ...] = ("/",), memory_limit: float | None = None,
                 proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 disk_usage: DiskProbe = psutil.disk_usage) -> None:
        super().__init__(target, timeout)
        self.mounts = mounts
        self.memory_limit = memory_limit
        self.proc = Path(proc_root)
        self.cgroup = Path(cgroup_root)
        self.disk_usage = disk_usage
        self._probes: dict[str, asyncio.Task[DiskUsage]] = {}
        self._disk_errors: dict[str, str] = {}

    def detail(self) -> dict[str, object]:
        return {"disk_errors": dict(self._disk_errors)}

    async def collect(self) -> list[Metric]:
        # A share of the scrape's actual deadline, not of self.timeout: with a 1 s scrape
        # timeout, half of a 2 s timeout would outlast the scrape and lose memory and CPU too.
        now = asyncio.get_running_loop().time()
        wait_until = now + max(0.0, self.deadline() - now) * _DISK_SHARE
        probes = {mount: self._probe(mount) for mount in self.mounts}
        s = await asyncio.to_thread(self.read)
        usages = await self._usages(probes, wait_until)
        labels = ("target",)
        mem_used = gauge("runbook_host_memory_used_bytes",
                         "Memory in use (cgroup working set, else host used)", labels)
        mem_used.add_metric([self.target], s.memory_used)
        mem_limit = gauge("runbook_host_memory_limit_bytes",
                          "Memory limit (cgroup limit when set, else host RAM)", labels)
        mem_limit.add_metric([self.target], s.memory_limit)
        cpu = counter("runbook_host_cpu_seconds", "CPU seconds used by the cgroup, else the host",
                      labels)
        cpu.add_metric([self.target], s.cpu_seconds)
        cores = gauge("runbook_host_cpu_limit_cores",
                      "CPU limit in cores (cgroup quota/period, else CPU count)", labels)
        cores.add_metric([self.target], s.cpu_limit_cores)
        return [mem_used, mem_limit, cpu, cores, *self._disk_families(usages)]

    def _disk_families(self, usages: dict[str, DiskUsage]) -> list[Metric]:
        up = gauge("runbook_host_disk_up", "1 if the mount's usage was read in this scrape",
                   ("target", "mount"))
        used = gauge("runbook_host_disk_used_bytes", "Bytes used on the mount",
                     ("target", "mount"))
        # Size is used + free (space available to unprivileged users), as df's Use% and
        # psutil's percent count it: statvfs' total also holds the blocks reserved for root
        # (5 % by default on ext4, often far more), which no application can fill, so
        # used/total would read well below df and the disk alerts would fire late or never.
        size = gauge("runbook_host_disk_size_bytes",
                     "Usable size of the mount in bytes: used + free to unprivileged users "
                     "(root-reserved blocks left out, as df's Use% does)", ("target", "mount"))
        for mount in self.mounts:
            usage = usages.get(mount)
            up.add_metric([self.target, mount], 0.0 if usage is None else 1.0)
            if usage is not None:
                used.add_metric([self.target, mount], float(usage.used))
                size.add_metric([self.target, mount], float(usage.used + usage.free))
        return [up, used, size]

    def _probe(self, mount: str) -> asyncio.Task[DiskUsage] | None:
        """A new probe of the mount in a thread; None while an earlier one still runs."""
        earlier = self._probes.get(mount)
        if earlier is not None and not earlier.done():
            return None
        task = asyncio.create_task(asyncio.to_thread(self.disk_usage, mount))
        self._probes[mount] = task
        task.add_done_callback(partial(self._probe_done, mount))
        return task

    def _probe_done(self, mount: str, task: asyncio.Task[DiskUsage]) -> None:
        if self._probes.get(mount) is task:
            del self._probes[mount]
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log an abandoned probe's error

    async def _usages(self, probes: dict[str, asyncio.Task[DiskUsage] | None],
                      wait_until: float) -> dict[str, DiskUsage]:
        """Each mount's usage; a mount missing, failing or too slow is left out and noted."""
        running = [t for t in probes.values() if t is not None]
        if running:
            # asyncio.wait leaves unfinished probes running: the next scrape sees them busy.
            await asyncio.wait(running, timeout=max(0.0, wait_until -
                                                    asyncio.get_running_loop().time()))
        usages: dict[str, DiskUsage] = {}
        self._disk_errors = {}
        for mount, task in probes.items():
            outcome = _usage_or_error(task)
            if isinstance(outcome, str):
                self._disk_errors[mount] = outcome
            else:
                usages[mount] = outcome
        return usages

    def read(self) -> HostSample:
        """Memory and CPU from the cgroup files when a limit is set there, else /proc."""
        host_used, host_total = self._meminfo()
        host_cpu = self._proc_cpu_seconds()
        cores = float(psutil.cpu_count() or os.cpu_count() or 1)
        used, limit, cpu, quota = host_used, host_total, host_cpu, cores
        cg = self._cgroup_v2_dir()
        if cg is not None:
            used, limit, cpu, quota = _v2(cg, host_used, host_total, host_cpu, cores)
        else:
            v1 = _v1_dirs(self.cgroup, self.proc)
            if v1 is not None:
                used, limit, cpu, quota = _v1(*v1, host_used, host_total, host_cpu, cores)
        if self.memory_limit is not None:
            limit = self.memory_limit
        return HostSample(used, limit, cpu, quota)

    def _meminfo(self) -> tuple[float, float]:
        fields: dict[str, float] = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[key] = float(parts[0]) * (1024 if parts[-1] == "kB" else 1)
        total = fields["MemTotal"]
        available = fields.get("MemAvailable", fields.get("MemFree", 0.0))
        return total - available, total

    def _proc_cpu_seconds(self) -> float:
        first = (self.proc / "stat").read_text().splitlines()[0].split()
        # user nice system idle iowait irq softirq steal: busy time excludes idle and iowait.
        ticks = [float(x) for x in first[1:9]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / float(os.sysconf("SC_CLK_TCK"))

    def _cgroup_v2_dir(self) -> Path | None:
        if not (self.cgroup / "cgroup.controllers").exists():
            return None
        own = _own_cgroup(self.proc, "")
        if own:
            candidate = self.cgroup / own.lstrip("/")
            if (candidate / "cgroup.controllers").exists():
                return candidate
        return self.cgroup


def _usage_or_error(task: asyncio.Task[DiskUsage] | None) -> DiskUsage | str:
    if task is None:
        return "the probe started by an earlier scrape is still running"
    if not task.done():
        return "timed out"
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return task.result() if exc is None else f"{type(exc).__name__}: {exc}"


def _own_cgroup(proc: Path, controller: str) -> str | None:
    """This process's cgroup path for a v1 controller, or the v2 path when controller is ''."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller == "" and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if controller and controller in parts[1].split(","):
            return parts[2]
    return None


def _read_number(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _stat_file(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def _v2(cg: Path, host_used: float, host_total: float, host_cpu: float,
        cores: float) -> tuple[float, float, float, float]:
    used, limit, cpu, quota = host_used, host_total, host_cpu, cores
    current = _read_number(cg / "memory.current")
    maximum = _read_number(cg / "memory.max")
    if current is not None and maximum not in (None, "max"):
        # Working set: what the kernel cannot simply drop, as the OOM killer sees it.
        inactive = _stat_file(cg / "memory.stat").get("inactive_file", 0.0)
        used = max(0.0, float(current) - inactive)
        limit = min(float(maximum or host_total), host_total)
    usage = _stat_file(cg / "cpu.stat").get("usage_usec")
    cpu_max = _read_number(cg / "cpu.max")
    if cpu_max is not None:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0] != "max":
            quota = float(parts[0]) / float(parts[1])
            if usage is not None:
                cpu = usage / 1e6
    return used, limit, cpu, quota


def _v1_dirs(root: Path, proc: Path) -> tuple[Path, Path] | None:
    memory = _v1_controller(root, proc, "memory", ("memory",))
    cpu = _v1_controller(root, proc, "cpu", ("cpu,cpuacct", "cpu", "cpuacct,cpu"))
    if memory is None and cpu is None:
        return None
    return memory or root / "memory", cpu or root / "cpu"


def _v1_controller(root: Path, proc: Path, controller: str,
                   names: tuple[str, ...]) -> Path | None:
    for name in names:
        base = root / name
        if base.is_dir():
            own = _own_cgroup(proc, controller)
            if own:
                candidate = base / own.lstrip("/")
                if candidate.is_dir():
                    return candidate
            return base
    return None


def _v1(memory: Path, cpu_dir: Path, host_used: float, host_total: float, host_cpu: float,
        cores: float) -> tuple[float, float, float, float]:
    used, limit, cpu, quota = host_used, host_total, host_cpu, cores
    usage = _read_number(memory / "memory.usage_in_bytes")
    limit_text = _read_number(memory / "memory.limit_in_bytes")
    if usage is not None and limit_text is not None and float(limit_text) < _V1_UNLIMITED:
        inactive = _stat_file(memory / "memory.stat").get("total_inactive_file", 0.0)
        used = max(0.0, float(usage) - inactive)
        limit = min(float(limit_text), host_total)
    quota_us = _read_number(cpu_dir / "cpu.cfs_quota_us")
    period_us = _read_number(cpu_dir / "cpu.cfs_period_us")
    if quota_us is not None and period_us is not None and float(quota_us) > 0:
        quota = float(quota_us) / float(period_us)
        acct = _read_number(cpu_dir / "cpuacct.usage")
        if acct is not None:
            cpu = float(acct) / 1e9
    return used, limit, cpu, quota
