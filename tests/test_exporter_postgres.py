"""PostgreSQL collector on a real server: connections, long queries, statements, custom SQL."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml
from prometheus_client.core import Metric

from exporter.collectors.postgres import CustomSql, PostgresCollector
from exporter.resources import open_pool
from tests.servers import PostgresServer, start_postgres
from tests.test_exporter_support import runbook, samples, scrape_text, serve, value
from tests.test_render_rules import SINK, promtool_run, render_to


def by_name(families: list[Metric]) -> dict[str, Metric]:
    return {f.name: f for f in families}


@pytest.fixture(scope="module")
def quiet_postgres() -> Iterator[PostgresServer]:
    """A cluster of this module's own, without pg_stat_statements in shared_preload_libraries,
    where no other test's sessions run."""
    server = start_postgres(shared_preload_libraries="")
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def scratch(server: PostgresServer, *names: str) -> AsyncIterator[None]:
    """Roles or databases (`ROLE x`, `DATABASE y`) created by the test, dropped after it."""
    try:
        yield
    finally:
        for name in reversed(names):
            extra = " WITH (FORCE)" if name.startswith("DATABASE") else ""
            with contextlib.suppress(subprocess.CalledProcessError):
                server.psql(f"DROP {name.replace(' ', ' IF EXISTS ', 1)}{extra}")


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
        assert states["active"] >= 1  # the sleeper (the collector's own query is not counted)
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
        assert c.detail() == {"part_errors": {}}
    finally:
        await pool.close()


async def test_statement_timeout_bounds_custom_queries(postgres_dsn: str) -> None:
    pool = await open_pool(postgres_dsn, 0.5)
    c = PostgresCollector("db", 5.0, pool=pool, queries=[
        CustomSql("slow", "SELECT pg_sleep(3) IS NULL AS v", "", "v", ())])
    try:
        families = by_name(await c.collect())
    finally:
        await pool.close()
    assert "runbook_pg_query_slow" not in families
    assert "statement timeout" in c.part_errors["query_slow"]
    assert part_up(families) == {**dict.fromkeys(PARTS, 1.0), "query_slow": 0.0}
    assert "runbook_pg_max_connections" in families


PARTS = ("connections", "long_queries", "databases", "settings", "statements")


async def test_a_query_running_into_the_timeout_fails_alone_within_the_scrape(
        postgres_dsn: str) -> None:
    from exporter.scrape import Scraper

    # The target's timeout is the collector's deadline: a statement may take half of it, so a
    # slow runbook query fails alone and the rest of the target still reports.
    pool = await open_pool(postgres_dsn, 1.0)
    c = PostgresCollector("db", 1.0, pool=pool, queries=[
        CustomSql("slow", "SELECT pg_sleep(3) IS NULL AS v", "", "v", ())])
    scraper = Scraper([c])
    try:
        families = by_name(await scraper.scrape(5.0))
    finally:
        await pool.close()
    assert scraper.health[("postgres", "db")].up
    assert part_up(families)["query_slow"] == 0.0
    assert "runbook_pg_max_connections" in families


def part_up(families: dict[str, Metric]) -> dict[str, float]:
    return {s.labels["part"]: s.value for s in families["runbook_pg_part_up"].samples}


async def test_a_failing_query_fails_only_its_part(postgres_dsn: str) -> None:
    dbname = postgres_dsn.rsplit("/", 1)[1]
    loaded = runbook(
        "watch:\n  postgres:\n    - name: db\n      dsn_env: DB_DSN\n      queries:\n"
        "        - {name: missing, sql: 'SELECT count(*) AS n FROM no_such_table', value: n}\n"
        "        - {name: answer, sql: 'SELECT 42 AS n', value: n}\n"
        "        - {name: misnamed, sql: 'SELECT 1 AS n', value: count}\n"
        "        - {name: text, sql: \"SELECT 'abc' AS n\", value: n}\n")
    async with serve(loaded, collectors=["postgres"], env={"DB_DSN": postgres_dsn}) as client:
        found = samples(await scrape_text(client))
        (row,) = (await (await client.get("/health/detail")).json())["collectors"]
    # The server answered: the other parts report and the target is up.
    assert value(found, "runbook_pg_up", target="db") == 1
    assert row["up"] is True
    assert value(found, "runbook_pg_query_answer", target="db") == 42
    assert value(found, "runbook_pg_max_connections", target="db") == 200
    assert value(found, "runbook_pg_database_size_bytes", target="db", datname=dbname) > 0
    assert not any(name == "runbook_pg_query_missing" for name, _ in found)
    assert value(found, "runbook_pg_part_up", target="db", part="query_missing") == 0
    assert value(found, "runbook_pg_part_up", target="db", part="query_answer") == 1
    assert value(found, "runbook_pg_part_up", target="db", part="databases") == 1
    assert value(found, "runbook_pg_part_up", target="db", part="query_misnamed") == 0
    assert value(found, "runbook_pg_part_up", target="db", part="query_text") == 0
    assert row["part_errors"] == {
        "query_missing": 'UndefinedTableError: relation "no_such_table" does not exist',
        "query_misnamed": "QueryShapeError: the query returns no column 'count'",
        "query_text": "QueryShapeError: column 'n' is not a number: could not convert string "
                      "to float: 'abc'"}


