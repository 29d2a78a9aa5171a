"""Real `runbook responder` processes: crash recovery, two replicas on one PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from responder.payload import occurrence_id
from tests.stack import Stack, free_port, http_json, stack
from tests.test_responder_support import TOKEN, ThreadSink, body, runbook

RUNBOOK_BIN = str(Path(sys.executable).with_name("runbook"))
OID = occurrence_id("fp1", "2026-11-24T07:12:19.279000Z")


def start(s: Stack, name: str, rb: Path, *args: str) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s.runbook(name, ["responder", "--runbook", str(rb), "--listen", f"127.0.0.1:{port}", *args],
              f"{url}/health/ready", env={"RUNBOOK_WEBHOOK_TOKEN": TOKEN})
    return url


def wait_for(url: str, check: Any, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        data: dict[str, Any] = http_json(f"{url}/incidents/{OID}", token=TOKEN)
        if check(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(json.dumps(data, indent=1)[-4000:])
        time.sleep(0.05)


async def post_many(urls: list[str], payload: dict[str, Any], count: int) -> list[int]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = json.dumps(payload)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> int:
            async with session.post(f"{urls[i % len(urls)]}/alerts", data=data,
                                    headers=headers) as response:
                return response.status
        return list(await asyncio.gather(*(one(i) for i in range(count))))


def kinds(data: dict[str, Any]) -> list[str]:
    return [s["kind"] for s in data["steps"]]


def test_action_cut_short_by_a_crash_is_escalated_not_rerun(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    code = ("import sys, time; open(sys.argv[1], 'a').write('start\\n'); time.sleep(60)")
    argv = json.dumps(["python3", "-c", code, str(runs)])
    sink = ThreadSink()
    try:
        rule = ("  - name: slow\n    match: {alertname: GaugeHigh}\n    external: true\n"
                f"    mode: auto\n    do: [{{exec: {{argv: {argv}, timeout: 2m}}}}]\n")
        rb = tmp_path / "runbook.yml"
        rb.write_text(runbook(rule, sink.url))
        with stack() as s:
            data_dir = str(tmp_path / "data")
            url = start(s, "responder-1", rb, "--data-dir", data_dir)
            assert asyncio.run(post_many([url], body(), 1)) == [200]
            wait_for(url, lambda d: "action_started" in kinds(d))
            while not runs.exists():
                time.sleep(0.02)
            s.procs[-1].kill()
            url = start(s, "responder-2", rb, "--data-dir", data_dir)
            data = wait_for(url, lambda d: d["state"] == "escalated")
            interrupted = next(x for x in data["steps"] if x["kind"] == "interrupted")
            assert "not run again" in interrupted["detail"]["reason"]
            assert runs.read_text() == "start\n"
            assert len(sink.received) == 1
    finally:
        sink.close()


def test_a_second_responder_on_one_sqlite_store_exits_with_the_reason(tmp_path: Path) -> None:
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook("  - name: gauge\n    match: {alertname: GaugeHigh}\n    mode: page\n"
                          "    external: true\n"))
    data_dir = str(tmp_path / "data")
    with stack() as s:
        url = start(s, "responder-1", rb, "--data-dir", data_dir)
        second = subprocess.run(
            [RUNBOOK_BIN, "responder", "--runbook", str(rb), "--listen",
             f"127.0.0.1:{free_port()}", "--data-dir", data_dir],
            env={**os.environ, "RUNBOOK_WEBHOOK_TOKEN": TOKEN}, capture_output=True, text=True,
            timeout=60, check=False)
        assert second.returncode == 1, second.stderr
        assert "another responder already uses the SQLite store" in second.stderr
        # The first one still records and answers.
        assert asyncio.run(post_many([url], body(), 1)) == [200]
        s.procs[-1].kill()
        # The kernel drops a dead holder's lock: a restart is never locked out.
        start(s, "responder-2", rb, "--data-dir", data_dir)


def test_runbook_run_on_a_held_store_exits_before_writing_a_token(tmp_path: Path) -> None:
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook("  - name: gauge\n    match: {alertname: GaugeHigh}\n    mode: page\n"
                          "    external: true\n"))
    data_dir = tmp_path / "data"
    with stack() as s:
        start(s, "responder-1", rb, "--data-dir", str(data_dir))
        env = {k: v for k, v in os.environ.items() if k != "RUNBOOK_WEBHOOK_TOKEN"}
        second = subprocess.run(
            [RUNBOOK_BIN, "run", "--runbook", str(rb), "--data-dir", str(data_dir),
             "--exporter-listen", f"127.0.0.1:{free_port()}",
             "--responder-listen", f"127.0.0.1:{free_port()}"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1, second.stderr
        assert "another responder already uses the SQLite store" in second.stderr
        assert not (data_dir / "webhook_token").exists()


def test_two_replicas_on_one_postgres_decide_once(tmp_path: Path, postgres_dsn: str) -> None:
    runs = tmp_path / "runs.txt"
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    argv = json.dumps(["python3", "-c", code, str(runs), "{{ labels.instance }}"])
    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            f"    mode: auto\n    do: [{{exec: {argv}}}]\n")
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook(rule))
    with stack() as s:
        urls = [start(s, f"replica-{i}", rb, "--store", postgres_dsn) for i in range(2)]
        statuses = asyncio.run(post_many(urls, body(), 100))
        assert statuses == [200] * 100
        data = wait_for(urls[1], lambda d: d["state"] == "acted")
        time.sleep(1.0)  # any second run would have started by now
        data = http_json(f"{urls[0]}/incidents/{OID}", token=TOKEN)
        steps = kinds(data)
        assert steps.count("received") == 1
        assert steps.count("matched") == 1
        assert steps.count("queued") == 1
        assert steps.count("deduplicated") == 99
        assert steps.count("action_started") == 1
        assert len(data["decision"]) == 1
        assert runs.read_text() == "host-1\n"
        both = {s["detail"]["by"] for s in data["steps"] if s["kind"] == "action_started"}
        assert len(both) == 1


def test_sigterm_lets_the_running_action_finish(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    code = ("import sys, time; time.sleep(1.5); open(sys.argv[1], 'a').write('done\\n')")
    argv = json.dumps(["python3", "-c", code, str(runs)])
    rule = ("  - name: slow\n    match: {alertname: GaugeHigh}\n    external: true\n"
            f"    mode: auto\n    do: [{{exec: {argv}}}]\n")
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook(rule))
    with stack() as s:
        data_dir = str(tmp_path / "data")
        url = start(s, "responder-1", rb, "--data-dir", data_dir)
        assert asyncio.run(post_many([url], body(), 1)) == [200]
        wait_for(url, lambda d: "action_started" in kinds(d))
        process = s.procs[-1].process
        assert process is not None
        # SIGTERM to the responder only, as `systemctl stop` with KillMode=mixed does (the
        # group-wide signal would also hit a child forked in that very instant).
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, s.procs[-1].tail()
        assert runs.exists(), s.procs[-1].tail()
        assert runs.read_text() == "done\n"
        url = start(s, "responder-2", rb, "--data-dir", data_dir)
        data = wait_for(url, lambda d: d["state"] == "acted")
        assert "interrupted" not in kinds(data)


async def test_redis_wakes_the_other_replica(tmp_path: Path, postgres_dsn: str,
                                             redis_url: str) -> None:
    from responder.store import open_store
    from tests.test_responder_support import append_argv, load, post, responder

    runs = tmp_path / "runs.txt"
    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            f"    mode: auto\n    do: [{{exec: {json.dumps(append_argv(runs))}}}]\n")
    loaded = load(rule)
    # The intake replica runs no worker; the worker replica polls only every 60s.
    async with responder(loaded, open_store(postgres_dsn), run_worker=False,
                         redis_url=redis_url) as front, \
            responder(loaded, open_store(postgres_dsn), poll=60.0, redis_url=redis_url):
        await asyncio.sleep(0.3)  # the subscriber is listening
        began = time.monotonic()
        assert (await post(front, body())).status == 200
        for _ in range(500):
            if runs.exists():
                break
            await asyncio.sleep(0.02)
        assert runs.read_text() == "host-1\n"
        assert time.monotonic() - began < 5
