"""Celery actions through its control API: grow or shrink worker pools, purge a queue."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery
from kombu.transport.redis import Channel
from kombu.utils.url import parse_url

from responder.actions.base import BLOCKING, ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.labels import fill
from responder.actions.targets import redis_url
from runbook.actions import CeleryPoolParams, CeleryPurgeParams
from runbook.redis_tls import tls_options

IO_TIMEOUT = 5.0
"""Seconds any one connect or read on the broker may take.

Above kombu's 1 s BRPOP polls, and well below the time run_action allows these actions (the
connect grace it adds to the pools' reply window, its default for purge): a broker that accepts
and never answers fails the action in time, and the thread running the call is released rather
than blocked forever on a socket read no asyncio timeout can interrupt.
"""


def _broker_tls(url: str) -> tuple[str, dict[str, Any] | None]:
    """The broker URL to hand kombu, and the TLS options of a `rediss://` one.

    For rediss:// kombu defaults to no certificate check at all (CERT_NONE). Verification of the
    chain and of the host name is required here, as runbook/redis_tls.py does for redis-py; the
    URL's own `ssl_*` options (a CA file, a client certificate, an explicit opt-out) still win.
    They are merged here and taken out of the URL because kombu replaces broker_use_ssl as a
    whole with the URL's ones, which would drop the defaults.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "rediss":
        return url, None
    from_url: dict[str, Any] = parse_url(url).get("ssl") or {}
    options = {"ssl_cert_reqs": ssl.CERT_REQUIRED, **tls_options(url), **from_url}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not k.startswith("ssl_")]
    return urlunsplit(parts._replace(query=urlencode(query))), options


def _app(url: str, tls: dict[str, Any] | None) -> Any:
    # A bare app on the broker: only the control API and the broker connection are used; there
    # is no result backend (so no backend TLS to set).
    app = Celery("runbook-autopilot", broker=url, set_as_current=False)
    app.conf.update(
        broker_use_ssl=tls or False,
        broker_connection_timeout=IO_TIMEOUT,
        # One attempt: a retry loop would outlive the action's timeout on its thread.
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=0,
        broker_transport_options={
            "socket_timeout": IO_TIMEOUT,
            "socket_connect_timeout": IO_TIMEOUT,
            "max_retries": 0,
        },
    )
    return app


@contextmanager
def _broker(broker: str) -> Iterator[tuple[Any, Any]]:
    """A bare app on `broker` and a connection to it."""
    url, tls = _broker_tls(broker)
    # The URL is passed on: without it Celery prefers CELERY_BROKER_URL (or _WRITE_URL) from
    # the responder's own environment to the app's broker, and would act on that broker.
    with _app(url, tls) as app, app.connection_for_write(url) as conn:
        yield app, conn


def _pool(broker: str, grow: bool, params: CeleryPoolParams) -> list[dict[str, Any]]:
    with _broker(broker) as (app, conn):
        call = app.control.pool_grow if grow else app.control.pool_shrink
        # With named workers, stop waiting once each has answered.
        replies: list[dict[str, Any]] = call(
            params.n, destination=params.destination or None, reply=True,
            timeout=params.timeout, limit=len(params.destination) or None, connection=conn,
        ) or []
        return replies


async def _resize(ctx: ActionContext, params: CeleryPoolParams, grow: bool) -> Outcome:
    name = "celery_pool_grow" if grow else "celery_pool_shrink"
    verb = "grow" if grow else "shrink"
    where = ", ".join(params.destination) or "every worker"
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would {verb} the pool of {where} by {params.n}")
    replies = await BLOCKING.run(_pool, redis_url(ctx, params.broker), grow, params)
    answers = {worker: reply for item in replies for worker, reply in item.items()}
    errors = {w: r["error"] for w, r in answers.items() if isinstance(r, dict) and "error" in r}
    if not answers:
        return outcome(name, Status.FAILED, f"no worker answered within {params.timeout:g}s "
                       f"({where})", replies={})
    lines = [f"{worker}: {reply}" for worker, reply in sorted(answers.items())]
    return outcome(name, Status.FAILED if errors else Status.OK, "\n".join(lines), replies=answers)


async def pool_grow(ctx: ActionContext, params: CeleryPoolParams) -> Outcome:
    """Add `n` processes to the pools of the given workers (all if none given)."""
    return await _resize(ctx, params, True)


