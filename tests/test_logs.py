"""Structured log lines: JSON and logfmt parse back, secrets never appear."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from runbook import logs
from tests.servers import free_port
from tests.stack import stack

TOKEN = "s3cr3t-token-value-123"


@pytest.fixture
def capture() -> io.StringIO:
    return io.StringIO()


def _emit(fmt: str, stream: io.StringIO) -> list[str]:
    logs.setup("INFO", fmt, secrets=[TOKEN], stream=stream)
    log = logging.getLogger("responder.test")
    log.info("decision for %s", "occ-1", extra={"occurrence": "occ-1", "mode": "auto",
                                                 "detail": f"Bearer {TOKEN}"})
    log.warning("auth header was %s", f"Bearer {TOKEN}")
    try:
        raise RuntimeError(f"connect failed with {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_fields(capture: io.StringIO) -> None:
    lines = [line for line in _emit("json", capture) if line.startswith("{")]
    first = json.loads(lines[0])
    assert first["msg"] == "decision for occ-1"
    assert first["occurrence"] == "occ-1"
    assert first["mode"] == "auto"
    assert first["level"] == "info"
    assert first["logger"] == "responder.test"
    assert json.loads(lines[2])["error"].startswith("Traceback")


def test_logfmt_quotes_values_that_need_it(capture: io.StringIO) -> None:
    lines = _emit("logfmt", capture)
    assert re.search(r'\bmsg="decision for occ-1"', lines[0])
    assert " occurrence=occ-1 " in lines[0] + " "
    assert "level=info" in lines[0]


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_secrets_never_appear(fmt: str, capture: io.StringIO) -> None:
    text = "\n".join(_emit(fmt, capture))
    assert TOKEN not in text
    assert logs.MASK in text


def test_short_values_are_not_masked(capture: io.StringIO) -> None:
    logs.setup("INFO", "text", secrets=["abc"], stream=capture)
    logging.getLogger("x").info("abc stays")
    assert "abc stays" in capture.getvalue()


def test_responder_logs_one_json_line_per_decision_without_secrets(tmp_path: Path) -> None:
    runbook = tmp_path / "rb.yml"
    runbook.write_text(
        "service: shop\n"
        "watch: {redis: [{name: main, url_env: SHOP_REDIS_URL, queues: {bullmq: [mail]}}]}\n"
        "alerts:\n  queue_depth: {critical: 100, for: 5m}\n"
        "respond:\n  - {match: {alertname: QueueDepthHigh}, mode: page}\n")
    port = free_port()
    redis_secret = "redis://:hunter2-redis-password@127.0.0.1:1/0"
    env = {**os.environ, "RUNBOOK_WEBHOOK_TOKEN": TOKEN, "SHOP_REDIS_URL": redis_secret}
    with stack() as s:
        proc = s.runbook("responder", ["responder", "--runbook", str(runbook), "--listen",
                                       f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"),
                                       "--log-format", "json", "--log-level", "DEBUG"],
                         f"http://127.0.0.1:{port}/health/ready", env=env)
        alert = {"status": "firing", "labels": {"alertname": "QueueDepthHigh"},
                 "startsAt": "2026-11-25T10:00:00Z", "fingerprint": "00aa11bb22cc33dd"}
        note = {"version": "4", "status": "firing", "alerts": [alert]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/alerts", data=json.dumps(note).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read())
        occurrence = answer["alerts"][0]["occurrence"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and occurrence not in proc.tail(100_000):
            time.sleep(0.05)
        proc.stop()
        text = proc.log.read_text()
    decided = [json.loads(line) for line in text.splitlines()
               if line.startswith("{") and '"decision"' in line]
    assert len(decided) == 1, text[-2000:]
    assert decided[0]["occurrence"] == occurrence
    assert decided[0]["decision"] == ["paging"]
    assert TOKEN not in text
    assert "hunter2-redis-password" not in text
