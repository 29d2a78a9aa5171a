"""Queues filled by the real libraries (BullMQ from Node, Celery, RQ) and read back."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from exporter.collectors.queues import QueuesCollector
from tests.servers import find_tool, free_port, wait_for_port
from tests.test_exporter_support import (
    NODE,
    NODE_DIR,
    node,
    runbook,
    samples,
    scrape_text,
    serve,
    value,
)


def boom() -> None:
    """An RQ job that fails."""
    raise RuntimeError("boom")


def fine() -> int:
    """An RQ job that succeeds."""
    return 1


class Watcher:
    """Records every command Redis runs while a block executes (to prove reads only)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def write_commands(self, commands: list[str]) -> list[str]:
        writes = {"set", "del", "rpop", "lpop", "lpush", "rpush", "zadd", "zrem", "hset", "hdel",
                  "rename", "expire", "eval", "evalsha", "incr", "sadd", "srem", "xadd", "lrem",
                  "unlink", "flushdb", "flushall", "zremrangebyscore"}
        return [c for c in commands if c.split()[0].strip('"').lower() in writes]


async def read_only_scrape(url: str, collector: QueuesCollector) -> tuple[list[Any], list[str]]:
    """Collect once while MONITOR records what the collector sends."""
    monitor_client = redis_sync.Redis.from_url(url)
    seen: list[str] = []
    with monitor_client.monitor() as m:  # type: ignore[no-untyped-call]
        families = await collector.collect()
        await collector.client.ping()
        marker = "exporter-test-end"
        await collector.client.echo(marker)
        for event in m.listen():
            command = str(event["command"])
            if marker in command:
                break
            seen.append(command)
    monitor_client.close()
    return families, seen


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipelined"])
async def test_bullmq_states_paused_oldest_and_reads_only(redis_url: str,
                                                          use_script: bool) -> None:
    spec = {"url": redis_url, "queues": [
        {"name": "mail", "wait": 3, "prioritized": 2, "delayed": 4, "completed": 2, "failed": 1,
         "active": 1, "waitingChildren": 2},
        {"name": "reports", "wait": 5, "paused": True}, {"name": "idle", "paused": True}]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    client = Redis.from_url(redis_url)
    c = QueuesCollector("cache", 2.0, client=client,
                        bullmq=["mail", "reports", "absent", "idle"], use_script=use_script)
    await asyncio.sleep(1.1)  # so the oldest job is at least a second old
    _, commands = await asyncio.to_thread(
        lambda: asyncio.run(_scrape_in_new_loop(redis_url, ["mail", "reports", "absent"],
                                                use_script)))
    assert commands, "MONITOR saw nothing"
    writes = Watcher(redis_url).write_commands(commands)
    assert writes == [], writes
    readings = {r.queue: r for r in await c.read()}
    mail, reports = readings["mail"], readings["reports"]
    assert mail.jobs == {"wait": 3, "paused": 0, "active": 1, "prioritized": 2, "delayed": 4,
                         "waiting-children": 2, "completed": 2, "failed": 1}
    assert mail.depth == 5  # wait + paused + prioritized
    assert mail.paused == 0
    assert mail.oldest_age is not None
    assert mail.oldest_age >= 1.0
    # BullMQ 5 pausing renames wait to paused and sets paused in the meta hash.
    assert reports.jobs["paused"] == 5
    assert reports.jobs["wait"] == 0
    assert reports.depth == 5
    assert reports.paused == 1
    assert reports.oldest_age is not None
    assert reports.oldest_age >= 1.0
    assert readings["absent"].depth == 0
    assert readings["absent"].oldest_age is None
    assert readings["absent"].jobs == dict.fromkeys(mail.jobs, 0.0)
    assert readings["absent"].paused == 0
    # Paused with no job at all: only the meta hash exists.
    assert readings["idle"].jobs == dict.fromkeys(mail.jobs, 0.0)
    assert readings["idle"].paused == 1
    # The Python bullmq library agrees on the counts.
    from bullmq import Queue

    q = Queue("mail", {"connection": redis_url})
    counts = await q.getJobCounts("wait", "active", "delayed", "prioritized", "completed",
                                  "failed", "waiting-children")
    await q.close()
    assert counts == {k: mail.jobs[k] for k in counts}
    await client.aclose()


async def _scrape_in_new_loop(url: str, queues: list[str],
                              use_script: bool) -> tuple[list[Any], list[str]]:
    client = Redis.from_url(url)
    try:
        return await read_only_scrape(url, QueuesCollector("cache", 2.0, client=client,
                                                           bullmq=queues, discover=True,
                                                           use_script=use_script))
    finally:
        await client.aclose()


async def test_bullmq_discovery_and_workers(redis_url: str) -> None:
    spec = {"url": redis_url, "hold": True, "queues": [{"name": "found", "wait": 2},
                                                       {"name": "also", "delayed": 1}]}
    holder = await asyncio.create_subprocess_exec(
        NODE, str(NODE_DIR / "exporter_bullmq.mjs"), json.dumps(spec), cwd=NODE_DIR,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 60)
        assert line.strip() == b"ready"
        loaded = runbook(f"watch:\n  redis:\n    - {{name: cache, url: '{redis_url}',"
                         " queues: {discover: true}}\n")
        async with serve(loaded, collectors=["queues"]) as http:
            found = samples(await scrape_text(http))
        assert value(found, "runbook_queue_depth", target="cache", kind="bullmq",
                     queue="found") == 2
        assert value(found, "runbook_queue_jobs", target="cache", kind="bullmq", queue="also",
                     state="delayed") == 1
        assert value(found, "runbook_queue_workers", target="cache", kind="bullmq",
                     queue="found") == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        await asyncio.wait_for(holder.wait(), 30)


def _celery_fill(url: str) -> None:
    from celery import Celery
    from kombu import Exchange
    from kombu import Queue as KombuQueue

    app = Celery("exporter_test", broker=url)
    for _ in range(3):
        app.send_task("tasks.plain", queue="emails")
    for priority in (0, 5, 5, 9):
        app.send_task("tasks.urgent", queue="emails", priority=priority)
    app.send_task("tasks.other", queue="celery")
    with app.connection_for_write() as conn:
        # A worker declares its queues when it starts (kombu caches declarations per process,
        # so declare here rather than rely on send_task having done it in this process).
        for name in ("emails", "celery"):
            KombuQueue(name, Exchange(name), routing_key=name).bind(conn.default_channel).declare()
        conn.default_channel.client.hset("unacked", "tag-1", "{}")
    app.close()


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipelined"])
async def test_celery_queue_with_priority_lists_and_discovery(redis_url: str,
                                                              use_script: bool) -> None:
    await asyncio.to_thread(_celery_fill, redis_url)
    client = Redis.from_url(redis_url)
    c = QueuesCollector("broker", 2.0, client=client, celery=["emails"], discover=True,
                        use_script=use_script)
    found = {f.name: f for f in await c.collect()}
    depth = {s.labels["queue"]: s.value for s in found["runbook_queue_depth"].samples}
    # 3 + priority 0 in the plain list, 5 and 5 in \x06\x163, 9 in \x06\x169.
    assert depth["emails"] == 7
    assert depth["celery"] == 1
    unacked = found["runbook_queue_unacked"].samples
    assert [(s.labels, s.value) for s in unacked] == [({"target": "broker", "kind": "celery"},
                                                        1.0)]
    await client.aclose()


def _rq_fill(url: str) -> None:
    from rq import Queue, SimpleWorker, Worker

    conn = redis_sync.Redis.from_url(url)
    q = Queue("default", connection=conn)
    q.enqueue(boom)
    q.enqueue(fine)
    SimpleWorker([q], connection=conn).work(burst=True)
    parent = q.enqueue(fine)
    q.enqueue(fine, depends_on=parent)
    q.enqueue_in(timedelta(hours=1), fine)
    q.enqueue(fine)
    worker = Worker([q], connection=conn, name="exporter-test-worker")
    worker.register_birth()  # type: ignore[no-untyped-call]
    conn.close()


async def test_rq_registries_workers_oldest(redis_url: str) -> None:
    _rq_fill(redis_url)  # RQ workers install signal handlers: main thread only
    loaded = runbook(f"watch:\n  redis:\n    - {{name: jobs, url: '{redis_url}',"
                     " queues: {rq: [default]}}\n")
    async with serve(loaded, collectors=["queues"]) as http:
        found = samples(await scrape_text(http))
    labels = {"target": "jobs", "kind": "rq", "queue": "default"}
    assert value(found, "runbook_queue_depth", **labels) == 2  # parent and the last one
    for state, n in (("queued", 2), ("failed", 1), ("finished", 1), ("deferred", 1),
                     ("scheduled", 1), ("started", 0)):
        assert value(found, "runbook_queue_jobs", state=state, **labels) == n, state
    assert value(found, "runbook_queue_workers", **labels) == 1
    assert value(found, "runbook_queue_paused", **labels) == 0
    assert value(found, "runbook_queue_oldest_job_age_seconds", **labels) >= 0


async def test_rq_pipelined_reads_the_same(redis_url: str) -> None:
    _rq_fill(redis_url)  # RQ workers install signal handlers: main thread only
    client = Redis.from_url(redis_url)
    by_script = await QueuesCollector("jobs", 2.0, client=client, rq=["default"]).read()
    piped = await QueuesCollector("jobs", 2.0, client=client, rq=["default"],
                                  use_script=False).read()
    for reading in (*by_script, *piped):
        reading.oldest_age = round(reading.oldest_age or 0.0)
    assert by_script == piped
    assert by_script[0].jobs["failed"] == 1
    await client.aclose()


def _rq_workers_one_killed(url: str, queue: str) -> None:
    """Two workers on an empty queue: one registered with rq's API and left alive, one a real
    `rq worker` process killed with SIGKILL once registered. The killed one never unregisters,
    so its key stays in rq:workers:<queue> after its rq:worker:<name> hash expires (worker_ttl
    + 60 s after its last heartbeat: PEXPIRE stands in for that wait). The queue holds no job,
    so no work horse outlives the worker."""
    from rq import Queue, Worker

    conn = redis_sync.Redis.from_url(url)
    Worker([Queue(queue, connection=conn)], connection=conn,
           name="alive").register_birth()  # type: ignore[no-untyped-call]
    key = "rq:worker:killed"
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("rq")), "worker", "--url", url, "--name", "killed",
         "--worker-ttl", "2", queue],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not conn.exists(key):
            assert worker.poll() is None, "rq worker exited"
            assert time.monotonic() < deadline, "rq worker did not register"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    conn.pexpire(key, 1)
    while conn.exists(key):
        time.sleep(0.01)
    assert conn.smembers(f"rq:workers:{queue}") == {b"rq:worker:alive", key.encode()}
    conn.close()


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipelined"])
async def test_a_killed_rq_worker_is_not_counted_once_its_key_expired(
        redis_url: str, use_script: bool) -> None:
    from rq import Queue, Worker

    # RQ workers install signal handlers: rq's API in the main thread only.
    _rq_workers_one_killed(redis_url, "reports")
    conn = redis_sync.Redis.from_url(redis_url)
    alive = [w.name for w in Worker.all(queue=Queue("reports", connection=conn))]
    assert alive == ["alive"]  # rq itself no longer sees the killed one
    conn.close()
    client = Redis.from_url(redis_url)
    try:
        c = QueuesCollector("jobs", 2.0, client=client, rq=["reports"], use_script=use_script)
        families, seen = await read_only_scrape(redis_url, c)
        workers = next(f for f in families if f.name == "runbook_queue_workers")
        assert [s.value for s in workers.samples] == [1.0]
        assert Watcher(redis_url).write_commands(seen) == []
    finally:
        await client.aclose()


