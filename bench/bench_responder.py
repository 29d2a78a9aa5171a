"""POST /alerts with durable recording vs a bare aiohttp handler that only answers 200.

One command: `.venv/bin/python bench/bench_responder.py` (add --skip-postgres to leave PostgreSQL
out). Same machine, same client (aiohttp, keep-alive), same run. For each target it measures
closed-loop throughput, then latency at a fixed 500 notifications/s (open loop: latency counts
from each request's scheduled time), and for the responder the delay from received to the worker
starting the queued action, read from the store's audit steps. It does so in rounds that
alternate between the targets (--rounds, default 3): throughput is the median round, latency
percentiles are over every round's requests. Each measurement starts on a quiet store (pending
work drained, the previous phase's writes checkpointed), so it measures its own load only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, start_postgres, wait_for_port  # noqa: E402

PAYLOAD = json.loads((ROOT / "tests" / "fixtures" / "payloads" / "firing.json").read_text())
TOKEN = "bench-token"  # noqa: S105 - a throw-away token for local processes
RUNBOOK = """\
service: bench
watch: {{host: {{}}}}
alerts: {{memory_usage: {{warning: 70%, for: 5m}}}}
page: {{default: {{webhook: {{url: "{page_url}"}}}}}}
rails: {{max_concurrent: 256, rate_limit: {{count: 1000000, per: 1s}}}}
respond:
  - name: fix
    match: {{alertname: GaugeHigh}}
    external: true
    mode: auto
    dry_run: true
    cooldown: 0s
    do: [{{exec: [/bin/true]}}]
