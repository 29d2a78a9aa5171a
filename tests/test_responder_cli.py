"""`runbook responder`, `incidents`, `approve`, `reject` and `replay` as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.stack import RUNBOOK_BIN, free_port, stack
from tests.test_responder_support import PAYLOADS, TOKEN, alert, append_argv, body, runbook

APPROVE_RULE = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
                "    mode: approve\n    do: [{exec: %s}]\n")


def cli(*args: str, token: str | None = TOKEN, url: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNBOOK_WEBHOOK_TOKEN"}
    if token:
        env["RUNBOOK_WEBHOOK_TOKEN"] = token
    if url:
        env["RUNBOOK_RESPONDER_URL"] = url
    return subprocess.run([RUNBOOK_BIN, *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_incidents_approve_reject_against_a_running_responder(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    (tmp_path / "runbook.yml").write_text(runbook(APPROVE_RULE % json.dumps(append_argv(runs))))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with stack() as s:
        s.runbook("responder", ["responder", "--runbook", str(tmp_path / "runbook.yml"),
                                "--listen", f"127.0.0.1:{port}", "--data-dir",
                                str(tmp_path / "data")], f"{url}/health/ready",
                  env={"RUNBOOK_WEBHOOK_TOKEN": TOKEN})
        import urllib.request

        for fp in ("a1", "b2"):
            req = urllib.request.Request(f"{url}/alerts", data=json.dumps(body(alert(fp)))  # noqa: S310
                                         .encode(), method="POST", headers={
                                             "Authorization": f"Bearer {TOKEN}",
                                             "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310 - loopback
                assert response.status == 200
        listed = cli("incidents", "--active", "--json", url=url)
        assert listed.returncode == 0, listed.stderr
        items = json.loads(listed.stdout)["incidents"]
        assert {i["state"] for i in items} == {"awaiting_approval"}
        first, second = (i["id"] for i in items)
        table = cli("incidents", url=url)
        assert first in table.stdout
        assert "awaiting_approval" in table.stdout
        approved = cli("approve", first, "--reason", "looks right", url=url)
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.strip() == f"{first}: queued"
        rejected = cli("reject", second, url=url)
        assert rejected.stdout.strip() == f"{second}: rejected"
        again = cli("approve", second, url=url)
        assert again.returncode == 1
        assert "HTTP 409" in again.stderr
        assert "rejected" in again.stderr
        unknown = cli("approve", "0000", url=url)
        assert "HTTP 404" in unknown.stderr
        # An id is one path segment: "../../alerts" is an unknown incident, not another route.
        for odd in ("../../alerts", "a b", "x?y=1"):
            answer = cli("approve", odd, url=url)
            assert answer.returncode == 1
            assert "HTTP 404" in answer.stderr, answer.stderr
        # The token from a file, as `runbook run` keeps it.
        (tmp_path / "token").write_text(TOKEN + "\n")
        from_file = cli("incidents", "--token-file", str(tmp_path / "token"), token=None,
                        url=url)
        assert from_file.returncode == 0, from_file.stderr
        wrong = cli("incidents", token="wrong", url=url)
        assert wrong.returncode == 1
        assert "HTTP 401" in wrong.stderr
        # The variable as `export X=$(cat file)` or a secret mount leaves it: stripped.
        newline = cli("incidents", token=TOKEN + "\n", url=url)
        assert newline.returncode == 0, newline.stderr
        # A token no header can carry is refused in one line that never shows it.
        for odd in ("s3cr3t-token\x01value", "s3cr3t-tokén"):
            refused = cli("incidents", token=odd, url=url)
            assert refused.returncode == 1
            assert "no HTTP header can carry" in refused.stderr, refused.stderr
            assert "s3cr3t" not in refused.stderr
    assert cli("incidents", token=None, url=url).stderr.startswith(
        "runbook incidents: give the responder's token: --token-file FILE or "
        "RUNBOOK_WEBHOOK_TOKEN")
    down = cli("incidents", url=url)
    assert "cannot reach the responder" in down.stderr
    # A broken URL is one line, not a traceback; credentials in a URL are never printed.
    for bad in ("http://[::1", f"http://admin:s3cret@127.0.0.1:{free_port()}"):
        answer = cli("incidents", url=bad)
        assert answer.returncode == 1
        assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr
        assert "s3cret" not in answer.stderr


def test_responder_refuses_to_start_without_token_or_with_bad_args(tmp_path: Path) -> None:
    (tmp_path / "runbook.yml").write_text(runbook(APPROVE_RULE % '["true"]'))
    rb = str(tmp_path / "runbook.yml")
    no_token = cli("responder", "--runbook", rb, token=None)
    assert no_token.returncode == 2
    assert "no webhook token" in no_token.stderr
    bad_listen = cli("responder", "--runbook", rb, "--listen", "nowhere")
    assert "is not HOST:PORT" in bad_listen.stderr
    bad_store = cli("responder", "--runbook", rb, "--store", "mysql://u:Hunter2pw@x")
    assert "is not a store URL" in bad_store.stderr
    assert "Hunter2pw" not in bad_store.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("responder", "--runbook", rb, "--listen",
                   f"127.0.0.1:{taken.getsockname()[1]}", "--data-dir", str(tmp_path / "d"))
    assert busy.returncode == 2
    assert len(busy.stderr.strip().splitlines()) <= 2, busy.stderr  # no traceback
    assert "Traceback" not in busy.stderr
    (tmp_path / "broken.yml").write_text("service: shop\nrespond: [{mode: auto}]\n")
    broken = cli("responder", "--runbook", str(tmp_path / "broken.yml"))
    assert broken.returncode == 1  # a runbook that does not load, as validate/run/exporter say
    assert "broken.yml:2" in broken.stderr


@pytest.mark.parametrize("wrapped", [False, True])
def test_replay_says_what_would_have_happened(tmp_path: Path, wrapped: bool) -> None:
    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            "    mode: auto\n    cooldown: 1h\n    do: [{exec: [/bin/false]}]\n")
    (tmp_path / "runbook.yml").write_text(runbook(rule))
    firing = json.loads((PAYLOADS / "firing.json").read_text())
    later = body(alert("other", starts="2026-11-24T07:30:00Z", instance="127.0.0.1:18000",
                       job="gauge", severity="page"))
    lines = [firing, firing, json.loads((PAYLOADS / "resolved.json").read_text()), later]
    if wrapped:
        lines = [{"received_at": 1_795_000_000 + i, "body": b} for i, b in enumerate(lines)]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    # Times no clock holds are that line's error, not the end of the replay.
    for when in ('"yesterday"', "NaN", "1e400", "true"):
        text += f'{{"received_at": {when}, "body": {json.dumps(firing)}}}\n'
    (tmp_path / "week.jsonl").write_text(text)
    out = cli("replay", str(tmp_path / "week.jsonl"), "--runbook", str(tmp_path / "runbook.yml"))
    assert out.returncode == 1
    assert "week.jsonl:5: not JSON" in out.stderr
    for number in (6, 7, 8, 9):
        assert f"week.jsonl:{number}: " in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    lines_out = out.stdout.splitlines()
    assert "queued by fix" in lines_out[0]
    assert "deduplicated" in lines_out[1]
    assert "resolved" in lines_out[2]
    assert "paging by fix" in lines_out[3]
    assert "rail cooldown" in lines_out[3]
    assert lines_out[-1] == "4 alerts: 1 deduplicated, 1 paging, 1 queued, 1 resolved; " \
                            "nothing was run"


def test_replay_takes_each_remediation_as_finished_before_the_next_line(tmp_path: Path) -> None:
    # One alert a day on six hosts, never resolved in the file: the default concurrency rail
    # (4) must not count the replay's own never-run remediations as still running.
    rule = ("  - name: fix\n    match: {alertname: GaugeHigh}\n    external: true\n"
            "    mode: auto\n    do: [{exec: [/bin/true]}]\n")
    (tmp_path / "runbook.yml").write_text(runbook(rule))
    day = 86_400
    lines = [{"received_at": 1_795_000_000 + i * day,
              "body": body(alert(f"fp{i}", starts=f"2026-11-{10 + i}T07:00:00Z",
                                 instance=f"host-{i}"))} for i in range(6)]
    (tmp_path / "days.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = cli("replay", str(tmp_path / "days.jsonl"), "--runbook", str(tmp_path / "runbook.yml"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "6 alerts: 6 queued; nothing was run", out.stdout
