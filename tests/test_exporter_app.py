"""The app: endpoints, formats, deadlines, dead and black-holed targets, promtool."""

from __future__ import annotations

import asyncio
import gzip
import io
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_fd_to_metric_families

from exporter.app import build_app
from exporter.collectors import Options
from exporter.render import wants_gzip, wants_openmetrics
from exporter.resources import ConfigError
from exporter.scrape import deadline_from_header
from tests.servers import find_tool, free_port, wait_for_port
from tests.test_exporter_support import (
    black_hole,
    runbook,
    samples,
    scrape_text,
    serve,
    value,
)


async def test_no_runbook_watches_host_and_itself() -> None:
    async with serve(None) as client:
        found = samples(await scrape_text(client))
        assert value(found, "runbook_collector_up", collector="host", target="host") == 1
        assert value(found, "runbook_host_memory_limit_bytes", target="host") > 0
        assert value(found, "process_resident_memory_bytes") > 0
        for path in ("/health", "/health/ready"):
            response = await client.get(path)
            assert response.status == 200
        detail = await (await client.get("/health/detail")).json()
        assert detail["collectors"][0]["collector"] == "host"
        assert detail["collectors"][0]["last_success"] is not None


async def test_gzip_and_openmetrics_on_request() -> None:
    async with serve(None) as client:
        response = await client.get("/metrics", headers={"Accept-Encoding": "gzip"},
                                    auto_decompress=False)
        assert response.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(await response.read()).decode()
        assert "runbook_collector_up" in body
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"},
                                 auto_decompress=False)
        assert "Content-Encoding" not in plain.headers
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        om = await client.get("/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await om.text()
        assert text.rstrip().endswith("# EOF")
        assert "runbook_host_cpu_seconds_total" in text


# What Prometheus 2.x sends when scraping (scrape.go's acceptHeader).
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize(("accept", "openmetrics"), [
    (PROMETHEUS_ACCEPT, True),
    ("application/openmetrics-text;q=0,text/plain", False),  # q=0 refuses
    ("Application/OpenMetrics-Text; version=1.0.0", True),  # types are case-insensitive
    ("application/openmetrics-text;version=0.0.1", True),  # answered 1.0.0: prometheus_client
    ("application/openmetrics-text; version=\"1.0.0\"; Q=0.4, text/plain;q=0.6", False),
    ("text/plain;version=0.0.4;q=0.5, application/openmetrics-text;q=0.9", True),
    ("application/openmetrics-text;version=1.0.0;q=0, application/openmetrics-text", False),
    ("application/*", True),
    ("text/plain;q=0, */*", True),
    ("*/*", False),  # curl and browsers: text, as before
    ("application/openmetrics-text, text/plain", True),  # a tie named outright: OpenMetrics
    ("application/json", False),  # neither served format: text rather than 406
    ("application/openmetrics-text;q=high, text/plain;q=0.1", False),  # a bad q: ignored
    ("", False),
    (None, False),
])
def test_openmetrics_is_chosen_by_media_range_and_q(accept: str | None,
                                                   openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(("accept_encoding", "gzipped"), [
    ("gzip", True),
    ("GZip;q=0.2", True),
    ("*;q=1, gzip;q=0", False),  # the explicit entry wins over *, and q=0 refuses
    ("gzip;q=0, *", False),
    ("br, *;q=0.5", True),
    ("br, *;q=0", False),
    ("x-gzip", True),
    ("identity", False),
    ("gzip;q=nope", False),
    (None, False),
])
def test_gzip_only_when_accepted(accept_encoding: str | None, gzipped: bool) -> None:
    assert wants_gzip(accept_encoding) is gzipped


async def test_negotiation_through_the_app() -> None:
    async with serve(None) as client:
        om = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert om.headers["Content-Type"] == \
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert (await om.text()).rstrip().endswith("# EOF")
        text = await client.get("/metrics", headers={
            "Accept": "application/openmetrics-text;q=0,text/plain",
            "Accept-Encoding": "*;q=1, gzip;q=0"}, auto_decompress=False)
        assert text.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "Content-Encoding" not in text.headers
        assert "runbook_collector_up" in await text.text()


def test_unknown_collector_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="unknown collector 'quees' \\(did you mean queues"):
        build_app(None, collectors=["host", "quees"])


def test_missing_env_var_fails_at_start() -> None:
    loaded = runbook("watch:\n  redis:\n    - {name: cache, url_env: CACHE_URL}\n")
    with pytest.raises(ConfigError, match="env var CACHE_URL is not set"):
        build_app(loaded, env={})


def test_deadline_comes_from_the_prometheus_header() -> None:
    assert deadline_from_header("10") == pytest.approx(9.5)
    assert deadline_from_header(None) == 10.0
    assert deadline_from_header("nonsense") == 10.0
    assert deadline_from_header("-3") == 10.0
    assert deadline_from_header("0.2") == pytest.approx(0.05)


async def test_dead_redis_gives_up_zero_not_an_error(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    loaded = runbook(f"watch:\n  redis:\n    - {{name: live, url: '{redis_url}'}}\n"
                     f"    - {{name: dead, url: '{dead}'}}\n")
    async with serve(loaded, collectors=["redis"]) as client:
        found = samples(await scrape_text(client))
        assert value(found, "runbook_redis_up", target="live") == 1
        assert value(found, "runbook_redis_up", target="dead") == 0
        assert value(found, "runbook_collector_up", collector="redis", target="dead") == 0
        assert value(found, "runbook_redis_memory_used_bytes", target="live") > 0
        detail = await (await client.get("/health/detail")).json()
        dead_row = next(r for r in detail["collectors"] if r["target"] == "dead")
        assert "ConnectionError" in dead_row["last_error"]
        assert dead_row["last_success"] is None


async def test_black_holed_targets_are_cut_at_the_deadline_and_the_rest_is_whole(
        redis_url: str, postgres_dsn: str) -> None:
    with black_hole() as port:
        loaded = runbook(
            "watch:\n  redis:\n"
            f"    - {{name: live, url: '{redis_url}', queues: {{rq: [q]}}}}\n"
            f"    - {{name: hole, url: 'redis://127.0.0.1:{port}/0', timeout: 30s,"
            " queues: {rq: [q]}}\n"
            "  postgres:\n"
            "    - {name: db, dsn_env: DB_DSN}\n"
            "    - {name: pghole, dsn_env: HOLE_DSN, timeout: 30s}\n")
        env = {"DB_DSN": postgres_dsn, "HOLE_DSN": f"postgresql://u@127.0.0.1:{port}/x"}
        async with serve(loaded, env=env) as client:
            started = time.monotonic()
            found = samples(await scrape_text(client, scrape_timeout=1.5))
            elapsed = time.monotonic() - started
            assert elapsed < 1.5, elapsed
            for collector, target in (("redis", "hole"), ("queues", "hole"),
                                      ("postgres", "pghole")):
                assert value(found, "runbook_collector_up", collector=collector,
                             target=target) == 0
                assert value(found, "runbook_collector_duration_seconds", collector=collector,
                             target=target) == pytest.approx(1.0, abs=0.2)
            assert value(found, "runbook_redis_up", target="live") == 1
            assert value(found, "runbook_pg_up", target="db") == 1
            assert value(found, "runbook_queue_depth", target="live", kind="rq", queue="q") == 0
            assert value(found, "runbook_host_memory_used_bytes", target="host") > 0
            detail = await (await client.get("/health/detail")).json()
            hole = next(r for r in detail["collectors"] if r["target"] == "hole")
            assert hole["last_error"].startswith("timed out after 1")


async def test_collector_timeout_caps_the_deadline(redis_url: str) -> None:
    with black_hole() as port:
        url = f"redis://127.0.0.1:{port}/0"
        loaded = runbook(f"watch:\n  redis:\n    - {{name: hole, url: '{url}', timeout: 300ms}}\n")
        async with serve(loaded, collectors=["redis"]) as client:
            started = time.monotonic()
            found = samples(await scrape_text(client, scrape_timeout=10))
            assert time.monotonic() - started < 2
            assert value(found, "runbook_redis_up", target="hole") == 0


TABLES_SQL = "SELECT schemaname, count(*) AS n FROM pg_tables GROUP BY 1"


async def test_full_scrape_passes_promtool(redis_url: str, postgres_dsn: str, promtool: str,
                                           tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    loaded = runbook(
        "watch:\n"
        "  http:\n    - {name: api, url: 'http://127.0.0.1:1/health', interval: 1s, timeout: 1s}\n"
        f"  redis:\n    - {{name: cache, url: '{redis_url}',"
        " queues: {bullmq: [mail], celery: [celery], rq: [default]}}\n"
        "  postgres:\n    - name: db\n      dsn_env: DB_DSN\n      queries:\n"
        f"        - {{name: tables, sql: '{TABLES_SQL}', value: n, labels: [schemaname]}}\n"
        f"  logs:\n    - {{name: app, path: '{log}', patterns: {{error: ERROR}}}}\n"
        f"  freshness:\n    - {{name: backup, file: '{log}'}}\n"
        "alerts:\n  latency_p95: {warning: 300ms, critical: 1.5s, for: 5m}\n")
    async with serve(loaded, env={"DB_DSN": postgres_dsn},
                     options=Options(state_dir=str(tmp_path / "state"))) as client:
        text = await scrape_text(client)
        om = await (await client.get("/metrics", headers={
            "Accept": "application/openmetrics-text"})).text()
    # promtool reads the Prometheus text format; the OpenMetrics body is checked by its parser.
    result = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                     text=True, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    om_names = {f.name for f in text_fd_to_metric_families(io.StringIO(om))}  # type: ignore[no-untyped-call]
    assert "runbook_host_cpu_seconds" in om_names
    found = samples(text)
    for collector in ("host", "http", "redis", "queues", "postgres", "logs", "freshness"):
        ups = [v for (n, labels), v in found.items()
               if n == "runbook_collector_up" and ("collector", collector) in labels]
        assert ups == [1.0], (collector, ups)
    buckets = {dict(labels)["le"] for (n, labels) in found if n ==
               "runbook_probe_duration_seconds_bucket"}
    assert {"0.3", "1.5"} <= buckets
    assert value(found, "runbook_pg_query_tables", target="db", schemaname="pg_catalog") > 0


def test_text_renderer_matches_prometheus_client() -> None:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.render import render_prometheus_client, render_text

    g = GaugeMetricFamily("x", "doc with \\ and \n newline", labels=["a", "b"])
    g.add_metric(['q"uo\\te\n', "plain"], float("nan"))
    g.add_metric(["b", "c"], float("inf"))
    g.add_metric(["d", "e"], -2.5e-7)
    h = HistogramMetricFamily("h", "hist", labels=["t"])
    h.add_metric(["a"], [("0.1", 1.0), ("+Inf", 2.0)], 0.5)
    c = CounterMetricFamily("c", "cnt", labels=[])
    c.add_metric([], 3)

    def parsed(body: bytes) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], str]]]]:
        return [(f.name, f.type, f.documentation,
                 [(s.name, s.labels, repr(s.value)) for s in f.samples])
                for f in text_string_to_metric_families(body.decode())]

    assert parsed(render_text([g, h, c])) == parsed(render_prometheus_client([g, h, c]))


