"""Host or container memory, CPU and disk, aware of cgroup v2 and v1 limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.core import Metric

from exporter.collectors.base import Collector, counter, gauge

# cgroup v1 writes a huge page-aligned number when there is no memory limit.
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class HostSample:
    """One reading of the host's resources."""

    memory_used: float
    memory_limit: float
    cpu_seconds: float
    cpu_limit_cores: float


class HostCollector(Collector):
    """Memory used and limit, CPU seconds and cores, disk used and size per mount."""

    kind = "host"

    def __init__(self, target: str = "host", timeout: float = 2.0, *,
                 mounts: tuple[str, ...] = ("/",), memory_limit: float | None = None,
                 proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        super().__init__(target, timeout)
        self.mounts = mounts
        self.memory_limit = memory_limit
        self.proc = Path(proc_root)
        self.cgroup = Path(cgroup_root)

    async def collect(self) -> list[Metric]:
        s = self.read()
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
        used = gauge("runbook_host_disk_used_bytes", "Bytes used on the mount",
                     ("target", "mount"))
        size = gauge("runbook_host_disk_size_bytes", "Size of the mount in bytes",
                     ("target", "mount"))
        for mount in self.mounts:
            usage = psutil.disk_usage(mount)
            used.add_metric([self.target, mount], float(usage.used))
            size.add_metric([self.target, mount], float(usage.total))
        return [mem_used, mem_limit, cpu, cores, used, size]

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
