"""PostgreSQL: connections, long queries, size, deadlocks, cache, lag, statements, custom SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, counter, gauge, one

if TYPE_CHECKING:
    import asyncpg  # imported where a pool is opened: only runbooks with PostgreSQL pay for it

# The exporter's own backend is left out: it is always active while it asks.
ACTIVITY_SQL = """
SELECT coalesce(state, 'unknown') AS state, count(*)::float8 AS n
FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1
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
# pg_database_size raises for a database the role may not CONNECT to (unless it has
# pg_read_all_stats), which would fail the whole collector: such a size is NULL and skipped,
# while its deadlocks and blocks, readable by anyone, are still counted.
DATABASE_SQL = """
SELECT s.datname,
       CASE WHEN has_database_privilege(d.oid, 'CONNECT')
                 OR pg_has_role('pg_read_all_stats', 'USAGE')
            THEN pg_database_size(d.oid) END::float8 AS size,
       s.deadlocks::float8 AS deadlocks, s.blks_hit::float8 AS blks_hit,
       s.blks_read::float8 AS blks_read
FROM pg_stat_database s JOIN pg_database d ON d.oid = s.datid
WHERE NOT d.datistemplate
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
# pg_stat_statements keeps a row per (userid, dbid, queryid, toplevel): the rows of one
# queryid are summed, or a query run by two roles would be two samples with the same labels.
STATEMENTS_TOP_SQL = """
SELECT queryid::text AS queryid,
       coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0)::float8 / 1000 AS mean
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND queryid IS NOT NULL
GROUP BY queryid
ORDER BY mean DESC LIMIT $1
"""
STATEMENTS_NOT_INSTALLED = ("no data: the extension is not installed in this database "
                            "(CREATE EXTENSION pg_stat_statements)")
STATEMENTS_NOT_LOADED = ("no data: the extension is installed but not loaded (add "
                         "pg_stat_statements to shared_preload_libraries and restart PostgreSQL)")


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
        # Why the last scrape had no statement metrics; None when it had them.
        self.statements_missing: str | None = None

    def detail(self) -> dict[str, object]:
        if self.statements_missing is not None:
            return {"pg_stat_statements": self.statements_missing}
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
            statements = await self._statements(conn, installed=bool(settings["pgss"]))
            custom = [await self._custom(conn, q) for q in self.queries]
        connections = gauge("runbook_pg_connections", "Client connections by state",
                            ("target", "state"))
        for row in activity:
            connections.add_metric([t, row["state"]], row["n"])
        size = gauge("runbook_pg_database_size_bytes", "Database size", ("target", "datname"))
        deadlocks = counter("runbook_pg_deadlocks", "Deadlocks detected", ("target", "datname"))
        hit, read = 0.0, 0.0
        for row in databases:
            if row["size"] is not None:
                size.add_metric([t, row["datname"]], row["size"])
            deadlocks.add_metric([t, row["datname"]], row["deadlocks"])
            hit += row["blks_hit"]
            read += row["blks_read"]
        available = gauge("runbook_pg_stat_statements_available",
                          "1 if pg_stat_statements is installed and loaded (0: statement "
                          "metrics absent)", ("target",))
        available.add_metric([t], 1.0 if self.statements_missing is None else 0.0)
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

    async def _statements(self, conn: asyncpg.Connection, *, installed: bool) -> list[Metric]:
        """The statement families, or none with statements_missing saying why."""
        import asyncpg  # already loaded by the pool `conn` came from

        self.statements_missing = None if installed else STATEMENTS_NOT_INSTALLED
        if not installed:
            return []
        try:
            return await self._read_statements(conn)
        except asyncpg.ObjectNotInPrerequisiteStateError:
            # CREATE EXTENSION works without the library in shared_preload_libraries; only
            # reading the view then fails, and that must not take the other metrics down.
            self.statements_missing = STATEMENTS_NOT_LOADED
            return []

    async def _read_statements(self, conn: asyncpg.Connection) -> list[Metric]:
        t = self.target
        mean = await conn.fetchval(STATEMENTS_MEAN_SQL)
        out: list[Metric] = [one("runbook_pg_statements_mean_seconds",
                                 "Mean execution time over all statements", t, float(mean))]
        if self.top_statements > 0:
            top = gauge("runbook_pg_statement_mean_seconds",
                        "Mean execution time of the slowest statements (top N), all roles",
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

