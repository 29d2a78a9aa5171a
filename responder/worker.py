"""The worker: claims due work from the store and runs it after the webhook was answered."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp

from responder.actions.base import ActionContext, AlertView, Outcome, Status
from responder.metrics import Metrics
from responder.policy import Policy
from responder.store import Store, StoreError, WorkItem
from responder.store import work as ops
from responder.store.retention import prune
from runbook.actions import ACTIONS
from runbook.loader import LoadedRunbook

log = logging.getLogger("responder.worker")

# Safe to run twice: after a crash in the middle of one of these, it is run again rather than
# escalated. Anything else that was running at a crash is escalated, never re-run.
IDEMPOTENT_ACTIONS = frozenset({
    "page", "bullmq_pause", "bullmq_resume", "redis_memory_purge", "rq_clean_registries",
    "pg_vacuum_analyze", "pg_cancel_long_queries", "pg_terminate_long_queries",
    "pg_terminate_idle_in_transaction", "bullmq_clean", "files_clean",
})

CLAIM_BATCH = 16
OTHER_SLOTS = 16
"""Pages, verifications and page resolutions running at once (remediations have their own
limit, rails.max_concurrent)."""
PRUNE_EVERY = 3600.0
RunAction = Callable[[str, Any, ActionContext], Awaitable[Outcome]]
StillFiring = Callable[[ActionContext], Awaitable[bool | None]]
ResolvePage = Callable[[ActionContext], Awaitable[Outcome]]


def _optional(module: str, name: str) -> Any:
    """An attribute of a module that a later part of the project provides, or None."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


@dataclass
class Hooks:
    """The actions package's entry points (run, verify, resolve a page)."""

    run_action: RunAction | None = None
    still_firing: StillFiring | None = None
    resolve_page: ResolvePage | None = None
    idempotent: frozenset[str] = IDEMPOTENT_ACTIONS

    @classmethod
    def discover(cls, registry: Any = None) -> Hooks:
        """Find `responder.actions.run_action`, `responder.verify.still_firing` and
        `responder.actions.resolve_page` (both actions go through the same timeout, secret
        scrubbing and metrics)."""
        extra = _optional("responder.actions", "IDEMPOTENT") or frozenset()
        run_action = _optional("responder.actions", "run_action")
        resolve_page = _optional("responder.actions", "resolve_page")
        metrics_type = _optional("responder.actions", "ActionMetrics")
        if metrics_type is not None and registry is not None:
            # The actions' own counters, on this app's registry (served on its /metrics); one
            # instance, as a second on the same registry would be a duplicate.
            metrics = metrics_type(registry)
            if run_action is not None:
                run_action = functools.partial(run_action, metrics=metrics)
            if resolve_page is not None:
                resolve_page = functools.partial(resolve_page, metrics=metrics)
        return cls(
            run_action=cast(RunAction | None, run_action),
            still_firing=cast(StillFiring | None, _optional("responder.verify", "still_firing")),
            resolve_page=cast(ResolvePage | None, resolve_page),
            idempotent=IDEMPOTENT_ACTIONS | frozenset(extra),
        )


@dataclass
class WorkerConfig:
    """How one worker claims and runs work."""

    owner: str
    lease: float = 60.0
    poll: float = 0.5
    concurrency: int = 4
    public_url: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    retention: float = 30 * 86400.0
    """Seconds ended incidents and notification bodies are kept; 0 keeps them forever."""


class LostClaim(Exception):
    """Another replica took this work over (our lease had expired)."""


