"""Optional Redis pub/sub so a replica that queues work wakes every replica's worker at once.

Without Redis, other replicas still find the work at their next poll (every --poll seconds);
the store, never Redis, decides who runs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runbook.redis_tls import tls_options

CHANNEL = "runbook:responder:work"
log = logging.getLogger("responder.wakeup")


class Wakeup:
    """Publishes 'work queued' and calls `on_wake` when any replica publishes it."""

    def __init__(self, url: str, on_wake: Callable[[], None]) -> None:
        self.client = aioredis.Redis.from_url(url, socket_timeout=0.5,
                                              socket_connect_timeout=0.5, **tls_options(url))
        self.on_wake = on_wake

    async def publish(self) -> None:
        """Tell the other replicas; a Redis failure only delays them until their poll."""
        try:
            await self.client.publish(CHANNEL, b"1")
        except (RedisError, OSError) as exc:
            log.warning("cannot publish a wake-up to Redis: %s", exc)

    async def listen(self) -> None:
        """Wake the local worker on every message, reconnecting after failures."""
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=1.0)
                        if message is not None:
                            self.on_wake()
            except (RedisError, OSError) as exc:
                log.warning("Redis wake-up channel lost (%s); retrying in 1s", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.client.aclose()
