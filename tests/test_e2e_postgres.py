"""Seeds 002/003 on the real loop: long-running queries hold the pool above its tier and the
responder terminates them."""

from __future__ import annotations

from tests.e2e_support import Sleepers, assert_healed, small_postgres, start_loop
from tests.stack import stack

SCALE = 0.003
MAX_CONNECTIONS = 40
# blog-engine (seed 002) pages above 90% of the pool: 37 sleeping sessions are 92.5% (the
# exporter does not count the connection it asks on), and with the exporter's pool (at most 2)
# they leave a slot for the responder's.
SLEEPERS = 37

BOOK = """
service: blog-engine
watch:
  host: null
  postgres:
    - {name: main, dsn_env: DATABASE_URL}
alerts:
  db_connections:
    critical: 90%
    for: 5m
respond:
  - name: end-long-queries
    match: {alertname: DbConnectionsHigh, severity: critical}
    mode: auto
    do:
      - pg_terminate_long_queries: {postgres: main, longer_than: 2s}
    cooldown: 0s
    verify_after: 5s
    escalate:
      - page: {message: "connections still above the pool tier after ending long queries"}
"""


def test_long_queries_terminated() -> None:
    with small_postgres(MAX_CONNECTIONS) as pg, stack() as s:
        pg.psql("CREATE ROLE app LOGIN")
        loop = start_loop(s, BOOK, scale=SCALE, env={"DATABASE_URL": pg.dsn()})
        loop.wait("the exporter scraped", lambda: loop.query("runbook_pg_max_connections"), 20)
        sleepers = Sleepers(f"postgresql://app@127.0.0.1:{pg.port}/postgres", SLEEPERS).start()
        incident = assert_healed(loop, "DbConnectionsHigh", ["pg_terminate_long_queries"],
                                 timeout=60, severity="critical", target="main")
        assert sleepers.join(10)
        assert len(sleepers.errors) == SLEEPERS, sleepers.errors  # each was ended
        finished = next(st for st in incident["steps"] if st["kind"] == "action_finished")
        assert finished["detail"]["output"].startswith(
            f"pg_terminate_backend: {SLEEPERS} session(s) ended, 0 failed")
        left = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
        assert left == "0"
