"""The `files_clean` action: delete or gzip old files under one root, never outside it.

Whoever can write under the root (the application whose logs these are) can race the action:
swap a checked file or directory for a symbolic link, or plant one at the name of the archive
being written. The responder often runs as root, so a path checked and then used is not enough.
Every file is reached from a descriptor of the root, one directory at a time without following
links, and is checked (fstat) on the descriptor that is then read; new files are created with
O_EXCL, which fails on any existing name, a link included, instead of following it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from responder.actions.base import BLOCKING, ActionContext, ActionFn, Outcome, Status, outcome
from runbook.actions import FilesCleanParams

CHUNK = 256 * 1024
"""Bytes compressed between two looks at the deadline."""
WRAP_UP_SHARE = 0.2
WRAP_UP_MAX = 2.0
"""Of the action's timeout, the part (at most WRAP_UP_MAX seconds) left to finish the chunk at
hand and report: run_action stops waiting at the timeout itself, and an outcome it cuts short
says only "timeout", not which files were done."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO swapped in for the file must not wait for a writer (fstat refuses it).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class PathEscape(ValueError):
    """The glob or a matched path would leave the root."""


class Refused(Exception):
    """One file is left as it is, for the reason given."""


class Stopped(Exception):
    """The deadline passed, or the action was cancelled, before the work was through."""


@dataclass
class Stop:
    """When the work in the thread must stop: at its deadline (time.monotonic()), or as soon as
    the awaiting coroutine is cancelled (asyncio cannot stop a thread; the thread looks here)."""

    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)

    def reached(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() >= self.deadline

    def check(self) -> None:
        if self.reached():
            raise Stopped


def work_time(timeout: float) -> float:
    """Seconds of the timeout the work itself may use (the rest is for wrapping up)."""
    return timeout - min(WRAP_UP_MAX, timeout * WRAP_UP_SHARE)


@dataclass
class Cleaned:
    """What clean() did: files done (or that would be), refusals with their reason, and, when it
    stopped early, the chosen files it did not reach."""

    root: Path
    done: list[Path] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    not_done: list[Path] = field(default_factory=list)
    stopped: bool = False
    listed: bool = True
    """False when it stopped before it had found every file."""


def check_glob(glob: str) -> None:
    """Refuse absolute globs and any `..` component."""
    pure = PurePath(glob)
    if pure.is_absolute() or glob.startswith("~"):
        raise PathEscape(f"glob {glob!r} must be relative to the root")
    if ".." in pure.parts:
        raise PathEscape(f"glob {glob!r} climbs out of the root with '..'")


def candidates(
    root: Path, glob: str, cutoff: float, stop: Stop | None = None
) -> tuple[list[Path], list[str]]:
    """Regular files under root matching glob, older than cutoff; and what was refused, why.

    A first pick by path: each file is checked again on its descriptor when it is handled.
    Raises Stopped when `stop` is reached while listing (a glob over a huge tree takes time).
    """
    check_glob(glob)
    found: list[Path] = []
    for path in root.glob(glob):
        if stop is not None:
            stop.check()
        found.append(path)
    chosen: list[Path] = []
    refused: list[str] = []
    for path in sorted(found):
        if path.is_symlink():
            refused.append(f"{path}: a symbolic link (never followed)")
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            refused.append(f"{path}: resolves to {real}, outside {root}")
            continue
        info = real.lstat()
        if not real.is_file() or info.st_mtime >= cutoff or real.suffix == ".gz":
            continue
        chosen.append(real)
    return chosen, refused


@contextlib.contextmanager
def _opened(path: str, flags: int, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _parent(root_fd: int, relative: PurePath) -> Iterator[int]:
    """A descriptor of the directory holding `relative`, reached from the root one level at a
    time without following a link: a directory swapped for a link after the pick fails here
    (ELOOP or ENOTDIR) instead of leading out of the root."""
    fd = os.dup(root_fd)
    try:
        for part in relative.parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_old_file(info: os.stat_result, cutoff: float) -> None:
    """The file at hand (not the one picked by path) is still an old regular file."""
    if not stat.S_ISREG(info.st_mode):
        raise Refused("no longer a regular file (replaced since it was picked); left as it is")
    if info.st_mtime >= cutoff:
        raise Refused("modified since it was picked; left as it is")


def _delete(parent: int, name: str, cutoff: float) -> None:
    """Unlink NAME if it is an old regular file. unlink never follows a link: whatever
    replaces NAME between the check and the unlink, only that entry in the root goes."""
    _check_old_file(os.stat(name, dir_fd=parent, follow_symlinks=False), cutoff)
    os.unlink(name, dir_fd=parent)


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _create_partial(parent: int, name: str) -> tuple[str, int]:
    """A new private file for NAME's archive, under a name nobody could prepare: O_EXCL fails
    on anything already there, a planted link included, instead of writing through it."""
    for _ in range(8):
        partial = f"{name}.gz.{secrets.token_hex(4)}.part"
        try:
            return partial, os.open(partial, _CREATE_FLAGS, 0o600, dir_fd=parent)
        except FileExistsError:
            continue
    raise Refused("could not create a temporary archive next to it (every name tried exists)")


def _compress(src: int, out: int, info: os.stat_result, stop: Stop) -> None:
    """gzip src into out a chunk at a time, stopping (Stopped) between chunks at the deadline."""
    with (open(out, "wb", closefd=False) as raw,
          gzip.GzipFile(fileobj=raw, mode="wb", mtime=int(info.st_mtime)) as packed):
        while chunk := os.read(src, CHUNK):
            stop.check()
            packed.write(chunk)
    now = os.fstat(src)
    if (now.st_size, now.st_mtime_ns) != (info.st_size, info.st_mtime_ns):
        raise Refused("written to while it was gzipped; left as it is")


def _finish_archive(out: int, info: os.stat_result) -> None:
    """Give the archive the source's times, owner and permissions, all through its descriptor
    (never a path that could have been swapped), and make it durable before the source goes."""
    os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))
    with contextlib.suppress(PermissionError):
        # Only root may give it away; otherwise it stays the responder's (the mode still applies).
        os.fchown(out, info.st_uid, info.st_gid)
    # No wider than the source: a private log must not become a world-readable archive.
    os.fchmod(out, stat.S_IMODE(info.st_mode) & 0o777)
    os.fsync(out)


