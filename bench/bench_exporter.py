"""Scrape cost of the runbook exporter against the usual exporters on the same Redis and PG.

    .venv/bin/python -m bench.bench_exporter            # 10/100/1,000 queues, up to 1,000,000 jobs
    .venv/bin/python -m bench.bench_exporter --quick    # a small run
    .venv/bin/python -m bench.bench_exporter --scale 1000:10   # one scale

For each scale the queues are filled by the real libraries (BullMQ from Node with addBulk in
batches, Celery's send_task, RQ's enqueue_many), then each exporter is started on its own,
scraped sequentially, and measured: median and p99 scrape time, body size, RSS. Pairs:
  bullmq:   ours (queues+redis collectors, BullMQ queues named) vs prometheus-redis-exporter
            --check-keys on the same BullMQ keys
  celery:   ours (Celery queues) vs prometheus-exporter-celery --queues
  rq:       ours (RQ queues) vs rq-exporter
  postgres: ours (postgres collector) vs prometheus-postgres-exporter
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync

from tests.servers import (
    PostgresServer,
    RedisServer,
    free_port,
    start_postgres,
    start_redis,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
PYTHON = sys.executable
BULLMQ_KEYS = ("wait", "paused", "active", "prioritized", "delayed", "waiting-children",
               "completed", "failed")


@dataclass
class Figures:
    """One exporter's measurements at one scale."""

    name: str
    median_ms: float
    p99_ms: float
    body_bytes: int
    rss_mib: float
    ok: bool = True
    note: str = ""


# ------------------------------------------------------------------ filling


def fill_bullmq(url: str, queues: int, jobs: int) -> None:
    per, extra = divmod(jobs, queues)
    spec = {"url": url, "batch": 10_000, "queues": [
        {"name": f"bq{i}", "wait": per + (1 if i < extra else 0)} for i in range(queues)]}
    node = shutil.which("node") or "node"
    subprocess.run([node, str(NODE_DIR / "exporter_bullmq.mjs"), json.dumps(spec)], check=True,
                   cwd=NODE_DIR, stdout=subprocess.DEVNULL, timeout=3600)


def fill_celery(url: str, queues: int, jobs: int) -> None:
    from celery import Celery

    app = Celery("bench", broker=url)
    with app.producer_or_acquire() as producer:
        for i in range(jobs):
            app.send_task("bench.task", args=(i,), queue=f"cq{i % queues}", producer=producer)
        for q in range(min(queues, jobs), queues):  # declare empty queues too
            app.send_task("bench.task", queue=f"cq{q}", producer=producer)
            producer.channel.client.delete(f"cq{q}")
    app.close()


def fill_rq(url: str, queues: int, jobs: int) -> None:
    from rq import Queue

    conn = redis_sync.Redis.from_url(url)
    per, extra = divmod(jobs, queues)
    for i in range(queues):
        q = Queue(f"rq{i}", connection=conn)
        n = per + (1 if i < extra else 0)
        for start in range(0, n, 5000):
            batch = [Queue.prepare_data("os.getpid", ()) for _ in range(min(5000, n - start))]
            with conn.pipeline() as pipe:
                q.enqueue_many(batch, pipeline=pipe)
                pipe.execute()
        conn.sadd("rq:queues", q.key)
    conn.close()


# ------------------------------------------------------------------ exporters


