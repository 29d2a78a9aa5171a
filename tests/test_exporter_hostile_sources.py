"""Sources that behave in ways the exporter must survive: numeric SQL times, concurrent
scrapes, hostile log lines, slow endpoints (real files, servers, PostgreSQL; no mocks)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.collectors import Options
from exporter.collectors.freshness import FreshnessCollector, to_timestamp
from exporter.collectors.http import HttpProbeCollector
from exporter.collectors.logs import READ_CHUNK, LogFollower
from exporter.scrape import Scraper
from tests.test_exporter_support import black_hole, runbook, samples, scrape_text, serve, value

# ---------------------------------------------------------------- freshness


def test_decimal_and_other_reals_are_timestamps() -> None:
    now = 1_796_136_000.0  # 2026-12-01
    assert to_timestamp(Decimal("1796135940.25"), now) == 1_796_135_940.25
    assert to_timestamp(Decimal("1796135940250"), now) == 1_796_135_940.25  # ms, by its size
    assert to_timestamp(Fraction(3_592_271_881, 2), now) == 1_796_135_940.5
    for bad in (Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("1e400")):
        with pytest.raises(ValueError, match="not a finite unix time"):
            to_timestamp(bad, now)
    with pytest.raises(ValueError, match="in the future"):
        to_timestamp(Decimal(now + 3600), now)
    with pytest.raises(ValueError, match="is not a timestamp"):
        to_timestamp(True, now)


async def test_sql_extract_epoch_is_a_timestamp(postgres_dsn: str) -> None:
    """Since PostgreSQL 14, extract() returns numeric: asyncpg gives a Decimal."""
    loaded = runbook(
        "watch:\n  postgres:\n    - {name: db, dsn_env: DB_DSN}\n"
        "  freshness:\n"
        "    - {name: epoch, postgres: db,"
        " sql: \"SELECT extract(epoch from now() - interval '1 minute')\"}\n"
        "    - {name: numeric, postgres: db,"
        " sql: \"SELECT extract(epoch from now() - interval '1 minute')::numeric\"}\n")
    async with serve(loaded, collectors=["freshness"], env={"DB_DSN": postgres_dsn}) as client:
        found = samples(await scrape_text(client))
    for target in ("epoch", "numeric"):
        assert value(found, "runbook_collector_up", collector="freshness", target=target) == 1
        stamp = value(found, "runbook_last_success_timestamp_seconds", target=target)
        assert stamp == pytest.approx(time.time() - 60, abs=10)


async def test_concurrent_scrapes_share_a_file_stat(tmp_path: Path) -> None:
    """Two Prometheus servers scraping at once: the second scrape waits for the stat the
    first one started, instead of reporting it as a hung mount."""
    stamp = tmp_path / "cron.stamp"
    stamp.write_text("")
    os.utime(stamp, (1_700_000_000, 1_700_000_000))
    scraper = Scraper([FreshnessCollector("file", 2.0, file=str(stamp))])
    ups: list[float] = []
    for _ in range(20):
        for families in await asyncio.gather(scraper.scrape(2.0), scraper.scrape(2.0)):
            ups += [s.value for f in families if f.name == "runbook_collector_up"
                    for s in f.samples]
    assert ups == [1.0] * 40, scraper.health[("freshness", "file")].last_error


# ---------------------------------------------------------------- logs


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


async def test_a_hostile_log_line_does_not_freeze_scrapes(tmp_path: Path) -> None:
    """`error ` 60,000 times against `error.*timeout` costs Python's re seconds a line with
    the GIL held; now each search gives up after MATCH_TIMEOUT without holding it."""
    log = tmp_path / "app.log"
    log.write_text("")
    loaded = runbook(f"watch:\n  host: null\n  logs:\n    - name: app\n      path: '{log}'\n"
                     "      patterns: {slow: 'error.*timeout'}\n")
    hostile = 3
    async with serve(loaded, collectors=["logs"],
                     options=Options(log_poll_interval=0.05)) as client:
        _append(log, "error then timeout\n" + ("error " * 60_000 + "\n") * hostile)
        slowest = 0.0
        gave_up = 0.0
        for _ in range(400):
            for path in ("/metrics", "/health"):
                started = time.monotonic()
                response = await client.get(path)
                text = await response.text()
                slowest = max(slowest, time.monotonic() - started)
            found = samples(await scrape_text(client))
            gave_up = found.get(("runbook_log_match_timeouts_total",
                                 frozenset({("target", "app"), ("pattern", "slow")})), 0.0)
            if gave_up >= hostile:
                break
            await asyncio.sleep(0.01)
        assert text
        assert slowest < 1.0, slowest
        assert gave_up == hostile
        assert value(found, "runbook_log_lines_total", target="app", pattern="slow") == 1


def test_patterns_keep_python_re_semantics(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    f = LogFollower(str(log), {"inline_flag": "(?i)^error", "word": r"\bERR\b",
                               "nested_set": "[[]x", "alternation": "a|bc"}, None)
    f.open_at_start()
    _append(log, "Error one\nERRORS\nERR\n[x\nbc\n")
    f.poll()
    assert f.counts == {"inline_flag": 2, "word": 1, "nested_set": 1, "alternation": 1}


def test_an_over_long_line_counts_once(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    f = LogFollower(str(log), {"err": "ERROR", "anchored": "^ERROR"}, None)
    f.open_at_start()
    # 2.5 MiB in one line, ERROR at its start, in its middle and at its end.
    _append(log, "ERROR " + "x" * READ_CHUNK + " ERROR " + "y" * (READ_CHUNK // 2 * 3)
            + " ERROR\nERROR next\n")
    while f.poll():
        pass
    assert f.counts == {"err": 2, "anchored": 2}


def test_an_over_long_line_is_skipped_across_polls_and_restarts(tmp_path: Path) -> None:
    """The rest of an over-long line still being written is skipped when it ends in a
    later poll, or after a restart (the state file says the offset is inside it)."""
    log = tmp_path / "app.log"
    log.write_text("")
    state = tmp_path / "state.json"
    f = LogFollower(str(log), {"err": "ERROR"}, state)
    f.open_at_start()
    _append(log, "ERROR " + "x" * (READ_CHUNK + 10))
    f.poll()
    assert f.counts["err"] == 1
    _append(log, "x ERROR")
    f.poll()
    f.close()
    g = LogFollower(str(log), {"err": "ERROR"}, state)
    g.open_at_start()
    _append(log, " ERROR end\nERROR next\n")
    g.poll()
    assert f.counts["err"] + g.counts["err"] == 2


@pytest.mark.parametrize("partial", ["INFO upstream said ", "x" * (READ_CHUNK + 5)])
def test_a_line_half_written_at_start_is_read_whole(tmp_path: Path, partial: str) -> None:
    """Started while a line is half written: that line is matched whole once it ends (an
    over-long one is skipped), never its rest as if it were a line of its own."""
    log = tmp_path / "app.log"
    log.write_text("ERROR old\n" + partial)
    f = LogFollower(str(log), {"err": "ERROR", "anchored": "^ERROR"}, None)
    f.open_at_start()
    _append(log, "ERROR 42 (ignored)\nERROR real\n")
    f.poll()
    whole = len(partial) < READ_CHUNK
    assert f.counts == {"err": 2 if whole else 1, "anchored": 1}


# ---------------------------------------------------------------- slow endpoints

SLOW = 0.6
"""How long the slow endpoint takes to answer: past the session's default below."""


