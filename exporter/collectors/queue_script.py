"""A read-only Lua script counting many queues in one call (Redis 7: EVAL_RO, no-writes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# Redis refuses any write from a script flagged no-writes, so this can never change a queue.
# It returns one JSON string: one bulk reply instead of thousands of integers to parse.
SCRIPT = """#!lua flags=no-writes
local rc = redis.call
local prefix = ARGV[1]
local i = 2
local function take() local v = ARGV[i]; i = i + 1; return v end
local b, c, r = {}, {}, {}
for q = 1, tonumber(take()) do
  local base = prefix .. ':' .. take() .. ':'
  local oldest = rc('LINDEX', base .. 'wait', -1) or rc('LINDEX', base .. 'paused', -1)
  local stamp = ''
  if oldest and string.sub(oldest, 1, 2) ~= '0:' then
    stamp = rc('HGET', base .. oldest, 'timestamp') or ''
  end
  b[q] = {rc('LLEN', base .. 'wait'), rc('LLEN', base .. 'paused'), rc('LLEN', base .. 'active'),
          rc('ZCARD', base .. 'prioritized'), rc('ZCARD', base .. 'delayed'),
          rc('ZCARD', base .. 'waiting-children'), rc('ZCARD', base .. 'completed'),
          rc('ZCARD', base .. 'failed'), rc('HEXISTS', base .. 'meta', 'paused'), stamp}
end
for q = 1, tonumber(take()) do
  local name = take()
  c[q] = rc('LLEN', name) + rc('LLEN', name .. '\\6\\0223') + rc('LLEN', name .. '\\6\\0226')
         + rc('LLEN', name .. '\\6\\0229')
end
for q = 1, tonumber(take()) do
  local name = take()
  local key = 'rq:queue:' .. name
  local oldest = rc('LINDEX', key, 0)
  local stamp = ''
  if oldest then stamp = rc('HGET', 'rq:job:' .. oldest, 'enqueued_at') or '' end
  r[q] = {rc('LLEN', key), rc('ZCARD', 'rq:wip:' .. name), rc('ZCARD', 'rq:failed:' .. name),
          rc('ZCARD', 'rq:deferred:' .. name), rc('ZCARD', 'rq:scheduled:' .. name),
          rc('ZCARD', 'rq:finished:' .. name), rc('ZCARD', 'rq:canceled:' .. name),
          rc('SCARD', 'rq:workers:' .. name), stamp}
end
return cjson.encode({b = b, c = c, r = r, unacked = rc('HLEN', 'unacked'),
                     suspended = rc('EXISTS', 'rq:suspended')})
"""

# Column order of a BullMQ row and an RQ row in the script's answer.
BULLMQ_COLUMNS = ("wait", "paused", "active", "prioritized", "delayed", "waiting-children",
                  "completed", "failed")
RQ_COLUMNS = ("queued", "started", "failed", "deferred", "scheduled", "finished", "canceled")


def script_args(prefix: str, bullmq: Sequence[str], celery: Sequence[str],
                rq: Sequence[str]) -> list[str]:
    """ARGV for one call: the prefix, then each kind's count and names."""
    return [prefix, str(len(bullmq)), *bullmq, str(len(celery)), *celery, str(len(rq)), *rq]


def decode(reply: Any) -> dict[str, Any]:
    """The script's JSON answer; cjson writes an empty list as {}."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    data: dict[str, Any] = json.loads(text)
    for kind in ("b", "c", "r"):
        if not isinstance(data.get(kind), list):
            data[kind] = []
    return data
