"""Log follower: appends, partial lines, rotation, truncation, restarts without double counts."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from exporter.collectors.logs import POLL_BYTES, LogCollector, LogFollower

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


def test_lines_end_at_newline_only(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    with log.open("ab") as handle:
        handle.write("ERROR a\x0cERROR b\u2028ERROR c\rERROR d\x0bERROR e\x85\n".encode())
    f.poll()
    assert f.counts["error"] == 1


def test_crlf_lines_are_matched_without_their_cr(log: Path, tmp_path: Path) -> None:
    f = LogFollower(str(log), {"end": r"done$"}, tmp_path / "state.json")
    f.open_at_start()
    with log.open("ab") as handle:
        handle.write(b"job done\r\nnot done yet\r\ndone\r\n")
    f.poll()
    assert f.counts["end"] == 2


def nine_errors() -> str:
    return "".join(f"ERROR line {i} of the new file\n" for i in range(9))


@pytest.mark.parametrize("replace", ["rewrite_in_place", "delete_and_recreate"])
def test_new_file_under_a_reused_inode_is_read_from_its_start(
        log: Path, tmp_path: Path, replace: str) -> None:
    f = follower(log, tmp_path)
    append(log, "INFO a\nINFO b\n")
    f.poll()
    f.close()
    if replace == "delete_and_recreate":
        log.unlink()  # ext4 and tmpfs mostly give the new file the inode just freed
    log.write_text(nine_errors())
    g = follower(log, tmp_path)
    g.poll()
    assert g.counts["error"] == 9


def test_copytruncate_refilled_past_the_old_offset(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    append(log, "ERROR a\nERROR b\n")
    f.poll()
    with log.open("w") as handle:  # copytruncate, then more written before our next poll
        handle.write("".join(f"ERROR after truncation {i}\n" for i in range(15)))
    f.poll()
    assert f.counts["error"] == 2 + 15
    f.poll()
    assert f.counts["error"] == 2 + 15


def test_state_without_fingerprint_resumes_as_before(log: Path, tmp_path: Path) -> None:
    offset = log.stat().st_size
    (tmp_path / "state.json").write_text(json.dumps(
        {"path": str(log), "inode": log.stat().st_ino, "offset": offset}))
    append(log, "ERROR while we were down\n")
    f = follower(log, tmp_path)
    f.poll()
    assert f.counts["error"] == 1
    f.close()
    append(log, "ERROR after the upgrade\n")
    g = follower(log, tmp_path)
    g.poll()
    assert g.counts["error"] == 1


def test_a_large_backlog_is_read_over_several_polls(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    line = "ERROR " + "x" * 94 + "\n"
    lines = 3 * POLL_BYTES // len(line)
    append(log, line * lines)
    polls = 1
    while f.poll():
        assert f.counts["error"] < lines
        polls += 1
    assert polls > 1
    assert f.counts["error"] == lines


async def test_collector_reads_a_backlog_without_waiting_an_interval_per_poll(
        log: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    f = LogFollower(str(log), PATTERNS, state / "logs-app.json")
    f.open_at_start()
    f.close()
    line = "ERROR timed out " + "y" * 83 + "\n"
    lines = 3 * POLL_BYTES // len(line)
    append(log, line * lines)  # written while the exporter was down
    c = LogCollector("app", str(log), PATTERNS, state_dir=str(state), interval=30)
    await c.start()
    try:
        for _ in range(100):
            if c.follower.counts["error"] == lines:
                break
            await asyncio.sleep(0.05)
        assert c.follower.counts == {"error": lines, "timeout": lines}
    finally:
        await c.close()
