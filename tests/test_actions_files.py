"""files_clean in a temp tree: age, glob, gzip, and every way out of the root refused."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from responder.actions import run_action
from responder.actions.base import Status
from runbook.actions import FilesCleanParams
from tests.actions_support import context

DAY = 86400.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _file(path: Path, age_days: float, text: str = "line\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age_days * DAY
    os.utime(path, (then, then))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    _file(root / "old.log", 10)
    _file(root / "new.log", 1)
    _file(root / "old.txt", 10)
    _file(root / "sub" / "older.log", 30)
    _file(tmp_path / "outside.log", 100)
    return root


async def test_deletes_only_old_matching_files(
    session: aiohttp.ClientSession, tree: Path
) -> None:
    params = FilesCleanParams(root=str(tree), glob="**/*.log", older_than="7d")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.OK, result.output
    assert sorted(result.detail["files"]) == [str(tree / "old.log"), str(tree / "sub/older.log")]
    assert not (tree / "old.log").exists()
    assert not (tree / "sub" / "older.log").exists()
    assert (tree / "new.log").exists()
    assert (tree / "old.txt").exists()
    assert (tree.parent / "outside.log").exists()


async def test_gzip_keeps_content_and_mtime(session: aiohttp.ClientSession, tree: Path) -> None:
    before = (tree / "old.log").stat().st_mtime
    params = FilesCleanParams(root=str(tree), glob="*.log", older_than="7d", mode="gzip")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.OK, result.output
    packed = tree / "old.log.gz"
    assert not (tree / "old.log").exists()
    assert gzip.decompress(packed.read_bytes()) == b"line\n"
    assert abs(packed.stat().st_mtime - before) < 1
    assert (tree / "new.log").exists()
    # A second run does not gzip the .gz again.
    again = await run_action("files_clean", params, context(session))
    assert again.detail["files"] == []


async def test_gzip_never_overwrites_an_archive(
    session: aiohttp.ClientSession, tree: Path
) -> None:
    # As logrotate: an existing NAME.gz is an archive someone keeps; that one file is refused
    # and left as it is, the others are still gzipped, and the action fails to say so.
    archive = tree / "old.log.gz"
    archive.write_bytes(gzip.compress(b"a week of older logs\n"))
    params = FilesCleanParams(root=str(tree), glob="**/*.log", older_than="7d", mode="gzip")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.FAILED
    assert result.detail["refused"] == [
        f"{tree / 'old.log'}: old.log.gz already exists (an archive is never overwritten; "
        "the file is left as it is)"]
    assert gzip.decompress(archive.read_bytes()) == b"a week of older logs\n"
    assert (tree / "old.log").read_text() == "line\n"
    assert result.detail["files"] == [str(tree / "sub" / "older.log")]
    assert f"gzipped: {tree / 'sub' / 'older.log'}" in result.output
    assert f"gzipped: {tree / 'old.log'}" not in result.output
    assert gzip.decompress((tree / "sub" / "older.log.gz").read_bytes()) == b"line\n"
    assert not (tree / "sub" / "older.log").exists()
    assert not (tree / "old.log.gz.part").exists()
    assert not (tree / "sub" / "older.log.gz.part").exists()


@pytest.mark.parametrize("glob", ["../*.log", "sub/../../*.log", "/etc/*.conf", "~/*.log"])
async def test_traversal_glob_is_refused(
    session: aiohttp.ClientSession, tree: Path, glob: str
) -> None:
    params = FilesCleanParams(root=str(tree), glob=glob, older_than="1d")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.FAILED
    assert "PathEscape" in result.output
    assert (tree.parent / "outside.log").exists()


async def test_symlink_escape_is_refused(
    session: aiohttp.ClientSession, tree: Path, tmp_path: Path
) -> None:
    secret = _file(tmp_path / "elsewhere" / "important.log", 100)
    (tree / "link.log").symlink_to(secret)
    (tree / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    params = FilesCleanParams(root=str(tree), glob="**/*.log", older_than="7d")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.FAILED
    assert secret.exists()
    assert (tree / "link.log").is_symlink()
    refused = "\n".join(result.detail["refused"])
    assert "link.log" in refused
    # The genuine old files were still cleaned.
    assert not (tree / "old.log").exists()
    # A path through a symlinked directory resolves outside the root: refused too.
    through = FilesCleanParams(root=str(tree), glob="linkdir/*.log", older_than="7d")
    result = await run_action("files_clean", through, context(session))
    assert result.status is Status.FAILED
    assert f"resolves to {secret}, outside" in "\n".join(result.detail["refused"])
    assert secret.exists()


async def test_root_through_symlink_is_resolved(
    session: aiohttp.ClientSession, tree: Path, tmp_path: Path
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(tree, target_is_directory=True)
    params = FilesCleanParams(root=str(alias), glob="*.log", older_than="7d")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.OK
    assert result.detail["files"] == [str(tree / "old.log")]


async def test_missing_root_fails(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    params = FilesCleanParams(root=str(tmp_path / "nope"), glob="*.log")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.FAILED
    assert "FileNotFoundError" in result.output


async def test_dry_run_lists_and_keeps(session: aiohttp.ClientSession, tree: Path) -> None:
    params = FilesCleanParams(root=str(tree), glob="*.log", older_than="7d")
    result = await run_action("files_clean", params, context(session, dry_run=True))
    assert result.status is Status.DRY_RUN
    assert result.detail["files"] == [str(tree / "old.log")]
    assert (tree / "old.log").exists()
