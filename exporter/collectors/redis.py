"""Redis health from INFO: memory, keyspace hits and misses, clients, evictions."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import Metric
from redis.asyncio import Redis

from exporter.collectors.base import Collector, one


class RedisCollector(Collector):
    """One Redis server's INFO as gauges and counters."""

    kind = "redis"
    up_metric = "runbook_redis_up"
    up_help = "1 if Redis answered INFO"

    def __init__(self, target: str, timeout: float, *, client: Redis) -> None:
        super().__init__(target, timeout)
        self.client = client

    async def collect(self) -> list[Metric]:
        info: dict[str, Any] = await self.client.info()
        t = self.target
        return [
            one("runbook_redis_memory_used_bytes", "Memory Redis uses", t,
                float(info["used_memory"])),
            one("runbook_redis_memory_max_bytes", "maxmemory (0: no limit)", t,
                float(info.get("maxmemory", 0))),
            one("runbook_redis_keyspace_hits", "Lookups that found a key", t,
                float(info["keyspace_hits"]), "counter"),
            one("runbook_redis_keyspace_misses", "Lookups that found no key", t,
                float(info["keyspace_misses"]), "counter"),
            one("runbook_redis_connected_clients", "Clients connected", t,
                float(info["connected_clients"])),
            one("runbook_redis_evicted_keys", "Keys evicted by maxmemory", t,
                float(info["evicted_keys"]), "counter"),
        ]
