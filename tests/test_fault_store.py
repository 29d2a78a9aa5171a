"""Store outages: PostgreSQL stopped during a run (503 while it cannot record, a real
Alertmanager retries, everything recorded once it is back); Redis lost under two replicas
(never a double run)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from tests.fault_support import (
    APPEND_CODE,
    alert,
    am_config,
    crash_postgres,
    exec_rule,
    incidents,
    kinds,
    lines,
    metric,
    notification,
    post_alerts_to_am,
    post_json,
    python_argv,
    report,
    runbook_text,
    start_responder,
    until,
)
from tests.servers import start_postgres, start_redis
from tests.stack import stack

RECORDED = r'runbook_responder_notifications_total\{.*result="recorded"'
STORE_ERROR = r'runbook_responder_notifications_total\{.*result="store_error"'


def _am_alerts(names: list[str], starts: datetime) -> list[dict[str, Any]]:
    stamp = starts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ends = (starts + timedelta(hours=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [{"labels": {"alertname": "FaultStore", "instance": name, "severity": "critical"},
             "annotations": {"summary": "store"}, "startsAt": stamp, "endsAt": ends,
             "generatorURL": "http://prometheus/graph"} for name in names]


def test_postgres_outage_answers_503_and_alertmanager_delivers_after(
        tmp_path: Path, alertmanager_bin: str, long_run: bool) -> None:
    del alertmanager_bin
    outage = 15.0 if long_run else 4.0
    per_phase = 30 if long_run else 10
    runs = tmp_path / "runs.txt"
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(exec_rule(
        "fix", "FaultStore", python_argv(APPEND_CODE, str(runs), "{{ labels.instance }}"))))
    pg = start_postgres()
    began = time.monotonic()
    try:
        with stack() as s:
            _, url = start_responder(s, "responder", rb, "--store", pg.dsn())
            config = tmp_path / "am.yml"
            config.write_text(am_config([url], group_wait="500ms", group_interval="1s",
                                        repeat_interval="1h"))
            _, am = s.alertmanager(config)
            starts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
            before = [f"before-{i}" for i in range(per_phase)]
            during = [f"during-{i}" for i in range(per_phase)]
            post_alerts_to_am(am, _am_alerts(before, starts))
            until(lambda: set(lines(runs)) >= set(before), 30, "the first phase")
            crash_postgres(pg)
            stopped_at = time.monotonic()
            # A failed ready check shows the responder knows its store is gone.
            until(lambda: metric(url, STORE_ERROR) > 0 or _not_ready(url), 10, "the outage")
            recorded_at_stop = metric(url, RECORDED)
            post_alerts_to_am(am, _am_alerts(during, starts))
            until(lambda: metric(url, STORE_ERROR) >= 3, 30, "Alertmanager's retried 503s")
            time.sleep(max(0.0, outage - (time.monotonic() - stopped_at)))
            recorded_while_down = metric(url, RECORDED) - recorded_at_stop
            errors = metric(url, STORE_ERROR)
            pg.start()
            restarted_at = time.monotonic()
            everyone = set(before) | set(during)
            until(lambda: set(lines(runs)) >= everyone, 60, "every occurrence after the outage")
            recovered = time.monotonic() - restarted_at
            time.sleep(1.0)
            found = incidents(url)
    finally:
        pg.stop("immediate")
        shutil.rmtree(pg.dir, ignore_errors=True)
    counts = Counter(lines(runs))
    report("store_postgres_outage", occurrences=len(everyone), outage_seconds=outage,
           answered_503=int(errors), recorded_while_down=int(recorded_while_down),
           recorded_after=len(found), remediations=sum(counts.values()),
           seconds_to_all_remediated_after_restart=round(recovered, 2),
           seconds=round(time.monotonic() - began, 1))
    assert recorded_while_down == 0, "a notification was answered 200 while PostgreSQL was down"
    assert errors >= 3
    assert {i["labels"]["instance"] for i in found} == everyone
    assert all(v == 1 for v in counts.values()), counts
    for inc in found:
        assert kinds(inc).count("received") == 1


def _not_ready(url: str) -> bool:
    from tests.stack import http_get

    try:
        return http_get(f"{url}/health/ready", timeout=5)[0] == 503
    except OSError:
        return False


def test_losing_redis_never_allows_a_double_run(tmp_path: Path, postgres_dsn: str,
                                               long_run: bool) -> None:
    n = 120 if long_run else 40
    runs = tmp_path / "runs.txt"
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(exec_rule(
        "fix", "FaultRedis", python_argv(APPEND_CODE, str(runs), "{{ labels.instance }}"))))
    redis = start_redis()
    starts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    names = [f"r-{i:03d}" for i in range(n)]
    began = time.monotonic()
    try:
        with stack() as s:
            urls = [start_responder(s, f"replica-{i}", rb, "--store", postgres_dsn,
                                    "--redis", redis.url, "--lease", "5")[1] for i in range(2)]

            async def send(batch: list[str]) -> list[int]:
                async with aiohttp.ClientSession() as session:
                    jobs = [post_json(session, u, notification(alert(name, starts,
                                                                     alertname="FaultRedis")))
                            for name in batch for u in urls for _ in range(2)]
                    return list(await asyncio.gather(*jobs))

            third = n // 3
            assert set(asyncio.run(send(names[:third]))) == {200}
            redis.kill()
            assert set(asyncio.run(send(names[third:2 * third]))) == {200}
            until(lambda: set(lines(runs)) >= set(names[:2 * third]), 30,
                  "remediations while Redis is down (found by polling)")
            redis.start()
            assert set(asyncio.run(send(names[2 * third:]))) == {200}
            until(lambda: set(lines(runs)) >= set(names), 30, "every remediation")
            time.sleep(1.0)
            found = incidents(urls[0])
    finally:
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)
    counts = Counter(lines(runs))
    report("store_redis_lost", occurrences=n, copies_each=4, remediations=sum(counts.values()),
           run_twice=sum(1 for v in counts.values() if v > 1),
           seconds=round(time.monotonic() - began, 1))
    assert sorted(counts) == names
    assert all(v == 1 for v in counts.values()), counts
    assert len(found) == n
    for inc in found:
        assert kinds(inc).count("action_started") == 1, inc["id"]
