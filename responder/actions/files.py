"""The `files_clean` action: delete or gzip old files under one root, never outside it."""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path, PurePath

from responder.actions.base import BLOCKING, ActionContext, ActionFn, Outcome, Status, outcome
from runbook.actions import FilesCleanParams


class PathEscape(ValueError):
    """The glob or a matched path would leave the root."""


def check_glob(glob: str) -> None:
    """Refuse absolute globs and any `..` component."""
    pure = PurePath(glob)
    if pure.is_absolute() or glob.startswith("~"):
        raise PathEscape(f"glob {glob!r} must be relative to the root")
    if ".." in pure.parts:
        raise PathEscape(f"glob {glob!r} climbs out of the root with '..'")


def candidates(root: Path, glob: str, cutoff: float) -> tuple[list[Path], list[str]]:
    """Regular files under root matching glob, older than cutoff; and what was refused, why."""
    check_glob(glob)
    chosen: list[Path] = []
    refused: list[str] = []
    for path in sorted(root.glob(glob)):
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


def _gzip(path: Path) -> None:
    """Compress path to path.gz, never over an existing file; FileExistsError if one is there."""
    target = path.with_name(path.name + ".gz")
    if target.exists() or target.is_symlink():
        # Checked first to spare the work; the link below is what makes it safe against a race.
        raise FileExistsError(f"{target} already exists")
    partial = path.with_name(path.name + ".gz.part")
    with path.open("rb") as src, gzip.open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
    info = path.stat()
    os.utime(partial, (info.st_atime, info.st_mtime))
    try:
        # link() refuses an existing name where replace() would overwrite it.
        os.link(partial, target)
    finally:
        partial.unlink()
    path.unlink()


def clean(params: FilesCleanParams, dry_run: bool) -> tuple[list[Path], list[str], Path]:
    """Pick and (unless dry run) delete or gzip the old files; returns those done (or that would
    be), refusals with their reason, and the root. A file that cannot be handled is refused
    alone: the others are still done."""
    root = Path(params.root).resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"root {params.root!r} is not a directory")
    chosen, refused = candidates(root, params.glob, time.time() - params.older_than)
    if dry_run:
        return chosen, refused, root
    done: list[Path] = []
    for path in chosen:
        try:
            if params.mode == "gzip":
                _gzip(path)
            else:
                path.unlink()
        except FileExistsError:
            refused.append(f"{path}: {path.name}.gz already exists (an archive is never "
                           "overwritten; the file is left as it is)")
        except OSError as exc:
            refused.append(f"{path}: {type(exc).__name__}: {exc.strerror or exc}")
        else:
            done.append(path)
    return done, refused, root


async def files_clean(ctx: ActionContext, params: FilesCleanParams) -> Outcome:
    """Delete or gzip files matching glob under root older than older_than.

    gzip mode writes NAME.gz next to NAME (same mtime) and removes NAME. As logrotate does
    ("error creating output file ...: File exists"), it never overwrites an existing archive:
    when NAME.gz is already there, NAME is left untouched and refused with that reason, the
    other files are still handled, and the action fails so someone looks at the clash.
    """
    name = "files_clean"
    chosen, refused, root = await BLOCKING.run(clean, params, ctx.dry_run)
    verb = {"delete": "deleted", "gzip": "gzipped"}[params.mode]
    lines = [f"{'would be ' if ctx.dry_run else ''}{verb}: {p}" for p in chosen]
    lines += [f"refused: {r}" for r in refused]
    status = Status.DRY_RUN if ctx.dry_run else (Status.FAILED if refused else Status.OK)
    text = "\n".join(lines) or f"no file under {root} matching {params.glob!r} is old enough"
    return outcome(name, status, text, files=[str(p) for p in chosen], refused=refused,
                   mode=params.mode)


IMPLS: dict[str, ActionFn] = {"files_clean": files_clean}
