"""Log follower: appends, partial lines, rotation, truncation, restarts without double counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exporter.collectors.logs import POLL_BYTES, LogCollector, LogFollower
from tests.servers import free_port
from tests.test_exporter_support import samples, value

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


async def test_a_poll_loop_ended_by_an_unexpected_error_fails_the_collector(
        log: Path, tmp_path: Path) -> None:
    c = LogCollector("app", str(log), PATTERNS, interval=0.01)

    def broken() -> bool:
        raise RuntimeError("not an OSError")

    c.follower.poll = broken  # type: ignore[method-assign]
    await c.start()
    try:
        await asyncio.sleep(0.1)
        with pytest.raises(RuntimeError, match="background task logs-app ended: RuntimeError"):
            await c.collect()
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


def _open_descriptors_of(path: Path) -> list[str]:
    """This process's descriptors open on the file (a deleted one reads '... (deleted)')."""
    fds = Path("/proc/self/fd")
    out = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # the descriptor listdir itself used, closed since
            continue
        if target.removesuffix(" (deleted)") == str(path):
            out.append(target)
    return out


def test_a_deleted_log_is_read_to_its_end_then_closed(log: Path, tmp_path: Path) -> None:
    f = follower(log, tmp_path)
    with log.open("a") as writer:  # the app, still writing after the file was deleted
        writer.write("ERROR one\n")
        writer.flush()
        f.poll()
        log.unlink()
        writer.write("ERROR written after the delete\n")
        writer.flush()
        assert _open_descriptors_of(log) == [f"{log} (deleted)", f"{log} (deleted)"]
        f.poll()  # reads what is left, then lets the file go
        assert f.counts["error"] == 2
        assert _open_descriptors_of(log) == [f"{log} (deleted)"]  # the writer's only
    assert _open_descriptors_of(log) == []  # nothing holds its blocks any more
    f.poll()
    log.write_text("ERROR in a new file\n")
    f.poll()
    assert f.counts["error"] == 3


def test_a_log_renamed_away_stays_open_until_its_successor_appears(
        log: Path, tmp_path: Path) -> None:
    """Rotation by rename (an app reopening on SIGHUP): the old file still has a name and may
    still be written, so it is finished when the new file appears, not closed in the gap."""
    f = follower(log, tmp_path)
    with log.open("a") as writer:
        os.rename(log, log.with_suffix(".log.1"))
        f.poll()  # the path is gone for a moment
        writer.write("ERROR written to the old file in the gap\n")
        writer.flush()
    log.write_text("ERROR in the new file\n")
    f.poll()
    f.poll()
    assert f.counts["error"] == 2


# Root reads any file whatever its mode: the exporter runs without the capabilities that
# allow it (as root still, so the interpreter under /root stays reachable).
AS_UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] \
    if os.geteuid() == 0 else []


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a loopback URL
        return str(response.read().decode())


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="root without setpriv reads every file")
def test_an_unreadable_log_at_start_is_up_0_and_followed_once_readable(tmp_path: Path) -> None:
    locked = tmp_path / "locked.log"
    locked.write_text("ERROR written before the exporter started\n")
    locked.chmod(0)
    fine = tmp_path / "fine.log"
    fine.write_text("")
    (tmp_path / "rb.yml").write_text(
        "service: api\nwatch:\n  logs:\n"
        f"    - {{name: locked, path: '{locked}', patterns: {{error: ERROR}}}}\n"
        f"    - {{name: fine, path: '{fine}', patterns: {{error: ERROR}}}}\n")
    port = free_port()
    exporter = subprocess.Popen(
        [*AS_UNPRIVILEGED, sys.executable, "-m", "exporter", "--runbook",
         str(tmp_path / "rb.yml"), "--collectors", "logs", "--listen", f"127.0.0.1:{port}"],
        cwd=Path(__file__).parents[1], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert exporter.poll() is None, exporter.communicate()[1]  # it must not exit
            with contextlib.suppress(OSError):
                found = samples(_get(base + "/metrics"))
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert value(found, "runbook_collector_up", collector="logs", target="locked") == 0
        assert value(found, "runbook_collector_up", collector="logs", target="fine") == 1
        row = next(r for r in json.loads(_get(base + "/health/detail"))["collectors"]
                   if r["target"] == "locked")
        assert "PermissionError" in row["follow_error"]
        assert "PermissionError" in row["last_error"]
        with locked.open("a") as f:
            f.write("ERROR written while it could not be read\n")
        locked.chmod(0o644)
        append(locked, "ERROR written once readable\n")
        # Retried by the poll loop, and followed from where the file ended when the exporter
        # started: both lines written since are counted, the one before is not.
        deadline = time.monotonic() + 10
        while True:
            found = samples(_get(base + "/metrics"))
            with contextlib.suppress(KeyError):
                if value(found, "runbook_log_lines_total", target="locked", pattern="error") >= 2:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert value(found, "runbook_collector_up", collector="logs", target="locked") == 1
        assert value(found, "runbook_log_lines_total", target="locked", pattern="error") == 2
    finally:
        exporter.terminate()
        exporter.wait(10)
