"""Hostile input, by hand: oversized, slow and deeply nested bodies, missing and wrong tokens,
secrets kept out of logs, and label values that try to escape their argv slot or JSON field."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runbook.actions import DEFAULT_LABEL_PATTERN
from tests.fault_support import (
    ARGV_CODE,
    TOKEN,
    alert,
    crash_postgres,
    exec_rule,
    incidents,
    lines,
    metric,
    notification,
    python_argv,
    report,
    runbook_text,
    start_responder,
    until,
)
from tests.servers import start_postgres
from tests.stack import http_get, stack
from tests.test_responder_support import ThreadSink


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 30) -> bytes:
    """Send bytes on a fresh connection; what the server answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head + body)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in chunks[0]:
                break
        return b"".join(chunks)


def post_head(length: int | None, token: str = TOKEN, chunked: bool = False) -> bytes:
    size = (b"Transfer-Encoding: chunked\r\n" if chunked
            else f"Content-Length: {length}\r\n".encode())
    return (b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\n".encode() + size + b"\r\n")


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3})", answer)
    return int(match.group(1)) if match else 0


def test_limits_and_tokens(tmp_path: Path) -> None:
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(""))
    results: dict[str, Any] = {}
    with stack() as s:
        proc, url = start_responder(s, "responder", rb, "--data-dir", str(tmp_path / "data"))
        port = int(url.rsplit(":", 1)[1])

        def slow() -> None:
            # Declares 1000 bytes, sends one every 0.5 s: must be cut off, not kept for ever.
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
                conn.sendall(post_head(1000) + b"{")
                answer = b""
                try:
                    for _ in range(120):
                        conn.settimeout(0.5)
                        try:
                            answer += conn.recv(65536)
                            if answer == b"" or b"\r\n\r\n" in answer:
                                break
                        except TimeoutError:
                            conn.sendall(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    pass
            results["slow"] = (status_of(answer), time.monotonic() - started)

        trickle = threading.Thread(target=slow)
        trickle.start()
        big = b'{"version": "4", "x": "' + b"a" * (5 * 1024 * 1024) + b'"}'
        assert status_of(raw_request(port, post_head(len(big)), big)) == 413
        chunks = b"".join(b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20)) for _ in range(6))
        assert status_of(raw_request(port, post_head(None, chunked=True), chunks)) == 413
        deep = b"[" * 100_000 + b"]" * 100_000
        assert status_of(raw_request(port, post_head(len(deep)), deep)) == 400
        valid = json.dumps(notification(alert("h1", "2026-11-24T07:12:19Z"))).encode()
        for token in ["", "wrong", TOKEN + "x", TOKEN[:-1], "Basic " + TOKEN]:
            head = post_head(len(valid), token)
            if token.startswith("Basic"):
                head = head.replace(b"Bearer Basic", b"Basic")
            answer = raw_request(port, head, valid)
            assert status_of(answer) == 401, (token, answer[:200])
        no_auth = (b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(valid)}\r\n\r\n".encode())
        assert status_of(raw_request(port, no_auth, valid)) == 401
        for path in ["/incidents", "/incidents/x"]:
            assert http_get(f"{url}{path}")[0] == 401
            assert http_get(f"{url}{path}", token="wrong")[0] == 401
        assert status_of(raw_request(port, post_head(len(valid)), valid)) == 200
        trickle.join(60)
        assert proc.process is not None
        assert proc.process.poll() is None
        log = proc.tail(1_000_000)
    status, seconds = results["slow"]
    report("hostile_limits", oversized_status=413, slow_body_status=status,
           slow_body_cut_after_seconds=round(seconds, 1), deep_nesting_status=400,
           bad_token_status=401)
    assert status == 408 or status == 0, status
    assert seconds < 15, seconds
    assert "Traceback" not in log, log[-3000:]


