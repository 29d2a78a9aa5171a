"""Count log lines matching patterns; follow rotation and truncation; never count twice."""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prometheus_client.core import Metric

from exporter.collectors.base import BackgroundTask, Collector, counter

READ_CHUNK = 1 << 20


@dataclass
class Position:
    """Where reading stopped: the file's inode and the offset after the last counted line."""

    inode: int
    offset: int


class LogFollower:
    """Follows one file by path; counts complete lines; persists its position after each read."""

    def __init__(self, path: str, patterns: dict[str, str], state_file: Path | None) -> None:
        self.path = Path(path)
        self.patterns = {name: re.compile(p) for name, p in patterns.items()}
        self.counts = dict.fromkeys(patterns, 0)
        self.state_file = state_file
        self._file: BinaryIO | None = None
        self._inode = -1
        self._offset = 0
        self.last_error: str | None = None

    def open_at_start(self) -> None:
        """Resume at the saved position when it is the same file; else start at its end."""
        saved = self._load()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if saved is not None and saved.inode == st.st_ino and saved.offset <= st.st_size:
            self._open(saved.offset)
        elif saved is not None:
            # A different file (rotated while we were down) or a truncated one: all of it is new.
            self._open(0)
        else:
            self._open(st.st_size)
        self._save()

    def _open(self, offset: int) -> None:
        self._close()
        f = self.path.open("rb")
        self._file = f
        self._inode = os.fstat(f.fileno()).st_ino
        self._offset = offset
        f.seek(offset)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def poll(self) -> None:
        """Read what was appended; on rotation finish the old file, then start the new one."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._file is not None:
                self._drain()
            return
        if self._file is None:
            self._open(0)
        elif st.st_ino != self._inode:
            self._drain()  # lines written to the old file after our last read
            self._open(0)
        elif st.st_size < self._offset:
            self._open(0)  # truncated in place (copytruncate)
        self._drain()

    def _drain(self) -> None:
        f = self._file
        if f is None:
            return
        f.seek(self._offset)
        while True:
            data = f.read(READ_CHUNK)
            if not data:
                break
            end = data.rfind(b"\n")
            if end < 0:
                if len(data) < READ_CHUNK:
                    break  # a partial last line: count it once it is complete
                end = len(data) - 1  # an absurdly long line: count it in pieces
            self._count(data[:end + 1])
            self._offset += end + 1
            f.seek(self._offset)
        self._save()

    def _count(self, block: bytes) -> None:
        for line in block.decode("utf-8", "replace").splitlines():
            for name, pattern in self.patterns.items():
                if pattern.search(line):
                    self.counts[name] += 1

    def _load(self) -> Position | None:
        if self.state_file is None:
            return None
        try:
            raw = json.loads(self.state_file.read_text())
            return Position(int(raw["inode"]), int(raw["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save(self) -> None:
        if self.state_file is None or self._inode < 0:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"path": str(self.path), "inode": self._inode,
                                   "offset": self._offset}))
        tmp.replace(self.state_file)

    def close(self) -> None:
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
        self.follower.open_at_start()
        self._background.start(self._loop(), f"logs-{self.target}")

    async def close(self) -> None:
        await self._background.stop()
        self.follower.close()

    async def _loop(self) -> None:
        while True:
            try:
                self.follower.poll()
                self.follower.last_error = None
            except OSError as exc:
                self.follower.last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.interval)

    def detail(self) -> dict[str, object]:
        return {"path": str(self.follower.path), "follow_error": self.follower.last_error}

    async def collect(self) -> list[Metric]:
        if self.follower.last_error is not None:
            raise OSError(self.follower.last_error)
        family = counter("runbook_log_lines", "Log lines matching the pattern",
                         ("target", "pattern"))
        for name, count in self.follower.counts.items():
            family.add_metric([self.target, name], float(count))
        return [family]