async def pool_shrink(ctx: ActionContext, params: CeleryPoolParams) -> Outcome:
    """Remove `n` processes from the pools of the given workers (all if none given)."""
    return await _resize(ctx, params, False)


KOMBU_KEYS = frozenset({Channel.unacked_key, Channel.unacked_index_key, Channel.unacked_mutex_key})
"""kombu's own keys on a Redis broker: the tasks workers hold unacked (restored from there if
the worker dies), their index and the restore lock. Never a queue."""

KOMBU_PREFIX = "_kombu."
"""The prefix of kombu's exchange bindings (`_kombu.binding.<exchange>`)."""

PRIORITY_LISTS = range(1, 10)
"""The priorities kombu may keep in lists of their own, `<queue>\\x06\\x16<n>`.

Celery's Redis priorities run 0-9; priority 0 is the queue's own list. kombu's default steps
[0, 3, 6, 9] keep 3, 6 and 9 apart, an app with `priority_steps: range(10)` each of 1-9, and
kombu's own purge only knows the steps of the app doing it (the responder's are the default):
deleting the lists of all of 1-9 leaves no task behind whatever the app's steps.
"""

_PURGE = """
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'list' and kind ~= 'none' then
    return {-1, key, kind}
  end
end
local dropped = 0
for _, key in ipairs(KEYS) do
  dropped = dropped + redis.call('LLEN', key)
  redis.call('DEL', key)
end
return {dropped}
"""
"""Delete the queue's lists only if every one is a list (or absent), in one atomic step.

kombu's queue_purge runs LLEN and DEL in a pipeline: DEL runs whatever the key holds, so a
queue name taken from an alert label could delete any key of the broker.
"""


class PurgeRefused(Exception):
    """The queue named is not a Celery queue: nothing was deleted."""


def _refusal(queue: str) -> str | None:
    """Why `queue` cannot be a Celery queue by its name alone (None if it can)."""
    if not queue:
        return "the queue name is empty"
    if queue in KOMBU_KEYS or queue.startswith(KOMBU_PREFIX):
        return f"{queue!r} is a key kombu keeps for itself, not a queue"
    if Channel.sep in queue:
        return f"{queue!r} holds kombu's priority separator: name the queue itself"
    return None


def _purge(broker: str, queue: str) -> int:
    keys = [queue, *(f"{queue}{Channel.sep}{n}" for n in PRIORITY_LISTS)]
    with _broker(broker) as (_, conn):
        # The channel's client: the connection settings (TLS included) the app uses.
        found = conn.default_channel.client.eval(_PURGE, len(keys), *keys)
    if int(found[0]) < 0:
        kind = found[2].decode() if isinstance(found[2], bytes) else str(found[2])
        key = found[1].decode(errors="replace") if isinstance(found[1], bytes) else str(found[1])
        raise PurgeRefused(f"{key!r} is a Redis {kind}, not a Celery queue (a list)")
    return int(found[0])


async def purge(ctx: ActionContext, params: CeleryPurgeParams) -> Outcome:
    """Drop every waiting task of one queue (the schema requires confirm: true).

    Only a Celery queue is purged: kombu's own keys are refused by name, and any key that is
    not a list by its type, so a queue name from an alert label cannot delete other data.
    """
    name = "celery_purge"
    queue = fill(params.queue, ctx.alert.labels, {})
    if not params.confirm:
        return outcome(name, Status.FAILED, "refused: confirm is not set")
    refused = _refusal(queue)
    if refused:
        return outcome(name, Status.FAILED, f"refused to purge: {refused}", queue=queue,
                       refused=refused)
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would purge queue {queue}", queue=queue)
    try:
        dropped = await BLOCKING.run(_purge, redis_url(ctx, params.broker), queue)
    except PurgeRefused as exc:
        return outcome(name, Status.FAILED, f"refused to purge {queue}: {exc}; nothing deleted",
                       queue=queue, refused=str(exc))
    return outcome(name, Status.OK, f"purged {dropped} tasks from {queue}", queue=queue,
                   purged=dropped)


IMPLS: dict[str, ActionFn] = {
    "celery_pool_grow": pool_grow,
    "celery_pool_shrink": pool_shrink,
    "celery_purge": purge,
}
