"""Count log lines matching patterns; follow rotation and truncation; never count twice."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import regex
from prometheus_client.core import Metric

from exporter.collectors.base import BackgroundTask, Collector, counter

READ_CHUNK = 1 << 20
"""Also the most of one line that is matched: an over-long line counts once, by its first
READ_CHUNK bytes, and the rest of it is skipped."""
# One poll stops reading past this much, so its thread is short and a backlog of hundreds
# of MiB is saved as it goes instead of only at its end.
POLL_BYTES = 4 << 20
# The head of the file is what tells a new file from the old one under the same inode
# (ext4 and tmpfs reuse a freed inode at once; copytruncate keeps it).
HEAD_BYTES = 128

# The most one pattern may spend on one line. Patterns are matched with the regex module,
# which releases the GIL while matching (Python's re holds it for a whole search: one hostile
# line, `error ` repeated against `error.*timeout`, froze /metrics for seconds) and gives up
# after this long: that line then counts as not matching, and as a timeout of its pattern.
MATCH_TIMEOUT = 0.1

log = logging.getLogger("exporter.logs")


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """A runbook pattern for the regex module, read with Python re's syntax and semantics
    (VERSION0 is regex's re-compatible mode; the loader checks patterns compile in both)."""
    return regex.compile(pattern, flags=regex.VERSION0)


@dataclass
class Position:
    """Where reading stopped: the file's inode, the offset after the last counted line, a
    digest of the file's first head_len bytes (None in state written before digests), and
    whether the offset is inside an over-long line whose rest is skipped."""

    inode: int
    offset: int
    head: str | None = None
    head_len: int = 0
    skipping: bool = False


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _read_head(f: BinaryIO, length: int) -> bytes:
    """The file's first bytes, leaving its read position alone."""
    return os.pread(f.fileno(), length, 0)


def _line_start(f: BinaryIO, size: int) -> tuple[int, bool]:
    """Where the line holding offset `size` begins (`size` itself when a line ends there),
    looking back at most READ_CHUNK bytes; past that the line is over-long, so reading
    starts at `size`, skipping the rest of it (the second value: True then)."""
    if size == 0:
        return 0, False
    start = max(0, size - READ_CHUNK)
    tail = os.pread(f.fileno(), size - start, start)
    newline = tail.rfind(b"\n")
    if newline >= 0:
        return start + newline + 1, False
    return (0, False) if start == 0 else (size, True)


class LogFollower:
    """Follows one file by path; counts complete lines; persists its position after each read.

    poll() may run in a worker thread: a lock keeps two polls, or a poll and close(), apart.
    """

    def __init__(self, path: str, patterns: dict[str, str], state_file: Path | None) -> None:
        self.path = Path(path)
        self.patterns = {name: compile_pattern(p) for name, p in patterns.items()}
        self.counts = dict.fromkeys(patterns, 0)
        self.timeouts = dict.fromkeys(patterns, 0)
        """Lines a pattern gave up on after MATCH_TIMEOUT (counted as not matching)."""
        self.state_file = state_file
        self._file: BinaryIO | None = None
        self._inode = -1
        self._offset = 0
        self._head: str | None = None
        self._head_len = 0
        self._skipping = False
        """Whether the offset is inside an over-long line already counted: the rest of it,
        up to its newline, is skipped."""
        self._lock = threading.Lock()
        self._closed = False
        self._started = False
        """Whether open_at_start got through; until then each poll tries it again."""
        self._unreadable_at: Position | None = None
        """The file's inode and size when it first could not be opened: once it can, lines
        appended since are counted (without it, they would be skipped as old)."""
        self.last_error: str | None = None

    def open_at_start(self) -> None:
        """Resume at the saved position when it is the same file; else start at its end.
        Raises OSError where the file cannot be read (e.g. permission denied): poll() then
        tries again, so the file is followed from where it would have been once it can be."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        saved = self._load() or self._unreadable_at
        try:
            f = self._open()
        except FileNotFoundError:
            self._started = True  # a file created later is all new: poll reads it from its start
            return
        except OSError:
            if self._unreadable_at is None:
                # stat needs no read permission on the file itself.
                with contextlib.suppress(OSError):
                    st = self.path.stat()
                    self._unreadable_at = Position(st.st_ino, st.st_size)
            raise
        size = os.fstat(f.fileno()).st_size
        if saved is None:
            # From the start of the line being written, if any: read whole once it ends, not
            # its rest taken for a line (a `^ERROR` matching what followed "... said ").
            self._offset, self._skipping = _line_start(f, size)
        elif self._is_saved_file(f, saved) and saved.offset <= size:
            self._offset, self._skipping = saved.offset, saved.skipping
            if saved is self._unreadable_at:  # a size, not where a line ended
                self._offset, self._skipping = _line_start(f, saved.offset)
        # else a different file (rotated while we were down) or a truncated one: all of it is new.
        self._remember_head()
        self._save()
        self._started = True

    def _is_saved_file(self, f: BinaryIO, saved: Position) -> bool:
        if saved.inode != self._inode:
            return False
        return saved.head is None or _digest(_read_head(f, saved.head_len)) == saved.head

    def _open(self) -> BinaryIO:
        """Open the file now at the path, to be read from its start."""
        self._close()
        f = self.path.open("rb")
        self._file = f
        self._inode = os.fstat(f.fileno()).st_ino
        self._offset = 0
        self._head = None
        self._head_len = 0
        self._skipping = False
        return f

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _remember_head(self) -> None:
        """Digest the file's head, growing it up to HEAD_BYTES while the file is shorter."""
        if self._file is None or self._head_len >= HEAD_BYTES:
            return
        head = _read_head(self._file, HEAD_BYTES)
        if self._head is None or len(head) > self._head_len:
            self._head, self._head_len = _digest(head), len(head)

    def _head_changed(self) -> bool:
        """Whether the file now at the path starts otherwise than the one we read."""
        if self._head is None:
            return False
        # Read through the path, not our descriptor: the question is what the path now holds.
        with self.path.open("rb") as f:
            return _digest(_read_head(f, self._head_len)) != self._head

    def poll(self) -> bool:
        """Read what was appended; on rotation finish the old file, then start the new one.
        True when POLL_BYTES were read and more may be waiting."""
        with self._lock:
            if self._closed:
                return False
            if not self._started:
                self._start()  # raises OSError again while the file stays unreadable
            return self._poll()

    def _poll(self) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._file is None:
                return False
            more = self._drain()
            # Deleted (no name left anywhere): what is left was read, so close it, else this
            # descriptor alone would keep the file's blocks allocated for ever. A file renamed
            # away by rotation still has a name and may still be written until the new one
            # appears (an app reopening on SIGHUP): it stays open and is finished then.
            if not more and os.fstat(self._file.fileno()).st_nlink == 0:
                self._close()
            return more
        if self._file is None:
            self._open()
        elif st.st_ino != self._inode:
            if self._drain():  # lines written to the old file after our last read
                return True
            self._open()
        elif st.st_size < self._offset or self._head_changed():
            self._open()  # truncated in place (copytruncate), or a new file on a reused inode
        return self._drain()

    def _drain(self) -> bool:
        f = self._file
        if f is None:
            return False
        f.seek(self._offset)
        more = self._read_lines(f)
        self._remember_head()
        self._save()
        return more

    def _read_lines(self, f: BinaryIO) -> bool:
        """Count complete lines from the offset on; True when stopped at POLL_BYTES."""
        read = 0
        while read < POLL_BYTES:
            data = f.read(READ_CHUNK)
            if not data:
                return False
            used = self._take(data)
            if not used:
                return False  # a partial last line: count it once it is complete
            self._offset += used
            read += used
            f.seek(self._offset)
        return True

    def _take(self, data: bytes) -> int:
        """Count the complete lines at the start of data; how many bytes it used (0: only a
        partial line, to be read again once complete)."""
        start = 0
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return len(data)  # all of it the rest of the over-long line
            self._skipping = False
            start = newline + 1
        end = data.rfind(b"\n")
        if end >= start:
            self._count(data[start:end + 1])
            return end + 1
        if start or len(data) < READ_CHUNK:
            return start  # what follows the skipped rest is a partial line
        # An over-long line: counted once, by this first piece; the rest of it is skipped.
        self._count(data)
        self._skipping = True
        return len(data)

    def _count(self, block: bytes) -> None:
        lines = block.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the block ends with a newline: nothing follows it
        found = dict.fromkeys(self.patterns, 0)
        gave_up = dict.fromkeys(self.patterns, 0)
        for raw in lines:
            # Only b"\n" ends a line; str.splitlines() would also split on \r, \f, \x85, \u2028.
            line = raw.removesuffix(b"\r").decode("utf-8", "replace")
            for name, pattern in self.patterns.items():
                try:
                    if pattern.search(line, concurrent=True, timeout=MATCH_TIMEOUT):
                        found[name] += 1
                except TimeoutError:
                    gave_up[name] += 1
        # Added at once, as collect() reads the counts on the event loop while we poll.
        for name, n in found.items():
            self.counts[name] += n
        for name, n in gave_up.items():
            self.timeouts[name] += n

    def _load(self) -> Position | None:
        if self.state_file is None:
            return None
        try:
            raw = json.loads(self.state_file.read_text())
            head = raw.get("head")
            return Position(int(raw["inode"]), int(raw["offset"]),
                            None if head is None else str(head), int(raw.get("head_len", 0)),
                            bool(raw.get("skipping", False)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _save(self) -> None:
        if self.state_file is None or self._inode < 0:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"path": str(self.path), "inode": self._inode,
                                   "offset": self._offset, "head": self._head,
                                   "head_len": self._head_len,
                                   "skipping": self._skipping}))
        tmp.replace(self.state_file)

    def close(self) -> None:
        """Close the file, after a poll still running in a thread; later polls do nothing."""
        with self._lock:
            self._closed = True
            self._close()


