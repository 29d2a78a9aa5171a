"""The `files_clean` action: delete or gzip old files under one root, never outside it."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from pathlib import Path, PurePath

from responder.actions.base import ActionContext, ActionFn, Outcome, Status, outcome
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
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.part")
    with path.open("rb") as src, gzip.open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
    info = path.stat()
    os.utime(partial, (info.st_atime, info.st_mtime))
    partial.replace(target)
    path.unlink()


def clean(params: FilesCleanParams, dry_run: bool) -> tuple[list[Path], list[str], Path]:
    """Pick and (unless dry run) delete or gzip the old files; returns them, refusals, root."""
    root = Path(params.root).resolve(strict=True)
    if not root.is_dir():
        raise NotADirectoryError(f"root {params.root!r} is not a directory")
    chosen, refused = candidates(root, params.glob, time.time() - params.older_than)
    if not dry_run:
        for path in chosen:
            if params.mode == "gzip":
                _gzip(path)
            else:
                path.unlink()
    return chosen, refused, root


async def files_clean(ctx: ActionContext, params: FilesCleanParams) -> Outcome:
    """Delete or gzip files matching glob under root older than older_than."""
    name = "files_clean"
    chosen, refused, root = await asyncio.to_thread(clean, params, ctx.dry_run)
    verb = {"delete": "deleted", "gzip": "gzipped"}[params.mode]
    lines = [f"{'would be ' if ctx.dry_run else ''}{verb}: {p}" for p in chosen]
    lines += [f"refused: {r}" for r in refused]
    status = Status.DRY_RUN if ctx.dry_run else (Status.FAILED if refused else Status.OK)
    text = "\n".join(lines) or f"no file under {root} matching {params.glob!r} is old enough"
    return outcome(name, status, text, files=[str(p) for p in chosen], refused=refused,
                   mode=params.mode)


IMPLS: dict[str, ActionFn] = {"files_clean": files_clean}
