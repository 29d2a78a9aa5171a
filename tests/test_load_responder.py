"""Load: 500 notifications/s against one real responder (embedded SQLite store): none lost,
latency percentiles reported, resident memory flat from the first to the last window."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import aiohttp

from tests.fault_support import (
    AUTH,
    alert,
    exec_rule,
    metric,
    notification,
    percentile,
    report,
    rss_kib,
    runbook_text,
    start_responder,
)
from tests.stack import stack

RATE = 500
NEW_EVERY = 10  # one new occurrence per 10 notifications; the rest are resends, as in real life


async def _drive(url: str, seconds: float, first: int) -> tuple[list[float], dict[int, int]]:
    """Open loop at RATE/s: request i leaves at start + i/RATE whatever the answers."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    starts = "2026-11-24T07:12:19Z"
    count = int(seconds * RATE)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(i: int) -> None:
            body = json.dumps(notification(alert(f"load-{(first + i) // NEW_EVERY}", starts,
                                                 alertname="FaultLoad")))
            sent = time.perf_counter()
            try:
                async with session.post(f"{url}/alerts", data=body, headers=AUTH,
                                        timeout=aiohttp.ClientTimeout(total=30)) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                status = 0
            latencies.append(time.perf_counter() - sent)
            statuses[status] = statuses.get(status, 0) + 1

        began = time.perf_counter()
        tasks = []
        for i in range(count):
            delay = began + i / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return latencies, statuses


def test_500_notifications_per_second(tmp_path: Path, long_run: bool) -> None:
    seconds = 60.0 if long_run else 10.0
    warmup = 3.0
    window = min(10.0, seconds / 3)
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(exec_rule("fix", "FaultLoad", ["/bin/true", "{{ labels.instance }}"],
                                         extra="    dry_run: true\n")))
    with stack() as s:
        proc, url = start_responder(s, "responder", rb, "--data-dir", str(tmp_path / "data"))
        assert proc.process is not None
        pid = proc.process.pid
        asyncio.run(_drive(url, warmup, 0))
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), rss_kib(pid)))
                time.sleep(0.25)
        sampler = threading.Thread(target=sample, daemon=True)
        began = time.monotonic()
        sampler.start()
        latencies, statuses = asyncio.run(_drive(url, seconds, int(warmup * RATE)))
        elapsed = time.monotonic() - began
        stop.set()
        sampler.join(5)
        sent = int((warmup + seconds) * RATE)
        recorded = metric(url, r'runbook_responder_notifications_total\{.*result="recorded"')
        new = metric(url, r'runbook_responder_alerts_total\{result="new"')
        assert proc.process.poll() is None
    first = [kib for at, kib in samples if at - began <= window]
    last = [kib for at, kib in samples if at - began >= elapsed - window]
    rss_first = sum(first) / len(first)
    rss_last = sum(last) / len(last)
    growth = (rss_last - rss_first) / rss_first * 100
    occurrences = -(-sent // NEW_EVERY)
    report("load_500_per_second", target_rate=RATE, seconds=seconds,
           achieved_rate=round(len(latencies) / elapsed, 1), sent=sent,
           recorded=int(recorded), answered_200=statuses.get(200, 0) + int(warmup * RATE),
           non_200=sum(v for k, v in statuses.items() if k != 200),
           new_occurrences=int(new), expected_occurrences=occurrences,
           p50_ms=round(percentile(latencies, 50) * 1000, 2),
           p99_ms=round(percentile(latencies, 99) * 1000, 2),
           max_ms=round(max(latencies) * 1000, 2),
           rss_first_window_mib=round(rss_first / 1024, 1),
           rss_last_window_mib=round(rss_last / 1024, 1), rss_growth_percent=round(growth, 2),
           rss_window_seconds=window)
    assert statuses == {200: len(latencies)}, statuses
    assert recorded == sent, (recorded, sent)
    assert new == occurrences
    assert growth < 10, (rss_first, rss_last)