async def test_statements_in_a_schema_off_the_search_path(postgres_server: PostgresServer,
                                                          postgres_dsn: str) -> None:
    """Supabase creates the extension in `extensions`, not on the search_path; the schema's
    name here also needs quoting."""
    dbname = postgres_dsn.rsplit("/", 1)[1]
    postgres_server.psql('CREATE SCHEMA "ext ""x"""', dbname)
    postgres_server.psql('CREATE EXTENSION pg_stat_statements SCHEMA "ext ""x"""', dbname)
    loaded = runbook("watch:\n  postgres:\n    - {name: db, dsn_env: DB_DSN}\n")
    async with serve(loaded, collectors=["postgres"], env={"DB_DSN": postgres_dsn}) as client:
        await scrape_text(client)
        found = samples(await scrape_text(client))
        (row,) = (await (await client.get("/health/detail")).json())["collectors"]
    assert value(found, "runbook_pg_up", target="db") == 1
    assert value(found, "runbook_pg_stat_statements_available", target="db") == 1
    assert value(found, "runbook_pg_part_up", target="db", part="statements") == 1
    assert value(found, "runbook_pg_statements_mean_seconds", target="db") > 0
    assert any(name == "runbook_pg_statement_mean_seconds" for name, _ in found)
    assert row["part_errors"] == {}
    assert "pg_stat_statements" not in row


async def test_a_lost_connection_is_pg_up_0(postgres_dsn: str) -> None:
    """A FATAL error ends the session: the server did not answer, so it is not one part."""
    pool = await open_pool(postgres_dsn, 5.0)
    c = PostgresCollector("db", 5.0, pool=pool, queries=[
        CustomSql("bye", "SELECT pg_terminate_backend(pg_backend_pid())::int AS v", "", "v", ())])
    try:
        with pytest.raises(asyncpg.PostgresError):
            await c.collect()
    finally:
        await pool.close()


async def test_own_query_is_not_counted_as_active(quiet_postgres: PostgresServer) -> None:
    pool = await open_pool(quiet_postgres.dsn(), 5.0)
    try:
        families = by_name(await PostgresCollector("db", 5.0, pool=pool).collect())
        states = {s.labels["state"]: s.value for s in families["runbook_pg_connections"].samples}
        # Nothing else runs on this cluster: every active client backend would be our own.
        assert states.get("active", 0.0) == 0.0, states
    finally:
        await pool.close()


async def test_statements_created_but_not_preloaded_is_no_data(
        quiet_postgres: PostgresServer) -> None:
    quiet_postgres.psql("CREATE DATABASE unloaded")
    async with scratch(quiet_postgres, "DATABASE unloaded"):
        quiet_postgres.psql("CREATE EXTENSION pg_stat_statements", "unloaded")
        loaded = runbook("watch:\n  postgres:\n    - {name: db, dsn_env: DB_DSN}\n")
        async with serve(loaded, collectors=["postgres"],
                         env={"DB_DSN": quiet_postgres.dsn("unloaded")}) as client:
            found = samples(await scrape_text(client))
            detail = await (await client.get("/health/detail")).json()
        assert value(found, "runbook_pg_up", target="db") == 1
        assert value(found, "runbook_pg_max_connections", target="db") == 200
        assert value(found, "runbook_pg_database_size_bytes", target="db", datname="unloaded") > 0
        assert value(found, "runbook_pg_stat_statements_available", target="db") == 0
        assert not any(name.startswith("runbook_pg_statement") for name, _ in found)
        (row,) = detail["collectors"]
        assert row["up"] is True
        reason = str(row["pg_stat_statements"])
        assert reason.startswith("no data"), reason
        assert "shared_preload_libraries" in reason, reason


