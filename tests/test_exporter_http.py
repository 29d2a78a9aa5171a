"""HTTP probes and freshness checks against a real local HTTP server, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.collectors.freshness import MAX_SKEW, dig, to_timestamp
from exporter.collectors.http import MAX_BODY, HttpProbeCollector, buckets_with, json_holds
from exporter.scrape import Scraper
from runbook.loader import LoadedRunbook
from tests.test_exporter_support import runbook, samples, scrape_text, serve, value


def fast(loaded: LoadedRunbook, interval: float) -> LoadedRunbook:
    """The runbook with every probe's interval set below the schema's 1s minimum, so a test
    sees several probes in a fraction of a second (model_copy does not validate)."""
    rb = loaded.runbook
    http = [p.model_copy(update={"interval": interval}) for p in rb.watch.http]
    watch = rb.watch.model_copy(update={"http": http})
    return dataclasses.replace(loaded, runbook=rb.model_copy(update={"watch": watch}))


@pytest.fixture
async def service() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """A small service whose /health answer the test changes."""
    state: dict[str, object] = {"status": 200, "body": {"status": "healthy"}, "delay": 0.0}

    async def health(request: web.Request) -> web.Response:
        await asyncio.sleep(float(state["delay"]))  # type: ignore[arg-type]
        return web.json_response(state["body"], status=int(state["status"]))  # type: ignore[call-overload]

    async def heartbeat(request: web.Request) -> web.Response:
        return web.json_response({"jobs": {"nightly": {"last_ok": "2026-01-02T03:04:05+00:00"}}})

    async def endless(request: web.Request) -> web.StreamResponse:
        # Chunked, with no Content-Length: only reading it finds it too big, and it never ends.
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"status": "healthy", "pad": "')
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"x" * 65536)
        return response

    async def deep(request: web.Request) -> web.Response:
        # 100,000 nested arrays: 200 KB, under the body limit, past json's recursion limit.
        if state.get("deep"):
            return web.Response(body=b"[" * 100_000 + b"]" * 100_000,
                                content_type="application/json")
        return web.json_response({"status": "healthy"})

    async def declared(request: web.Request) -> web.Response:
        # A Content-Length over the limit: refused before reading a byte of the body.
        return web.Response(body=b" " * (MAX_BODY + 1), content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/heartbeat", heartbeat)
    app.router.add_get("/endless", endless)
    app.router.add_get("/declared", declared)
    app.router.add_get("/deep", deep)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")), state
    await server.close()


async def test_probe_up_status_json_failures_and_histogram(
        service: tuple[str, dict[str, object]]) -> None:
    base, state = service
    loaded = fast(runbook(
        "watch:\n  http:\n"
        f"    - {{name: api, url: '{base}/health', interval: 1s, timeout: 1s,"
        " expect_json: {status: healthy}}\n"
        "alerts:\n  latency_p95: {warning: 330ms, critical: 4s, for: 5m}\n"), 0.1)
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
    loaded = fast(runbook(f"watch:\n  http:\n    - {{name: slow, url: '{base}/health',"
                          " interval: 1s, timeout: 200ms}\n"), 0.05)
    async with serve(loaded, collectors=["http"]) as client:
        await asyncio.sleep(0.6)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="slow") == 0
        assert value(found, "runbook_probe_status_code", target="slow") == 0
        assert value(found, "runbook_probe_requests_total", target="slow", result="failure") >= 1
        assert value(found, "runbook_probe_duration_seconds_bucket", target="slow",
                     le="0.1") == 0


async def test_any_error_of_a_probe_is_a_failed_probe_and_probing_goes_on(
        service: tuple[str, dict[str, object]]) -> None:
    base, state = service
    loaded = fast(runbook(f"watch:\n  http:\n    - {{name: api, url: '{base}/deep',"
                          " interval: 1s, timeout: 1s, expect_json: {status: healthy}}\n"),
                  0.05)
    async with serve(loaded, collectors=["http"]) as client:
        await asyncio.sleep(0.2)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 1
        state["deep"] = True  # json.loads raises RecursionError, not a ValueError
        await asyncio.sleep(0.3)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 0
        assert value(found, "runbook_probe_consecutive_failures", target="api") >= 2
        assert value(found, "runbook_probe_requests_total", target="api", result="failure") >= 2
        detail = (await (await client.get("/health/detail")).json())["collectors"][0]
        assert detail["probe_error"].startswith("RecursionError: ")
        state["deep"] = False
        await asyncio.sleep(0.3)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 1  # the loop lived on
        assert value(found, "runbook_collector_up", collector="http", target="api") == 1


async def test_a_probe_loop_that_ended_fails_the_collector_instead_of_freezing(
        service: tuple[str, dict[str, object]]) -> None:
    """Should the background task end all the same, the scrape says so (collector up 0)
    instead of repeating the last probe's values for ever."""
    base, _ = service
    async with aiohttp.ClientSession() as session:
        c = HttpProbeCollector("api", f"{base}/health", session=session, interval=0.05)

        async def broken() -> None:
            raise RuntimeError("a bug outside the probe's own error handling")

        c.probe_once = broken  # type: ignore[method-assign]
        scraper = Scraper([c])
        await c.start()
        try:
            await asyncio.sleep(0.1)
            families = {f.name: f for f in await scraper.scrape(1.0)}
            health = scraper.health[("http", "api")]
            assert not health.up
            assert "background task probe-api ended" in str(health.last_error)
            assert "a bug outside" in str(health.last_error)
            assert "runbook_probe_up" not in families
        finally:
            await c.close()


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


