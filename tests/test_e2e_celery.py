"""Seed 003's backlog on the real loop: one Celery worker process falls behind, and the
responder grows its pool through Celery's control API until the queue drains."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import redis as redis_sync

from tests.e2e_support import assert_healed, start_loop
from tests.stack import ROOT, stack

SCALE = 0.003
CELERY = str(Path(sys.executable).with_name("celery"))
WORKER = "e2e@localhost"
TASKS = 100

# scraper (seed 003): a queue depth above its tier is "High"; "Scale workers". 1000 tasks there,
# 50 here: one process running one-second tasks cannot bring 100 below it in under 50s.
BOOK = """
service: scraper
watch:
  host: null
  redis:
    - name: broker
      url: {redis}
      queues: {{celery: [celery]}}
alerts:
  queue_depth:
    high: 50
    for: 5m
respond:
  - name: grow-pool
    match: {{alertname: QueueDepthHigh, severity: high}}
    mode: auto
    do:
      - celery_pool_grow: {{broker: broker, n: 15, destination: ["{worker}"]}}
    cooldown: 0s
    verify_after: 6s
    escalate:
      - page: {{message: "backlog still high after growing the pool"}}
"""


def _workers(url: str) -> int:
    from celery import Celery

    with Celery("probe", broker=url, set_as_current=False) as probe:
        stats = probe.control.inspect(destination=[WORKER], timeout=2.0).stats() or {}
    return len(stats[WORKER]["pool"]["processes"]) if WORKER in stats else 0


def test_backlog_drained_by_a_grown_pool() -> None:
    with stack() as s:
        _, redis = s.redis()
        env = {**os.environ, "RBAP_E2E_BROKER": redis, "C_FORCE_ROOT": "1"}
        s.spawn("celery-worker", [
            CELERY, "-A", "tests.e2e_celery_app", "worker", "--pool=prefork", "--concurrency=1",
            "-n", WORKER, "-Q", "celery", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel=INFO"], env=env, cwd=ROOT)
        loop = start_loop(s, BOOK.format(redis=redis, worker=WORKER), scale=SCALE)
        assert loop.wait("the worker answers", lambda: _workers(redis), 30) == 1
        from tests.e2e_celery_app import app, scrape

        app.conf.broker_url = redis
        started = time.monotonic()
        for i in range(TASKS):
            scrape.delay(i)
        incident = assert_healed(loop, "QueueDepthHigh", ["celery_pool_grow"], timeout=45,
                                 severity="high", queue="celery")
        assert time.monotonic() - started < 40, "drained faster than one process could"
        assert incident["labels"]["kind"] == "celery"
        # The worker answers control requests between tasks, and billiard starts the processes
        # pool_grow asked for on its next maintenance pass: ask until all 16 are there.
        assert loop.wait("the grown pool", lambda: _workers(redis) == 16, 20)
        loop.wait("the queue drained", lambda: redis_sync.Redis.from_url(redis).llen("celery")
                  == 0, 20)
