"""The catalog of signals a runbook can alert on: their unit, direction and source."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Unit(enum.Enum):
    """How a signal's thresholds are written and compared."""

    RATIO = "ratio"  # 0..1, written 70% or 0.7
    SECONDS = "seconds"  # written 500ms, 4s, 5m
    COUNT = "count"  # a plain number
    BYTES = "bytes"  # written 512MiB or 3.4GB


class Source(enum.Enum):
    """The `watch` section (or app metrics) a signal is measured from."""

    HOST = "host"
    HTTP = "http"
    APP = "app"  # the service's own request counter / latency histogram, else http probes
    REDIS = "redis"
    QUEUES = "queues"
    POSTGRES = "postgres"
    LOGS = "logs"
    FRESHNESS = "freshness"


@dataclass(frozen=True)
class Signal:
    """One watchable number: what it means, how it is measured and which way is bad."""

    name: str
    unit: Unit
    source: Source
    below: bool
    help: str
    # Labels an alert on this signal may narrow by with `select:` (e.g. one queue).
    selectable: tuple[str, ...] = ("target",)


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("memory_usage", Unit.RATIO, Source.HOST, False,
               "memory in use over the memory limit (the cgroup's when set)", ()),
        Signal("cpu_usage", Unit.RATIO, Source.HOST, False,
               "CPU time used over the CPU available (the cgroup quota when set)", ()),
        Signal("disk_usage", Unit.RATIO, Source.HOST, False,
               "bytes used over size, per watched mount", ("mount",)),
        Signal("error_rate", Unit.RATIO, Source.APP, False,
               "failed requests over all requests (5xx, or failed probes)", ("target",)),
        Signal("success_rate", Unit.RATIO, Source.APP, True,
               "successful requests over all requests", ("target",)),
        Signal("latency_p95", Unit.SECONDS, Source.APP, False,
               "95th percentile request latency", ("target",)),
        Signal("latency_p99", Unit.SECONDS, Source.APP, False,
               "99th percentile request latency", ("target",)),
        Signal("probe_failures", Unit.COUNT, Source.HTTP, False,
               "consecutive failed health checks of an HTTP probe", ("target",)),
        Signal("queue_depth", Unit.COUNT, Source.QUEUES, False,
               "jobs waiting (wait + paused + prioritized) per queue", ("target", "queue", "kind")),
        Signal("queue_failed", Unit.COUNT, Source.QUEUES, False,
               "jobs in the failed set per queue", ("target", "queue", "kind")),
        Signal("queue_oldest_age", Unit.SECONDS, Source.QUEUES, False,
               "age of the oldest waiting job per queue", ("target", "queue", "kind")),
        Signal("queue_workers", Unit.COUNT, Source.QUEUES, True,
               "workers serving a queue", ("target", "queue", "kind")),
        Signal("cache_hit_rate", Unit.RATIO, Source.REDIS, True,
               "keyspace hits over hits + misses", ("target",)),
        Signal("redis_memory_usage", Unit.RATIO, Source.REDIS, False,
               "used memory over maxmemory", ("target",)),
        Signal("db_connections", Unit.RATIO, Source.POSTGRES, False,
               "connections over max_connections", ("target",)),
        Signal("db_long_queries", Unit.COUNT, Source.POSTGRES, False,
               "queries running longer than the target's long_query threshold", ("target",)),
        Signal("db_longest_query", Unit.SECONDS, Source.POSTGRES, False,
               "run time of the longest running query", ("target",)),
        Signal("db_idle_in_transaction", Unit.COUNT, Source.POSTGRES, False,
               "sessions idle in a transaction longer than the long_query threshold", ("target",)),
        Signal("db_query_time", Unit.SECONDS, Source.POSTGRES, False,
               "mean statement time (pg_stat_statements)", ("target",)),
        Signal("db_replication_lag", Unit.SECONDS, Source.POSTGRES, False,
               "replay lag on a replica", ("target",)),
        Signal("db_cache_hit_rate", Unit.RATIO, Source.POSTGRES, True,
               "shared buffer hits over hits + reads", ("target",)),
        Signal("log_errors", Unit.COUNT, Source.LOGS, False,
               "lines matching a pattern over the last 5 minutes", ("target", "pattern")),
        Signal("staleness", Unit.SECONDS, Source.FRESHNESS, False,
               "time since the last success of a cron job or heartbeat", ("target",)),
    )
}
