"""Hostile inputs to files_clean, http, the Slack page and redis_delete_pattern's check.

files_clean against whoever can write under its root (planted links, swapped directories,
FIFOs) and against its timeout; http against a huge answer and a label filling the URL's host;
Slack against markup in alert text; the "delete everything" check against wildcard spellings.
Real files, a real local HTTP server and the session's redis-server: no mocks.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import stat
import textwrap
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path, PurePath

import aiohttp
import pydantic
import pytest
import redis as redis_sync
from aiohttp import web

from responder.actions import run_action, timeout_of
from responder.actions.base import BLOCKING, OUTPUT_LIMIT, Outcome, Status
from responder.actions.files import _DIR_FLAGS as DIR_FLAGS
from responder.actions.files import (
    Cleaned,
    Refused,
    Stop,
    candidates,
    clean,
    files_clean,
    handle_chosen,
)
from responder.actions.files import _gzip as gzip_one
from responder.actions.files import _handle as handle_one
from responder.actions.http import BODY_KEPT
from responder.actions.notify import slack_body, slack_escape
from runbook.actions import FilesCleanParams, HttpParams, PageParams, RedisDeletePatternParams
from runbook.loader import RunbookError, load_text
from tests.actions_support import Recorder, book, context, recorder
from tests.servers import free_port

DAY = 86400.0
MiB = 1 << 20


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    async with recorder() as rec:
        yield rec


def _old(path: Path, data: bytes = b"line\n", age_days: float = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_days * DAY
    os.utime(path, (then, then))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parts(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part"))


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A log root and, outside it, a file the responder (often root) must never touch."""
    root = tmp_path / "logs"
    root.mkdir()
    victim = tmp_path / "outside" / "important.conf"
    victim.parent.mkdir()
    victim.write_text("precious config\n")
    return root, victim


# --- files_clean: links planted or swapped in by whoever writes the root ---


async def test_gzip_never_writes_through_a_link_planted_at_the_temporary_name(
    session: aiohttp.ClientSession, layout: tuple[Path, Path]
) -> None:
    root, victim = layout
    _old(root / "app.log", b"old log line\n" * 100)
    # The name the old code wrote its temporary archive to, planted as a link out of the root.
    (root / "app.log.gz.part").symlink_to(victim)
    params = FilesCleanParams(root=str(root), glob="*.log", mode="gzip")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.OK, result.output
    assert victim.read_text() == "precious config\n"
    archive = root / "app.log.gz"
    assert not archive.is_symlink()
    assert gzip.decompress(archive.read_bytes()) == b"old log line\n" * 100
    assert (root / "app.log.gz.part").is_symlink()  # someone else's: left alone
    assert not (root / "app.log").exists()
    assert [p.name for p in _parts(root)] == ["app.log.gz.part"]


async def test_gzip_refuses_a_link_planted_at_the_archive_name(
    session: aiohttp.ClientSession, layout: tuple[Path, Path]
) -> None:
    root, victim = layout
    _old(root / "app.log")
    (root / "app.log.gz").symlink_to(victim)
    params = FilesCleanParams(root=str(root), glob="*.log", mode="gzip")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.FAILED
    assert "app.log.gz already exists" in result.detail["refused"][0]
    assert victim.read_text() == "precious config\n"
    assert (root / "app.log").read_bytes() == b"line\n"
    assert _parts(root) == []


@pytest.mark.parametrize("mode", ["delete", "gzip"])
def test_a_directory_swapped_for_a_link_after_the_pick_is_not_followed(
    layout: tuple[Path, Path], mode: str
) -> None:
    # The pick saw root/sub as a directory; by the time the file is handled it is a link out of
    # the root. Path-based code then deletes (or reads and archives) the file outside.
    root, victim = layout
    outside_log = _old(victim.parent / "app.log")
    (root / "sub").symlink_to(victim.parent, target_is_directory=True)
    params = FilesCleanParams(root=str(root), mode=mode)  # type: ignore[arg-type]
    root_fd = os.open(root, DIR_FLAGS)
    try:
        with pytest.raises(OSError, match=r"symbolic links|Not a directory"):
            handle_one(root_fd, PurePath("sub/app.log"), params, time.time(),
                       Stop(time.monotonic() + 60))
    finally:
        os.close(root_fd)
    assert outside_log.read_bytes() == b"line\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["app.log", "important.conf"]


