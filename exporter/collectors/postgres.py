"""PostgreSQL: connections, long queries, size, deadlocks, cache, lag, statements, custom SQL."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, counter, gauge, one

if TYPE_CHECKING:
    import asyncpg  # imported where a pool is opened: only runbooks with PostgreSQL pay for it

# The exporter's own sessions are left out: the one asking (always active while it asks) and
# the pool's others (freshness checks, an idle second connection), known by the
# application_name the pool sets on each (unless it is empty, as most clients' is).
ACTIVITY_SQL = """
SELECT coalesce(state, 'unknown') AS state, count(*)::float8 AS n
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND (current_setting('application_name') = ''
       OR application_name IS DISTINCT FROM current_setting('application_name'))
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
  AND (current_setting('application_name') = ''
       OR application_name IS DISTINCT FROM current_setting('application_name'))
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
            ELSE 0 END::float8 AS lag
"""
# The extension's view lives in the schema it was created in (Supabase: `extensions`), which
# need not be on the search_path, so it is named with its schema. No row: not installed.
STATEMENTS_SCHEMA_SQL = """
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_stat_statements'
"""
# {view}: the schema-qualified view, each part through quote_ident.
STATEMENTS_MEAN_SQL = """
SELECT coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0)::float8 / 1000 AS mean
FROM {view}
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# pg_stat_statements keeps a row per (userid, dbid, queryid, toplevel): the rows of one
# queryid are summed, or a query run by two roles would be two samples with the same labels.
STATEMENTS_TOP_SQL = """
SELECT queryid::text AS queryid,
       coalesce(sum(total_exec_time) / nullif(sum(calls), 0), 0)::float8 / 1000 AS mean
FROM {view}
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND queryid IS NOT NULL
GROUP BY queryid
ORDER BY mean DESC LIMIT $1
"""
STATEMENTS_NOT_INSTALLED = ("no data: the extension is not installed in this database "
                            "(CREATE EXTENSION pg_stat_statements)")
STATEMENTS_NOT_LOADED = ("no data: the extension is installed but not loaded (add "
                         "pg_stat_statements to shared_preload_libraries and restart PostgreSQL)")

T = TypeVar("T")


def quote_ident(name: str) -> str:
    """An SQL identifier quoted as PostgreSQL's quote_ident does: any name is taken literally."""
    return '"' + name.replace('"', '""') + '"'


class QueryShapeError(ValueError):
    """A runbook query's rows are not as the runbook says (a column missing, a value that is
    not a number): like an SQL error, that query's failure only."""


@dataclass(frozen=True)
class CustomSql:
    """A runbook query whose rows become the gauge runbook_pg_query_<name>."""

    name: str
    sql: str
    help: str
    value: str
    labels: tuple[str, ...]