def test_row_families_merge_escape_and_turn_into_samples() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.collectors.base import RowFamily
    from exporter.render import render_prometheus_client, render_text
    from exporter.scrape import merge

    a = RowFamily("q", "depth", ("target", "queue"))
    a.add(("one", 'we"ird\\name'), 1.0)
    b = RowFamily("q", "depth", ("target", "queue"))
    b.add(("two", "plain"), float("nan"))
    merged = merge([a], [b])
    assert len(merged) == 1
    text = render_text(merged).decode()
    assert 'q{target="one",queue="we\\"ird\\\\name"} 1.0' in text
    parsed = [(s.labels, repr(s.value)) for f in text_string_to_metric_families(text)
              for s in f.samples]
    reference = render_prometheus_client(merged).decode()  # builds the samples on demand
    assert parsed == [(s.labels, repr(s.value))
                      for f in text_string_to_metric_families(reference) for s in f.samples]
    assert [s.labels["target"] for s in merged[0].samples] == ["one", "two"]


def test_row_groups_reuse_their_text_only_while_their_rows_are_the_same() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.collectors.base import RenderMemo, RowFamily
    from exporter.render import render_prometheus_client, render_text

    memo = RenderMemo()

    def scrape(waiting: float, failed: float) -> tuple[str, str]:
        family = RowFamily("jobs", "by state", ("queue", "state"), memo)
        family.add(("mail", "total"), waiting + failed)
        family.add_group("mail", ((("mail", "wait"), waiting), (("mail", "failed"), failed)))
        family.add_group("other", ((("o\\ne", "wait"), 0.0),))
        text = render_text([family]).decode()
        copy = RowFamily("jobs", "by state", ("queue", "state"))
        copy.add(("mail", "total"), waiting + failed)
        copy.add_group("mail", ((("mail", "wait"), waiting), (("mail", "failed"), failed)))
        copy.add_group("other", ((("o\\ne", "wait"), 0.0),))
        return text, render_prometheus_client([copy]).decode()

    def parsed(text: str) -> list[tuple[dict[str, str], float]]:
        return sorted(((s.labels, s.value) for f in text_string_to_metric_families(text)
                       for s in f.samples), key=repr)

    for waiting, failed in ((3.0, 0.0), (3.0, 0.0), (4.0, float("nan")), (0.0, 2.5), (0.0, 2.5)):
        ours, reference = scrape(waiting, failed)
        assert parsed(ours) == parsed(reference) or (failed != failed and 'failed"} NaN' in ours)
        assert f'jobs{{queue="mail",state="wait"}} {waiting!r}' in ours
    assert set(memo.groups) == {"mail", "other"}
    assert memo.groups["mail"][0] == ((("mail", "wait"), 0.0), (("mail", "failed"), 2.5))


