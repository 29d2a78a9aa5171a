"""Exporter faults: Redis and PostgreSQL killed, restarted and black-holed (SIGSTOP) while a real
exporter process is scraped; every scrape answers 200 within its deadline with up 0 for the
target, and up comes back without restarting the exporter."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.fault_support import children_of, crash_postgres, percentile, report, until
from tests.servers import PostgresServer, RedisServer, start_postgres, start_redis
from tests.stack import free_port, stack

SCRAPE_TIMEOUT = 2.0  # what Prometheus would send in X-Prometheus-Scrape-Timeout-Seconds


@dataclass
class Scrape:
    at: float
    status: int
    seconds: float
    up: dict[str, float]


@dataclass
class Scraper:
    """Scrapes the exporter every 200 ms on a thread, keeping every result."""

    url: str
    results: list[Scrape] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def once(self) -> Scrape:
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.url}/metrics",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)})
        started = time.monotonic()
        up: dict[str, float] = {}
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                text = response.read().decode()
                status = int(response.status)
        except OSError:
            return Scrape(started, 0, time.monotonic() - started, up)
        seconds = time.monotonic() - started
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in ("runbook_redis_up", "runbook_pg_up"):
                    up[s.name] = s.value
        return Scrape(started, status, seconds, up)

    def loop(self) -> None:
        while not self.stop.is_set():
            self.results.append(self.once())
            time.sleep(0.2)

    def latest(self, since: float) -> Scrape | None:
        after = [r for r in self.results if r.at >= since]
        return after[-1] if after else None

    def wait(self, metric: str, value: float, within: float = 20.0) -> float:
        """Seconds until a scrape started from now shows metric == value."""
        start = time.monotonic()

        def seen() -> bool:
            last = self.latest(start)
            return last is not None and last.up.get(metric) == value
        until(seen, within, f"{metric} == {value}", every=0.05)
        return time.monotonic() - start


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP processes (connections are accepted by the kernel, never answered), then SIGCONT."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _pg_pids(pg: PostgresServer) -> list[int]:
    pid = int((pg.data / "postmaster.pid").read_text().splitlines()[0])
    return [pid, *children_of(pid)]


def test_exporter_scrapes_through_redis_and_postgres_faults(tmp_path: Path,
                                                           long_run: bool) -> None:
    hold = 5.0 if long_run else 1.5
    rounds = 3 if long_run else 1
    redis: RedisServer = start_redis()
    pg = start_postgres()
    rb = tmp_path / "runbook.yml"
    rb.write_text(
        "service: faults\nwatch:\n  host: null\n"
        f"  redis: [{{name: cache, url: 'redis://127.0.0.1:{redis.port}/0', timeout: 1s,"
        " queues: {bullmq: [emails], rq: [default]}}]\n"
        "  postgres: [{name: db, dsn_env: FAULT_PG_DSN, timeout: 1s}]\n")
    recovery: dict[str, list[float]] = {}
    scraper: Scraper | None = None
    try:
        with stack() as s:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            exporter = s.runbook("exporter", [
                "exporter", "--runbook", str(rb), "--listen", f"127.0.0.1:{port}",
                "--collectors", "redis,queues,postgres"], f"{url}/health/ready",
                env={"FAULT_PG_DSN": pg.dsn()})
            assert exporter.process is not None
            pid = exporter.process.pid
            scraper = Scraper(url)
            thread = threading.Thread(target=scraper.loop, daemon=True)
            thread.start()
            scraper.wait("runbook_redis_up", 1)
            scraper.wait("runbook_pg_up", 1)

            def fault(name: str, metric: str, down: Callable[[], None],
                      back: Callable[[], None]) -> None:
                down()
                scraper.wait(metric, 0)
                time.sleep(hold)
                back()
                recovery.setdefault(name, []).append(scraper.wait(metric, 1, 30))

            for _ in range(rounds):
                fault("redis_killed", "runbook_redis_up", redis.kill, redis.start)
                with contextlib.ExitStack() as held:
                    fault("redis_black_holed", "runbook_redis_up",
                          lambda: held.enter_context(frozen([redis.process.pid])),
                          held.close)
                fault("postgres_killed", "runbook_pg_up", lambda: crash_postgres(pg), pg.start)
                with contextlib.ExitStack() as held:
                    fault("postgres_black_holed", "runbook_pg_up",
                          lambda: held.enter_context(frozen(_pg_pids(pg))), held.close)
                # Both at once.
                with contextlib.ExitStack() as held:
                    held.enter_context(frozen([redis.process.pid, *_pg_pids(pg)]))
                    scraper.wait("runbook_redis_up", 0)
                    scraper.wait("runbook_pg_up", 0)
                    time.sleep(hold)
                scraper.wait("runbook_redis_up", 1, 30)
                scraper.wait("runbook_pg_up", 1, 30)
            scraper.stop.set()
            thread.join(15)
            assert exporter.process.poll() is None
            assert exporter.process.pid == pid
    finally:
        if scraper is not None:
            scraper.stop.set()
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)
        pg.stop("immediate")
        shutil.rmtree(pg.dir, ignore_errors=True)
    assert scraper is not None
    times = [r.seconds for r in scraper.results]
    bad = [r for r in scraper.results if r.status != 200]
    late = [r for r in scraper.results if r.seconds > SCRAPE_TIMEOUT]
    report("exporter_faults", scrapes=len(scraper.results), non_200=len(bad),
           over_deadline=len(late), scrape_timeout_seconds=SCRAPE_TIMEOUT,
           scrape_p50_seconds=round(percentile(times, 50), 4),
           scrape_p99_seconds=round(percentile(times, 99), 4),
           scrape_max_seconds=round(max(times), 4),
           recovery_seconds_max={k: round(max(v), 2) for k, v in recovery.items()})
    assert not bad, bad[:5]
    assert not late, late[:5]