@pytest.fixture
async def slow_base() -> AsyncIterator[str]:
    """A service answering after SLOW seconds."""
    async def heartbeat(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW)
        return web.json_response({"status": "ok", "t": 1_700_000_000})

    app = web.Application()
    app.router.add_get("/beat", heartbeat)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/beat"))
    await server.close()


def short_session() -> aiohttp.ClientSession:
    # Like the exporter's session (ClientTimeout(total=30, connect=10)), scaled down: a check
    # with a longer timeout of its own must get it.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLOW / 3))


async def test_a_probe_timeout_longer_than_the_sessions_governs(slow_base: str) -> None:
    async with short_session() as session:
        probe = HttpProbeCollector("slow", slow_base, session=session, timeout=SLOW * 4,
                                   expect_json={"status": "ok"})
        await probe.probe_once()
        assert probe.state.up == 1, probe.state.last_error
        with black_hole() as port:
            silent = HttpProbeCollector("silent", f"http://127.0.0.1:{port}/", session=session,
                                        timeout=SLOW * 2)
            started = time.monotonic()
            await silent.probe_once()
            took = time.monotonic() - started
        assert silent.state.last_error == f"timed out after {SLOW * 2:g}s"
        assert SLOW * 2 <= took < SLOW * 2 + 0.5, took


async def test_an_http_json_freshness_timeout_longer_than_the_sessions_governs(
        slow_base: str) -> None:
    async with short_session() as session:
        check = FreshnessCollector("beat", SLOW * 4, session=session, url=slow_base, field="t")
        assert await check.read() == 1_700_000_000