async def test_top_statements_are_one_series_per_queryid_across_roles(
        postgres_server: PostgresServer, postgres_dsn: str) -> None:
    dbname = postgres_dsn.rsplit("/", 1)[1]
    postgres_server.psql("CREATE EXTENSION pg_stat_statements", dbname)
    roles = (f"{dbname}_alice", f"{dbname}_bob")
    for role in roles:
        postgres_server.psql(f"CREATE ROLE {role} LOGIN")
    async with scratch(postgres_server, *(f"ROLE {r}" for r in roles)):
        # The same statement (constants are normalised away) run once by each role.
        for role, seconds in zip(roles, ("0.02", "0.2"), strict=True):
            conn = await asyncpg.connect(postgres_dsn, user=role)
            await conn.execute(f"SELECT pg_sleep({seconds})")
            await conn.close()
        pool = await open_pool(postgres_dsn, 5.0)
        try:
            rows = await pool.fetch(
                "SELECT queryid::text AS queryid, total_exec_time, calls FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND query LIKE 'SELECT pg_sleep(%'")
            assert len(rows) == 2, rows  # one row per role ...
            assert rows[0]["queryid"] == rows[1]["queryid"], rows  # ... of the same queryid
            combined = sum(r["total_exec_time"] for r in rows) / sum(r["calls"] for r in rows)
            c = PostgresCollector("db", 5.0, pool=pool, top_statements=100)
            top = by_name(await c.collect())["runbook_pg_statement_mean_seconds"].samples
        finally:
            await pool.close()
    queryids = [s.labels["queryid"] for s in top]
    assert len(queryids) == len(set(queryids)), queryids
    sleep = next(s for s in top if s.labels["queryid"] == rows[0]["queryid"])
    assert sleep.value == pytest.approx(combined / 1000)
    assert 0.1 < sleep.value < 0.2


async def test_database_a_role_may_not_connect_to_is_left_out_of_sizes(
        postgres_server: PostgresServer, postgres_dsn: str) -> None:
    dbname = postgres_dsn.rsplit("/", 1)[1]
    private, monitor = f"{dbname}_private", f"{dbname}_monitor"
    postgres_server.psql(f"CREATE DATABASE {private}")
    postgres_server.psql(f"CREATE ROLE {monitor} LOGIN")
    async with scratch(postgres_server, f"DATABASE {private}", f"ROLE {monitor}"):
        postgres_server.psql(f"REVOKE CONNECT ON DATABASE {private} FROM PUBLIC")
        pool = await open_pool(postgres_dsn.replace("postgres@", f"{monitor}@"), 5.0)
        try:
            families = by_name(await PostgresCollector("db", 5.0, pool=pool).collect())
        finally:
            await pool.close()
    sizes = {s.labels["datname"] for s in families["runbook_pg_database_size_bytes"].samples}
    assert dbname in sizes
    assert private not in sizes


async def test_only_real_templates_are_left_out(postgres_server: PostgresServer,
                                                postgres_dsn: str) -> None:
    dbname = postgres_dsn.rsplit("/", 1)[1]
    named_like_a_template = f"templates_app_{dbname}"
    postgres_server.psql(f"CREATE DATABASE {named_like_a_template}")
    async with scratch(postgres_server, f"DATABASE {named_like_a_template}"):
        pool = await open_pool(postgres_dsn, 5.0)
        try:
            families = by_name(await PostgresCollector("db", 5.0, pool=pool).collect())
        finally:
            await pool.close()
    sizes = {s.labels["datname"] for s in families["runbook_pg_database_size_bytes"].samples}
    assert named_like_a_template in sizes
    assert not sizes & {"template0", "template1"}


