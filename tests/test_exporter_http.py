"""HTTP probes and freshness checks against a real local HTTP server, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.collectors.freshness import dig, to_timestamp
from exporter.collectors.http import buckets_with
from tests.test_exporter_support import runbook, samples, scrape_text, serve, value


@pytest.fixture
async def service() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """A small service whose /health answer the test changes."""
    state: dict[str, object] = {"status": 200, "body": {"status": "healthy"}, "delay": 0.0}

    async def health(request: web.Request) -> web.Response:
        await asyncio.sleep(float(state["delay"]))  # type: ignore[arg-type]
        return web.json_response(state["body"], status=int(state["status"]))  # type: ignore[call-overload]

    async def heartbeat(request: web.Request) -> web.Response:
        return web.json_response({"jobs": {"nightly": {"last_ok": "2026-01-02T03:04:05+00:00"}}})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/heartbeat", heartbeat)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")), state
    await server.close()


async def test_probe_up_status_json_failures_and_histogram(
        service: tuple[str, dict[str, object]]) -> None:
    base, state = service
    loaded = runbook(
        "watch:\n  http:\n"
        f"    - {{name: api, url: '{base}/health', interval: 100ms, timeout: 1s,"
        " expect_json: {status: healthy}}\n"
        "alerts:\n  latency_p95: {warning: 330ms, critical: 4s, for: 5m}\n")
    async with serve(loaded, collectors=["http"]) as client:
        await asyncio.sleep(0.35)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 1
        assert value(found, "runbook_probe_status_code", target="api") == 200
        ok = value(found, "runbook_probe_requests_total", target="api", result="success")
        assert ok >= 2
        les = [dict(k[1])["le"] for k in found if k[0] == "runbook_probe_duration_seconds_bucket"]
        assert "0.33" in les
        assert "4.0" in les
        count = value(found, "runbook_probe_duration_seconds_count", target="api")
        assert value(found, "runbook_probe_duration_seconds_bucket", target="api",
                     le="+Inf") == count
        state["body"] = {"status": "degraded"}
        await asyncio.sleep(0.35)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 0
        assert value(found, "runbook_probe_status_code", target="api") == 200
        assert value(found, "runbook_probe_consecutive_failures", target="api") >= 2
        state["status"] = 503
        await asyncio.sleep(0.25)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_status_code", target="api") == 503
        detail = await (await client.get("/health/detail")).json()
        assert "status 503" in detail["collectors"][0]["probe_error"]
        state["status"], state["body"] = 200, {"status": "healthy"}
        await asyncio.sleep(0.25)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_consecutive_failures", target="api") == 0


async def test_probe_timeout_counts_as_failure(service: tuple[str, dict[str, object]]) -> None:
    base, state = service
    state["delay"] = 2.0
    loaded = runbook(f"watch:\n  http:\n    - {{name: slow, url: '{base}/health',"
                     " interval: 50ms, timeout: 200ms}\n")
    async with serve(loaded, collectors=["http"]) as client:
        await asyncio.sleep(0.6)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="slow") == 0
        assert value(found, "runbook_probe_status_code", target="slow") == 0
        assert value(found, "runbook_probe_requests_total", target="slow", result="failure") >= 1
        assert value(found, "runbook_probe_duration_seconds_bucket", target="slow",
                     le="0.1") == 0


def test_buckets_hold_thresholds_exactly() -> None:
    got = buckets_with([0.33, 4.0, 0.25])
    assert 0.33 in got
    assert got.count(0.25) == 1
    assert list(got) == sorted(got)


async def test_freshness_sources(service: tuple[str, dict[str, object]], redis_url: str,
                                 postgres_dsn: str, tmp_path: Path) -> None:
    base, _ = service
    stamp = tmp_path / "backup.done"
    stamp.write_text("")
    os.utime(stamp, (1_700_000_000, 1_700_000_000))
    loaded = runbook(
        f"watch:\n  redis:\n    - {{name: cache, url: '{redis_url}'}}\n"
        "  postgres:\n    - {name: db, dsn_env: DB_DSN}\n"
        "  freshness:\n"
        "    - {name: cron, redis: cache, redis_key: 'cron:last_ok'}\n"
        "    - {name: never, redis: cache, redis_key: 'cron:missing'}\n"
        "    - {name: etl, postgres: db, sql: \"SELECT timestamptz '2026-01-01 00:00:00+00'\"}\n"
        f"    - {{name: backup, file: '{stamp}'}}\n"
        f"    - {{name: nightly, http_json: '{base}/heartbeat', field: jobs.nightly.last_ok}}\n")
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    r.set("cron:last_ok", "1700000123000")  # milliseconds
    r.close()
    async with serve(loaded, collectors=["freshness"], env={"DB_DSN": postgres_dsn}) as client:
        found = samples(await scrape_text(client))
    name = "runbook_last_success_timestamp_seconds"
    assert value(found, name, target="cron") == 1_700_000_123.0
    assert value(found, name, target="never") == 0
    assert value(found, name, target="etl") == 1_767_225_600.0
    assert value(found, name, target="backup") == 1_700_000_000.0
    assert value(found, name, target="nightly") == 1_767_323_045.0
    assert all(v == 1 for (n, _), v in found.items() if n == "runbook_collector_up")


def test_timestamp_parsing_errors_are_clear() -> None:
    assert to_timestamp("1700000000") == 1_700_000_000
    assert to_timestamp(b"1700000000.5") == 1_700_000_000.5
    with pytest.raises(ValueError, match="neither a unix time nor an ISO date"):
        to_timestamp("yesterday")
    with pytest.raises(ValueError, match=r"no field 'a\.c'"):
        dig({"a": {"b": 1}}, "a.c")
    assert to_timestamp(time.time() * 1000) == pytest.approx(time.time(), abs=5)