async def test_many_queues_span_several_script_calls(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    for i in range(1, 7):
        await client.rpush(f"rq:queue:q{i}", *[f"id{j}" for j in range(i)])
    c = QueuesCollector("jobs", 2.0, client=client, rq=[f"q{i}" for i in range(7)], chunk=3)
    depths = {r.queue: r.depth for r in await c.read()}
    assert depths == {f"q{i}": float(i) for i in range(7)}
    await client.aclose()


async def test_rq_discovery_through_rq_queues(redis_url: str) -> None:
    _rq_fill(redis_url)  # RQ workers install signal handlers: main thread only
    client = Redis.from_url(redis_url)
    c = QueuesCollector("jobs", 2.0, client=client, discover=True)
    readings = await c.read()
    assert readings == []  # discovery happens in collect, on its interval
    found = {f.name: f for f in await c.collect()}
    assert [s.labels["queue"] for s in found["runbook_queue_depth"].samples] == ["default"]
    await client.aclose()


@pytest.mark.parametrize("bad", ["*", "a?b", "x[1]"])
async def test_glob_characters_in_the_prefix_are_escaped(redis_url: str, bad: str) -> None:
    client = Redis.from_url(redis_url)
    await client.hset("bull:q:meta", "opts.maxLenEvents", "10")
    c = QueuesCollector("c", 2.0, client=client, bullmq_prefix=bad, discover=True)
    assert (await c.discover_queues())["bullmq"] == []
    await client.aclose()


async def test_an_idle_queue_reuses_its_reading_until_it_changes(redis_url: str) -> None:
    from bullmq import Queue

    from exporter.render import render_text

    client = Redis.from_url(redis_url)
    queue = Queue("idle-then-busy", {"connection": redis_url})
    collector = QueuesCollector("cache", 2.0, client=client, bullmq=["idle-then-busy"])
    head = '{target="cache",kind="bullmq",queue="idle-then-busy"}'

    async def scrape() -> tuple[Any, str]:
        families = await collector.collect()
        return (await collector.read())[0], render_text(families).decode()

    try:
        await queue.pause()
        await queue.resume()  # the meta hash exists, the queue holds nothing
        first, text = await scrape()
        again, text_again = await scrape()
        assert again is first  # idle: the same reading, written from the same text
        assert text_again == text
        assert f"runbook_queue_paused{head} 0.0\n" in text
        await queue.pause()
        _, text = await scrape()
        assert f"runbook_queue_paused{head} 1.0\n" in text
        await queue.resume()
        job = await queue.add("work", {})
        _, text = await scrape()
        assert f"runbook_queue_depth{head} 1.0\n" in text
        assert f"runbook_queue_paused{head} 0.0\n" in text
        await job.remove()
        _, text = await scrape()
        assert f"runbook_queue_depth{head} 0.0\n" in text
        assert 'runbook_queue_jobs{target="cache",kind="bullmq",queue="idle-then-busy",' \
               'state="wait"} 0.0\n' in text
    finally:
        await queue.close()
        await client.aclose()


async def test_a_small_keyspace_is_listed_once_and_reads_the_same(redis_url: str) -> None:
    """Where the database is small, one SCAN in the script finds the queues holding anything;
    every reading equals the queue-by-queue probe's, and it still only reads."""
    spec = {"url": redis_url, "prefix": "app:bull", "queues": [
        {"name": "mail", "wait": 2, "delayed": 1, "failed": 1},
        {"name": "idle", "paused": True}, {"name": "ma", "wait": 1}]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    client = Redis.from_url(redis_url)
    await client.set("app:bull", "a key that is no queue's")
    await client.set("other:mail:wait", "another prefix")
    # "mail" and "ma" share a beginning; "absent" and "app" have no key of their own.
    names = ["mail", "idle", "absent", "ma", "app", "bull"]
    dbsize = await client.dbsize()

    async def read(factor: int) -> tuple[dict[str, Any], list[str]]:
        collector = QueuesCollector("cache", 2.0, client=client, bullmq=names,
                                    bullmq_prefix="app:bull", keyspace_scan_factor=factor)
        _, commands = await read_only_scrape(redis_url, collector)
        readings = {r.queue: r for r in await collector.read()}
        for r in readings.values():
            r.oldest_age = round(r.oldest_age or 0.0)
        return readings, commands

    def called(commands: list[str], name: str, about: str = "") -> int:
        return sum(1 for c in commands if c.split()[0].strip('"').upper() == name and about in c)

    listed, listed_commands = await read(dbsize)  # at most dbsize keys per queue: listed
    probed, probed_commands = await read(0)
    assert called(listed_commands, "SCAN") >= 1, listed_commands
    assert called(probed_commands, "SCAN") == 0
    assert Watcher(redis_url).write_commands(listed_commands) == []
    assert listed == probed
    assert listed["mail"].jobs["wait"] == 2
    assert listed["mail"].jobs["failed"] == 1
    assert listed["ma"].depth == 1
    assert listed["idle"].paused == 1
    assert listed["absent"].paused == 0
    assert listed["absent"].jobs == dict.fromkeys(listed["mail"].jobs, 0.0)
    # Probed queues: only those with a key of their own (the listed path skips the rest).
    assert called(listed_commands, "EXISTS", "app:bull:") == 3, listed_commands
    assert called(probed_commands, "EXISTS", "app:bull:") == len(names)
    # A database larger than the bound is probed queue by queue, as before.
    _, bounded = await read(1)
    assert called(bounded, "SCAN") == 0
    await client.aclose()


@pytest.mark.parametrize("refused", ["scan", "dbsize"])
async def test_a_user_refused_scan_or_dbsize_gets_every_queue_probed(redis_url: str,
                                                                     refused: str) -> None:
    spec = {"url": redis_url, "queues": [{"name": "mail", "wait": 2}, {"name": "idle",
                                                                        "paused": True}]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    admin = Redis.from_url(redis_url)
    user = f"no-{refused}"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all",
                                f"-{refused}")
    limited = Redis.from_url(redis_url, username=user, password="secret")
    try:
        with pytest.raises(ResponseError, match=r"NOPERM|permission"):
            await limited.execute_command(refused.upper(), *(["0"] if refused == "scan" else []))
        names = ["mail", "idle", "absent"]
        listed = {r.queue: r for r in await QueuesCollector(
            "cache", 2.0, client=limited, bullmq=names, keyspace_scan_factor=1000).read()}
        probed = {r.queue: r for r in await QueuesCollector(
            "cache", 2.0, client=admin, bullmq=names, keyspace_scan_factor=0).read()}
        for r in (*listed.values(), *probed.values()):
            r.oldest_age = round(r.oldest_age or 0.0)
        assert listed == probed
        assert listed["mail"].depth == 2
        assert listed["idle"].paused == 1
    finally:
        await limited.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


async def test_discovery_refused_scan_keeps_the_configured_queues(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """discover: true under an ACL without SCAN: the configured queues are read all the same,
    rq:queues (no SCAN needed) still finds RQ's, and the refusal is logged and in the detail."""
    from rq import Queue

    _rq_fill(redis_url)  # RQ workers install signal handlers: main thread only
    conn = redis_sync.Redis.from_url(redis_url)
    Queue("reports", connection=conn).enqueue(fine)  # registered in rq:queues by RQ itself
    conn.close()
    admin = Redis.from_url(redis_url)
    user = "rbap-no-scan"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all",
                                "-scan")
    limited = Redis.from_url(redis_url, username=user, password="secret")
    try:
        c = QueuesCollector("jobs", 2.0, client=limited, rq=["default"], celery=["mail"],
                            discover=True)
        caplog.set_level(logging.WARNING, logger="exporter.queues")
        for _ in range(2):
            found = {f.name: f for f in await c.collect()}
            depth = {(s.labels["kind"], s.labels["queue"]): s.value
                     for s in found["runbook_queue_depth"].samples}
            assert depth == {("rq", "default"): 2.0, ("celery", "mail"): 0.0,
                             ("rq", "reports"): 1.0}
            c._discovered_at = None  # the next collect discovers again
        logged = [r.getMessage() for r in caplog.records if r.name == "exporter.queues"]
        assert len(logged) == 1  # logged when it starts, not at every round
        assert "discovery refused" in logged[0]
        error = str(c.detail()["discovery_error"])
        assert "bullmq: " in error
        assert "celery: " in error
        assert "no permissions to run the 'scan' command" in error
        assert "rq: " not in error
    finally:
        await limited.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipelined"])
async def test_a_user_refused_client_list_gets_every_reading_but_workers(redis_url: str,
                                                                        use_script: bool) -> None:
    spec = {"url": redis_url, "queues": [{"name": "mail", "wait": 2},
                                         {"name": "idle", "paused": True}]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    admin = Redis.from_url(redis_url)
    user = "rbap-no-client-list"
    await admin.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@read",
                                "+eval_ro", "+@connection", "-client|list")
    limited = Redis.from_url(redis_url, username=user, password="secret")
    try:
        with pytest.raises(ResponseError, match=r"NOPERM|permission"):
            await limited.client_list()
        c = QueuesCollector("cache", 2.0, client=limited, bullmq=["mail", "idle"],
                            use_script=use_script)
        found = {f.name: f for f in await c.collect()}
        depth = {s.labels["queue"]: s.value for s in found["runbook_queue_depth"].samples}
        paused = {s.labels["queue"]: s.value for s in found["runbook_queue_paused"].samples}
        assert depth == {"mail": 2.0, "idle": 0.0}
        assert paused == {"mail": 0.0, "idle": 1.0}
        # Unknown, not 0: a 0 would fire "no worker" alerts.
        assert found["runbook_queue_workers"].samples == []
        assert "CLIENT LIST refused" in str(c.detail()["workers"])
        assert c.use_script is use_script
    finally:
        await limited.aclose()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


@pytest.fixture
def redis_without_client() -> Iterator[str]:
    """A redis-server of this test's own with CLIENT renamed away (rename-command can only be
    given at start), stopped after the test."""
    directory = Path(tempfile.mkdtemp(prefix="rbap-redis-renamed-"))
    port = free_port()
    process = subprocess.Popen(
        [find_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--rename-command", "CLIENT", ""],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_renamed_client_command_keeps_the_script(redis_without_client: str) -> None:
    url = redis_without_client
    spec = {"url": url, "queues": [{"name": "mail", "wait": 2, "prioritized": 1}]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    client = Redis.from_url(url)
    try:
        with pytest.raises(ResponseError, match="unknown command"):
            await client.client_list()
        c = QueuesCollector("cache", 2.0, client=client, bullmq=["mail"])
        for _ in range(2):  # the second read too: the first did not give the script up
            (mail,) = await c.read()
            assert c.use_script
            assert mail.depth == 3
            assert mail.workers is None
    finally:
        await client.aclose()


async def test_discovery_covers_a_large_keyspace_over_rounds(redis_url: str) -> None:
    names = [f"q{i:02}" for i in range(20)]
    spec = {"url": redis_url, "queues": [{"name": name, "wait": 1} for name in names]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    await asyncio.to_thread(_celery_fill, redis_url)
    client = Redis.from_url(redis_url)
    for start in range(0, 20_000, 2_000):
        await client.mset({f"filler:{i}": "x" for i in range(start, start + 2_000)})
    # About 2,000 of the ~20,000 keys per round: a full SCAN cycle takes several rounds.
    c = QueuesCollector("cache", 2.0, client=client, discover=True, discover_interval=0.0,
                        scan_count=200, scan_max_calls=10)

    async def discovered() -> set[str]:
        await c.collect()
        return set(c.discovered["bullmq"])

    seen = [await discovered()]
    partial = c.detail()
    while not c.detail().get("discovery_complete") and len(seen) < 200:
        seen.append(await discovered())
    # What a partial cycle found is read right away (a round may also find none of them).
    assert any(set() < found < set(names) for found in seen[:-1])
    assert seen[-1] == set(names), sorted(set(names) - seen[-1])
    rounds = len(seen)
    assert 3 <= rounds < 200, rounds
    assert partial == {"discovery_complete": False}
    assert c.discovered["celery"] == ["celery", "emails"]
    depth = {s.labels["queue"]: s.value
             for s in (await c.collect())[0].samples if s.labels["kind"] == "bullmq"}
    assert depth == dict.fromkeys(names, 1.0)

    from bullmq import Queue

    gone = Queue("q07", {"connection": redis_url})
    await gone.obliterate()
    await gone.close()
    # A partial cycle cannot tell a deleted queue from one it has not reached yet ...
    assert "q07" in await discovered()
    # ... the next full cycle can. SCAN's calls per cycle vary a little with the table's state
    # (an incremental rehash after the bulk writes), so allow for cycles a little longer.
    for _ in range(3 * rounds):
        found = await discovered()
        if found == set(names) - {"q07"}:
            break
    assert found == set(names) - {"q07"}
    await client.aclose()


@pytest.mark.parametrize("use_script", [True, False], ids=["script", "pipelined"])
async def test_bullmq_oldest_age_counts_prioritized_jobs(redis_url: str,
                                                        use_script: bool) -> None:
    from bullmq import Queue

    # "starved": its oldest jobs have the lowest priority, younger ones a higher one.
    spec = {"url": redis_url, "queues": [{"name": "ranked", "prioritized": 3},
                                         {"name": "starved", "prioritized": 2}]}
    await asyncio.to_thread(node, "exporter_bullmq.mjs", json.dumps(spec))
    await asyncio.sleep(1.1)
    urgent = Queue("starved", {"connection": redis_url})
    for _ in range(2):
        await urgent.add("urgent", {}, {"priority": 1})
    await urgent.close()
    client = Redis.from_url(redis_url)
    c = QueuesCollector("cache", 2.0, client=client, bullmq=["ranked", "starved"],
                        use_script=use_script)
    readings = {r.queue: r for r in await c.read()}
    ranked, starved = readings["ranked"], readings["starved"]
    assert ranked.depth == 3
    assert starved.jobs["prioritized"] == 4
    for r in (ranked, starved):
        assert r.oldest_age is not None
        assert 1.0 <= r.oldest_age < 60, r
    await client.aclose()
