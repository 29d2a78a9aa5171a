"""The fixtures start real servers on their own ports and leave others alone."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio as aioredis

from tests.servers import PostgresServer, RedisServer, free_port, start_redis


async def test_redis_is_real_and_not_on_default_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        info = await client.info("server")
        assert str(info["redis_version"]).startswith("7.")
        assert int(info["tcp_port"]) == redis_server.port
    finally:
        await client.aclose()


async def test_postgres_is_real_with_pg_stat_statements(postgres_dsn: str,
                                                        postgres_server: PostgresServer) -> None:
    assert postgres_server.port != 5432
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert (await conn.fetchval("SHOW port")) == str(postgres_server.port)
        libs = await conn.fetchval("SHOW shared_preload_libraries")
        assert "pg_stat_statements" in libs
    finally:
        await conn.close()


def test_free_port_is_free() -> None:
    port = free_port()
    assert port not in (6379, 5432)


async def test_stopping_own_redis_leaves_session_server_running(redis_server: RedisServer) -> None:
    own = start_redis()
    own.stop()
    assert own.process.poll() is not None
    assert redis_server.process.poll() is None
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await asyncio.wait_for(client.ping(), 5)
    finally:
        await client.aclose()
