"""Connections shared by collectors: one Redis client and one PostgreSQL pool per target."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from runbook.redis_tls import tls_options
from runbook.schema import RedisTarget, Watch

if TYPE_CHECKING:
    import asyncpg  # imported where a pool is opened: only runbooks with PostgreSQL pay for it


class ConfigError(ValueError):
    """The exporter cannot start with this configuration (a missing env var, a bad name)."""


@dataclass
class Resources:
    """Everything long-lived that collectors borrow."""

    session: aiohttp.ClientSession
    redis: dict[str, Redis] = field(default_factory=dict)
    pools: dict[str, asyncpg.Pool] = field(default_factory=dict)

    async def close(self) -> None:
        """Close every client, pool and the session."""
        for client in self.redis.values():
            await client.aclose()
        for pool in self.pools.values():
            with contextlib.suppress(Exception):
                # A pool whose server vanished can hang on close; terminate after a moment.
                await asyncio.wait_for(pool.close(), 2.0)
            pool.terminate()
        await self.session.close()


CLIENT_NAME = "runbook-exporter"


async def _connect_named(connection: AbstractConnection) -> None:
    """redis-py's own connection set-up, then CLIENT SETNAME as a courtesy: the name lets an
    operator spot the exporter in CLIENT LIST, but a monitoring user whose ACL lacks
    +client|setname (or a server with CLIENT renamed) refuses it, and redis-py's client_name
    would then fail every connection, so every Redis-backed collector."""
    await connection.on_connect()
    await connection.send_command("CLIENT", "SETNAME", CLIENT_NAME)
    with contextlib.suppress(ResponseError):
        await connection.read_response()


def redis_url(target: RedisTarget, env: Mapping[str, str]) -> str:
    """The target's URL, from url or from the env var url_env names."""
    if target.url is not None:
        return target.url
    assert target.url_env is not None
    url = env.get(target.url_env)
    if not url:
        raise ConfigError(f"watch.redis {target.name}: env var {target.url_env} is not set "
                          "(it holds the redis:// or rediss:// URL)")
    return url


def check_env(watch: Watch, env: Mapping[str, str]) -> None:
    """Fail before starting when an env var a target needs is missing."""
    for target in watch.redis:
        redis_url(target, env)
    for pg in watch.postgres:
        if not env.get(pg.dsn_env):
            raise ConfigError(f"watch.postgres {pg.name}: env var {pg.dsn_env} is not set "
                              "(it holds the postgresql:// DSN)")


async def open_resources(watch: Watch, env: Mapping[str, str] | None = None) -> Resources:
    """Clients and pools for every target; nothing connects until first used."""
    env = os.environ if env is None else env
    check_env(watch, env)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30, connect=10),
                                    headers={"User-Agent": "runbook-exporter"})
    resources = Resources(session)
    try:
        for target in watch.redis:
            url = redis_url(target, env)
            resources.redis[target.name] = Redis.from_url(
                url, socket_timeout=target.timeout, socket_connect_timeout=target.timeout,
                redis_connect_func=_connect_named, **tls_options(url))
        for pg in watch.postgres:
            resources.pools[pg.name] = await open_pool(env[pg.dsn_env], pg.timeout)
    except BaseException:
        await resources.close()
        raise
    return resources


STATEMENT_SHARE = 0.5
"""The share of a target's timeout one statement may take."""


async def open_pool(dsn: str, seconds: float) -> asyncpg.Pool:
    """A small pool; statement_timeout bounds every query on every connection it opens."""
    import asyncpg
    pool = await asyncpg.create_pool(
        # The server's statement_timeout acts first; command_timeout is the client's backstop.
        # Half the target's timeout: a runbook query that runs into it fails alone (its part
        # up 0) with time left for the others, instead of taking the whole collector down.
        dsn, min_size=0, max_size=2, timeout=seconds, command_timeout=seconds + 1.0,
        server_settings={"statement_timeout": str(int(seconds * STATEMENT_SHARE * 1000)),
                         "application_name": "runbook-exporter"},
    )
    assert pool is not None
    return pool