class PostgresCollector(Collector):
    """One PostgreSQL database, through a small asyncpg pool.

    Each part of a scrape (the built-in reads and each runbook query) is one statement block:
    an error the server answers with fails that part only, shown by runbook_pg_part_up and in
    /health/detail, while the others still report and runbook_pg_up stays 1. A lost connection
    or a FATAL error fails the whole scrape, as the server did not answer.
    """

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
        # The parts of the last scrape that failed, and why.
        self.part_errors: dict[str, str] = {}

    def detail(self) -> dict[str, object]:
        out: dict[str, object] = {"part_errors": dict(self.part_errors)}
        if self.statements_missing is not None:
            out["pg_stat_statements"] = self.statements_missing
        return out

    async def collect(self) -> list[Metric]:
        t = self.target
        self.part_errors = {}
        self.statements_missing = None
        async with self.pool.acquire() as conn:
            activity = await self._part("connections", conn.fetch(ACTIVITY_SQL))
            long = await self._part("long_queries", conn.fetchrow(LONG_SQL, self.long_query))
            databases = await self._part("databases", conn.fetch(DATABASE_SQL))
            settings = await self._part("settings", conn.fetchrow(SETTINGS_SQL))
            statements = await self._part("statements", self._statements(conn))
            custom = [await self._part(f"query_{q.name}", self._custom(conn, q))
                      for q in self.queries]
        out: list[Metric] = []
        if activity is not None:
            connections = gauge("runbook_pg_connections", "Client connections by state",
                                ("target", "state"))
            for row in activity:
                connections.add_metric([t, row["state"]], row["n"])
            out.append(connections)
        if settings is not None:
            out.append(one("runbook_pg_max_connections", "max_connections setting", t,
                           settings["max_connections"]))
        if long is not None:
            out += [
                one("runbook_pg_long_running_queries", "Active queries running longer than the "
                    "runbook's long_query", t, long["long_running"]),
                one("runbook_pg_longest_query_seconds", "Age of the longest running active "
                    "query", t, long["longest"]),
                one("runbook_pg_idle_in_transaction", "Sessions idle in a transaction longer "
                    "than long_query", t, long["idle_in_txn"]),
            ]
        if databases is not None:
            out += self._database_families(databases)
        if settings is not None:
            out.append(one("runbook_pg_replication_lag_seconds",
                           "Replay lag on a replica (0 on a primary)", t, settings["lag"]))
        available = gauge("runbook_pg_stat_statements_available",
                          "1 if pg_stat_statements is installed and loaded (0: statement "
                          "metrics absent)", ("target",))
        available.add_metric([t], 1.0 if statements is not None
                             and self.statements_missing is None else 0.0)
        out += [available, *(statements or []), *(c for c in custom if c is not None),
                self._part_up()]
        return out

    def _database_families(self, databases: list[asyncpg.Record]) -> list[Metric]:
        t = self.target
        size = gauge("runbook_pg_database_size_bytes", "Database size", ("target", "datname"))
        deadlocks = counter("runbook_pg_deadlocks", "Deadlocks detected", ("target", "datname"))
        hit = counter("runbook_pg_blocks_hit", "Buffer cache hits", ("target", "datname"))
        read = counter("runbook_pg_blocks_read", "Blocks read from disk", ("target", "datname"))
        for row in databases:
            if row["size"] is not None:
                size.add_metric([t, row["datname"]], row["size"])
            deadlocks.add_metric([t, row["datname"]], row["deadlocks"])
            hit.add_metric([t, row["datname"]], row["blks_hit"])
            read.add_metric([t, row["datname"]], row["blks_read"])
        return [size, deadlocks, hit, read]

    def _part_up(self) -> Metric:
        names = ["connections", "long_queries", "databases", "settings", "statements",
                 *(f"query_{q.name}" for q in self.queries)]
        up = gauge("runbook_pg_part_up", "1 if this part of the scrape answered without error "
                   "(the reason is in /health/detail)", ("target", "part"))
        for name in names:
            up.add_metric([self.target, name], 0.0 if name in self.part_errors else 1.0)
        return up

    async def _part(self, name: str, work: Awaitable[T]) -> T | None:
        """The part's result, or None with part_errors[name] saying why it failed."""
        import asyncpg  # already loaded by the pool the parts' connection came from

        try:
            return await work
        except (asyncpg.PostgresError, QueryShapeError) as exc:
            # A lost connection (class 08) or a FATAL error (the server ended the session)
            # means the server did not answer the scrape: runbook_pg_up 0, not a failed part.
            # Every later part would fail on the dead connection anyway.
            if isinstance(exc, asyncpg.PostgresConnectionError) \
                    or getattr(exc, "severity_en", None) in ("FATAL", "PANIC"):
                raise
            self.part_errors[name] = f"{type(exc).__name__}: {exc}"
            return None

    async def _statements(self, conn: asyncpg.Connection) -> list[Metric]:
        """The statement families, or none with statements_missing saying why."""
        import asyncpg  # already loaded by the pool `conn` came from

        schema = await conn.fetchval(STATEMENTS_SCHEMA_SQL)
        if schema is None:
            self.statements_missing = STATEMENTS_NOT_INSTALLED
            return []
        try:
            return await self._read_statements(conn, f"{quote_ident(schema)}.pg_stat_statements")
        except asyncpg.ObjectNotInPrerequisiteStateError:
            # CREATE EXTENSION works without the library in shared_preload_libraries; only
            # reading the view then fails, and that must not take the other metrics down.
            self.statements_missing = STATEMENTS_NOT_LOADED
            return []

    async def _read_statements(self, conn: asyncpg.Connection, view: str) -> list[Metric]:
        t = self.target
        mean = await conn.fetchval(STATEMENTS_MEAN_SQL.format(view=view))
        out: list[Metric] = [one("runbook_pg_statements_mean_seconds",
                                 "Mean execution time over all statements", t, float(mean))]
        if self.top_statements > 0:
            top = gauge("runbook_pg_statement_mean_seconds",
                        "Mean execution time of the slowest statements (top N), all roles",
                        ("target", "queryid"))
            for row in await conn.fetch(STATEMENTS_TOP_SQL.format(view=view),
                                        self.top_statements):
                top.add_metric([t, row["queryid"]], row["mean"])
            out.append(top)
        return out

    async def _custom(self, conn: asyncpg.Connection, query: CustomSql) -> Metric:
        doc = query.help or f"Runbook query {query.name}"
        family = gauge(f"runbook_pg_query_{query.name}", doc, ("target", *query.labels))
        for row in await conn.fetch(query.sql):
            try:
                value = row[query.value]
                number = float(value) if value is not None else float("nan")
                # NULL is the empty label value, which Prometheus reads as the label missing.
                labels = ["" if row[c] is None else str(row[c]) for c in query.labels]
            except KeyError as exc:
                raise QueryShapeError(f"the query returns no column {exc}") from None
            except (TypeError, ValueError) as exc:
                raise QueryShapeError(f"column {query.value!r} is not a number: {exc}") from None
            family.add_metric([self.target, *labels], number)
        return family
