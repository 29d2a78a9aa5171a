"""RQ actions with a real `rq worker`: failed jobs requeued and then done, registries cleaned."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis as redis_sync
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from responder.actions import run_action
from responder.actions.base import ActionContext, Status
from runbook.actions import RqCleanParams, RqRequeueParams
from tests.actions_support import book, context
from tests.actions_workers import FIXED_KEY, flaky
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
RQ = str(Path(sys.executable).with_name("rq"))
BOOK = """
service: reports
watch:
  redis:
    - {name: jobs, url_env: JOBS_URL, queues: {rq: [default]}}
"""


@pytest.fixture
def url(redis_server: RedisServer) -> Iterator[str]:
    """Db 6 of the session's Redis, flushed afterwards."""
    address = f"redis://127.0.0.1:{redis_server.port}/6"
    yield address
    redis_sync.Redis.from_url(address).flushdb()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _burst(url: str) -> None:
    """Run a real RQ worker until the queue is empty."""
    done = subprocess.run([RQ, "worker", "--burst", "--url", url, "--path", str(ROOT), "default"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr


def _ctx(session: aiohttp.ClientSession, url: str, **labels: str) -> ActionContext:
    env = {"PATH": os.environ["PATH"], "JOBS_URL": url}
    return context(session, book(BOOK), labels={"alertname": "X", **labels}, env=env)


async def test_requeue_failed_then_done(session: aiohttp.ClientSession, url: str) -> None:
    conn = redis_sync.Redis.from_url(url)
    queue = Queue("default", connection=conn)
    for i in range(3):
        queue.enqueue(flaky, i)
    await asyncio.to_thread(_burst, url)
    failed = FailedJobRegistry(queue=queue)
    assert failed.count == 3

    conn.set(FIXED_KEY, "1")
    params = RqRequeueParams(redis="jobs", queue="{{ labels.queue }}", limit=2)
    result = await run_action("rq_requeue_failed", params, _ctx(session, url, queue="default"))
    assert result.status is Status.OK, result.output
    assert len(result.detail["requeued"]) == 2
    assert failed.count == 1
    assert len(queue) == 2

    await asyncio.to_thread(_burst, url)
    assert FinishedJobRegistry(queue=queue).count == 2
    assert failed.count == 1


async def test_clean_registries_drops_expired_entries(
    session: aiohttp.ClientSession, url: str
) -> None:
    conn = redis_sync.Redis.from_url(url)
    conn.set(FIXED_KEY, "1")
    queue = Queue("default", connection=conn)
    queue.enqueue(flaky, 1, result_ttl=1)
    queue.enqueue(flaky, 2, result_ttl=600)
    await asyncio.to_thread(_burst, url)
    finished_key = FinishedJobRegistry(queue=queue).key
    assert conn.zcard(finished_key) == 2
    await asyncio.sleep(1.5)
    result = await run_action("rq_clean_registries", RqCleanParams(redis="jobs", queue="default"),
                              _ctx(session, url))
    assert result.status is Status.OK, result.output
    assert result.detail["registries"]["finished"] == {"before": 2, "after": 1}
    assert conn.zcard(finished_key) == 1


async def test_hostile_queue_label(session: aiohttp.ClientSession, url: str) -> None:
    params = RqRequeueParams(redis="jobs", queue="{{ labels.queue }}")
    result = await run_action("rq_requeue_failed", params, _ctx(session, url, queue="a b"))
    assert result.status is Status.FAILED
    assert result.detail["label"] == "queue"
