"""Freshness checks: a hung file stat is not started again; times without an offset are UTC."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.collectors import freshness
from exporter.collectors.freshness import FreshnessCollector, to_timestamp
from exporter.collectors.host import HostCollector
from exporter.scrape import Scraper
from tests.test_exporter_support import runbook, samples, scrape_text, serve, value


async def test_a_hung_stat_is_not_started_again(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat blocked on a hung NFS mount holds one worker thread; without the guard every
    scrape would add one more, until the pool is full and the host collector times out."""
    done = tmp_path / "backup.done"
    done.write_text("")
    os.utime(done, (1_700_000_000, 1_700_000_000))
    release = threading.Event()
    hung: list[str] = []
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) == str(done) and not release.is_set():
            hung.append(str(path))
            release.wait(30)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)  # what freshness calls; other paths pass through
    # A small pool, so that a pile-up would fill it within a few scrapes on any machine.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=4))
    # A 1 s timeout: the 8 scrapes of 0.3 s outlast it, so the stat is older than its timeout
    # by the last ones, and reported as hung (a younger one is waited for, not reported).
    check = FreshnessCollector("backup", 1.0, file=str(done))
    scraper = Scraper([check, HostCollector("host", 2.0)])
    try:
        for _ in range(8):
            await scraper.scrape(0.3)
        host = scraper.health[("host", "host")]
        backup = scraper.health[("freshness", "backup")]
        assert len(hung) == 1, hung
        assert host.up, host.last_error
        assert not backup.up
        assert "still running" in str(backup.last_error), backup.last_error
    finally:
        release.set()
    # Once the stat returns, the next scrape stats the file again and reads it.
    for _ in range(100):
        if check._stat is None or check._stat.done():
            break
        await asyncio.sleep(0.05)
    families = await scraper.scrape(2.0)
    assert scraper.health[("freshness", "backup")].up
    (stamp,) = (s for f in families if f.name == freshness.NAME for s in f.samples)
    assert stamp.value == 1_700_000_000.0


@pytest.fixture(params=["America/New_York", "Europe/Berlin", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process' local time zone set to a zone other than UTC for the test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield str(request.param)
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_times_without_an_offset_are_utc(local_zone: str) -> None:
    assert time.localtime().tm_gmtoff != 0, local_zone  # the zone really is not UTC
    now = time.time()
    naive = datetime.now(UTC).replace(tzinfo=None)  # as datetime.utcnow() gives it
    assert to_timestamp(naive.isoformat(), now) == pytest.approx(now, abs=1)
    assert to_timestamp(naive, now) == pytest.approx(now, abs=1)
    assert to_timestamp("2024-01-01T00:00:00", now) == 1_704_067_200
    assert to_timestamp("2024-01-01", now) == 1_704_067_200
    assert to_timestamp(date(2024, 1, 1), now) == 1_704_067_200
    # An offset, when given, is kept.
    assert to_timestamp("2024-01-01T02:00:00+02:00", now) == 1_704_067_200
    assert to_timestamp("2024-01-01T00:00:00Z", now) == 1_704_067_200


async def test_a_naive_heartbeat_is_fresh_in_any_local_zone(local_zone: str, redis_url: str,
                                                            postgres_dsn: str) -> None:
    """A cron job writing datetime.utcnow().isoformat(), and a `timestamp without time zone`
    column filled with UTC, read as now: not hours old, and not "in the future"."""
    loaded = runbook(
        f"watch:\n  redis:\n    - {{name: cache, url: '{redis_url}'}}\n"
        "  postgres:\n    - {name: db, dsn_env: DB_DSN}\n"
        "  freshness:\n"
        "    - {name: cron, redis: cache, redis_key: 'cron:last_ok'}\n"
        "    - {name: etl, postgres: db, sql: \"SELECT now() AT TIME ZONE 'UTC'\"}\n")
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    r.set("cron:last_ok", datetime.now(UTC).replace(tzinfo=None).isoformat())
    r.close()
    async with serve(loaded, collectors=["freshness"], env={"DB_DSN": postgres_dsn}) as client:
        found = samples(await scrape_text(client))
    now = time.time()
    for target in ("cron", "etl"):
        assert value(found, "runbook_collector_up", collector="freshness", target=target) == 1
        stamp = value(found, "runbook_last_success_timestamp_seconds", target=target)
        assert stamp == pytest.approx(now, abs=10), (target, local_zone, now - stamp)
