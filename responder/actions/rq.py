"""RQ actions through `rq`: requeue failed jobs, clean the job registries of a queue."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
    clean_registries,
)

from responder.actions.base import BLOCKING, ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.labels import fill
from responder.actions.targets import redis_url
from runbook.actions import RqCleanParams, RqRequeueParams
from runbook.redis_tls import tls_options

_REGISTRIES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
}


def _io_timeout(params: RqRequeueParams | RqCleanParams) -> float:
    # Each connect and read bounded within the action's timeout (redis-py uses it for both),
    # so a dead Redis releases the thread instead of holding it past the action.
    return min(10.0, params.timeout)


def _requeue(url: str, queue_name: str, limit: int, io_timeout: float
             ) -> tuple[list[str], dict[str, str]]:
    with Redis.from_url(url, socket_timeout=io_timeout, **tls_options(url)) as conn:
        queue = Queue(queue_name, connection=conn)
        registry = FailedJobRegistry(queue=queue)
        done: list[str] = []
        errors: dict[str, str] = {}
        for job_id in registry.get_job_ids(0, limit - 1):
            try:
                registry.requeue(job_id)
            except (InvalidJobOperation, NoSuchJobError) as exc:
                errors[job_id] = f"{type(exc).__name__}: {exc}"
            else:
                done.append(job_id)
        return done, errors


async def requeue_failed(ctx: ActionContext, params: RqRequeueParams) -> Outcome:
    """Put up to `limit` jobs of the failed registry back on their queue."""
    name = "rq_requeue_failed"
    queue = fill(params.queue, ctx.alert.labels, {})
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would requeue up to {params.limit} failed jobs "
                       f"of {queue}", queue=queue)
    done, errors = await BLOCKING.run(_requeue, redis_url(ctx, params.redis), queue,
                                      params.limit, _io_timeout(params))
    lines = [f"requeued {len(done)} failed jobs of {queue}"]
    lines += [f"{job}: {error}" for job, error in errors.items()]
    return outcome(name, Status.FAILED if errors else Status.OK, "\n".join(lines), queue=queue,
                   requeued=done[:100], errors=errors)


def _clean(url: str, queue_name: str, io_timeout: float) -> dict[str, Any]:
    with Redis.from_url(url, socket_timeout=io_timeout, **tls_options(url)) as conn:
        queue = Queue(queue_name, connection=conn)
        keys = {name: cls(queue=queue).key for name, cls in _REGISTRIES.items()}
        before = {name: int(conn.zcard(key)) for name, key in keys.items()}
        clean_registries(queue)
        after = {name: int(conn.zcard(key)) for name, key in keys.items()}
        return {name: {"before": before[name], "after": after[name]} for name in keys}


async def clean(ctx: ActionContext, params: RqCleanParams) -> Outcome:
    """Run rq's registry cleanup: expired entries leave started/finished/failed/deferred."""
    name = "rq_clean_registries"
    queue = fill(params.queue, ctx.alert.labels, {})
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would clean the registries of {queue}", queue=queue)
    counts = await BLOCKING.run(_clean, redis_url(ctx, params.redis), queue,
                                _io_timeout(params))
    lines = [f"{reg}: {c['before']} -> {c['after']}" for reg, c in counts.items()]
    return outcome(name, Status.OK, "\n".join(lines), queue=queue, registries=counts)


IMPLS: dict[str, ActionFn] = {"rq_requeue_failed": requeue_failed, "rq_clean_registries": clean}
