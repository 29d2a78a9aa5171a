"""RQ actions through `rq`: requeue failed jobs, clean the job registries of a queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.utils import as_text, current_timestamp, now, parse_composite_key

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

STARTED_BATCH = 1000
"""Abandoned started entries handled per run: each costs a few round trips, and the thread
doing them cannot be stopped by the action's timeout. The rest waits for the next run."""

_DROP_DANGLING = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""
"""Remove a registry entry only while its job hash is still gone, in one atomic step."""


def _io_timeout(params: RqRequeueParams | RqCleanParams) -> float:
    # Each connect and read bounded within the action's timeout (redis-py uses it for both),
    # so a dead Redis releases the thread instead of holding it past the action.
    return min(10.0, params.timeout)


def _drop_dangling(conn: Redis, registry_key: str, entry: str, job_id: str) -> bool:
    """Remove `entry` from a registry if the hash of its job is gone (expired or evicted).

    Such an entry can never be requeued or failed: left alone, every run trips on it again.
    """
    return bool(conn.eval(_DROP_DANGLING, 2, registry_key, Job.key_for(job_id), entry))


@dataclass
class Requeued:
    """What one requeue run did: jobs requeued, dangling entries dropped, errors."""

    done: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _requeue(url: str, queue_name: str, limit: int, io_timeout: float) -> Requeued:
    with Redis.from_url(url, socket_timeout=io_timeout, **tls_options(url)) as conn:
        queue = Queue(queue_name, connection=conn)
        registry = FailedJobRegistry(queue=queue)
        result = Requeued()
        for job_id in registry.get_job_ids(0, limit - 1):
            try:
                registry.requeue(job_id)
            except NoSuchJobError as exc:
                if _drop_dangling(conn, registry.key, job_id, job_id):
                    result.dangling.append(job_id)
                else:  # its hash came back meanwhile: the next run requeues it
                    result.errors[job_id] = f"{type(exc).__name__}: {exc}"
            except InvalidJobOperation as exc:
                result.errors[job_id] = f"{type(exc).__name__}: {exc}"
            else:
                result.done.append(job_id)
        return result


async def requeue_failed(ctx: ActionContext, params: RqRequeueParams) -> Outcome:
    """Put up to `limit` jobs of the failed registry back on their queue."""
    name = "rq_requeue_failed"
    queue = fill(params.queue, ctx.alert.labels, {})
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would requeue up to {params.limit} failed jobs "
                       f"of {queue}", queue=queue)
    result = await BLOCKING.run(_requeue, redis_url(ctx, params.redis), queue, params.limit,
                                _io_timeout(params))
    lines = [f"requeued {len(result.done)} failed jobs of {queue}"]
    if result.dangling:
        lines.append(f"removed {len(result.dangling)} failed-registry entries whose job no longer "
                     f"exists (expired or evicted, nothing to requeue): "
                     f"{', '.join(result.dangling[:20])}")
    lines += [f"{job}: {error}" for job, error in result.errors.items()]
    return outcome(name, Status.FAILED if result.errors else Status.OK, "\n".join(lines),
                   queue=queue, requeued=result.done[:100], dangling=result.dangling[:100],
                   errors=result.errors)


@dataclass
class Abandoned:
    """What became of the expired entries of the started registry (job ids)."""

    failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    more: bool = False


def _fail_abandoned(queue: Queue, job: Job) -> bool:
    """Fail (or retry) one abandoned job as rq's StartedJobRegistry.cleanup does, no callback.

    The same writes as rq 2.x: a retry if the job has retries left; else status `failed`, the
    job in the failed registry for its failure_ttl, the AbandonedJobError text in a failure
    Result (where rq 2.x keeps exc_info; it sets no ended_at either), then the dependents that
    allow a failed dependency enqueued. True if retried.
    """
    retry = bool(job.retries_left and job.retries_left > 0)
    with queue.connection.pipeline() as pipe:
        if retry:
            job.retry(queue, pipe)
        else:
            exc = f"Moved to FailedJobRegistry, due to AbandonedJobError, at {now()}"
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=exc, pipeline=pipe)
            Result.create_failure(job, job.failure_ttl, exc_string=exc, pipeline=pipe)
        pipe.execute()
    if not retry:
        queue.enqueue_dependents(job)
    return retry


