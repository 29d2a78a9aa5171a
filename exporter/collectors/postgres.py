"""PostgreSQL: connections, long queries, size, deadlocks, cache, lag, statements, custom SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, counter, gauge, one

if TYPE_CHECKING:
    import asyncpg  # imported where a pool is opened: only runbooks with PostgreSQL pay for it

ACTIVITY_SQL = """
SELECT coalesce(state, 'unknown') AS state, count(*)::float8 AS n
FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1
"""
LONG_SQL = """
SELECT
  count(*) FILTER (WHERE state = 'active' AND now() - query_start > make_interval(secs => $1))
    ::float8 AS long_running,
  coalesce(max(extract(epoch FROM now() - query_start))
    FILTER (WHERE state = 'active'), 0)::float8 AS longest,
  count(*) FILTER (WHERE state LIKE 'idle in transaction%'
    AND now() - state_change > make_interval(secs => $1))::float8 AS idle_in_txn
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
DATABASE_SQL = """
SELECT datname, pg_database_size(datname)::float8 AS size, deadlocks::float8 AS deadlocks,
       blks_hit::float8 AS blks_hit, blks_read::float8 AS blks_read
FROM pg_stat_database WHERE datname IS NOT NULL AND datname NOT LIKE 'template%'
"""
SETTINGS_SQL = """
SELECT current_setting('max_connections')::float8 AS max_connections,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
            ELSE 0 END::float8 AS lag,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AS pgss,
       current_database() AS db
"""
STATEMENTS_MEAN_SQL = """
SELECT coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0)::float8 / 1000 AS mean
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
STATEMENTS_TOP_SQL = """
SELECT queryid::text AS queryid, (mean_exec_time / 1000)::float8 AS mean
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND queryid IS NOT NULL
ORDER BY mean_exec_time DESC LIMIT $1
"""


@dataclass(frozen=True)
class CustomSql:
    """A runbook query whose rows become the gauge runbook_pg_query_<name>."""

    name: str
    sql: str
    help: str
    value: str
    labels: tuple[str, ...]


class PostgresCollector(Collector):
    """One PostgreSQL database, through a small asyncpg pool."""

    kind = "postgres"
    up_metric = "runbook_pg_up"
    up_help = "1 if PostgreSQL answered"

    def __init__(self, target: str, timeout: float, *, pool: asyncpg.Pool,
                 long_query: float = 300.0, top_statements: int = 10,
                 queries: Sequence[CustomSql] = ()) -> None:
        super().__init__(target, timeout)
        self.pool = pool
        self.long_query = long_query
        self.top_statements = top_statements
        self.queries = tuple(queries)
        self.statements_available: bool | None = None

    def detail(self) -> dict[str, object]:
        if self.statements_available is False:
            return {"pg_stat_statements": "no data: the extension is not installed in this "
                                          "database (CREATE EXTENSION pg_stat_statements)"}
        return {}

    async def collect(self) -> list[Metric]:
        t = self.target
        async with self.pool.acquire() as conn:
            activity = await conn.fetch(ACTIVITY_SQL)
            long = await conn.fetchrow(LONG_SQL, self.long_query)
            databases = await conn.fetch(DATABASE_SQL)
            settings = await conn.fetchrow(SETTINGS_SQL)
            assert long is not None
            assert settings is not None
            self.statements_available = bool(settings["pgss"])
            statements: list[Metric] = []
            if self.statements_available:
                statements = await self._statements(conn)
            custom = [await self._custom(conn, q) for q in self.queries]
        connections = gauge("runbook_pg_connections", "Client connections by state",
                            ("target", "state"))
        for row in activity:
            connections.add_metric([t, row["state"]], row["n"])
        size = gauge("runbook_pg_database_size_bytes", "Database size", ("target", "datname"))
        deadlocks = counter("runbook_pg_deadlocks", "Deadlocks detected", ("target", "datname"))
        hit, read = 0.0, 0.0
        for row in databases:
            size.add_metric([t, row["datname"]], row["size"])
            deadlocks.add_metric([t, row["datname"]], row["deadlocks"])
            hit += row["blks_hit"]
            read += row["blks_read"]
        available = gauge("runbook_pg_stat_statements_available",
                          "1 if pg_stat_statements is installed (0: statement metrics absent)",
                          ("target",))
        available.add_metric([t], 1.0 if self.statements_available else 0.0)
        return [
            connections,
            one("runbook_pg_max_connections", "max_connections setting", t,
                settings["max_connections"]),
            one("runbook_pg_long_running_queries", "Active queries running longer than the "
                "runbook's long_query", t, long["long_running"]),
            one("runbook_pg_longest_query_seconds", "Age of the longest running active query",
                t, long["longest"]),
            one("runbook_pg_idle_in_transaction", "Sessions idle in a transaction longer than "
                "long_query", t, long["idle_in_txn"]),
            size, deadlocks,
            one("runbook_pg_blocks_hit", "Buffer cache hits, all databases", t, hit, "counter"),
            one("runbook_pg_blocks_read", "Blocks read from disk, all databases", t, read,
                "counter"),
            one("runbook_pg_replication_lag_seconds", "Replay lag on a replica (0 on a primary)",
                t, settings["lag"]),
            available,
            *statements,
            *custom,
        ]

    async def _statements(self, conn: asyncpg.Connection) -> list[Metric]:
        t = self.target
        mean = await conn.fetchval(STATEMENTS_MEAN_SQL)
        out: list[Metric] = [one("runbook_pg_statements_mean_seconds",
                                 "Mean execution time over all statements", t, float(mean))]
        if self.top_statements > 0:
            top = gauge("runbook_pg_statement_mean_seconds",
                        "Mean execution time of the slowest statements (top N)",
                        ("target", "queryid"))
            for row in await conn.fetch(STATEMENTS_TOP_SQL, self.top_statements):
                top.add_metric([t, row["queryid"]], row["mean"])
            out.append(top)
        return out

    async def _custom(self, conn: asyncpg.Connection, query: CustomSql) -> Metric:
        doc = query.help or f"Runbook query {query.name}"
        family = gauge(f"runbook_pg_query_{query.name}", doc, ("target", *query.labels))
        for row in await conn.fetch(query.sql):
            value = row[query.value]
            family.add_metric([self.target, *(str(row[c]) for c in query.labels)],
                              float(value) if value is not None else float("nan"))
        return family