def _link_archive(parent: int, partial: str, archive: str, out: int) -> None:
    """Give the written file its final name. linkat without AT_SYMLINK_FOLLOW neither follows
    `partial` nor replaces `archive` (FileExistsError, whatever is there, a link included)."""
    os.link(partial, archive, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
    # Someone writing the directory could have renamed a file of theirs over `partial` first.
    if not _same(os.stat(archive, dir_fd=parent, follow_symlinks=False), os.fstat(out)):
        raise Refused(f"{archive} is not the archive written (the directory changed meanwhile); "
                      "left as it is")


def _remove_source(parent: int, name: str, info: os.stat_result) -> None:
    """Unlink NAME now that its archive is in place, if NAME is still the file compressed."""
    if not _same(os.stat(name, dir_fd=parent, follow_symlinks=False), info):
        raise Refused(f"replaced while it was gzipped: {name}.gz holds the old file, the new "
                      "one is left as it is")
    os.unlink(name, dir_fd=parent)


def _gzip(parent: int, name: str, cutoff: float, stop: Stop) -> None:
    """Compress NAME to NAME.gz (same times and mode) and remove NAME; never over an existing
    file (FileExistsError). On Stopped or any error NAME is left as it was, with no archive."""
    archive = f"{name}.gz"
    if _exists(parent, archive):
        # Checked first to spare the work; the link below is what makes it safe against a race.
        raise FileExistsError(archive)
    with _opened(name, _READ_FLAGS, parent) as src:
        info = os.fstat(src)
        _check_old_file(info, cutoff)
        partial, out = _create_partial(parent, name)
        try:
            _compress(src, out, info, stop)
            _finish_archive(out, info)
            _link_archive(parent, partial, archive, out)
        finally:
            os.close(out)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial, dir_fd=parent)
        _remove_source(parent, name, info)


def _handle(root_fd: int, relative: PurePath, params: FilesCleanParams, cutoff: float,
            stop: Stop) -> None:
    with _parent(root_fd, relative) as parent:
        if params.mode == "gzip":
            _gzip(parent, relative.name, cutoff, stop)
        else:
            _delete(parent, relative.name, cutoff)