@contextlib.contextmanager
def running(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[int]:
    """Start an exporter, wait for its port, yield its pid, stop it."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                               cwd=ROOT)
    try:
        wait_for_port(port, 60)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its children, in MiB."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def measure(name: str, port: int, pid: int, scrapes: int, warmup: int = 3,
            settle: float = 0.0, budget: float = 60.0) -> Figures:
    """Sequential scrapes over one keep-alive connection (at least 5 within the time budget)."""
    time.sleep(settle)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    times: list[float] = []
    size = 0
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "60"}
    began = time.monotonic()
    for i in range(warmup + scrapes):
        if len(times) >= 5 and time.monotonic() - began > budget:
            break
        started = time.perf_counter()
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            return Figures(name, 0, 0, 0, 0, False, f"status {response.status}")
        if i >= warmup:
            times.append(elapsed * 1000)
            size = len(body)
    conn.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    note = f"{len(times)} scrapes" if len(times) < scrapes else ""
    return Figures(name, statistics.median(times), p99, size, rss_mib(pid), note=note)


def ours(runbook_text: str, scrapes: int, name: str, collectors: str,
         env: dict[str, str] | None = None) -> Figures:
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(runbook_text)
    try:
        argv = [PYTHON, "-m", "exporter", "--runbook", f.name, "--listen", f"127.0.0.1:{port}",
                "--collectors", collectors]
        with running(argv, port, env) as pid:
            return measure(name, port, pid, scrapes)
    finally:
        os.unlink(f.name)


def queues_runbook(url: str, kind: str, names: list[str]) -> str:
    listed = ", ".join(json.dumps(n) for n in names)
    return (f"service: bench\nwatch:\n  host: null\n  redis:\n    - name: r\n"
            f"      url: {json.dumps(url)}\n      timeout: 60s\n"
            f"      queues: {{{kind}: [{listed}]}}\n")


def bench_bullmq(url: str, queues: int, scrapes: int) -> list[Figures]:
    names = [f"bq{i}" for i in range(queues)]
    out = [ours(queues_runbook(url, "bullmq", names), scrapes, "runbook-exporter", "redis,queues")]
    binary = shutil.which("prometheus-redis-exporter")
    if binary is None:
        return [*out, Figures("redis_exporter", 0, 0, 0, 0, False, "not installed")]
    port = free_port()
    patterns = ",".join(f"bull:*:{k}" for k in BULLMQ_KEYS)
    argv = [binary, f"--redis.addr={url}", f"--web.listen-address=127.0.0.1:{port}",
            f"--check-keys={patterns}"]
    with running(argv, port) as pid:
        out.append(measure("redis_exporter --check-keys", port, pid, scrapes))
    single = ",".join(f"bull:{n}:{k}" for n in names for k in BULLMQ_KEYS)
    if len(single) > 120_000:  # one argv string is capped at 128 KiB by the kernel
        return [*out, Figures("redis_exporter --check-single-keys", 0, 0, 0, 0, False,
                              "the key list is longer than one argument may be")]
    port = free_port()
    argv = [binary, f"--redis.addr={url}", f"--web.listen-address=127.0.0.1:{port}",
            f"--check-single-keys={single}"]
    with running(argv, port) as pid:
        out.append(measure("redis_exporter --check-single-keys", port, pid, scrapes))
    return out


def bench_job_counts(url: str, queues: int, scrapes: int, small_jobs: int) -> list[Figures]:
    """Ours on these queues against ours on the same queues holding few jobs (Redis db 1),
    scraped alternately so both see the same load."""
    small = url.rsplit("/", 1)[0] + "/1"
    redis_sync.Redis.from_url(small).flushdb()
    fill_bullmq(small, queues, small_jobs)
    names = [f"bq{i}" for i in range(queues)]
    files, ports, argvs = [], [], []
    for target in (url, small):
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write(queues_runbook(target, "bullmq", names))
        port = free_port()
        files.append(f.name)
        ports.append(port)
        argvs.append([PYTHON, "-m", "exporter", "--runbook", f.name, "--listen",
                      f"127.0.0.1:{port}", "--collectors", "redis,queues"])
    try:
        with running(argvs[0], ports[0]) as big_pid, running(argvs[1], ports[1]) as small_pid:
            big: list[Figures] = []
            tiny: list[Figures] = []
            for _ in range(max(1, scrapes // 10)):
                big.append(measure("", ports[0], big_pid, 10, warmup=1))
                tiny.append(measure("", ports[1], small_pid, 10, warmup=1))
    finally:
        for name in files:
            os.unlink(name)
        redis_sync.Redis.from_url(small).flushdb()

    def joined(name: str, runs: list[Figures]) -> Figures:
        return Figures(name, statistics.median(r.median_ms for r in runs),
                       max(r.p99_ms for r in runs), runs[-1].body_bytes, runs[-1].rss_mib)

    return [joined("runbook-exporter, these jobs", big),
            joined(f"runbook-exporter, {small_jobs:,} jobs (alternating)", tiny)]


def bench_celery(url: str, queues: int, scrapes: int) -> list[Figures]:
    names = [f"cq{i}" for i in range(queues)]
    out = [ours(queues_runbook(url, "celery", names), scrapes, "runbook-exporter",
                "redis,queues")]
    port = free_port()
    argv = [PYTHON, "-c", "from src.cli import cli; cli()", "--broker-url", url, "--port",
            str(port), "--host", "127.0.0.1", "--queues", ",".join(names), "--log-level", "ERROR"]
    try:
        with running(argv, port) as pid:
            # It refreshes queue lengths in its own loop; give it one round before scraping.
            out.append(measure("prometheus-exporter-celery", port, pid, scrapes, settle=3.0))
    except (OSError, TimeoutError, subprocess.SubprocessError) as exc:
        out.append(Figures("prometheus-exporter-celery", 0, 0, 0, 0, False, str(exc)))
    return out


def bench_rq(url: str, queues: int, scrapes: int) -> list[Figures]:
    names = [f"rq{i}" for i in range(queues)]
    out = [ours(queues_runbook(url, "rq", names), scrapes, "runbook-exporter", "redis,queues")]
    port = free_port()
    argv = [str(Path(PYTHON).parent / "rq-exporter"), "--redis-url", url, "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "ERROR"]
    with running(argv, port) as pid:
        out.append(measure("rq-exporter", port, pid, scrapes))
    return out


def bench_postgres(pg: PostgresServer, scrapes: int) -> list[Figures]:
    dsn = pg.dsn("postgres")
    text = ("service: bench\nwatch:\n  host: null\n  postgres:\n"
            "    - {name: db, dsn_env: BENCH_DSN, top_statements: 10}\n")
    out = [ours(text, scrapes, "runbook-exporter", "postgres", {"BENCH_DSN": dsn})]
    binary = shutil.which("prometheus-postgres-exporter")
    if binary is None:
        return [*out, Figures("postgres_exporter", 0, 0, 0, 0, False, "not installed")]
    port = free_port()
    argv = [binary, f"--web.listen-address=127.0.0.1:{port}"]
    with running(argv, port, {"DATA_SOURCE_NAME": dsn + "?sslmode=disable"}) as pid:
        out.append(measure("postgres_exporter", port, pid, scrapes))
    return out


# ------------------------------------------------------------------ report


def report(title: str, rows: list[Figures]) -> None:
    load = os.getloadavg()[0]
    print(f"\n{title} (load average {load:.1f} on {os.cpu_count()} CPUs)")
    print(f"  {'exporter':38} {'median ms':>10} {'p99 ms':>9} {'body KiB':>9} {'RSS MiB':>8}"
          f"  ratio (ours / it): median, body, RSS")
    base = rows[0]
    for r in rows:
        if not r.ok:
            print(f"  {r.name:38} could not run: {r.note}")
            continue
        ratio = ""
        if r is not base and r.median_ms > 0:
            ratio = (f"  {base.median_ms / r.median_ms:.2f}x, "
                     f"{base.body_bytes / max(r.body_bytes, 1):.2f}x, "
                     f"{base.rss_mib / max(r.rss_mib, 0.1):.2f}x")
        note = f"  ({r.note})" if r.note else ""
        print(f"  {r.name:38} {r.median_ms:10.2f} {r.p99_ms:9.2f} {r.body_bytes / 1024:9.1f} "
              f"{r.rss_mib:8.1f}{ratio}{note}", flush=True)


def _scale(text: str) -> tuple[int, int]:
    queues, _, jobs = text.partition(":")
    if not (queues.isdigit() and jobs.isdigit() and int(queues) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not QUEUES:JOBS (e.g. 1000:10)")
    return int(queues), int(jobs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scales, few scrapes")
    parser.add_argument("--scrapes", type=int, default=None, help="scrapes per exporter")
    parser.add_argument("--python-jobs-max", type=int, default=100_000,
                        help="cap on jobs filled through Celery and RQ (their clients are slow)")
    parser.add_argument("--scale", type=_scale, action="append", metavar="QUEUES:JOBS",
                        help="only this scale (repeatable), e.g. --scale 1000:10")
    args = parser.parse_args()
    scales = args.scale or ([(10, 10), (100, 10_000)] if args.quick else
                            [(10, 10), (100, 10_000), (1000, 10), (1000, 100_000),
                             (1000, 1_000_000)])
    scrapes = args.scrapes or (20 if args.quick else 100)
    redis_server: RedisServer = start_redis()
    pg = start_postgres()
    try:
        url = redis_server.url
        client = redis_sync.Redis.from_url(url)
        for queues, jobs in scales:
            client.flushall()
            py_jobs = min(jobs, args.python_jobs_max)
            started = time.monotonic()
            fill_bullmq(url, queues, jobs)
            fill_celery(url, queues, py_jobs)
            fill_rq(url, queues, py_jobs)
            memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment] # sync client
            used = memory["used_memory"] / 2**20
            print(f"\n=== {queues} queues, {jobs:,} BullMQ jobs, {py_jobs:,} Celery and RQ jobs "
                  f"(filled in {time.monotonic() - started:.0f}s, Redis {used:.0f} MiB); "
                  f"{scrapes} scrapes each")
            report("BullMQ", bench_bullmq(url, queues, scrapes))
            if jobs > 10 and queues == max(q for q, _ in scales):
                # 10 jobs in all leaves most queues empty (less to read); 10 per queue does not.
                for small_jobs in (10, 10 * queues):
                    report(f"BullMQ: same queues, {jobs:,} jobs vs {small_jobs:,} jobs",
                           bench_job_counts(url, queues, scrapes, small_jobs))
            report("Celery", bench_celery(url, queues, scrapes))
            report("RQ", bench_rq(url, queues, scrapes))
        report("PostgreSQL", bench_postgres(pg, scrapes))
        client.close()
    finally:
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)
        pg.stop("immediate")
        shutil.rmtree(pg.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
