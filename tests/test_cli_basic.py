"""`runbook validate` and `runbook show`, run as the installed console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))
RUNBOOK = Path(sys.executable).parent / "runbook"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert RUNBOOK.is_file(), f"{RUNBOOK} is missing: install the project into the venv"
    return subprocess.run([str(RUNBOOK), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)


def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yml"
    path.write_text("service: api\nalerts:\n  memory_usage:\n    warning: 70%\n    for: 5 min\n",
                    encoding="utf-8")
    return path


def test_validate_examples_exits_0() -> None:
    assert len(EXAMPLES) == 5
    result = run("validate", *EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    for path, line in zip(EXAMPLES, lines, strict=True):
        assert line.startswith(f"{path}: ok ({path.stem}: ")


def test_validate_reports_errors_on_stderr_and_exits_1(tmp_path: Path) -> None:
    bad = broken(tmp_path)
    good = ROOT / "examples" / "cinder-js.yml"
    result = run("validate", good, bad)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:5: alerts.memory_usage.for: '5 min' is not a duration (use 30s, 5m, 1h30m)"]
    assert result.stdout.startswith(f"{good}: ok (cinder-js: 6 alerts")


def test_validate_missing_file(tmp_path: Path) -> None:
    result = run("validate", tmp_path / "nope.yml")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{tmp_path / 'nope.yml'}:1: cannot read the file")


def test_validate_needs_a_file() -> None:
    result = run("validate")
    assert result.returncode == 2
    assert "FILE" in result.stderr


def test_show_prints_the_normalized_table() -> None:
    result = run("show", ROOT / "examples" / "cinder-js.yml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "service: cinder-js"
    assert lines[1].split() == ["ALERT", "SIGNAL", "TIER", "WHEN", "FOR", "RESPONSE"]
    rows = [re.split(r"\s{2,}", line) for line in lines[2:]]
    assert ["MemoryUsageHigh", "memory_usage", "warning", "> 70%", "5m", "page: -"] in rows
    assert ["MemoryUsageHigh", "memory_usage", "critical", "> 85%", "5m", "approve: exec"] in rows
    assert ["QueueDepthHigh", "queue_depth", "warning", "> 50", "5m", "auto: exec"] in rows
    assert ["QueueDepthHigh", "queue_depth", "critical", "> 100", "10m", "auto: exec"] in rows
    assert ["LatencyP95High", "latency_p95", "critical", "> 8s", "5m", "page: -"] in rows
    assert len(rows) == 11


def test_show_below_signals_and_three_tiers() -> None:
    result = run("show", ROOT / "examples" / "scraper.yml")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in ("ScraperSuccessRateLow  scraper_success_rate  high      < 80%",
                   "ErrorRateHigh          error_rate            medium    > 5%",
                   "ErrorRateHigh          error_rate            critical  > 20%",
                   "QueueDepthHigh         queue_depth           high      > 1000  5m   "
                   "auto: celery_pool_grow"):
        assert needle in text


def test_show_broken_file_exits_1(tmp_path: Path) -> None:
    result = run("show", broken(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "alerts.memory_usage.for: '5 min' is not a duration" in result.stderr


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "validate" in result.stdout
    assert "show" in result.stdout