def test_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    secrets = {"RUNBOOK_WEBHOOK_TOKEN": TOKEN, "FAULT_PD_KEY": "pd-routing-9f3e51c2",
               "FAULT_SLACK_URL": "http://127.0.0.1:9/services/T000/B000/slacksecret77",
               "FAULT_HOOK_TOKEN": "hook-token-4d7a0b"}
    pg = start_postgres()
    password = "pgpass-61c0e8"
    sink = ThreadSink()
    try:
        rb = tmp_path / "runbook.yml"
        rb.write_text(
            "service: faults\nwatch: {host: {}}\npage:\n  default:\n"
            "    - pagerduty: {routing_key_env: FAULT_PD_KEY, url: 'http://127.0.0.1:9/v2/enqueue'}\n"
            "    - slack: {webhook_url_env: FAULT_SLACK_URL}\n"
            f"    - webhook: {{url: '{sink.url}', token_env: FAULT_HOOK_TOKEN}}\n"
            "respond:\n  - name: pager\n    match: {alertname: FaultSecret}\n    external: true\n"
            "    mode: page\n")
        dsn = f"postgresql://postgres:{password}@127.0.0.1:{pg.port}/postgres"
        with stack() as s:
            proc, url = start_responder(s, "responder", rb, "--store", dsn, "--log-level",
                                        "DEBUG", env=secrets)
            port = int(url.rsplit(":", 1)[1])
            body = json.dumps(notification(alert("s1", "2026-11-24T07:12:19Z",
                                                 alertname="FaultSecret"))).encode()
            for token in [TOKEN + "x", TOKEN[:-1], "wrong"]:
                assert status_of(raw_request(port, post_head(len(body), token), body)) == 401
            assert status_of(raw_request(port, post_head(len(body)), body)) == 200
            until(lambda: sink.received, 20, "the page to the webhook receiver")
            time.sleep(2.0)  # PagerDuty and Slack fail (nothing listens): their errors get logged
            crash_postgres(pg)
            other = json.dumps(notification(alert("s2", "2026-11-24T07:12:19Z",
                                                  alertname="FaultSecret"))).encode()
            assert status_of(raw_request(port, post_head(len(other)), other)) == 503
            time.sleep(1.5)  # the worker's claim loop logs its store errors too
            log = proc.tail(10_000_000)
    finally:
        sink.close()
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop("immediate")
        shutil.rmtree(pg.dir, ignore_errors=True)
    found = {name: value in log for name, value in {**secrets, "password": password}.items()}
    report("hostile_secrets_in_logs", log_lines=len(log.splitlines()), secrets_checked=len(found),
           secrets_found=sorted(k for k, v in found.items() if v))
    assert "slacksecret77" not in log
    assert not any(found.values()), found
    assert len(log.splitlines()) > 5  # the log was captured (DEBUG), so the check means something


HOSTILE_VALUES = [
    "; rm -rf /", "$(touch {pwned})", "`touch {pwned}`", "a && touch {pwned}", "| cat /etc/shadow",
    "../../../etc/passwd", "--help", "-rf", "' OR 1=1 --", "{{{{ labels.instance }}}}", "%(x)s %n",
    "a b c", "ünïcødé", "\u202egnp.exe", "x" * 1024, "x" * 1025, "x" * 100_000, "a\nb", "a\rb",
    "a\tb", "\x1b[31mred", "ok-value_1.2:3@4=5",
]


@pytest.fixture
def argv_runbook(tmp_path: Path) -> tuple[Path, Path, ThreadSink, ThreadSink]:
    out = tmp_path / "argv.jsonl"
    pages, hook = ThreadSink(), ThreadSink()
    permissive = exec_rule("permissive", "FaultArgv", python_argv(
        ARGV_CODE, str(out), "permissive", "{{ labels.instance }}", "{{ labels.victim }}"),
        patterns={"victim": ".*"}, extra="    continue: true\n")
    default = exec_rule("default", "FaultArgv", python_argv(
        ARGV_CODE, str(out), "default", "{{ labels.instance }}", "{{ labels.victim }}"),
        extra="    continue: true\n")
    http = ("  - name: http\n    match: {alertname: FaultArgv}\n    external: true\n"
            "    mode: auto\n    cooldown: 0s\n    do: [{http: {url: '" + hook.url + "', json: "
            "{instance: '{{ labels.instance }}', victim: '{{ labels.victim }}'}, "
            "label_patterns: {victim: '.*'}}}]\n")
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(permissive + default + http, pages.url))
    return rb, out, pages, hook