"""


def serve_bare(port: int) -> None:
    """The reference: an aiohttp handler that reads the body and answers 200 (also the page sink
    for the responder's pages, so a page never fails and retries during the run)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/alerts", handle)
    app.router.add_post("/page", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def new_occurrence(i: int) -> bytes:
    body = json.loads(json.dumps(PAYLOAD))
    body["alerts"][0]["fingerprint"] = f"{i:016x}"
    body["alerts"][0]["labels"]["instance"] = f"host-{i}"
    return json.dumps(body).encode()


RESEND = json.dumps(PAYLOAD).encode()


def resend(_i: int) -> bytes:
    return RESEND


HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def closed_loop(url: str, make: Callable[[int], bytes], start: int, concurrency: int,
                      duration: float) -> tuple[int, float]:
    """Requests per second with `concurrency` clients posting back to back."""
    counter = iter(range(start, start + 10_000_000))
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        stop = time.perf_counter() + duration

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                async with s.post(url, data=make(next(counter)), headers=HEADERS) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                done += 1

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return done, elapsed


async def open_loop(url: str, make: Callable[[int], bytes], start: int, rate: float,
                    count: int) -> list[float]:
    """Latencies (s) of `count` requests sent at a fixed rate, from their scheduled times."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
        t0 = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with s.post(url, data=make(start + i), headers=HEADERS) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
            latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, close_fds=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def start_delays_sqlite(path: Path, since: float) -> list[float]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(STARTED_SQL.format(since=since)).fetchall()
    finally:
        conn.close()
    return [float(r[0]) for r in rows]


STARTED_SQL = """
SELECT MIN(s.at) - MIN(r.at) FROM steps r JOIN steps s ON s.occurrence_id = r.occurrence_id
WHERE r.kind = 'received' AND s.kind = 'action_started' AND r.occurrence_id IN
  (SELECT occurrence_id FROM steps WHERE kind = 'queued' AND at >= {since})
GROUP BY r.occurrence_id
"""


async def start_delays_pg(dsn: str, since: float) -> list[float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(STARTED_SQL.format(since=since))
    finally:
        await conn.close()
    return [float(r[0]) for r in rows]


async def wait_drained(url: str, within: float = 120.0) -> None:
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            async with s.get(url.replace("/alerts", "/metrics")) as r:
                text = await r.text()
            pending = next(float(line.split()[1]) for line in text.splitlines()
                           if line.startswith("runbook_responder_pending_work "))
            if pending == 0:
                return
            await asyncio.sleep(0.2)


async def settle(url: str, store: str) -> None:
    """Start a measurement on a quiet store: no pending work, and what the last phase wrote
    checkpointed into the database. A checkpoint still flushing a burst's pages makes a WAL
    fsync wait behind it in the file system's journal (40 ms seen here), which would put the
    previous phase's write-back into this phase's latencies."""
    await wait_drained(url)
    if store.startswith("postgresql"):
        import asyncpg

        conn = await asyncpg.connect(store)
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
    else:
        await asyncio.to_thread(checkpoint_sqlite, Path(store))


def checkpoint_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()


async def measure(url: str, args: argparse.Namespace, store: str | None,
                  offset: int) -> dict[str, Any]:
    """One round on one target: throughput, latencies at the fixed rate, start delays."""
    out: dict[str, Any] = {}
    await closed_loop(url, new_occurrence, offset, args.concurrency, 0.5)  # warm-up
    offset += 1_000_000
    for label, make in (("new", new_occurrence), ("resend", resend)):
        if store is not None:
            await settle(url, store)
        n, elapsed = await closed_loop(url, make, offset, args.concurrency, args.duration)
        offset += 1_000_000
        out[f"{label}_rps"] = n / elapsed
        if store is not None:
            await settle(url, store)
        since = time.time()
        out[f"{label}_latencies"] = await open_loop(url, make, offset, args.rate,
                                                    int(args.rate * args.duration))
        offset += 1_000_000
        if store is not None and label == "new":
            await wait_drained(url)
            out["started"] = (start_delays_sqlite(Path(store), since)
                              if not store.startswith("postgresql")
                              else await start_delays_pg(store, since))
    return out


def summarize(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput: the median round. Latencies: percentiles of every round's requests."""
    out: dict[str, Any] = {"target": name, "rounds": len(rounds)}
    for label in ("new", "resend"):
        out[f"{label}_rps"] = statistics.median(r[f"{label}_rps"] for r in rounds)
        out[f"{label}_rps_rounds"] = [round(r[f"{label}_rps"]) for r in rounds]
        latencies = [x for r in rounds for x in r[f"{label}_latencies"]]
        out[f"{label}_p50_ms"] = pct(latencies, 0.50) * 1000
        out[f"{label}_p99_ms"] = pct(latencies, 0.99) * 1000
        out[f"{label}_p99_ms_rounds"] = [round(pct(r[f"{label}_latencies"], 0.99) * 1000, 2)
                                         for r in rounds]
    started = [x for r in rounds for x in r.get("started", [])]
    if started:
        out["started_p50_ms"] = pct(started, 0.50) * 1000
        out["started_p99_ms"] = pct(started, 0.99) * 1000
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rate", type=float, default=500.0, help="notifications/s, open loop")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all targets (throughput: median round)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0
    # Stop cleanly (children, PostgreSQL, temp dir) on SIGTERM too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-responder-", dir="/tmp"))
    runbook_bin = str(Path(sys.executable).with_name("runbook"))
    env = {**os.environ, "RUNBOOK_WEBHOOK_TOKEN": TOKEN}
    processes: list[subprocess.Popen[bytes]] = []
    pg = None
    try:
        targets: list[tuple[str, str, str | None]] = []
        port = free_port()
        processes.append(spawn([sys.executable, __file__, "--serve-bare", str(port)],
                               tmp / "bare.log"))
        wait_for_port(port)
        targets.append(("bare aiohttp 200", f"http://127.0.0.1:{port}/alerts", None))
        (tmp / "runbook.yml").write_text(RUNBOOK.format(page_url=f"http://127.0.0.1:{port}/page"))
        port = free_port()
        processes.append(spawn([runbook_bin, "responder", "--runbook", str(tmp / "runbook.yml"),
                                "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "data"),
                                "--log-level", "WARNING"], tmp / "sqlite.log", env))
        wait_for_port(port)
        targets.append(("responder sqlite", f"http://127.0.0.1:{port}/alerts",
                        str(tmp / "data" / "responder.sqlite3")))
        if not args.skip_postgres:
            pg = start_postgres()
            # The test fixture runs with fsync=off; a durability benchmark must not.
            pg.psql("ALTER SYSTEM SET fsync = on")
            pg.psql("SELECT pg_reload_conf()")
            pg.psql("CREATE DATABASE bench")
            port = free_port()
            processes.append(spawn([runbook_bin, "responder", "--runbook",
                                    str(tmp / "runbook.yml"), "--listen", f"127.0.0.1:{port}",
                                    "--store", pg.dsn("bench"), "--log-level", "WARNING"],
                                   tmp / "pg.log", env))
            wait_for_port(port)
            targets.append(("responder postgresql", f"http://127.0.0.1:{port}/alerts",
                            pg.dsn("bench")))
        # Rounds alternate between the targets, so a noisy minute on a shared machine falls on
        # all of them rather than on one.
        rounds: list[list[dict[str, Any]]] = [[] for _ in targets]
        for round_no in range(args.rounds):
            for i, (_name, url, store) in enumerate(targets):
                offset = (round_no * len(targets) + i) * 100_000_000
                rounds[i].append(asyncio.run(measure(url, args, store, offset)))
                if pg is not None and store == pg.dsn("bench"):
                    # PostgreSQL's own after-work (autovacuum of the rows just written, the
                    # checkpoint writing them out) would otherwise fall on the next target's
                    # fsyncs: do it now, between the measurements.
                    pg.psql("VACUUM ANALYZE", "bench")
                    pg.psql("CHECKPOINT")
        results = [summarize(name, rounds[i]) for i, (name, _url, _store) in enumerate(targets)]
    finally:
        for process in processes:
            stop(process)
        if pg is not None:
            pg.stop("immediate")
            shutil.rmtree(pg.dir, ignore_errors=True)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    bare = results[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cpus={os.cpu_count()} load={load} concurrency={args.concurrency} "
          f"duration={args.duration}s rate={args.rate:.0f}/s rounds={args.rounds} (req/s: the "
          "median round; latency at that rate over all rounds; 'start' = received -> the worker "
          "starts the queued action, new occurrences)")
    header = (f"{'target':<22} {'workload':<8} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'start p50':>9} {'start p99':>9}")
    print(header)
    for r in results:
        for label in ("new", "resend"):
            ratio = r[f"{label}_rps"] / bare[f"{label}_rps"]
            started = (f"{r['started_p50_ms']:>9.2f} {r['started_p99_ms']:>9.2f}"
                       if label == "new" and "started_p50_ms" in r else f"{'-':>9} {'-':>9}")
            print(f"{r['target']:<22} {label:<8} {r[label + '_rps']:>8.0f} {ratio:>6.2f} "
                  f"{r[label + '_p50_ms']:>7.2f} {r[label + '_p99_ms']:>7.2f} {started}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
