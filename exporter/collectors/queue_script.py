"""A read-only Lua script counting many queues in one call (Redis 7: EVAL_RO, no-writes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# Redis refuses any write from a script flagged no-writes, so this can never change a queue.
# It returns one JSON string: one bulk reply instead of thousands of integers to parse. An empty
# queue (the libraries delete emptied lists and sets) costs one EXISTS and comes back as a number
# instead of a row: for BullMQ its paused flag, for Celery and RQ 0.
#
# Where the whole database holds at most ARGV[5] keys per BullMQ queue named in this call (each
# call of a chunked scrape lists it again, so each stays bounded by its own queues), listing it once
# (SCAN, atomic inside the script) costs less than probing every queue: a queue with no key at
# all under `prefix:NAME:` holds no job and no meta hash, so it is empty and not paused. Any key
# that could belong to a queue (its name may itself hold ':') sends that queue down the probe.
#
# A BullMQ queue's oldest waiting job is among a few candidates, each read with one HGET of its
# `timestamp`: the tail of wait (or paused: BullMQ pushes new jobs at the head) and, in the
# prioritized set, the first job of the highest priority and the first of the lowest. BullMQ 5
# scores a prioritized job priority * 2^32 + a counter it increments at each add, so within one
# priority the lowest score arrived first: with one priority in use (the usual case) or two, the
# smallest candidate timestamp is the oldest waiting job's. With more priorities the jobs of the
# middle ones are not looked at (finding each one's first costs a lookup per priority in use):
# the age is then a lower bound, never older than the truth, and it still grows while the
# queue does not drain or starves its lowest priority, which is what the age alerts are for.
SCRIPT = """#!lua flags=no-writes
local rc = redis.call
local prefix = ARGV[1]
local bullmq, celery, rq = cjson.decode(ARGV[2]), cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local b, c, r = {}, {}, {}
-- pcall: where ACLs or renamed commands refuse DBSIZE or SCAN, every queue is probed instead.
local function present_names()
  if #bullmq == 0 then
    return nil
  end
  local size = redis.pcall('DBSIZE')
  if type(size) ~= 'number' or size > (tonumber(ARGV[5]) or 0) * #bullmq then
    return nil
  end
  local present = {}
  local head = prefix .. ':'
  local from = #head + 1
  local cursor = '0'
  repeat
    local page = redis.pcall('SCAN', cursor, 'COUNT', 1000)
    if type(page) ~= 'table' or page.err then
      return nil
    end
    cursor = page[1]
    for _, key in ipairs(page[2]) do
      if string.sub(key, 1, #head) == head then
        local at = string.find(key, ':', from, true)
        while at do
          present[string.sub(key, from, at - 1)] = true
          at = string.find(key, ':', at + 1, true)
        end
      end
    end
  until cursor == '0'
  return present
end
local present = present_names()
-- The older of `best` and job `id`'s timestamp ('' for none; '0:' is BullMQ's legacy marker).
local function older(base, id, best)
  if not id or string.sub(id, 1, 2) == '0:' then
    return best
  end
  local stamp = rc('HGET', base .. id, 'timestamp')
  local ms, before = tonumber(stamp), tonumber(best)
  if ms and (not before or ms < before) then
    return stamp
  end
  return best
end
local function older_prioritized(base, pr, stamp)
  local first = rc('ZRANGE', pr, 0, 0, 'WITHSCORES')
  stamp = older(base, first[1], stamp)
  local last = rc('ZRANGE', pr, -1, -1, 'WITHSCORES')
  local lowest = math.floor(tonumber(last[2]) / 4294967296) * 4294967296
  if lowest > tonumber(first[2]) then
    -- '%.0f': Lua would write a score past 14 digits in exponent form
    local head = rc('ZRANGEBYSCORE', pr, string.format('%.0f', lowest), '+inf', 'LIMIT', 0, 1)
    stamp = older(base, head[1], stamp)
  end
  return stamp