@pytest.mark.parametrize("mode", ["delete", "gzip"])
def test_a_file_swapped_for_a_link_after_the_pick_is_not_followed(
    layout: tuple[Path, Path], mode: str
) -> None:
    root, victim = layout
    _old(victim, b"precious config\n", age_days=100)  # old enough to be cleaned if reached
    (root / "app.log").symlink_to(victim)
    params = FilesCleanParams(root=str(root), mode=mode)  # type: ignore[arg-type]
    root_fd = os.open(root, DIR_FLAGS)
    try:
        with pytest.raises((OSError, Refused)):
            handle_one(root_fd, PurePath("app.log"), params, time.time(),
                       Stop(time.monotonic() + 60))
    finally:
        os.close(root_fd)
    assert victim.read_text() == "precious config\n"
    assert not (root / "app.log.gz").exists()
    assert _parts(root) == []


def test_a_fifo_swapped_in_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "app.log")
    outcome: list[BaseException | None] = []

    def work() -> None:
        root_fd = os.open(tmp_path, DIR_FLAGS)
        try:
            gzip_one(root_fd, "app.log", time.time(), Stop(time.monotonic() + 60))
        except (OSError, Refused) as exc:
            outcome.append(exc)
        finally:
            os.close(root_fd)

    # A daemon thread: should the open block on the FIFO, the test fails instead of hanging.
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "opening a FIFO blocked"
    assert isinstance(outcome[0], Refused)
    assert "no longer a regular file" in str(outcome[0])