class LogCollector(Collector):
    """One watched log file: matching lines counted by pattern name."""

    kind = "logs"

    def __init__(self, target: str, path: str, patterns: dict[str, str], *,
                 state_dir: str | None = None, interval: float = 1.0) -> None:
        super().__init__(target, 1.0)
        state = None
        if state_dir is not None:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            state = Path(state_dir) / f"logs-{target}.json"
        self.follower = LogFollower(path, patterns, state)
        self.interval = interval
        self._background = BackgroundTask()

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.follower.open_at_start)
        except OSError as exc:
            # One unreadable log (permission denied) must not stop the exporter: this log is
            # up 0 with the reason in /health/detail, and the poll loop tries it again.
            self.follower.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("log %s: cannot read %s yet, trying again every poll: %s", self.target,
                        self.follower.path, self.follower.last_error)
        self._background.start(self._loop(), f"logs-{self.target}")

    async def close(self) -> None:
        await self._background.stop()
        # In a thread: it waits for a poll that the cancelled loop left running.
        await asyncio.to_thread(self.follower.close)

    async def _loop(self) -> None:
        while True:
            more = False
            try:
                # Reading and matching megabytes would hold the event loop and every scrape.
                more = await asyncio.to_thread(self.follower.poll)
                self.follower.last_error = None
            except OSError as exc:
                self.follower.last_error = f"{type(exc).__name__}: {exc}"
            if not more:  # a backlog is read poll after poll, not one poll per interval
                await asyncio.sleep(self.interval)

    def detail(self) -> dict[str, object]:
        return {"path": str(self.follower.path), "follow_error": self.follower.last_error}

    async def collect(self) -> list[Metric]:
        self._background.check()  # a poll loop ended by an unexpected error: up 0, not frozen
        if self.follower.last_error is not None:
            raise OSError(self.follower.last_error)
        family = counter("runbook_log_lines", "Log lines matching the pattern",
                         ("target", "pattern"))
        for name, count in self.follower.counts.items():
            family.add_metric([self.target, name], float(count))
        timeouts = counter("runbook_log_match_timeouts",
                           f"Log lines a pattern gave up on after {MATCH_TIMEOUT:g}s (counted "
                           "as not matching)", ("target", "pattern"))
        for name, count in self.follower.timeouts.items():
            timeouts.add_metric([self.target, name], float(count))
        return [family, timeouts]
