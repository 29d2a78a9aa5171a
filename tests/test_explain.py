"""`runbook explain`: rule, mode, rails read from the real store, and the exact argv."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from responder.rails import target_key
from responder.store.intake import record_run
from responder.store.sqlite import SqliteStore

RUNBOOK_BIN = str(Path(sys.executable).with_name("runbook"))
RUNBOOK = """\
service: shop
watch:
  redis:
    - {name: main, url: "redis://127.0.0.1:1/0", queues: {bullmq: [mail]}}
alerts:
  queue_depth: {warning: 50, critical: 100, for: 5m}
respond:
  - name: scale
    match: {alertname: QueueDepthHigh, severity: critical}
    mode: auto
    cooldown: 10m
    verify_after: 5m
    do:
      - exec:
          argv: [kubectl, scale, "deployment/{{ labels.deployment }}", --replicas=4]
page:
  default: {slack: {webhook_url_env: SLACK_URL}}
"""


def _explain(
    tmp_path: Path, labels: dict[str, str], *extra: str, runbook: str = RUNBOOK
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rb.yml").write_text(runbook)
    (tmp_path / "alert.json").write_text(json.dumps({"labels": labels}))
    return subprocess.run(
        [RUNBOOK_BIN, "explain", str(tmp_path / "rb.yml"), str(tmp_path / "alert.json"),
         "--data-dir", str(tmp_path / "data"), *extra],
        capture_output=True, text=True, timeout=60, check=False)


CRITICAL = {"alertname": "QueueDepthHigh", "severity": "critical", "deployment": "mailer"}


def test_shows_rule_mode_and_exact_argv(tmp_path: Path) -> None:
    done = _explain(tmp_path, CRITICAL)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "matches scale (respond[0]), mode auto" in out
    assert '["kubectl", "scale", "deployment/mailer", "--replicas=4"]' in out
    assert "no store found: fresh state" in out
    assert "decision: queued" in out
    assert "verify after 300s" in out
    assert not (tmp_path / "data").exists(), "explain must not create a store"


def test_hostile_label_value_is_refused_before_running(tmp_path: Path) -> None:
    done = _explain(tmp_path, {**CRITICAL, "deployment": "x; rm -rf /"})
    assert done.returncode == 0, done.stderr
    assert "would FAIL before running" in done.stdout
    assert "label 'deployment'" in done.stdout


def test_unmatched_alert_pages_the_default_receiver(tmp_path: Path) -> None:
    done = _explain(tmp_path, {"alertname": "QueueDepthHigh", "severity": "warning"})
    assert "no respond rule matches" in done.stdout
    assert "would page: slack (page.default)" in done.stdout


async def _scale_ran(tmp_path: Path, seconds_ago: float) -> None:
    """Record in the store explain reads that rule `scale` acted on CRITICAL's target."""
    store = SqliteStore(tmp_path / "data" / "responder.sqlite3")
    await store.open()
    target = target_key(CRITICAL)

    async def ran(tx: object) -> None:
        await record_run(tx, "scale", target, "occ-1",  # type: ignore[arg-type]
                         time.time() - seconds_ago)

    await store.run(ran)
    await store.close()


async def test_rails_come_from_the_store(tmp_path: Path) -> None:
    await _scale_ran(tmp_path, 60)
    done = _explain(tmp_path, CRITICAL)
    assert done.returncode == 0, done.stderr
    assert "HIT cooldown" in done.stdout
    assert "decision: paging" in done.stdout


async def test_reads_the_store_of_a_running_responder(tmp_path: Path) -> None:
    await _scale_ran(tmp_path, 60)
    running = SqliteStore(tmp_path / "data" / "responder.sqlite3")
    await running.open()  # holds the store's lock, as a running responder does
    try:
        done = await asyncio.to_thread(_explain, tmp_path, CRITICAL)
        assert done.returncode == 0, done.stderr
        assert "HIT cooldown" in done.stdout
    finally:
        await running.close()


@pytest.mark.parametrize("content", ["[1, 2]", "not json", '{"alerts": []}'])
def test_bad_alert_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "rb.yml").write_text(RUNBOOK)
    (tmp_path / "alert.json").write_text(content)
    done = subprocess.run([RUNBOOK_BIN, "explain", str(tmp_path / "rb.yml"),
                           str(tmp_path / "alert.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("runbook explain: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        done = _explain(tmp_path, CRITICAL, "--store",
                        f"postgresql://app:Hunter2pw@127.0.0.1:{port}/db")
    assert done.returncode == 1
    assert done.stderr.startswith("runbook explain: ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Hunter2pw" not in done.stderr


async def test_each_matching_rule_reads_its_own_rails(tmp_path: Path) -> None:
    # A `continue` rule first, then a rule that ran on this target 5 minutes ago: its
    # cooldown is its own, not the first rule's.
    text = RUNBOOK.replace("respond:\n", """respond:
  - name: note
    match: {alertname: QueueDepthHigh}
    continue: true
    mode: auto
    do: [{exec: [/bin/true]}]
""")
    await _scale_ran(tmp_path, 300)
    done = await asyncio.to_thread(_explain, tmp_path, CRITICAL, runbook=text)
    assert done.returncode == 0, done.stderr
    decisions = [line.strip() for line in done.stdout.splitlines() if "decision:" in line]
    assert len(decisions) == 2, done.stdout
    assert decisions[0].startswith("decision: queued")
    assert decisions[1].startswith("decision: paging: rail cooldown"), done.stdout
