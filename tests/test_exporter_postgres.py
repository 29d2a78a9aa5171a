"""PostgreSQL collector on a real server: connections, long queries, statements, custom SQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from prometheus_client.core import Metric

from exporter.collectors.postgres import CustomSql, PostgresCollector
from exporter.resources import open_pool
from tests.servers import PostgresServer


def by_name(families: list[Metric]) -> dict[str, Metric]:
    return {f.name: f for f in families}


async def test_connections_long_queries_idle_in_transaction(postgres_dsn: str) -> None:
    pool = await open_pool(postgres_dsn, 5.0)
    sleeper = await asyncpg.connect(postgres_dsn)
    idler = await asyncpg.connect(postgres_dsn)
    sleeping = asyncio.ensure_future(sleeper.execute("SELECT pg_sleep(5)"))
    tx = idler.transaction()
    await tx.start()
    await idler.execute("SELECT 1")
    try:
        await asyncio.sleep(1.2)
        c = PostgresCollector("db", 5.0, pool=pool, long_query=1.0, top_statements=3, queries=[
            CustomSql("answer", "SELECT 'x' AS kind, 42 AS n", "the answer", "n", ("kind",))])
        families = by_name(await c.collect())
        samples = {f: [(s.labels, s.value) for s in fam.samples]
                   for f, fam in families.items()}
        assert samples["runbook_pg_long_running_queries"] == [({"target": "db"}, 1.0)]
        longest = samples["runbook_pg_longest_query_seconds"][0][1]
        assert 1.0 < longest < 5.0
        assert samples["runbook_pg_idle_in_transaction"] == [({"target": "db"}, 1.0)]
        states = {labels["state"]: v for labels, v in samples["runbook_pg_connections"]}
        assert states["active"] >= 2  # the sleeper and the collector itself
        assert states["idle in transaction"] == 1
        assert samples["runbook_pg_max_connections"] == [({"target": "db"}, 200.0)]
        dbname = postgres_dsn.rsplit("/", 1)[1]
        sizes = {labels["datname"]: v for labels, v in samples["runbook_pg_database_size_bytes"]}
        assert sizes[dbname] > 0
        assert samples["runbook_pg_replication_lag_seconds"] == [({"target": "db"}, 0.0)]
        assert samples["runbook_pg_query_answer"] == [({"target": "db", "kind": "x"}, 42.0)]
        assert families["runbook_pg_blocks_hit"].type == "counter"
    finally:
        await tx.rollback()
        sleeping.cancel()
        await sleeper.close(timeout=2)
        await idler.close()
        await pool.close()


async def test_statements_top_n_and_missing_extension(postgres_server: PostgresServer,
                                                      postgres_dsn: str) -> None:
    pool = await open_pool(postgres_dsn, 5.0)
    c = PostgresCollector("db", 5.0, pool=pool, top_statements=2)
    try:
        families = by_name(await c.collect())
        assert "runbook_pg_statement_mean_seconds" not in families
        available = families["runbook_pg_stat_statements_available"]
        assert [s.value for s in available.samples] == [0.0]
        assert "no data" in str(c.detail()["pg_stat_statements"])
        await pool.execute("CREATE EXTENSION pg_stat_statements")
        for i in range(5):
            await pool.execute(f"SELECT pg_sleep(0.0{i})")
        families = by_name(await c.collect())
        top = families["runbook_pg_statement_mean_seconds"].samples
        assert len(top) == 2
        assert all(s.labels["queryid"] for s in top)
        mean = families["runbook_pg_statements_mean_seconds"].samples
        assert mean[0].value > 0
        assert c.detail() == {}
    finally:
        await pool.close()


async def test_statement_timeout_bounds_custom_queries(postgres_dsn: str) -> None:
    pool = await open_pool(postgres_dsn, 0.5)
    c = PostgresCollector("db", 5.0, pool=pool, queries=[
        CustomSql("slow", "SELECT pg_sleep(3) IS NULL AS v", "", "v", ())])
    try:
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await c.collect()
    finally:
        await pool.close()