class Worker:
    """Runs `do`, verify, escalate and page work; one task per claimed item, bounded."""

    def __init__(self, store: Store, loaded: LoadedRunbook, session: aiohttp.ClientSession,
                 metrics: Metrics, config: WorkerConfig, hooks: Hooks | None = None) -> None:
        self.store = store
        self.loaded = loaded
        self.session = session
        self.metrics = metrics
        self.config = config
        self.hooks = hooks or Hooks.discover(metrics.registry)
        self.policy = Policy(loaded)
        self._wakes: list[tuple[bool, asyncio.Event]] = []
        self._stopping = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Work this process still runs; what it claimed and no longer runs (a store failure
        # left it claimed) is recovered by its own recovery loop once the lease runs out.
        self._running: set[int] = set()

    def wake(self, kinds: Collection[str] | None = None) -> None:
        """New work was queued: look now instead of at the next poll. With the kinds queued,
        only the loop that claims them looks (an empty claim is a store transaction too)."""
        for remediations, event in self._wakes:
            if kinds is None or any((kind in ops.REMEDIATIONS) == remediations
                                    for kind in kinds):
                event.set()

    async def recover(self, everything: bool) -> list[dict[str, Any]]:
        """Resume or escalate work left claimed by a stopped process."""
        running = frozenset(self._running)
        found = await self.store.run(lambda tx: ops.recover(
            tx, self.config.owner, time.time(), everything, self.hooks.idempotent, running))
        for item in found:
            log.warning("recovered work %s: %s", item["work"], item["result"])
        return found

    async def run(self) -> None:
        """Claim and run work until cancelled: remediations within rails.max_concurrent, and
        pages, verifications and page resolutions in slots of their own."""
        async with asyncio.TaskGroup() as group:
            recover = group.create_task(self._recover_loop())
            loops = [group.create_task(self._claim_loop(group, True, self.config.concurrency)),
                     group.create_task(self._claim_loop(group, False, OTHER_SLOTS))]
            for loop in loops:
                await loop
            recover.cancel()

    async def _claim_loop(self, group: asyncio.TaskGroup, remediations: bool, size: int
                          ) -> None:
        slots = asyncio.Semaphore(size)
        wake = asyncio.Event()
        self._wakes.append((remediations, wake))
        while True:
            await slots.acquire()
            if self._stopping:
                # Claim nothing more; the task group waits for the work already running.
                # Returning (not waiting to be cancelled) matters: on Python 3.11 a cancel
                # that lands as a wait completes can be lost, and shutdown would hang.
                slots.release()
                return
            wake.clear()
            # One slot is ours; take as many more as are free for one batched claim.
            free = 1
            while free < CLAIM_BATCH and not slots.locked():
                await slots.acquire()
                free += 1
            # Busy from before the claim commits: a drain must wait for what it takes.
            self._busy += free
            self._idle.clear()
            try:
                items = await self.store.run(functools.partial(
                    ops.claim_many, owner=self.config.owner, now=time.time(),
                    lease=self.config.lease, limit=free, remediations=remediations))
            except StoreError as exc:
                items = []
                self.metrics.store_errors.labels("claim").inc()
                log.error("cannot claim work: %s", exc)
            except Exception:  # the loop must outlive any one claim, or nothing runs again
                items = []
                self.metrics.store_errors.labels("claim").inc()
                log.exception("cannot claim work")
            for _ in range(free - len(items)):
                slots.release()
            self._done(free - len(items))
            for item in items:
                group.create_task(self._process(item, slots))
            if not items:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.poll):
                        await wake.wait()

    def _done(self, count: int) -> None:
        self._busy -= count
        if self._busy == 0:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Stop claiming and give running work `grace` seconds to finish; True if it did."""
        self._stopping = True
        self.wake()
        log.info("stopping: waiting up to %ss for %s running work item(s)", grace, self._busy)
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    async def _recover_loop(self) -> None:
        pruned_at = 0.0
        while True:
            await asyncio.sleep(max(self.config.lease / 2, 0.2))
            try:
                if await self.recover(everything=False):
                    self.wake()
                if self.config.retention and time.time() - pruned_at > PRUNE_EVERY:
                    pruned_at = time.time()
                    await self._prune(pruned_at - self.config.retention)
            except StoreError as exc:
                self.metrics.store_errors.labels("recover").inc()
                log.error("cannot recover or prune: %s", exc)

    async def _prune(self, before: float) -> None:
        """Retention in short transactions, so webhooks are recorded in between."""
        gone = {"more": True}
        while gone["more"]:
            gone = await self.store.run(functools.partial(prune, before=before))
            log.info("retention: removed %s", gone)

    async def _process(self, item: WorkItem, slots: asyncio.Semaphore) -> None:
        self._running.add(item.id)
        try:
            async with asyncio.TaskGroup() as group:
                beat = group.create_task(self._heartbeat(item))
                try:
                    outcomes, verdict, last = await self._execute(item)
                    await self.store.run(functools.partial(
                        ops.complete, policy=self.policy, item=item, owner=self.config.owner,
                        outcomes=outcomes,
                        still_firing=verdict, now=time.time(), last=last))
                finally:
                    beat.cancel()
        except* LostClaim:
            log.warning("work %s was taken over by another replica", item.id)
        except* StoreError as group_error:
            self.metrics.store_errors.labels("work").inc()
            log.error("work %s: store failed, left for recovery: %s", item.id,
                      group_error.exceptions[0])
        except* Exception:
            log.exception("work %s failed unexpectedly; left for recovery", item.id)
        finally:
            self._running.discard(item.id)
            slots.release()
            self._done(1)
            self.wake()

    async def _heartbeat(self, item: WorkItem) -> None:
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                ours = await self.store.run(lambda tx: ops.renew(
                    tx, item.id, self.config.owner, time.time() + self.config.lease))
            except StoreError as exc:
                # A blip must not cut the action short; the lease still has 2/3 to run.
                self.metrics.store_errors.labels("renew").inc()
                log.warning("cannot renew the lease of work %s: %s", item.id, exc)
                continue
            if not ours:
                raise LostClaim(item.id)

    def _context(self, item: WorkItem, dry_run: bool) -> ActionContext:
        occ = item.occurrence
        past = item.history
        starts = datetime.fromisoformat(str(occ["starts_at"]).replace("Z", "+00:00"))
        alert = AlertView(
            fingerprint=str(occ["fingerprint"]), starts_at=starts.astimezone(UTC),
            labels=json.loads(occ["labels"]), annotations=json.loads(occ["annotations"]),
            status="resolved" if occ.get("resolved_at") else "firing",
            generator_url=str(occ["generator_url"]))
        base = self.config.public_url.rstrip("/")
        return ActionContext(
            alert=alert, occurrence_id=item.occurrence_id, runbook=self.loaded,
            session=self.session, env=self.config.env, dry_run=dry_run,
            history=[_outcome(h) for h in past],
            incident_url=f"{base}/incidents/{item.occurrence_id}" if base else "")

    async def _execute(self, item: WorkItem) -> tuple[
            list[dict[str, Any]], bool | None, tuple[int, dict[str, Any]] | None]:
        """Run the work; the last step's outcome is recorded together with the completion."""
        dry_run = bool(item.plan.get("dry_run"))
        if item.kind == "verify":
            return [], await self._verify(self._context(item, dry_run)), None
        if item.kind == "resolve_page":
            ctx = self._context(item, False)
            outcome = await self._resolve_page(ctx)
            return [outcome.as_json()], None, None
        outcomes: list[dict[str, Any]] = []
        steps = item.plan.get("steps", [])
        pending: tuple[int, dict[str, Any]] | None = None
        for index in range(item.next_step, len(steps)):
            if pending is not None:
                if not await self.store.run(functools.partial(
                        ops.finish_step, item=item, owner=self.config.owner, index=pending[0],
                        outcome=pending[1], now=time.time())):
                    raise LostClaim(item.id)
                pending = None
            detail = ops.step_detail(item, index)
            if not (index == item.next_step and item.step_started) and \
                    not await self.store.run(functools.partial(
                        ops.begin_step, item=item, owner=self.config.owner, index=index,
                        detail=detail, now=time.time())):
                raise LostClaim(item.id)
            name = detail["action"]
            ctx = self._context(item, detail["dry_run"])
            outcome = await self._action(name, steps[index]["params"], ctx)
            self.metrics.actions.labels(name, outcome.status.value).inc()
            self.metrics.action_seconds.labels(name).observe(outcome.duration_seconds)
            result = outcome.as_json()
            outcomes.append(result)
            item.history.append(result)
            pending = (index, result)
            if item.kind == "run" and not outcome.ok:
                break  # a failed remediation step escalates; later steps assumed it worked
        return outcomes, None, pending

    async def _action(self, name: str, raw: Any, ctx: ActionContext) -> Outcome:
        started = time.monotonic()
        if self.hooks.run_action is None:
            return Outcome(name, Status.FAILED, 0.0, "no action implementations are installed")
        model = ACTIONS.get(name)
        if model is None:
            return Outcome(name, Status.FAILED, 0.0, f"unknown action {name!r}")
        try:
            params = model.model_validate(raw)
            return await self.hooks.run_action(name, params, ctx)
        except Exception as exc:  # one broken action never stops the worker
            log.exception("action %s raised", name)
            return Outcome(name, Status.FAILED, time.monotonic() - started,
                           f"{type(exc).__name__}: {exc}")

    async def _verify(self, ctx: ActionContext) -> bool | None:
        if self.hooks.still_firing is None:
            return None
        try:
            return await self.hooks.still_firing(ctx)
        except Exception:  # unknown, so the resolved notification alone decides
            log.exception("verification raised")
            return None

    async def _resolve_page(self, ctx: ActionContext) -> Outcome:
        if self.hooks.resolve_page is None:
            return Outcome("page", Status.SKIPPED, 0.0, "no page resolve path is installed")
        try:
            return await self.hooks.resolve_page(ctx)
        except Exception as exc:
            log.exception("resolving the page raised")
            return Outcome("page", Status.FAILED, 0.0, f"{type(exc).__name__}: {exc}")


def _outcome(data: Mapping[str, Any]) -> Outcome:
    try:
        status = Status(data.get("status", "failed"))
    except ValueError:
        status = Status.FAILED
    return Outcome(str(data.get("action", "")), status, float(data.get("duration_seconds", 0.0)),
                   str(data.get("output", "")), dict(data.get("detail", {})))
