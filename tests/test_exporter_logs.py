"""Log follower: appends, partial lines, rotation, truncation, restarts without double counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.collectors.logs import LogCollector, LogFollower

PATTERNS = {"error": r"\bERROR\b", "timeout": "ECONNREFUSED|timed out"}


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "app.log"
    path.write_text("ERROR before we started\n")
    return path


def follower(log: Path, tmp_path: Path) -> LogFollower:
    f = LogFollower(str(log), PATTERNS, tmp_path / "state.json")
    f.open_at_start()
    return f


def test_counts_new_complete_lines_only(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    append(log, "INFO ok\nERROR one\nERROR ECONNREFUSED\nERROR half")
    f.poll()
    assert f.counts == {"error": 2, "timeout": 1}
    append(log, " done\n")
    f.poll()
    assert f.counts == {"error": 3, "timeout": 1}


def test_rotation_finishes_the_old_file_then_reads_the_new(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    append(log, "ERROR a\n")
    f.poll()
    append(log, "ERROR written after our last read\n")
    os.rename(log, log.with_suffix(".log.1"))
    f.poll()  # the path is gone for a moment
    log.write_text("ERROR in the new file\n")
    f.poll()
    assert f.counts["error"] == 3
    f.poll()
    assert f.counts["error"] == 3


def test_truncation_starts_over(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    append(log, "ERROR a\nERROR b\n")
    f.poll()
    with log.open("w") as handle:  # copytruncate
        handle.write("ERROR after truncation\n")
    f.poll()
    assert f.counts["error"] == 3


def test_restart_never_counts_a_line_twice(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    append(log, "ERROR a\n")
    f.poll()
    f.close()
    append(log, "ERROR while we were down\n")
    g = follower(log, tmp_path)
    g.poll()
    assert g.counts["error"] == 1  # only the line written while down
    g.close()
    h = follower(log, tmp_path)
    h.poll()
    assert h.counts["error"] == 0


def test_rotated_while_down_reads_the_new_file_from_its_start(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    f.close()
    os.rename(log, log.with_suffix(".log.1"))
    log.write_text("ERROR new file\n")
    g = follower(log, tmp_path)
    g.poll()
    assert g.counts["error"] == 1


def test_missing_file_then_created(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    f = LogFollower(str(path), PATTERNS, None)
    f.open_at_start()
    f.poll()
    path.write_text("ERROR first\n")
    f.poll()
    assert f.counts["error"] == 1


async def test_collector_reports_counters(log: Path, tmp_path: Path) -> None:
    c = LogCollector("app", str(log), PATTERNS, state_dir=str(tmp_path / "state"), interval=0.05)
    await c.start()
    try:
        append(log, "ERROR x timed out\n")
        c.follower.poll()
        family = (await c.collect())[0]
        assert family.type == "counter"
        got = {s.labels["pattern"]: s.value for s in family.samples}
        assert got == {"error": 1.0, "timeout": 1.0}
        assert (tmp_path / "state" / "logs-app.json").exists()
    finally:
        await c.close()