def test_label_values_stay_in_one_argv_slot_or_are_refused(
        tmp_path: Path, argv_runbook: tuple[Path, Path, ThreadSink, ThreadSink]) -> None:
    rb, out, pages, hook = argv_runbook
    pwned = tmp_path / "pwned"
    values = [v.replace("{pwned}", str(pwned)) if "{pwned}" in v else v.replace("{{{{", "{{")
              .replace("}}}}", "}}") for v in HOSTILE_VALUES]
    try:
        with stack() as s:
            proc, url = start_responder(s, "responder", rb, "--data-dir", str(tmp_path / "data"))
            port = int(url.rsplit(":", 1)[1])
            by_instance = {f"v{i:02d}": v for i, v in enumerate(values)}
            for inst, value in by_instance.items():
                body = json.dumps(notification(alert(inst, "2026-11-24T07:12:19Z",
                                                     alertname="FaultArgv", victim=value)))
                answer = raw_request(port, post_head(len(body.encode())), body.encode())
                assert status_of(answer) == 200, (value[:50], answer[:300])
            nul = json.dumps(notification(alert("nul", "2026-11-24T07:12:19Z",
                                                alertname="FaultArgv", victim="a\x00b"))).encode()
            answer = raw_request(port, post_head(len(nul)), nul)
            assert status_of(answer) == 400, answer[:300]
            assert b"NUL" in answer, answer[:300]

            def settled() -> list[dict[str, Any]] | None:
                found = incidents(url)
                busy = metric(url, r"runbook_responder_pending_work ")
                return found if len(found) == len(values) and busy == 0 else None
            until(settled, 60, "every hostile alert to be handled", every=0.3)

            def refused_paged() -> list[dict[str, Any]] | None:
                found = incidents(url)
                late = [i for i in found if i["labels"]["instance"] in refused_keys
                        and not i["paged"]]
                return None if late else found
            refused_keys = {k for k, v in by_instance.items()
                            if len(v) > 1024 or re.search(r"[\x00-\x1f\x7f]", v)}
            found = until(refused_paged, 60, "every refused alert to be paged", every=0.3)
            time.sleep(0.5)
            assert proc.process is not None
            assert proc.process.poll() is None
    finally:
        pages.close()
        hook.close()
    rows = [json.loads(line) for line in lines(out)]
    by_rule: dict[str, dict[str, list[str]]] = {"permissive": {}, "default": {}}
    for row in rows:
        assert len(row) == 3, row  # rule tag, instance, value: never split, never joined
        by_rule[row[0]][row[1]] = row
    hooked = {b["instance"]: b["victim"] for b in hook.received}
    states = {i["labels"]["instance"]: i for i in found}
    passed_permissive = refused = 0
    for inst, value in by_instance.items():
        clean = len(value) <= 1024 and not re.search(r"[\x00-\x1f\x7f]", value)
        if clean:
            assert by_rule["permissive"][inst] == ["permissive", inst, value]
            assert hooked[inst] == value
            passed_permissive += 1
        else:
            assert inst not in by_rule["permissive"], inst
            assert inst not in hooked, inst
            reasons = json.dumps(states[inst]["steps"])
            assert "label 'victim'" in reasons, reasons[-2000:]
            assert states[inst]["paged"], inst
            refused += 1
        if re.fullmatch(DEFAULT_LABEL_PATTERN, value):
            assert by_rule["default"][inst] == ["default", inst, value]
        else:
            assert inst not in by_rule["default"], (inst, value[:40])
    assert not pwned.exists(), "a label value reached a shell"
    report("hostile_label_values", values=len(values), one_argv_slot=passed_permissive,
           refused_with_reason=refused, default_pattern_passed=len(by_rule["default"]),
           nul_status=400, shell_injections=0)
