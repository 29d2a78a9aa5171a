"""Redis actions on the fixture redis-server: SCAN + UNLINK batches, FLUSHDB confirm, PURGE."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pydantic
import pytest
import redis as redis_sync

from responder.actions import run_action
from responder.actions.base import ActionContext, Status
from runbook.actions import RedisDeletePatternParams, RedisFlushdbParams, RedisMemoryPurgeParams
from tests.actions_support import book, context
from tests.servers import free_port

BOOK = """
service: shop
watch:
  redis:
    - {name: cache, url_env: CACHE_URL}
"""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def client(redis_url: str) -> redis_sync.Redis:
    conn = redis_sync.Redis.from_url(redis_url)
    conn.config_resetstat()
    return conn


def _ctx(session: aiohttp.ClientSession, url: str, **labels: str) -> ActionContext:
    env = {"PATH": os.environ["PATH"], "CACHE_URL": url}
    return context(session, book(BOOK), labels=labels or None, env=env)


async def test_delete_pattern_in_batches_without_keys(
    session: aiohttp.ClientSession, redis_url: str, client: redis_sync.Redis
) -> None:
    client.mset({f"cache:acme:{i}": i for i in range(2300)})
    client.mset({f"cache:other:{i}": i for i in range(50)})
    client.set("cache:acme", "the bare key is not under the pattern")
    ctx = _ctx(session, redis_url, tenant="acme", alertname="CacheHitRateLow")
    params = RedisDeletePatternParams(redis="cache", pattern="cache:{{ labels.tenant }}:*",
                                      batch=500)
    result = await run_action("redis_delete_pattern", params, ctx)
    assert result.status is Status.OK, result.output
    assert result.detail["deleted"] == 2300
    assert client.dbsize() == 51
    stats = client.info("commandstats")
    assert "cmdstat_keys" not in stats
    assert stats["cmdstat_scan"]["calls"] >= 1
    assert stats["cmdstat_unlink"]["calls"] >= 5  # 2300 keys in batches of at most 500


async def test_delete_pattern_stops_at_max_keys(
    session: aiohttp.ClientSession, redis_url: str, client: redis_sync.Redis
) -> None:
    client.mset({f"tmp:{i}": i for i in range(300)})
    ctx = _ctx(session, redis_url)
    params = RedisDeletePatternParams(redis="cache", pattern="tmp:*", batch=50, max_keys=120)
    result = await run_action("redis_delete_pattern", params, ctx)
    assert result.status is Status.OK
    assert result.detail["capped"] is True
    assert result.detail["deleted"] == 120
    assert client.dbsize() == 180


async def test_label_glob_characters_match_literally(
    session: aiohttp.ClientSession, redis_url: str, client: redis_sync.Redis
) -> None:
    client.mset({"k:a1": 1, "k:b2": 2})
    ctx = _ctx(session, redis_url, tenant="*")
    params = RedisDeletePatternParams(redis="cache", pattern="k:{{ labels.tenant }}")
    result = await run_action("redis_delete_pattern", params, ctx)
    assert result.status is Status.FAILED  # `*` fails the default label pattern
    assert result.detail["label"] == "tenant"
    assert client.dbsize() == 2


def test_pattern_of_only_stars_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="use redis_flushdb"):
        RedisDeletePatternParams(redis="cache", pattern="**")


def test_flushdb_needs_confirm() -> None:
    with pytest.raises(pydantic.ValidationError, match="set confirm: true"):
        RedisFlushdbParams(redis="cache")


async def test_flushdb_with_confirm(
    session: aiohttp.ClientSession, redis_url: str, client: redis_sync.Redis
) -> None:
    client.mset({"a": 1, "b": 2})
    ctx = _ctx(session, redis_url)
    params = RedisFlushdbParams(redis="cache", confirm=True)
    result = await run_action("redis_flushdb", params, ctx)
    assert result.status is Status.OK
    assert result.detail["keys"] == 2
    assert client.dbsize() == 0


async def test_memory_purge(session: aiohttp.ClientSession, redis_url: str) -> None:
    ctx = _ctx(session, redis_url)
    result = await run_action(
        "redis_memory_purge", RedisMemoryPurgeParams(redis="cache"), ctx
    )
    assert result.status is Status.OK, result.output
    assert "OK" in result.output


async def test_unset_url_env_names_it(session: aiohttp.ClientSession) -> None:
    ctx = context(session, book(BOOK), env={})
    result = await run_action("redis_memory_purge", RedisMemoryPurgeParams(redis="cache"), ctx)
    assert result.status is Status.FAILED
    assert "env var CACHE_URL is not set" in result.output


async def test_dead_redis_fails_within_timeout(session: aiohttp.ClientSession) -> None:
    ctx = _ctx(session, f"redis://127.0.0.1:{free_port()}/0")
    result = await run_action(
        "redis_memory_purge", RedisMemoryPurgeParams(redis="cache"), ctx
    )
    assert result.status is Status.FAILED
    assert "ConnectionError" in result.output
