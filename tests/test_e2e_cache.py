"""Seed 001's cache scenario on the real loop: the hit rate falls below its critical tier and an
http action warms the cache through the app."""

from __future__ import annotations

import sys

from tests.e2e_support import assert_healed, start_loop
from tests.stack import ROOT, free_port, stack, wait_ready

SCALE = 0.003

# ai-analysis (seed 001): cache hit rate below 50% for 5m is critical; "Warm cache".
BOOK = """
service: ai-analysis
watch:
  host: null
  redis:
    - {{name: cache, url: "{redis}"}}
alerts:
  cache_hit_rate:
    critical: 50%
    for: 5m
respond:
  - name: warm-cache
    match: {{alertname: CacheHitRateLow, severity: critical}}
    mode: auto
    do:
      - http: {{url: "{app}/warm", method: POST, expect_status: [200]}}
    cooldown: 0s
    verify_after: 8s
    escalate:
      - page: {{message: "hit rate still low after warming the cache"}}
"""


def test_cold_cache_warmed_by_http_action() -> None:
    with stack() as s:
        _, redis = s.redis()
        port = free_port()
        app = f"http://127.0.0.1:{port}"
        loop = start_loop(s, BOOK.format(redis=redis, app=app), scale=SCALE)
        # The app starts reading a cold cache: every read is a miss.
        proc = s.spawn("cache-app", [sys.executable, "-m", "tests.e2e_cache_app", "--redis",
                                     redis, "--port", str(port)], cwd=ROOT)
        wait_ready(f"{app}/health", 20, proc.process, proc.log)
        incident = assert_healed(loop, "CacheHitRateLow", ["http"], timeout=60,
                                 severity="critical", target="cache")
        finished = next(st for st in incident["steps"] if st["kind"] == "action_finished")
        assert finished["detail"]["detail"]["status_code"] == 200
        ratio = loop.query("ai_analysis:cache_hit_rate:ratio")
        assert float(ratio[0]["value"][1]) > 0.5