def test_a_row_family_reuses_its_whole_text_only_while_every_row_is_the_same() -> None:
    from exporter.collectors.base import RenderMemo, RowFamily
    from exporter.render import render_text

    memo = RenderMemo()

    def scrape(depths: list[float]) -> bytes:
        family = RowFamily("depth", "queue depth", ("queue",), memo)
        for i, depth in enumerate(depths):
            family.add((f"q{i}",), depth)
        return render_text([family])

    idle = [0.0] * 50
    first = scrape(idle)
    assert memo.whole is not None
    kept = memo.whole[2]
    assert scrape(idle) == first
    assert memo.whole[2] is kept  # reused, not rendered again
    busy = scrape([*idle[:49], 7.0])
    assert b'depth{queue="q49"} 7.0\n' in busy
    assert b'depth{queue="q49"} 0.0\n' not in busy
    assert scrape([*idle[:48], 1.0, 7.0]).count(b"} 0.0\n") == 48
    assert scrape(idle) == first


async def test_redis_acl_user_from_url_env_and_no_secret_in_errors(redis_url: str) -> None:
    import redis as redis_sync

    admin = redis_sync.Redis.from_url(redis_url)
    admin.acl_setuser("watcher", enabled=True, passwords=["+s3cret-pass"],
                      commands=["+info", "+ping", "+client|setname", "+client|list",
                                "+eval_ro", "+llen", "+zcard", "+hexists", "+lindex", "+hget",
                                "+scan", "+smembers", "+hlen", "+exists", "+scard"],
                      keys=["*"])
    base = redis_url.removeprefix("redis://")
    env = {"GOOD_URL": f"redis://watcher:s3cret-pass@{base}",
           "BAD_URL": f"redis://watcher:wrong-pass-123@{base}"}
    loaded = runbook("watch:\n  redis:\n    - {name: good, url_env: GOOD_URL,"
                     " queues: {rq: [q]}}\n    - {name: bad, url_env: BAD_URL}\n")
    try:
        async with serve(loaded, collectors=["redis", "queues"], env=env) as client:
            text = await scrape_text(client)
            found = samples(text)
            assert value(found, "runbook_redis_up", target="good") == 1
            assert value(found, "runbook_collector_up", collector="queues", target="good") == 1
            assert value(found, "runbook_redis_up", target="bad") == 0
            detail = await (await client.get("/health/detail")).text()
        assert "wrong-pass-123" not in detail
        assert "s3cret-pass" not in detail + text
        assert "WRONGPASS" in detail or "invalid username-password" in detail
    finally:
        admin.acl_deluser("watcher")
        admin.close()


