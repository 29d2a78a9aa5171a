"""Celery actions with a real prefork worker on the fixture Redis: pool grow/shrink, purge."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync

from responder.actions import run_action, timeout_of
from responder.actions.base import BLOCKING, ActionContext, Status
from runbook.actions import CeleryPoolParams, CeleryPurgeParams, PageParams
from tests.actions_support import book, context, recorder
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
CELERY = str(Path(sys.executable).with_name("celery"))
WORKER = "rbap-w1@localhost"
BOOK = """
service: scraper
watch:
  redis:
    - {name: broker, url_env: BROKER_URL, queues: {celery: [celery]}}
"""


@pytest.fixture(scope="module")
def broker(redis_server: RedisServer) -> Iterator[str]:
    """A Celery worker (prefork, 1 process) on db 5 of the session's Redis."""
    url = f"redis://127.0.0.1:{redis_server.port}/5"
    env = {**os.environ, "RBAP_CELERY_BROKER": url, "C_FORCE_ROOT": "1"}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"rbap-celery-{os.getpid()}.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [CELERY, "-A", "tests.actions_workers", "worker", "--pool=prefork", "--concurrency=1",
             "-n", WORKER, "-Q", "celery", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_worker(url, worker, log)
        yield url
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.unlink(missing_ok=True)


def _stats(url: str) -> dict[str, Any]:
    from celery import Celery

    with Celery("probe", broker=url, set_as_current=False) as app:
        return app.control.inspect(destination=[WORKER], timeout=2.0).stats() or {}


def _wait_for_worker(url: str, worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"celery worker exited: {log.read_text()[-3000:]}")
        if _stats(url):
            return
    raise TimeoutError(f"celery worker never answered: {log.read_text()[-3000:]}")


def _processes(url: str, expect: int) -> int:
    """The worker's pool size once it reaches `expect` (the pool adds processes a moment later)."""
    deadline = time.monotonic() + 15
    while True:
        count = len(_stats(url)[WORKER]["pool"]["processes"])
        if count == expect or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _ctx(session: aiohttp.ClientSession, url: str) -> ActionContext:
    return context(session, book(BOOK), env={"PATH": os.environ["PATH"], "BROKER_URL": url})


async def test_pool_grow_and_shrink(session: aiohttp.ClientSession, broker: str) -> None:
    assert _processes(broker, 1) == 1
    ctx = _ctx(session, broker)
    every = CeleryPoolParams(broker="broker", n=2, timeout="1s")
    grown = await run_action("celery_pool_grow", every, ctx)
    assert grown.status is Status.OK, grown.output
    assert grown.detail["replies"] == {WORKER: {"ok": "pool will grow"}}
    assert _processes(broker, 3) == 3

    params = CeleryPoolParams(broker="broker", n=2, destination=[WORKER])
    shrunk = await run_action("celery_pool_shrink", params, ctx)
    assert shrunk.status is Status.OK, shrunk.output
    assert _processes(broker, 1) == 1


async def test_no_worker_answers(session: aiohttp.ClientSession, broker: str) -> None:
    params = CeleryPoolParams(broker="broker", destination=["nobody@nowhere"], timeout="500ms")
    result = await run_action("celery_pool_grow", params, _ctx(session, broker))
    assert result.status is Status.FAILED
    assert "no worker answered" in result.output


async def test_purge_one_queue(session: aiohttp.ClientSession, broker: str) -> None:
    from tests.actions_workers import app

    app.conf.broker_url = broker
    for i in range(5):
        app.send_task("rbap.add", (i, i), queue="bulk")
    conn = redis_sync.Redis.from_url(broker)
    assert conn.llen("bulk") == 5
    params = CeleryPurgeParams(broker="broker", queue="bulk", confirm=True)
    result = await run_action("celery_purge", params, _ctx(session, broker))
    assert result.status is Status.OK, result.output
    assert result.detail["purged"] == 5
    assert conn.llen("bulk") == 0


def test_purge_needs_confirm() -> None:
    with pytest.raises(ValueError, match="confirm: true"):
        CeleryPurgeParams(broker="broker", queue="bulk")


async def test_blackholed_broker_frees_its_thread_and_never_starves_dns(
    session: aiohttp.ClientSession,
) -> None:
    # A broker that accepts and never answers. The loop gets a default executor two stuck calls
    # fill (a 2-CPU host's takes six): aiohttp's ThreadedResolver needs it for `localhost`, so
    # actions blocking there would make the page below fail.
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    blackhole = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    ctx = context(session, book(f"""
    service: scraper
    watch:
      redis:
        - {{name: broker, url: "redis://127.0.0.1:{port}/0"}}
    """))
    grow = CeleryPoolParams(broker="broker", timeout="1s")
    purge = CeleryPurgeParams(broker="broker", queue="celery", confirm=True)
    try:
        started = time.monotonic()
        stuck = [asyncio.create_task(run_action("celery_pool_grow", grow, ctx)),
                 asyncio.create_task(run_action("celery_purge", purge, ctx))]
        while len(held) < len(stuck):
            assert time.monotonic() - started < 5, "the actions never reached the broker"
            await asyncio.sleep(0.05)
        assert BLOCKING.busy == len(stuck)

        async with recorder() as hook:
            port_of_hook = hook.url.rsplit(":", 1)[1]
            page_ctx = context(session, book(f"""
            service: scraper
            page:
              default: {{webhook: {{url: "http://localhost:{port_of_hook}/hook"}}}}
            """))
            paged = await run_action("page", PageParams(), page_ctx)
        assert paged.status is Status.OK, paged.output
        assert all(not task.done() for task in stuck), "the page did not go out meanwhile"

        results = await asyncio.gather(*stuck)
        elapsed = time.monotonic() - started
        assert [r.status for r in results] == [Status.FAILED] * 2, [r.output for r in results]
        assert all("Timeout" in r.output for r in results), [r.output for r in results]
        assert elapsed < min(timeout_of(grow), timeout_of(purge))
        for _ in range(60):  # the threads are free within 3 s of the outcomes
            if not BLOCKING.busy:
                break
            await asyncio.sleep(0.05)
        assert BLOCKING.busy == 0
    finally:
        for writer in held:
            writer.close()
        blackhole.close()
