"""BullMQ actions through the `bullmq` Python package (its own Lua scripts, never raw keys).

The package covers every operation used here: pause/resume (`pause` script), retry failed
(`moveJobsToWait`), clean (`cleanJobsInSet`) and remove one job (`removeJob`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from bullmq import Queue

from responder.actions.base import ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.labels import fill
from responder.actions.targets import redis_target, redis_url
from runbook.actions import BullmqCleanParams, BullmqRemoveJobParams, BullmqRetryParams, QueueRef
from runbook.redis_tls import tls_options

_REMOVE_CODES = {0: "the job is locked by a worker (active)",
                 -8: "the job belongs to a job scheduler (remove the scheduler instead)"}


def queue_name(ctx: ActionContext, params: QueueRef) -> str:
    """The queue name, with a label placeholder filled and validated."""
    return fill(params.queue, ctx.alert.labels, {})


@asynccontextmanager
async def open_queue(ctx: ActionContext, params: QueueRef) -> AsyncIterator[Any]:
    """A bullmq Queue on the target's Redis with the runbook's prefix, closed afterwards."""
    prefix = redis_target(ctx, params.redis).queues.bullmq_prefix
    # Our own client (bullmq's reads decoded strings): no retry storm on a dead Redis, and
    # closed with aclose rather than bullmq's deprecated close.
    url = redis_url(ctx, params.redis)
    conn = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0,
                                   **tls_options(url))
    try:
        yield Queue(queue_name(ctx, params), {"connection": conn, "prefix": prefix})
    finally:
        await conn.aclose()


async def _counts(queue: Any) -> dict[str, int]:
    counts: dict[str, int] = await queue.getJobCounts(
        "wait", "paused", "active", "delayed", "prioritized", "completed", "failed"
    )
    return counts


async def _pause(ctx: ActionContext, params: QueueRef, pause: bool) -> Outcome:
    name = "bullmq_pause" if pause else "bullmq_resume"
    queue_label = queue_name(ctx, params)
    if ctx.dry_run:
        verb = "pause" if pause else "resume"
        return outcome(name, Status.DRY_RUN, f"would {verb} {queue_label}", queue=queue_label)
    async with open_queue(ctx, params) as queue:
        await (queue.pause() if pause else queue.resume())
        paused = await queue.isPaused()
        counts = await _counts(queue)
    status = Status.OK if paused == pause else Status.FAILED
    return outcome(name, status, f"{queue_label}: paused={paused} {counts}", queue=queue_label,
                   paused=paused, counts=counts)


async def pause(ctx: ActionContext, params: QueueRef) -> Outcome:
    """Pause a BullMQ queue globally (workers finish active jobs, take no new ones)."""
    return await _pause(ctx, params, True)


async def resume(ctx: ActionContext, params: QueueRef) -> Outcome:
    """Resume a paused BullMQ queue."""
    return await _pause(ctx, params, False)


async def retry_failed(ctx: ActionContext, params: BullmqRetryParams) -> Outcome:
    """Move up to `limit` failed jobs back to wait."""
    name = "bullmq_retry_failed"
    queue_label = queue_name(ctx, params)
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would retry up to {params.limit} failed jobs of "
                       f"{queue_label}", queue=queue_label)
    async with open_queue(ctx, params) as queue:
        before = await queue.getFailedCount()
        await queue.scripts.retryJobs("failed", params.limit, round(time.time() * 1000))
        after = await queue.getFailedCount()
    moved = before - after
    return outcome(name, Status.OK, f"{queue_label}: {moved} failed jobs moved to wait",
                   queue=queue_label, retried=moved, failed_left=after)


async def clean(ctx: ActionContext, params: BullmqCleanParams) -> Outcome:
    """Remove up to `limit` jobs in `state` older than `older_than`."""
    name = "bullmq_clean"
    queue_label = queue_name(ctx, params)
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would clean {params.state} jobs of {queue_label} "
                       f"older than {params.older_than:g}s", queue=queue_label)
    async with open_queue(ctx, params) as queue:
        removed = await queue.clean(int(params.older_than * 1000), params.limit, params.state)
    ids = [str(i) for i in removed or []]
    return outcome(name, Status.OK, f"{queue_label}: removed {len(ids)} {params.state} jobs",
                   queue=queue_label, removed=len(ids), job_ids=ids[:100])


async def remove_job(ctx: ActionContext, params: BullmqRemoveJobParams) -> Outcome:
    """Remove one job (not an active one: its worker holds the lock)."""
    name = "bullmq_remove_job"
    queue_label = queue_name(ctx, params)
    job_id = fill(params.job_id, ctx.alert.labels, {})
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would remove job {job_id} of {queue_label}",
                       queue=queue_label, job_id=job_id)
    async with open_queue(ctx, params) as queue:
        state = await queue.getJobState(job_id)
        if state == "unknown":
            return outcome(name, Status.FAILED, f"{queue_label}: no job {job_id}",
                           queue=queue_label, job_id=job_id)
        code = int(await queue.remove(job_id))
    if code == 1:
        return outcome(name, Status.OK, f"{queue_label}: removed job {job_id} (was {state})",
                       queue=queue_label, job_id=job_id, state=state)
    reason = _REMOVE_CODES.get(code, f"removeJob returned {code}")
    return outcome(name, Status.FAILED, f"{queue_label}: job {job_id} not removed: {reason}",
                   queue=queue_label, job_id=job_id, code=code)


IMPLS: dict[str, ActionFn] = {
    "bullmq_pause": pause,
    "bullmq_resume": resume,
    "bullmq_retry_failed": retry_failed,
    "bullmq_clean": clean,
    "bullmq_remove_job": remove_job,
}
