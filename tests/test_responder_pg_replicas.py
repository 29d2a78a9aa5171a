"""PostgreSQL replicas sharing the decision lock: a frozen replica cannot hold every other
replica's decisions, and replicas' group commits never deadlock each other."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from responder.payload import Notification
from responder.policy import Policy
from responder.store import StoreError
from responder.store.base import Tx
from responder.store.intake import IntakeJob
from responder.store.postgres import PostgresStore
from tests.test_responder_support import alert, body, load

PAGE_AND_AUTO = (
    "  - name: p\n    match: {alertname: GaugeHigh, instance: paged}\n    external: true\n"
    "    mode: page\n"
    "  - name: a\n    match: {alertname: GaugeHigh}\n    external: true\n    mode: auto\n"
    "    cooldown: 0s\n    do: [{exec: [/bin/true]}]\n")


@contextlib.asynccontextmanager
async def two_replicas(dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores with a 1 s timeout; the first holds the decision lock in a transaction that
    stays idle until the block ends (as a replica stopped by SIGSTOP or a partition)."""
    holder, other = PostgresStore(dsn, timeout=1.0), PostgresStore(dsn, timeout=1.0)
    await holder.open()
    await other.open()
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold_the_lock(tx: Tx) -> None:
        await tx.lock_decisions()
        holding.set()
        await release.wait()

    held = asyncio.ensure_future(holder.run(hold_the_lock))
    try:
        await holding.wait()
        yield holder, other
    finally:
        release.set()
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        await holder.close()
        await other.close()


async def test_a_replica_idle_inside_its_transaction_frees_the_decision_lock(
        postgres_dsn: str) -> None:
    async with two_replicas(postgres_dsn) as (_frozen, live):
        policy = Policy(load(PAGE_AND_AUTO))
        job = IntakeJob(Notification.model_validate(body(alert("frozen-1"))), "{}", policy,
                        time.time())
        started = time.monotonic()
        answered = None
        while answered is None and time.monotonic() - started < 20:
            try:
                answered = await live.run_intake(job)
            except StoreError:
                await asyncio.sleep(0.2)  # Alertmanager retries a 503
        # The server ends the frozen session after 2 x the timeout, and its lock with it.
        assert answered is not None, "the decision lock stayed held"
        assert [a.status for a in answered.alerts] == ["new"]
        assert time.monotonic() - started < 10


async def test_replicas_group_commits_do_not_deadlock(postgres_dsn: str) -> None:
    replicas = [PostgresStore(postgres_dsn) for _ in range(3)]
    for replica in replicas:
        await replica.open()
    try:
        policy = Policy(load(PAGE_AND_AUTO))
        now = time.time()
        notes = [Notification.model_validate(body(alert(
            f"fp{i}", instance="paged" if i % 2 else f"host-{i}"))) for i in range(150)]
        # Every notification to every replica, twice, at once, in a different order on each:
        # pages (no rails) and automatic decisions (rails) interleave in each replica's groups.
        jobs = [replica.run_intake(IntakeJob(note, "{}", policy, now))
                for _ in range(2) for n, replica in enumerate(replicas)
                for note in (notes if n % 2 == 0 else notes[::-1])]
        answers = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        for replica in replicas:
            await replica.close()
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[0]!r}"
    new = sum(1 for a in answers if not isinstance(a, BaseException)
              for x in a.alerts if x.status == "new")
    assert new == len(notes)  # exactly one decision per occurrence


async def test_a_held_decision_lock_fails_a_group_at_once_not_job_after_job(
        postgres_dsn: str) -> None:
    async with two_replicas(postgres_dsn) as (_holder, store):
        policy = Policy(load(PAGE_AND_AUTO))
        jobs = [IntakeJob(Notification.model_validate(body(alert(f"held-{i}"))), "{}", policy,
                          time.time()) for i in range(6)]
        started = time.monotonic()
        answers = await asyncio.gather(*(store.run_intake(j) for j in jobs),
                                       return_exceptions=True)
        elapsed = time.monotonic() - started
    assert all(isinstance(a, StoreError) for a in answers), answers
    assert "timeout" in str(answers[0]).lower() or "lock" in str(answers[0]).lower()
    # One lock wait (1 s) per group, not one per job: six jobs queued together are at most
    # two groups (the first, then everything that queued meanwhile).
    assert elapsed < 3.5, elapsed
