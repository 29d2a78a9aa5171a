"""Redis actions: delete by pattern (SCAN + UNLINK in batches), FLUSHDB, MEMORY PURGE."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from responder.actions.base import ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.labels import fill
from responder.actions.targets import redis_url
from runbook.actions import RedisDeletePatternParams, RedisFlushdbParams, RedisMemoryPurgeParams
from runbook.redis_tls import tls_options

_GLOB = re.compile(r"([\\*?\[\]])")


def glob_escape(value: str) -> str:
    """A label value matched literally inside a SCAN pattern."""
    return _GLOB.sub(r"\\\1", value)


@asynccontextmanager
async def client(ctx: ActionContext, target: str) -> AsyncIterator[aioredis.Redis]:
    """A client on a watch.redis target, closed afterwards."""
    url = redis_url(ctx, target)
    conn = aioredis.Redis.from_url(url, socket_timeout=10.0, **tls_options(url))
    try:
        yield conn
    finally:
        await conn.aclose()


async def delete_pattern(ctx: ActionContext, params: RedisDeletePatternParams) -> Outcome:
    """UNLINK every key matching the pattern, found with SCAN, a batch at a time."""
    name = "redis_delete_pattern"
    pattern = fill(params.pattern, ctx.alert.labels, {}, glob_escape)
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would SCAN MATCH {pattern!r} and UNLINK",
                       pattern=pattern, redis=params.redis)
    deleted = 0
    capped = False
    async with client(ctx, params.redis) as conn:
        batch: list[bytes] = []
        async for key in conn.scan_iter(match=pattern, count=params.batch):
            batch.append(key)
            if len(batch) >= params.batch:
                deleted += await conn.unlink(*batch)
                batch = []
            if deleted + len(batch) >= params.max_keys:
                capped = True
                break
        if batch:
            deleted += await conn.unlink(*batch)
    text = f"unlinked {deleted} keys matching {pattern!r}"
    if capped:
        text += " (max_keys reached)"
    return outcome(name, Status.OK, text, deleted=deleted, capped=capped, pattern=pattern)


async def flushdb(ctx: ActionContext, params: RedisFlushdbParams) -> Outcome:
    """FLUSHDB (the schema refuses this step without confirm: true)."""
    name = "redis_flushdb"
    if not params.confirm:
        return outcome(name, Status.FAILED, "refused: confirm is not set")
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would FLUSHDB on {params.redis}")
    async with client(ctx, params.redis) as conn:
        size = await conn.dbsize()
        await conn.flushdb(asynchronous=True)
    return outcome(name, Status.OK, f"flushed {size} keys", keys=size)


async def memory_purge(ctx: ActionContext, params: RedisMemoryPurgeParams) -> Outcome:
    """MEMORY PURGE: ask the allocator to release dirty pages."""
    name = "redis_memory_purge"
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would MEMORY PURGE on {params.redis}")
    async with client(ctx, params.redis) as conn:
        before = (await conn.info("memory")).get("used_memory_rss")
        reply = await conn.execute_command("MEMORY", "PURGE")  # type: ignore[no-untyped-call]
        after = (await conn.info("memory")).get("used_memory_rss")
    return outcome(name, Status.OK, f"MEMORY PURGE: {reply!r}", rss_before=before, rss_after=after)


IMPLS: dict[str, ActionFn] = {
    "redis_delete_pattern": delete_pattern,
    "redis_flushdb": flushdb,
    "redis_memory_purge": memory_purge,
}