async def test_blocks_are_counted_per_database(postgres_server: PostgresServer,
                                               postgres_dsn: str) -> None:
    """Summed over databases, the counters went backwards when one was dropped (a reset to
    Prometheus); per datname each is a true counter and a dropped database's series just ends."""
    dbname = postgres_dsn.rsplit("/", 1)[1]
    gone = f"{dbname}_gone"
    postgres_server.psql(f"CREATE DATABASE {gone}")
    async with scratch(postgres_server, f"DATABASE {gone}"):
        postgres_server.psql("SELECT count(*) FROM pg_class", gone)  # some blocks of its own
        pool = await open_pool(postgres_dsn, 5.0)
        try:
            c = PostgresCollector("db", 5.0, pool=pool)
            for _ in range(100):  # a backend's statistics arrive after it exits
                before = blocks(by_name(await c.collect()))
                if before.get(gone, 0.0) > 0:
                    break
                await asyncio.sleep(0.05)
            postgres_server.psql(f"DROP DATABASE {gone} WITH (FORCE)")
            after = blocks(by_name(await c.collect()))
        finally:
            await pool.close()
    assert before[gone] > 0, before
    assert gone not in after
    assert after[dbname] >= before[dbname]


def blocks(families: dict[str, Metric]) -> dict[str, float]:
    """runbook_pg_blocks_hit_total by datname (each sample has one; read is alike)."""
    assert families["runbook_pg_blocks_hit"].type == "counter"
    assert families["runbook_pg_blocks_read"].type == "counter"
    reads = {s.labels["datname"] for s in families["runbook_pg_blocks_read"].samples
             if s.name.endswith("_total")}
    hits = {s.labels["datname"]: s.value for s in families["runbook_pg_blocks_hit"].samples
            if s.name.endswith("_total")}
    assert set(hits) == reads
    return hits


def test_cache_hit_rule_sums_the_databases(promtool: str, tmp_path: Path) -> None:
    """The rendered recording rule sums rate() over datname: a database dropped half-way
    leaves the ratio of the others, not a reset."""
    render_to(tmp_path, [SINK])
    job = 'job="runbook-kitchen-sink",target="db"'
    test = {
        "rule_files": ["alert_rules/kitchen-sink.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # 3 hits and 1 read a second in each database; `old` is dropped at 30m.
                {"series": f'runbook_pg_blocks_hit_total{{{job},datname="app"}}',
                 "values": "0+180x60"},
                {"series": f'runbook_pg_blocks_read_total{{{job},datname="app"}}',
                 "values": "0+60x60"},
                {"series": f'runbook_pg_blocks_hit_total{{{job},datname="old"}}',
                 "values": "100000+180x30"},
                {"series": f'runbook_pg_blocks_read_total{{{job},datname="old"}}',
                 "values": "100000+60x30"},
            ],
            "promql_expr_test": [
                {"expr": "kitchen_sink:db_cache_hit_rate:ratio", "eval_time": f"{t}m",
                 "exp_samples": [{"labels": 'kitchen_sink:db_cache_hit_rate:ratio{target="db"}',
                                  "value": 0.75}]}
                for t in (20, 33, 45)
            ],
        }],
    }
    path = tmp_path / "blocks_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    run = promtool_run(promtool, "test", "rules", path.name, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


async def test_a_null_label_is_the_empty_label(postgres_dsn: str) -> None:
    pool = await open_pool(postgres_dsn, 5.0)
    c = PostgresCollector("db", 5.0, pool=pool, queries=[
        CustomSql("jobs", "SELECT NULL::text AS queue, 3 AS n", "", "n", ("queue",))])
    try:
        families = by_name(await c.collect())
    finally:
        await pool.close()
    # As Prometheus reads a missing label, not the text "None".
    assert [(s.labels, s.value) for s in families["runbook_pg_query_jobs"].samples] == [
        ({"target": "db", "queue": ""}, 3.0)]


async def test_the_pools_other_connection_is_not_counted(quiet_postgres: PostgresServer) -> None:
    """The exporter's pool holds up to 2 connections; neither is a client of the database."""
    pool = await open_pool(quiet_postgres.dsn(), 5.0)
    other = await asyncpg.connect(quiet_postgres.dsn())  # a client of the database, idle
    try:
        async with pool.acquire() as held:  # the pool's second connection, idle meanwhile
            own = {held.get_server_pid(), other.get_server_pid()}
            for _ in range(100):  # sessions of earlier tests may still be ending
                left = await other.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND NOT pid = ANY($1::int[])", list(own))
                if left == 0:
                    break
                await asyncio.sleep(0.05)
            families = by_name(await PostgresCollector("db", 5.0, pool=pool).collect())
    finally:
        await other.close()
        await pool.close()
    states = {s.labels["state"]: s.value for s in families["runbook_pg_connections"].samples}
    assert states == {"idle": 1.0}, states  # `other` only