def clean(params: FilesCleanParams, dry_run: bool, stop: Stop | None = None) -> Cleaned:
    """Pick and (unless dry run) delete or gzip the old files. A file that cannot be handled is
    refused alone: the others are still done. At `stop` (by default the params' timeout) it
    ends between files or chunks, listing the chosen files it did not reach."""
    stop = stop or Stop(time.monotonic() + work_time(params.timeout))
    root = Path(params.root).resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"root {params.root!r} is not a directory")
    cutoff = time.time() - params.older_than
    try:
        chosen, refused = candidates(root, params.glob, cutoff, stop)
    except Stopped:
        return Cleaned(root, stopped=True, listed=False)
    if dry_run:
        return Cleaned(root, chosen, refused)
    return handle_chosen(Cleaned(root, refused=refused), chosen, params, cutoff, stop)


def handle_chosen(result: Cleaned, chosen: list[Path], params: FilesCleanParams, cutoff: float,
                  stop: Stop) -> Cleaned:
    """Delete or gzip each chosen file (paths under result.root), in order, into `result`;
    at `stop` the rest go to result.not_done."""
    with _opened(str(result.root), _DIR_FLAGS) as root_fd:
        for index, path in enumerate(chosen):
            try:
                # Between files too: deleting has no chunks to look between.
                stop.check()
                _handle(root_fd, path.relative_to(result.root), params, cutoff, stop)
            except Stopped:
                result.stopped, result.not_done = True, chosen[index:]
                break
            except FileExistsError:
                result.refused.append(f"{path}: {path.name}.gz already exists (an archive is "
                                      "never overwritten; the file is left as it is)")
            except Refused as exc:
                result.refused.append(f"{path}: {exc}")
            except OSError as exc:
                result.refused.append(f"{path}: {type(exc).__name__}: {exc.strerror or exc}")
            else:
                result.done.append(path)
    return result


def _stop_lines(result: Cleaned, params: FilesCleanParams, stop: Stop) -> list[str]:
    why = ("the action was cancelled" if stop.cancelled.is_set()
           else f"its {params.timeout:g}s timeout was reached")
    if not result.listed:
        return [f"stopped: {why} while looking for files; nothing was done"]
    return [f"stopped: {why}; not reached: {p}" for p in result.not_done]


async def files_clean(ctx: ActionContext, params: FilesCleanParams) -> Outcome:
    """Delete or gzip files matching glob under root older than older_than.

    gzip mode writes NAME.gz next to NAME (same mtime) and removes NAME. As logrotate does
    ("error creating output file ...: File exists"), it never overwrites an existing archive:
    when NAME.gz is already there, NAME is left untouched and refused with that reason, the
    other files are still handled, and the action fails so someone looks at the clash.

    It stops at its timeout between files (or chunks of a big file, whose partial archive is
    removed) with status timeout, listing what was done and what was not reached.
    """
    name = "files_clean"
    # Taken before queueing for a thread: time spent waiting for one counts too.
    stop = Stop(time.monotonic() + work_time(params.timeout))
    try:
        result = await BLOCKING.run(clean, params, ctx.dry_run, stop)
    except asyncio.CancelledError:
        # run_action's timeout, or a shutdown: the thread stops at its next look.
        stop.cancelled.set()
        raise
    verb = {"delete": "deleted", "gzip": "gzipped"}[params.mode]
    lines = [f"{'would be ' if ctx.dry_run else ''}{verb}: {p}" for p in result.done]
    lines += [f"refused: {r}" for r in result.refused]
    if result.stopped:
        lines += _stop_lines(result, params, stop)
    status = (Status.DRY_RUN if ctx.dry_run else Status.TIMEOUT if result.stopped
              else Status.FAILED if result.refused else Status.OK)
    text = "\n".join(lines) or (f"no file under {result.root} matching {params.glob!r} is old "
                                "enough")
    return outcome(name, status, text, files=[str(p) for p in result.done],
                   refused=result.refused, not_done=[str(p) for p in result.not_done],
                   stopped=result.stopped, mode=params.mode)


IMPLS: dict[str, ActionFn] = {"files_clean": files_clean}
