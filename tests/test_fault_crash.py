"""Crashes: kill -9 a responder at seeded random points, during intake and during actions; after
restart every occurrence answered 2xx is recorded, and each was remediated once or escalated
with the reason, never run twice."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fault_support import (
    AUTH,
    alert,
    children_of,
    exec_rule,
    incidents,
    kill9,
    kinds,
    lines,
    notification,
    post_json,
    python_argv,
    report,
    runbook_text,
    start_responder,
    until,
)
from tests.stack import Stack, stack
from tests.test_responder_support import ThreadSink

SEED = 20261124
# Appends "start X", works a little, appends "end X": a kill lands inside it often.
ACTION = ("import sys, time; p = sys.argv[1]; open(p, 'a').write('start ' + sys.argv[2] + '\\n');"
          " time.sleep(0.25); open(p, 'a').write('end ' + sys.argv[2] + '\\n')")
PER_TRIAL = 8
TERMINAL = {"acted", "escalated"}


def _run_trials(s: Stack, rb: Path, store_args: list[str], trials: int, rng: random.Random,
                starts: str) -> tuple[dict[str, dict[str, Any]], set[str], Counter[str], str]:
    occurrences: dict[str, dict[str, Any]] = {}
    acked: set[str] = set()
    where: Counter[str] = Counter()
    url = ""
    for trial in range(trials):
        proc, url = start_responder(s, f"responder-{trial}", rb, *store_args)
        assert proc.process is not None
        new = [alert(f"t{trial:03d}-{j}", starts, alertname="FaultCrash")
               for j in range(PER_TRIAL)]
        for item in new:
            occurrences[item["labels"]["instance"]] = item
        resend = [occurrences[k] for k in rng.sample(sorted(acked), min(3, len(acked)))]
        kill_at = rng.uniform(0.0, 0.8)
        statuses, seen = asyncio.run(_kill_during(url, proc.process.pid, new, resend, kill_at,
                                                  rng, proc, ("intake", "action")[trial % 2]))
        acked |= {k for k, v in statuses.items() if v == 200}
        where["intake" if seen["intake"] else "idle-intake"] += 1
        where["action" if seen["action"] else "no-action"] += 1
    return occurrences, acked, where, url


async def _kill_during(url: str, pid: int, new: list[dict[str, Any]],
                       resend: list[dict[str, Any]], kill_at: float, rng: random.Random,
                       proc: Any, target: str) -> tuple[dict[str, int], dict[str, bool]]:
    statuses: dict[str, int] = {}
    inflight: set[str] = set()

    async def one(session: aiohttp.ClientSession, item: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        key = item["labels"]["instance"]
        inflight.add(key)
        status = await post_json(session, url, notification(item), limit=5)
        inflight.discard(key)
        statuses[key] = status

    async def slow(session: aiohttp.ClientSession, item: dict[str, Any], delay: float) -> None:
        # Half a body, then a pause: this request is surely in intake when the kill lands.
        await asyncio.sleep(delay)
        key = item["labels"]["instance"]
        data = json.dumps(notification(item)).encode()

        async def halves() -> AsyncIterator[bytes]:
            yield data[: len(data) // 2]
            await asyncio.sleep(5)
            yield data[len(data) // 2:]

        inflight.add(key)
        try:
            async with session.post(f"{url}/alerts", data=halves(), headers=AUTH,
                                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                statuses[key] = response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            statuses[key] = 0
        finally:
            inflight.discard(key)

    async with aiohttp.ClientSession() as session:
        quick = new + resend if target == "action" else new[:-1] + resend
        posts = [one(session, item, rng.uniform(0, 0.9)) for item in quick]
        if target == "intake":
            posts.append(slow(session, new[-1], kill_at))
        tasks = asyncio.gather(*posts)
        await asyncio.sleep(kill_at)
        # Even trials aim at intake (a request in flight), odd ones at an action (its process
        # running): from the seeded moment on, kill as soon as the aim is met (or 2 s later).
        aim = ((lambda: bool(inflight)) if target == "intake"
               else (lambda: bool(children_of(pid))))
        give_up = time.monotonic() + 2.0
        while not aim() and time.monotonic() < give_up:  # noqa: ASYNC110 - polls /proc, no event to wait on
            await asyncio.sleep(0.001 if target == "intake" else 0.01)
        seen = {"intake": bool(inflight), "action": bool(children_of(pid))}
        kill9(proc)
        await tasks
    return statuses, seen


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill9_at_random_points_loses_nothing_and_never_runs_twice(
        kind: str, tmp_path: Path, postgres_dsn: str, long_run: bool) -> None:
    trials = 100 if long_run else 4
    rng = random.Random(f"{SEED}-{kind}")
    runs = tmp_path / "runs.txt"
    sink = ThreadSink()
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(exec_rule(
        "fix", "FaultCrash", python_argv(ACTION, str(runs), "{{ labels.instance }}")),
        page_url=sink.url))
    store_args = (["--data-dir", str(tmp_path / "data")] if kind == "sqlite"
                  else ["--store", postgres_dsn, "--lease", "1"])
    starts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    began = time.monotonic()
    try:
        with stack() as s:
            occurrences, acked, where, _ = _run_trials(s, rb, store_args, trials, rng, starts)
            _, url = start_responder(s, "responder-final", rb, *store_args)
            recorded = {inc["labels"]["instance"] for inc in incidents(url, 1000)}
            lost_after_2xx = sorted(acked - recorded)
            # What was never answered 2xx, Alertmanager would send again: do so.
            retry = [occurrences[k] for k in sorted(set(occurrences) - acked)]

            async def resend() -> list[int]:
                async with aiohttp.ClientSession() as session:
                    return [await post_json(session, url, notification(item)) for item in retry]
            assert set(asyncio.run(resend())) <= {200}

            def settled() -> list[dict[str, Any]] | None:
                found = incidents(url, 1000)
                done = len(found) == len(occurrences) and all(
                    i["state"] in TERMINAL for i in found)
                return found if done else None
            found = until(settled, 120, "every occurrence to settle", every=0.5)
    finally:
        sink.close()
    starts_seen = Counter(line.split(" ", 1)[1] for line in lines(runs)
                          if line.startswith("start "))
    states = Counter(i["state"] for i in found)
    twice = sorted(k for k, v in starts_seen.items() if v > 1)
    report(f"crash_kill9_{kind}", trials=trials, occurrences=len(occurrences),
           answered_2xx_before_kill=len(acked), lost_after_2xx=len(lost_after_2xx),
           kills_during_intake=where["intake"], kills_during_action=where["action"],
           remediated_once=states["acted"], escalated=states["escalated"], run_twice=len(twice),
           seconds=round(time.monotonic() - began, 1))
    assert not lost_after_2xx, f"answered 2xx, then lost: {lost_after_2xx}"
    assert not twice, f"run more than once: {twice}"
    assert where["intake"] > 0, where
    assert where["action"] > 0, where
    for inc in found:
        key = inc["labels"]["instance"]
        steps = kinds(inc)
        assert steps.count("received") == 1, (key, steps)
        if inc["state"] == "acted":
            assert starts_seen[key] == 1, (key, steps)
            assert steps.count("action_started") == 1, (key, steps)
        else:
            reasons = [st["detail"].get("reason", "") for st in inc["steps"]
                       if st["kind"] in ("interrupted", "escalated")]
            assert any("stopped while exec" in r for r in reasons), (key, inc["steps"])
            assert starts_seen[key] <= 1, key
            assert "paged" in steps, (key, steps)