@pytest.mark.parametrize("mode", [0o600, 0o640])
async def test_gzip_archive_is_no_wider_than_its_log(
    session: aiohttp.ClientSession, tmp_path: Path, mode: int
) -> None:
    log = _old(tmp_path / "secret.log", b"token=abc\n")
    log.chmod(mode)
    params = FilesCleanParams(root=str(tmp_path), glob="*.log", mode="gzip")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.OK, result.output
    assert stat.S_IMODE((tmp_path / "secret.log.gz").stat().st_mode) == mode


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
async def test_gzip_archive_keeps_the_owner_of_its_log(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log = _old(tmp_path / "app.log")
    os.chown(log, 65534, 65534)
    params = FilesCleanParams(root=str(tmp_path), glob="*.log", mode="gzip")
    assert (await run_action("files_clean", params, context(session))).status is Status.OK
    archive = (tmp_path / "app.log.gz").stat()
    assert (archive.st_uid, archive.st_gid) == (65534, 65534)


# --- files_clean: its own timeout, between files and between chunks of a big one ---


def test_timeout_is_a_bounded_parameter_that_run_action_applies(tmp_path: Path) -> None:
    assert FilesCleanParams(root=str(tmp_path)).timeout == 60.0
    params = FilesCleanParams(root=str(tmp_path), timeout="10m")
    assert params.timeout == 600.0
    assert timeout_of(params) == 600.0
    for bad in ("2h", "500ms", 0):
        with pytest.raises(pydantic.ValidationError, match="from 1s to 1h"):
            FilesCleanParams(root=str(tmp_path), timeout=bad)


@pytest.fixture
def big_tree(tmp_path: Path) -> tuple[Path, str]:
    """a.log (tiny), b.log (random data taking over a second to gzip) and c.log (tiny)."""
    root = tmp_path / "logs"
    _old(root / "a.log")
    big = _old(root / "b.log", os.urandom(64 * MiB))
    _old(root / "c.log")
    return root, _digest(big)


def _untouched_big(root: Path, digest: str) -> None:
    assert _digest(root / "b.log") == digest
    assert not (root / "b.log.gz").exists()
    assert _parts(root) == []


def _stops(how: str) -> Stop:
    if how == "deadline":
        return Stop(time.monotonic() - 1)
    stop = Stop(time.monotonic() + 60)
    stop.cancelled.set()
    return stop


@pytest.mark.parametrize("how", ["deadline", "cancelled"])
def test_stops_between_files(tmp_path: Path, how: str) -> None:
    # Deleting has no chunks: only the look between files can stop it.
    logs = [_old(tmp_path / f"{i}.log") for i in range(3)]
    params = FilesCleanParams(root=str(tmp_path), glob="*.log")
    cutoff = time.time()
    chosen, _ = candidates(tmp_path, "*.log", cutoff)
    assert chosen == logs
    result = handle_chosen(Cleaned(tmp_path), chosen, params, cutoff, _stops(how))
    assert (result.stopped, result.done, result.not_done) == (True, [], logs)
    assert all(log.exists() for log in logs)


@pytest.mark.parametrize("how", ["deadline", "cancelled"])
def test_stops_while_listing(tmp_path: Path, how: str) -> None:
    _old(tmp_path / "a.log")
    result = clean(FilesCleanParams(root=str(tmp_path), glob="**/*.log"), False, _stops(how))
    assert (result.stopped, result.listed, result.done) == (True, False, [])
    assert (tmp_path / "a.log").exists()


def test_stops_between_chunks_of_a_big_file_at_the_deadline(big_tree: tuple[Path, str]) -> None:
    root, digest = big_tree
    params = FilesCleanParams(root=str(root), glob="*.log", mode="gzip")
    started = time.monotonic()
    result = clean(params, False, Stop(started + 0.3))
    took = time.monotonic() - started
    assert result.stopped
    assert result.done == [root / "a.log"]
    assert result.not_done == [root / "b.log", root / "c.log"]
    # Stopped inside b.log (gzipping it whole takes over a second), its partial archive gone.
    assert took < 0.8, took
    _untouched_big(root, digest)
    assert (root / "c.log").exists()


async def test_timeout_outcome_says_what_was_done_and_the_work_stops(
    session: aiohttp.ClientSession, big_tree: tuple[Path, str]
) -> None:
    root, digest = big_tree
    params = FilesCleanParams(root=str(root), glob="*.log", mode="gzip", timeout="1s")
    result = await run_action("files_clean", params, context(session))
    assert result.status is Status.TIMEOUT, result.output
    assert result.detail["files"] == [str(root / "a.log")]
    assert result.detail["not_done"] == [str(root / "b.log"), str(root / "c.log")]
    assert result.detail["stopped"] is True
    assert f"gzipped: {root / 'a.log'}" in result.output
    assert f"stopped: its 1s timeout was reached; not reached: {root / 'b.log'}" in result.output
    before = sorted(p.name for p in root.iterdir())
    await asyncio.sleep(1.5)
    assert sorted(p.name for p in root.iterdir()) == before  # nothing goes on after the outcome
    _untouched_big(root, digest)


async def test_cancelled_action_stops_its_thread(
    session: aiohttp.ClientSession, big_tree: tuple[Path, str]
) -> None:
    # The runner's own limit (or a shutdown) cancels the coroutine: the thread must stop too.
    root, digest = big_tree
    params = FilesCleanParams(root=str(root), glob="*.log", mode="gzip", timeout="1m")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await files_clean(context(session), params)
    for _ in range(50):
        if BLOCKING.busy == 0:
            break
        await asyncio.sleep(0.02)
    assert BLOCKING.busy == 0, "the thread went on after its action was cancelled"
    _untouched_big(root, digest)
    assert not (root / "a.log").exists()
    assert (root / "a.log.gz").exists()


# --- http: a huge answer, and a label filling the URL's host ---


async def test_huge_response_is_read_in_chunks_and_counted_not_kept(
    session: aiohttp.ClientSession,
) -> None:
    size, chunk = 64 * MiB, b"x" * MiB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_get("/warm", big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    params = HttpParams(url=f"http://127.0.0.1:{port}/warm", method="GET")
    tracemalloc.start()
    try:
        result = await run_action("http", params, context(session))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await runner.cleanup()
    assert result.status is Status.OK, result.output[:200]
    assert peak < 16 * MiB, f"peak {peak / MiB:.0f} MiB for a {size // MiB} MiB answer"
    assert result.detail["response_bytes"] == size
    assert result.detail["response_bytes_discarded"] == size - BODY_KEPT
    assert result.output == f"HTTP 200\n{'x' * BODY_KEPT}\n... [{size - BODY_KEPT} more bytes cut]"
    assert len(result.output.encode()) <= OUTPUT_LIMIT


async def test_small_response_is_kept_whole(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    result = await run_action("http", HttpParams(url=server.url + "/x"), context(session))
    assert result.output == "HTTP 200\nok"
    assert (result.detail["response_bytes"], result.detail["response_bytes_discarded"]) == (2, 0)


async def test_instance_label_fills_the_host_and_port(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    instance = server.url.removeprefix("http://")  # 127.0.0.1:PORT, as Prometheus writes it
    ctx = context(session, labels={"instance": instance, "queue": "a/b"})
    params = HttpParams(url="http://{{ labels.instance }}/api/{{ labels.queue }}/pause"
                            "?from={{ labels.instance }}",
                        label_patterns={"queue": ".+"})
    result = await run_action("http", params, ctx)
    assert result.status is Status.OK, result.output
    # In the path and query the same value is still quoted.
    quoted = instance.replace(":", "%3A")
    assert [r.raw_path for r in server.requests] == [f"/api/a%2Fb/pause?from={quoted}"]


async def test_host_label_with_a_port_written_in_the_runbook(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    port = server.url.rsplit(":", 1)[1]
    params = HttpParams(url="http://{{ labels.host }}:" + port + "/warm")
    ok = await run_action("http", params, context(session, labels={"host": "127.0.0.1"}))
    assert ok.status is Status.OK, ok.output
    # Each value alone is a host:port, but `127.0.0.1:80:PORT` is not.
    twice = await run_action("http", params, context(session, labels={"host": "127.0.0.1:80"}))
    assert twice.status is Status.FAILED
    assert twice.detail["label"] == "host"
    assert len(server.requests) == 1


@pytest.mark.parametrize(("value", "url"), [
    ("web-1.internal:9100", "http://web-1.internal:9100/x"),
    ("app_web_1:8080", "http://app_web_1:8080/x"),
    ("10.0.0.5", "http://10.0.0.5/x"),
    ("[2001:db8::1]:9100", "http://[2001:db8::1]:9100/x"),
    ("[::1]", "http://[::1]/x"),
    ("localhost.:65535", "http://localhost.:65535/x"),
])
async def test_host_values_accepted(
    session: aiohttp.ClientSession, value: str, url: str
) -> None:
    ctx = context(session, labels={"instance": value}, dry_run=True)
    result = await run_action("http", HttpParams(url="http://{{ labels.instance }}/x"), ctx)
    assert result.status is Status.DRY_RUN, result.output
    assert result.detail["url"] == url


@pytest.mark.parametrize("value", [
    "evil.example@127.0.0.1:9",  # userinfo: the request would go to 127.0.0.1
    "127.0.0.1:9/admin", "127.0.0.1:9?x=1", "127.0.0.1:9#x", "127.0.0.1%3A9", "a b",
    "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+80", "host:9:9",
    "[::1%25eth0]:9", "[::1", "[::1]x", "[not-v6]:9", "-web", "web-", "a..b",
    "0x7f.1", "2130706433", "1.2.3", "010.0.0.1", "999.0.0.1", "x" * 64 + ".example",
])
async def test_hostile_host_values_refused(
    session: aiohttp.ClientSession, server: Recorder, value: str
) -> None:
    ctx = context(session, labels={"instance": value})
    params = HttpParams(url="http://{{ labels.instance }}/x", label_patterns={"instance": ".*"})
    result = await run_action("http", params, ctx)
    assert result.status is Status.FAILED
    assert result.detail["label"] == "instance", result.output
    assert "fills the URL's host" in result.output


async def test_runbook_pattern_still_applies_in_the_host(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    instance = server.url.removeprefix("http://")
    ctx = context(session, labels={"instance": instance})
    params = HttpParams(url="http://{{ labels.instance }}/x",
                        label_patterns={"instance": r"10\.[0-9.]+:[0-9]+"})
    result = await run_action("http", params, ctx)
    assert result.status is Status.FAILED
    assert "does not match" in result.output
    assert server.requests == []


# --- Slack: alert text cannot ping or disguise links ---

HOSTILE_LABELS = {"alertname": "QueueDepthHigh <!channel>", "severity": "critical"}
HOSTILE_ANNOTATIONS = {"summary": "<!everyone> run <https://evil.example/fix|the runbook fix> & go"}


def test_slack_escape() -> None:
    assert slack_escape("a & <b> &amp;") == "a &amp; &lt;b&gt; &amp;amp;"


async def test_slack_page_escapes_alert_text_and_outputs(
    session: aiohttp.ClientSession, server: Recorder
) -> None:
    rb = book("service: shop\npage:\n  default: {slack: {webhook_url_env: SLACK_URL}}\n")
    history = [Outcome("http", Status.FAILED, 0.5, "HTTP 500\n<!here> <@U0ADMIN>", {})]
    ctx = context(session, rb, labels=HOSTILE_LABELS, annotations=HOSTILE_ANNOTATIONS,
                  env={"SLACK_URL": server.url + "/slack"}, history=history)
    result = await run_action("page", PageParams(message="check <the> queue"), ctx)
    assert result.status is Status.OK, result.output
    [request] = server.requests
    assert request.json()["text"] == "\n".join([
        "[CRITICAL] QueueDepthHigh &lt;!channel&gt; on shop: &lt;!everyone&gt; run "
        "&lt;https://evil.example/fix|the runbook fix&gt; &amp; go",
        "check &lt;the&gt; queue",
        "Tried:",
        "- http: failed (0.5s) HTTP 500",
        "Incident: http://responder.example/incidents/7",
    ])
    resolved = slack_body(ctx, "resolve", "critical", None)["text"]
    assert resolved.startswith("Resolved: [CRITICAL] QueueDepthHigh &lt;!channel&gt; on shop")
    assert "<" not in resolved.split("\nIncident: ")[0]


async def test_slack_escapes_the_first_output_line_of_what_was_tried(
    session: aiohttp.ClientSession,
) -> None:
    history = [Outcome("exec", Status.FAILED, 1.0, "<!here|here> error & more\nsecond", {})]
    text = slack_body(context(session, history=history), "trigger", "critical", None)["text"]
    assert "- exec: failed (1.0s) &lt;!here|here&gt; error &amp; more" in text.splitlines()


# --- redis_delete_pattern: no spelling of "every key" ---

# Every key, or every key of some length or of a class of first characters: in Redis `[^]` is
# any character (a `]` right after `[^` closes the class) and `[a-]x]` one class (`a-]`, `x`).
EVERY_KEY = ["*", "**", "?", "?*", "*?*", "???*", "[^]*", "[^]", "[a-z]*", "[^x]*", "*[^:]*",
             "[a-]x]*", "[\\]]*"]
NAMED_KEYS = ["cache:*", "*:tmp", "session:?*", "\\*", "a", "[abc]x*", "*[^]]*", "\\",
              "cache:{{ labels.tenant }}:*", "sess[0-9]:*"]


@pytest.mark.parametrize("pattern", EVERY_KEY)
def test_patterns_without_a_literal_are_refused(pattern: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="matches every key"):
        RedisDeletePatternParams(redis="cache", pattern=pattern)


@pytest.mark.parametrize("pattern", NAMED_KEYS)
def test_patterns_naming_part_of_the_keys_are_accepted(pattern: str) -> None:
    assert RedisDeletePatternParams(redis="cache", pattern=pattern).pattern == pattern


def test_the_refused_spellings_do_match_every_key_in_redis(redis_url: str) -> None:
    client = redis_sync.Redis.from_url(redis_url)
    keys = [b"a", b"cache:1", b"]", b"\\", b"x" * 40]
    client.mset(dict.fromkeys(keys, 1))
    try:
        for pattern in ("?*", "*?*", "[^]*"):
            assert sorted(client.scan_iter(match=pattern)) == sorted(keys), pattern
        # And one with a literal does not.
        assert sorted(client.scan_iter(match="*]")) == [b"]"]
    finally:
        client.close()


def test_loader_says_why_a_pattern_is_refused() -> None:
    text = textwrap.dedent("""\
        service: shop
        watch:
          redis:
            - {name: cache, url_env: CACHE_URL}
        respond:
          - match: {alertname: CacheFull}
            external: true
            do:
              - redis_delete_pattern: {redis: cache, pattern: "?*"}
        """)
    with pytest.raises(RunbookError) as caught:
        load_text(text)
    message = str(caught.value)
    assert "9: respond[0].do[0].redis_delete_pattern.pattern" in message
    assert "'?*' has no character outside the wildcards" in message
    assert "use redis_flushdb" in message