end
local function bullmq_row(name)
  local base = prefix .. ':' .. name .. ':'
  local w, p, a, pr, d, wc, co, f, m = base .. 'wait', base .. 'paused', base .. 'active',
    base .. 'prioritized', base .. 'delayed', base .. 'waiting-children', base .. 'completed',
    base .. 'failed', base .. 'meta'
  if rc('EXISTS', w, p, a, pr, d, wc, co, f) == 0 then
    return rc('HEXISTS', m, 'paused')
  end
  local oldest = rc('LINDEX', w, -1) or rc('LINDEX', p, -1)
  local stamp = ''
  if oldest and string.sub(oldest, 1, 2) ~= '0:' then
    stamp = rc('HGET', base .. oldest, 'timestamp') or ''
  end
  local prioritized = rc('ZCARD', pr)
  if prioritized > 0 then
    stamp = older_prioritized(base, pr, stamp)
  end
  return {rc('LLEN', w), rc('LLEN', p), rc('LLEN', a), prioritized, rc('ZCARD', d),
          rc('ZCARD', wc), rc('ZCARD', co), rc('ZCARD', f), rc('HEXISTS', m, 'paused'), stamp}
end
for q = 1, #bullmq do
  if present and not present[bullmq[q]] then
    b[q] = 0
  else
    b[q] = bullmq_row(bullmq[q])
  end
end
for q = 1, #celery do
  local name = celery[q]
  local p3, p6, p9 = name .. '\\6\\0223', name .. '\\6\\0226', name .. '\\6\\0229'
  if rc('EXISTS', name, p3, p6, p9) == 0 then
    c[q] = 0
  else
    c[q] = rc('LLEN', name) + rc('LLEN', p3) + rc('LLEN', p6) + rc('LLEN', p9)
  end
end
-- RQ's live workers of a queue: members of rq:workers:NAME whose rq:worker:... hash still
-- exists. A worker killed with SIGKILL never removes itself from the set; only its hash
-- expires (worker_ttl + 60 s after its last heartbeat), and rq's Worker.all() skips such
-- members, so SCARD would count the dead for ever. EXISTS with many keys counts those present,
-- called per 1000 so unpack stays far below Lua's stack limit.
local function live_workers(set)
  local members = rc('SMEMBERS', set)
  local live = 0
  for i = 1, #members, 1000 do
    live = live + rc('EXISTS', unpack(members, i, math.min(i + 999, #members)))
  end
  return live
end
for q = 1, #rq do
  local name = rq[q]
  local key, wip, failed, deferred, scheduled, finished, canceled, workers = 'rq:queue:' .. name,
    'rq:wip:' .. name, 'rq:failed:' .. name, 'rq:deferred:' .. name, 'rq:scheduled:' .. name,
    'rq:finished:' .. name, 'rq:canceled:' .. name, 'rq:workers:' .. name
  if rc('EXISTS', key, wip, failed, deferred, scheduled, finished, canceled, workers) == 0 then
    r[q] = 0
  else
    local oldest = rc('LINDEX', key, 0)
    local stamp = ''
    if oldest then stamp = rc('HGET', 'rq:job:' .. oldest, 'enqueued_at') or '' end
    r[q] = {rc('LLEN', key), rc('ZCARD', wip), rc('ZCARD', failed), rc('ZCARD', deferred),
            rc('ZCARD', scheduled), rc('ZCARD', finished), rc('ZCARD', canceled),
            live_workers(workers), stamp}
  end
end
return cjson.encode({b = b, c = c, r = r, unacked = rc('HLEN', 'unacked'),
                     suspended = rc('EXISTS', 'rq:suspended')})
"""

# Column order of a BullMQ row and an RQ row in the script's answer.
BULLMQ_COLUMNS = ("wait", "paused", "active", "prioritized", "delayed", "waiting-children",
                  "completed", "failed")
RQ_COLUMNS = ("queued", "started", "failed", "deferred", "scheduled", "finished", "canceled")


def script_args(prefix: str, bullmq: Sequence[str], celery: Sequence[str],
                rq: Sequence[str], scan_factor: int = 0) -> list[str]:
    """ARGV for one call: the prefix, then each kind's names as one JSON list (one argument
    each, so a thousand names cost the client one string to send, not a thousand), then the
    keys per BullMQ queue up to which the script lists the database instead (0: never)."""
    return [prefix, json.dumps(list(bullmq)), json.dumps(list(celery)), json.dumps(list(rq)),
            str(scan_factor)]


def decode(reply: Any) -> dict[str, Any]:
    """The script's JSON answer; cjson writes an empty list as {}."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    data: dict[str, Any] = json.loads(text)
    for kind in ("b", "c", "r"):
        if not isinstance(data.get(kind), list):
            data[kind] = []
    return data