def _abandoned(queue: Queue) -> Abandoned:
    """Handle the expired entries of the started registry: jobs whose worker died.

    Not with rq's cleanup: it runs the job's on_failure callback here, i.e. imports and runs the
    app's code in the responder, under a signal-based timeout that fails off the main thread (so
    the cleanup failed whole, every time). A job with such a callback is left to rq's workers,
    whose maintenance fails it and runs its callback where the app's code lives; any other is
    failed here with the same writes rq makes.
    """
    conn = queue.connection
    registry = StartedJobRegistry(queue=queue)
    found = Abandoned()
    expired = conn.zrangebyscore(registry.key, 0, current_timestamp(), start=0,
                                 num=STARTED_BATCH + 1)
    entries = [as_text(e) for e in cast(list[bytes], expired)]
    found.more = len(entries) > STARTED_BATCH
    for entry in entries[:STARTED_BATCH]:
        job_id, _ = parse_composite_key(entry)
        try:
            job = Job.fetch(job_id, connection=conn, serializer=queue.serializer)
        except NoSuchJobError:
            if _drop_dangling(conn, registry.key, entry, job_id):
                found.dangling.append(job_id)
            continue
        if conn.hget(job.key, "failure_callback_name"):
            found.left.append(job_id)
        # ZREM first: only the one party that removes the entry goes on to fail the job, so a
        # worker cleaning at the same moment cannot fail or retry it twice.
        elif conn.zrem(registry.key, entry):
            (found.retried if _fail_abandoned(queue, job) else found.failed).append(job_id)
    return found


def _clean(url: str, queue_name: str, io_timeout: float
           ) -> tuple[dict[str, dict[str, int]], Abandoned]:
    with Redis.from_url(url, socket_timeout=io_timeout, **tls_options(url)) as conn:
        queue = Queue(queue_name, connection=conn)
        registries = {name: cls(queue=queue) for name, cls in _REGISTRIES.items()}
        before = {name: int(conn.zcard(reg.key)) for name, reg in registries.items()}
        # These three only drop expired entries (ZREMRANGEBYSCORE): no job code runs.
        for name in ("finished", "failed", "deferred"):
            registries[name].cleanup()
        started = _abandoned(queue)
        after = {name: int(conn.zcard(reg.key)) for name, reg in registries.items()}
        counts = {name: {"before": before[name], "after": after[name]} for name in registries}
        return counts, started


def _started_lines(found: Abandoned) -> list[str]:
    lines = []
    if found.failed:
        lines.append(f"moved {len(found.failed)} abandoned started jobs to failed "
                     f"(AbandonedJobError): {', '.join(found.failed[:20])}")
    if found.retried:
        lines.append(f"requeued {len(found.retried)} abandoned started jobs with retries left: "
                     f"{', '.join(found.retried[:20])}")
    if found.dangling:
        lines.append(f"removed {len(found.dangling)} started entries whose job no longer exists: "
                     f"{', '.join(found.dangling[:20])}")
    if found.left:
        lines.append(f"left {len(found.left)} abandoned started jobs to rq workers: they have an "
                     f"on_failure callback, app code the responder does not run (a worker's "
                     f"registry maintenance fails them and runs it): {', '.join(found.left[:20])}")
    if found.more:
        lines.append(f"more than {STARTED_BATCH} abandoned started entries: the rest is left for "
                     f"the next run")
    return lines


async def clean(ctx: ActionContext, params: RqCleanParams) -> Outcome:
    """Drop expired entries of the finished/failed registries and fail abandoned started jobs.

    Abandoned jobs with an on_failure callback are left to rq's workers (see `_abandoned`).
    """
    name = "rq_clean_registries"
    queue = fill(params.queue, ctx.alert.labels, {})
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would clean the registries of {queue}", queue=queue)
    counts, found = await BLOCKING.run(_clean, redis_url(ctx, params.redis), queue,
                                       _io_timeout(params))
    lines = [f"{reg}: {c['before']} -> {c['after']}" for reg, c in counts.items()]
    lines += _started_lines(found)
    return outcome(name, Status.OK, "\n".join(lines), queue=queue, registries=counts,
                   started={"failed": found.failed[:100], "retried": found.retried[:100],
                            "dangling": found.dangling[:100], "left": found.left[:100],
                            "more": found.more})


IMPLS: dict[str, ActionFn] = {"rq_requeue_failed": requeue_failed, "rq_clean_registries": clean}