async def test_redis_acl_user_without_client_setname_still_works(redis_url: str) -> None:
    """The exporter names its connections (CLIENT SETNAME) only where the ACL allows it: a
    monitoring user without +client|setname gets every Redis-backed collector all the same."""
    import redis as redis_sync

    admin = redis_sync.Redis.from_url(redis_url)
    reads = ["+info", "+ping", "+client|list", "+eval_ro", "+llen", "+zcard", "+hexists",
             "+lindex", "+hget", "+scan", "+smembers", "+hlen", "+exists", "+scard", "+get"]
    admin.acl_setuser("nameless", enabled=True, passwords=["+pw-1"], commands=reads,
                      keys=["*"])
    admin.acl_setuser("named", enabled=True, passwords=["+pw-2"],
                      commands=[*reads, "+client|setname"], keys=["*"])
    base = redis_url.removeprefix("redis://")
    env = {"NAMELESS_URL": f"redis://nameless:pw-1@{base}",
           "NAMED_URL": f"redis://named:pw-2@{base}"}
    admin.set("cron:last", str(int(time.time())))
    loaded = runbook(
        "watch:\n  redis:\n"
        "    - {name: nameless, url_env: NAMELESS_URL, queues: {rq: [q], bullmq: [b]}}\n"
        "    - {name: named, url_env: NAMED_URL}\n"
        "  freshness:\n    - {name: cron, redis: nameless, redis_key: 'cron:last'}\n")
    try:
        async with serve(loaded, collectors=["redis", "queues", "freshness"], env=env) as client:
            found = samples(await scrape_text(client))
            for collector, target in (("redis", "nameless"), ("queues", "nameless"),
                                      ("freshness", "cron"), ("redis", "named")):
                assert value(found, "runbook_collector_up", collector=collector,
                             target=target) == 1, (collector, target)
            names = {c["user"]: c["name"] for c in admin.client_list()}
        assert names["named"] == "runbook-exporter"  # named where the ACL allows it
        assert names["nameless"] == ""
    finally:
        admin.acl_deluser("nameless", "named")
        admin.close()


def _tls_files(directory: Path, san: str = "IP:127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `san`, made with the openssl tool."""
    openssl = shutil.which("openssl") or "openssl"
    ca_key, ca, key, csr, cert = (directory / n for n in
                                  ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "san.ext"
    ext.write_text(f"subjectAltName={san}\n")
    for argv in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=test-ca", "-keyout", str(ca_key), "-out", str(ca)],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return ca, cert, key


@pytest.mark.parametrize(("san", "up"), [("IP:127.0.0.1", 1.0),
                                          ("DNS:some-other-host.example", 0.0)])
async def test_rediss_tls_target(tmp_path: Path, san: str, up: float) -> None:
    # A certificate for another name is refused, though a CA we trust signed it.
    ca, cert, key = await asyncio.to_thread(_tls_files, tmp_path, san)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        find_tool("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_for_port, port)
        env = {"TLS_URL": f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"}
        loaded = runbook("watch:\n  redis:\n    - {name: tls, url_env: TLS_URL}\n")
        async with serve(loaded, collectors=["redis"], env=env) as client:
            found = samples(await scrape_text(client))
        assert value(found, "runbook_redis_up", target="tls") == up
        if up:
            assert value(found, "runbook_redis_memory_used_bytes", target="tls") > 0
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)
