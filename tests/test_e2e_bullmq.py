"""Seed 000's headline scenario on the real loop: a BullMQ backlog with its worker gone."""

from __future__ import annotations

import json

from tests.e2e_support import NODE_DIR, assert_healed, node, start_loop
from tests.stack import stack

SCALE = 0.003  # cinder-js' `for: 10m` becomes 1.8s; 1s scrape and evaluation

# cinder-js (seed 000): queue depth above 100 for 10m is critical; "Scale workers".
BOOK = """
service: cinder-js
watch:
  host: null
  redis:
    - name: main
      url: {redis}
      queues: {{bullmq: [scrape]}}
alerts:
  queue_depth:
    critical: {{threshold: 100, for: 10m}}
respond:
  - name: start-worker
    match: {{alertname: QueueDepthHigh, severity: critical}}
    mode: auto
    do:
      - exec:
          argv: [node, {script}, '{command}']
          timeout: 60s
    cooldown: 0s
    verify_after: 4s
    escalate:
      - page: {{message: "queue still backed up after starting a worker"}}
"""


def test_backlog_drained_by_a_started_worker() -> None:
    with stack() as s:
        _, redis = s.redis()
        drain = json.dumps({"op": "drain", "url": redis, "queue": "scrape"})
        loop = start_loop(s, BOOK.format(redis=redis, script=NODE_DIR / "e2e_bullmq.mjs",
                                         command=drain), scale=SCALE)
        loop.wait("the exporter scraped", lambda: loop.query(
            'runbook_queue_depth{queue="scrape"}'), 20)
        node({"op": "fill", "url": redis, "queue": "scrape", "n": 150})
        incident = assert_healed(loop, "QueueDepthHigh", ["exec"], severity="critical",
                                 queue="scrape")
        assert incident["labels"]["kind"] == "bullmq"
        finished = next(st for st in incident["steps"] if st["kind"] == "action_finished")
        assert '"processed":150' in finished["detail"]["output"]
        counts = node({"op": "counts", "url": redis, "queue": "scrape"})
        assert counts["wait"] == 0
        assert counts["completed"] == 150
