"""The collectors by name: each builds its collectors from the runbook's watch section."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from difflib import get_close_matches

from exporter.collectors.base import Collector
from exporter.collectors.freshness import FreshnessCollector
from exporter.collectors.host import HostCollector
from exporter.collectors.http import DEFAULT_BUCKETS, HttpProbeCollector
from exporter.collectors.logs import LogCollector
from exporter.collectors.postgres import CustomSql, PostgresCollector
from exporter.collectors.queues import QueuesCollector
from exporter.collectors.redis import RedisCollector
from exporter.resources import ConfigError, Resources
from runbook.schema import Watch


@dataclass(frozen=True)
class Options:
    """Exporter settings that are not in the runbook (paths, intervals, buckets)."""

    proc_root: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    state_dir: str | None = None
    discover_interval: float = 60.0
    log_poll_interval: float = 1.0
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


Factory = Callable[[Watch, Resources, Options], list[Collector]]


def _host(w: Watch, r: Resources, o: Options) -> list[Collector]:
    if w.host is None:
        return []
    limit = float(w.host.memory_limit) if w.host.memory_limit is not None else None
    return [HostCollector("host", mounts=tuple(w.host.mounts), memory_limit=limit,
                          proc_root=o.proc_root, cgroup_root=o.cgroup_root)]


def _http(w: Watch, r: Resources, o: Options) -> list[Collector]:
    return [HttpProbeCollector(p.name, p.url, session=r.session, interval=p.interval,
                               timeout=p.timeout, expect_status=p.expect_status,
                               expect_json=p.expect_json, buckets=o.buckets) for p in w.http]


def _redis(w: Watch, r: Resources, o: Options) -> list[Collector]:
    return [RedisCollector(t.name, t.timeout, client=r.redis[t.name]) for t in w.redis]


def _queues(w: Watch, r: Resources, o: Options) -> list[Collector]:
    out: list[Collector] = []
    for t in w.redis:
        q = t.queues
        if q.bullmq or q.celery or q.rq or q.discover:
            out.append(QueuesCollector(
                t.name, t.timeout, client=r.redis[t.name], bullmq=q.bullmq,
                bullmq_prefix=q.bullmq_prefix, celery=q.celery, rq=q.rq, discover=q.discover,
                discover_interval=o.discover_interval))
    return out


def _postgres(w: Watch, r: Resources, o: Options) -> list[Collector]:
    return [PostgresCollector(
        t.name, t.timeout, pool=r.pools[t.name], long_query=t.long_query,
        top_statements=t.top_statements,
        queries=[CustomSql(q.name, q.sql, q.help, q.value, tuple(q.labels)) for q in t.queries])
        for t in w.postgres]


def _logs(w: Watch, r: Resources, o: Options) -> list[Collector]:
    return [LogCollector(lw.name, lw.path, lw.patterns, state_dir=o.state_dir,
                         interval=o.log_poll_interval) for lw in w.logs]


def _freshness(w: Watch, r: Resources, o: Options) -> list[Collector]:
    out: list[Collector] = []
    redis_timeouts = {t.name: t.timeout for t in w.redis}
    pg_timeouts = {t.name: t.timeout for t in w.postgres}
    for f in w.freshness:
        if f.redis_key is not None and f.redis is not None:
            out.append(FreshnessCollector(f.name, redis_timeouts[f.redis],
                                          redis=r.redis[f.redis], redis_key=f.redis_key))
        elif f.sql is not None and f.postgres is not None:
            out.append(FreshnessCollector(f.name, pg_timeouts[f.postgres],
                                          pool=r.pools[f.postgres], sql=f.sql))
        elif f.file is not None:
            out.append(FreshnessCollector(f.name, 2.0, file=f.file))
        else:
            out.append(FreshnessCollector(f.name, 5.0, session=r.session, url=f.http_json,
                                          field=f.field))
    return out


# Collector name -> what builds its collectors. The order is the order of the scrape output.
COLLECTORS: dict[str, Factory] = {
    "host": _host,
    "http": _http,
    "redis": _redis,
    "queues": _queues,
    "postgres": _postgres,
    "logs": _logs,
    "freshness": _freshness,
}


def check_names(names: Sequence[str]) -> list[str]:
    """The names, each known; else ConfigError naming the unknown one and the known ones."""
    for name in names:
        if name not in COLLECTORS:
            close = get_close_matches(name, COLLECTORS, n=1)
            hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(COLLECTORS)
            raise ConfigError(f"unknown collector {name!r} ({hint})")
    return list(dict.fromkeys(names))


def build(names: Sequence[str], watch: Watch, resources: Resources,
          options: Options) -> list[Collector]:
    """Every collector of these names for this watch section."""
    return [c for name in check_names(names) for c in COLLECTORS[name](watch, resources, options)]
