"""Celery actions through its control API: grow or shrink worker pools, purge a queue."""

from __future__ import annotations

from typing import Any

from celery import Celery

from responder.actions.base import BLOCKING, ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.labels import fill
from responder.actions.targets import redis_url
from runbook.actions import CeleryPoolParams, CeleryPurgeParams

IO_TIMEOUT = 5.0
"""Seconds any one connect or read on the broker may take.

Above kombu's 1 s BRPOP polls, and well below the time run_action allows these actions (the
connect grace it adds to the pools' reply window, its default for purge): a broker that accepts
and never answers fails the action in time, and the thread running the call is released rather
than blocked forever on a socket read no asyncio timeout can interrupt.
"""


def _app(broker: str) -> Any:
    # A bare app on the broker: only the control API and the broker connection are used.
    app = Celery("runbook-autopilot", broker=broker, set_as_current=False)
    app.conf.update(
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


def _pool(broker: str, grow: bool, params: CeleryPoolParams) -> list[dict[str, Any]]:
    with _app(broker) as app:
        call = app.control.pool_grow if grow else app.control.pool_shrink
        # With named workers, stop waiting once each has answered.
        replies: list[dict[str, Any]] = call(
            params.n, destination=params.destination or None, reply=True,
            timeout=params.timeout, limit=len(params.destination) or None,
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


def _purge(broker: str, queue: str) -> int:
    with _app(broker) as app, app.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge(queue) or 0)


async def purge(ctx: ActionContext, params: CeleryPurgeParams) -> Outcome:
    """Drop every waiting task of one queue (the schema requires confirm: true)."""
    name = "celery_purge"
    queue = fill(params.queue, ctx.alert.labels, {})
    if not params.confirm:
        return outcome(name, Status.FAILED, "refused: confirm is not set")
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would purge queue {queue}", queue=queue)
    dropped = await BLOCKING.run(_purge, redis_url(ctx, params.broker), queue)
    return outcome(name, Status.OK, f"purged {dropped} tasks from {queue}", queue=queue,
                   purged=dropped)


IMPLS: dict[str, ActionFn] = {
    "celery_pool_grow": pool_grow,
    "celery_pool_shrink": pool_shrink,
    "celery_purge": purge,
}
