"""A small app with a Redis cache for the end-to-end tests: it reads items from the cache all
the time (so the hit rate is real traffic) and fills the cache on POST /warm.

python -m tests.e2e_cache_app --redis URL --port N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

ITEMS = 50
CLIENT = web.AppKey("client", aioredis.Redis)
TRAFFIC = web.AppKey("traffic", asyncio.Task[None])


async def _traffic(client: aioredis.Redis) -> None:
    """Read every item in turn, about 200 reads a second: misses until the cache is warm."""
    n = 0
    while True:
        await client.get(f"cache:item:{n % ITEMS}")
        n += 1
        await asyncio.sleep(0.005)


async def warm(request: web.Request) -> web.Response:
    """Fill the cache with every item (what the runbook's warm-cache step calls)."""
    client = request.app[CLIENT]
    async with client.pipeline(transaction=False) as pipe:
        for i in range(ITEMS):
            pipe.set(f"cache:item:{i}", f"value {i}")
        await pipe.execute()
    return web.json_response({"warmed": ITEMS})


async def health(request: web.Request) -> web.Response:
    """Alive."""
    del request
    return web.json_response({"status": "healthy"})


def build(url: str) -> web.Application:
    """The app reading from and warming the Redis at `url`."""
    app = web.Application()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(url)
        app[CLIENT] = client
        app[TRAFFIC] = asyncio.create_task(_traffic(client), name="cache-traffic")
        yield
        app[TRAFFIC].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[TRAFFIC]
        await client.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/warm", warm)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build(args.redis), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