def test_expect_json_compares_json_types() -> None:
    assert not json_holds({"ok": 1}, {"ok": True})
    assert not json_holds({"ok": True}, {"ok": 1})
    assert not json_holds({"ok": 0}, {"ok": False})
    assert not json_holds({"n": [1, True]}, {"n": [True, 1]})
    assert not json_holds({"n": {"a": 1}}, {"n": {"a": True}})
    assert not json_holds({"n": "1"}, {"n": 1})
    assert not json_holds({"n": None}, {"n": False})
    assert json_holds({"ok": True, "n": 1, "s": {"a": 1, "b": 2}}, {"ok": True, "n": 1.0,
                                                                  "s": {"a": 1.0}})
    assert json_holds({"l": [1, {"x": None}]}, {"l": [1.0, {"x": None}]})


async def test_expect_true_is_not_met_by_one(service: tuple[str, dict[str, object]]) -> None:
    base, state = service
    state["body"] = {"ok": 1}
    loaded = fast(runbook(f"watch:\n  http:\n    - {{name: api, url: '{base}/health',"
                          " interval: 1s, timeout: 1s, expect_json: {ok: true}}\n"), 0.05)
    async with serve(loaded, collectors=["http"]) as client:
        await asyncio.sleep(0.2)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 0
        state["body"] = {"ok": True}
        await asyncio.sleep(0.2)
        found = samples(await scrape_text(client))
        assert value(found, "runbook_probe_up", target="api") == 1


async def test_bodies_over_the_limit_fail_without_being_read(
        service: tuple[str, dict[str, object]]) -> None:
    base, _ = service
    loaded = fast(runbook(
        "watch:\n  http:\n"
        f"    - {{name: endless, url: '{base}/endless', interval: 5s, timeout: 5s,"
        " expect_json: {status: healthy}}\n"
        f"    - {{name: declared, url: '{base}/declared', interval: 5s, timeout: 5s,"
        " expect_json: {status: healthy}}\n"
        "  freshness:\n"
        f"    - {{name: beat, http_json: '{base}/endless', field: status}}\n"), 0.1)
    async with serve(loaded, collectors=["http", "freshness"]) as client:
        started = time.monotonic()
        await asyncio.sleep(0.5)
        found = samples(await scrape_text(client))
        # Well under the 5 s timeouts: the endless body is cut at the limit, not timed out.
        assert time.monotonic() - started < 3
        assert value(found, "runbook_probe_up", target="endless") == 0
        assert value(found, "runbook_probe_up", target="declared") == 0
        assert value(found, "runbook_collector_up", collector="freshness", target="beat") == 0
        rows = {r["target"]: r for r in (await (await client.get("/health/detail")).json())[
            "collectors"]}
    assert rows["endless"]["probe_error"] == "BodyTooLarge: body is over the 1 MiB limit"
    assert rows["declared"]["probe_error"] == \
        f"BodyTooLarge: body of {MAX_BODY + 1} bytes is over the 1 MiB limit"
    assert "body is over the 1 MiB limit" in rows["beat"]["last_error"]


def test_timestamps_read_units_by_size_and_refuse_what_would_silence_alerts() -> None:
    now = 1_796_136_000.0  # 2026-12-01
    assert to_timestamp(1_796_136_000, now) == now
    assert to_timestamp("1796136000000", now) == now  # ms
    assert to_timestamp(b"1796136000000000", now) == now  # µs
    assert to_timestamp(1_796_136_000_000_000_000, now) == now  # ns
    assert to_timestamp(123_456_789, now) == 123_456_789  # 1973 in seconds
    assert to_timestamp(now + MAX_SKEW, now) == now + MAX_SKEW  # clock skew is allowed
    assert to_timestamp(0, now) == 0
    for bad in (b"nan", "inf", "-inf", float("nan"), "1e309"):
        with pytest.raises(ValueError, match="not a finite unix time"):
            to_timestamp(bad, now)
    for future in (4_102_444_800, now + MAX_SKEW + 1, "2100-01-01T00:00:00+00:00"):
        with pytest.raises(ValueError, match="in the future"):
            to_timestamp(future, now)


async def test_bad_freshness_values_set_up_to_zero_and_say_why(redis_url: str,
                                                              tmp_path: Path) -> None:
    stamp = tmp_path / "touched-ahead"
    stamp.write_text("")
    os.utime(stamp, (4_102_444_800, 4_102_444_800))
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    r.mset({"f:nan": "nan", "f:future": "4102444800",
            "f:micros": str(int(time.time() - 60) * 1_000_000)})
    r.close()
    loaded = runbook(
        f"watch:\n  redis:\n    - {{name: cache, url: '{redis_url}'}}\n"
        "  freshness:\n"
        "    - {name: nan, redis: cache, redis_key: 'f:nan'}\n"
        "    - {name: future, redis: cache, redis_key: 'f:future'}\n"
        "    - {name: micros, redis: cache, redis_key: 'f:micros'}\n"
        f"    - {{name: file, file: '{stamp}'}}\n")
    async with serve(loaded, collectors=["freshness"]) as client:
        found = samples(await scrape_text(client))
        rows = {r["target"]: r for r in (await (await client.get("/health/detail")).json())[
            "collectors"]}
    name = "runbook_last_success_timestamp_seconds"
    assert value(found, name, target="micros") == pytest.approx(time.time() - 60, abs=5)
    for target, why in (("nan", "not a finite unix time"), ("future", "in the future"),
                        ("file", "in the future")):
        assert value(found, "runbook_collector_up", collector="freshness", target=target) == 0
        assert why in rows[target]["last_error"]
