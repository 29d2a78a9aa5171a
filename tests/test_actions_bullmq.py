"""BullMQ actions on queues filled and read back by the Node library (tests/node/bullmq)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from responder.actions import run_action
from responder.actions.base import ActionContext, Status
from runbook.actions import BullmqCleanParams, BullmqRemoveJobParams, BullmqRetryParams, QueueRef
from tests.actions_support import book, context
from tests.servers import find_tool, free_port

NODE_DIR = Path(__file__).parent / "node"
PREFIX = "rbap"
BOOK = f"""
service: scraper
watch:
  redis:
    - name: jobs
      url_env: JOBS_REDIS_URL
      queues: {{bullmq: [scrape], bullmq_prefix: {PREFIX}}}
"""


def node(redis_url: str, op: str, queue: str = "scrape", **args: Any) -> Any:
    """Run one command of tests/node/actions_bullmq.mjs and return its JSON answer."""
    if not (NODE_DIR / "node_modules" / "bullmq").exists():
        raise FileNotFoundError("tests/node/node_modules is missing: run scripts/setup")
    command = json.dumps({"op": op, "url": redis_url, "prefix": PREFIX, "queue": queue, **args})
    done = subprocess.run([find_tool("node"), "actions_bullmq.mjs", command], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"node {op} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _ctx(session: aiohttp.ClientSession, url: str, **labels: str) -> ActionContext:
    env = {"PATH": os.environ["PATH"], "JOBS_REDIS_URL": url}
    return context(session, book(BOOK), labels={"alertname": "QueueDepthHigh", **labels}, env=env)


async def test_pause_and_resume(session: aiohttp.ClientSession, redis_url: str) -> None:
    node(redis_url, "add", n=3)
    ctx = _ctx(session, redis_url, queue="scrape")
    result = await run_action("bullmq_pause", QueueRef(redis="jobs", queue="{{ labels.queue }}"),
                              ctx)
    assert result.status is Status.OK, result.output
    state = node(redis_url, "read")
    assert state["paused"] is True
    assert state["counts"]["paused"] == 3
    assert state["counts"]["wait"] == 0

    result = await run_action("bullmq_resume", QueueRef(redis="jobs", queue="scrape"), ctx)
    assert result.status is Status.OK, result.output
    state = node(redis_url, "read")
    assert state["paused"] is False
    assert state["counts"]["wait"] == 3
    # Node can still take the jobs after the resume.
    assert len(node(redis_url, "finish", completed=3)["ids"]) == 3


async def test_retry_failed_up_to_limit(session: aiohttp.ClientSession, redis_url: str) -> None:
    failed = node(redis_url, "add", n=5, completed=1, failed=4)["finished"][1:]
    assert node(redis_url, "read")["counts"]["failed"] == 4
    ctx = _ctx(session, redis_url)
    params = BullmqRetryParams(redis="jobs", queue="scrape", limit=3)
    result = await run_action("bullmq_retry_failed", params, ctx)
    assert result.status is Status.OK, result.output
    assert result.detail["retried"] == 3
    state = node(redis_url, "read")
    assert state["counts"]["failed"] == 1
    assert state["counts"]["wait"] == 3
    assert set(state["waiting"]) | set(state["failed"]) == set(failed)
    # The retried jobs are whole jobs again: a worker completes them.
    node(redis_url, "finish", completed=3)
    assert node(redis_url, "read")["counts"]["completed"] == 4


async def test_clean_only_older_jobs(session: aiohttp.ClientSession, redis_url: str) -> None:
    old = node(redis_url, "add", n=2, completed=2)["finished"]
    await asyncio.sleep(1.2)
    new = node(redis_url, "add", n=2, completed=2)["finished"]
    ctx = _ctx(session, redis_url)
    params = BullmqCleanParams(redis="jobs", queue="scrape", state="completed", older_than="1s")
    result = await run_action("bullmq_clean", params, ctx)
    assert result.status is Status.OK, result.output
    assert sorted(result.detail["job_ids"]) == sorted(old)
    assert sorted(node(redis_url, "read")["completed"]) == sorted(new)


async def test_remove_one_job(session: aiohttp.ClientSession, redis_url: str) -> None:
    ids = node(redis_url, "add", n=3)["ids"]
    ctx = _ctx(session, redis_url, job_id=ids[1])
    params = BullmqRemoveJobParams(redis="jobs", queue="scrape", job_id="{{ labels.job_id }}")
    result = await run_action("bullmq_remove_job", params, ctx)
    assert result.status is Status.OK, result.output
    assert sorted(node(redis_url, "read")["waiting"]) == sorted([ids[0], ids[2]])

    again = await run_action("bullmq_remove_job", params, ctx)
    assert again.status is Status.FAILED
    assert "no job" in again.output


async def test_active_job_is_not_removed(session: aiohttp.ClientSession, redis_url: str) -> None:
    [active] = node(redis_url, "add", n=1, active=1)["finished"]
    ctx = _ctx(session, redis_url)
    params = BullmqRemoveJobParams(redis="jobs", queue="scrape", job_id=active)
    result = await run_action("bullmq_remove_job", params, ctx)
    assert result.status is Status.FAILED
    assert "locked" in result.output
    assert node(redis_url, "read")["counts"]["active"] == 1


async def test_hostile_queue_label(session: aiohttp.ClientSession, redis_url: str) -> None:
    ctx = _ctx(session, redis_url, queue="scrape*")
    result = await run_action("bullmq_pause", QueueRef(redis="jobs", queue="{{ labels.queue }}"),
                              ctx)
    assert result.status is Status.FAILED
    assert result.detail["label"] == "queue"


async def test_dry_run_changes_nothing(session: aiohttp.ClientSession, redis_url: str) -> None:
    node(redis_url, "add", n=2)
    ctx = _ctx(session, redis_url)
    ctx.dry_run = True
    result = await run_action("bullmq_pause", QueueRef(redis="jobs", queue="scrape"), ctx)
    assert result.status is Status.DRY_RUN
    assert node(redis_url, "read")["paused"] is False


async def test_dead_redis_fails_fast(session: aiohttp.ClientSession) -> None:
    ctx = _ctx(session, f"redis://127.0.0.1:{free_port()}/0")
    result = await run_action("bullmq_pause", QueueRef(redis="jobs", queue="scrape"), ctx)
    assert result.status is Status.FAILED
    assert "ConnectionError" in result.output
    assert result.duration_seconds < 5
