"""The exec action on real processes: placeholders, hostile labels, timeout, env allow-list."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from responder.actions import ActionMetrics, run_action
from responder.actions.base import OUTPUT_LIMIT, Status
from responder.actions.exec import build_argv
from responder.actions.labels import LabelError
from runbook.actions import DEFAULT_LABEL_PATTERN, ExecParams
from tests.actions_support import context

PY = sys.executable
ECHO_ARGS = "import sys, json; print(json.dumps(sys.argv[1:]))"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_label_fills_its_argument(session: aiohttp.ClientSession) -> None:
    ctx = context(session, labels={"deployment": "web-1", "alertname": "X"})
    params = ExecParams(argv=[PY, "-c", ECHO_ARGS, "deployment/{{ labels.deployment }}", "-n"])
    result = await run_action("exec", params, ctx)
    assert result.status is Status.OK, result.output
    assert json.loads(result.output) == ["deployment/web-1", "-n"]
    assert result.detail["argv"][3] == "deployment/web-1"
    assert result.duration_seconds > 0


HOSTILE = [
    "web;touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "web\ntouch {marker}",
    "web\n",
    "web\x00x",
    "../../etc/passwd",
    "web " + "x" * 5000,
    "-rf",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_label_never_reaches_argv(
    session: aiohttp.ClientSession, tmp_path: Path, value: str
) -> None:
    marker = tmp_path / "marker"
    ctx = context(session, labels={"deployment": value.format(marker=marker)})
    params = ExecParams(argv=["/usr/bin/touch", str(tmp_path / "ran"), "{{ labels.deployment }}"])
    result = await run_action("exec", params, ctx)
    assert result.status is Status.FAILED
    assert result.detail["label"] == "deployment"
    assert "deployment" in result.output
    assert not (tmp_path / "ran").exists()
    assert not marker.exists()


async def test_permissive_pattern_keeps_value_in_one_slot(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    value = f"a b; touch {marker} $(touch {marker}) `touch {marker}` ../x"
    ctx = context(session, labels={"q": value})
    params = ExecParams(argv=[PY, "-c", ECHO_ARGS, "{{ labels.q }}", "end"],
                        label_patterns={"q": r".*"})
    result = await run_action("exec", params, ctx)
    assert result.status is Status.OK, result.output
    assert json.loads(result.output) == [value, "end"]
    assert not marker.exists()


async def test_permissive_pattern_still_refuses_control_characters(
    session: aiohttp.ClientSession,
) -> None:
    ctx = context(session, labels={"q": "a\nb"})
    params = ExecParams(argv=[PY, "-c", ECHO_ARGS, "{{ labels.q }}"], label_patterns={"q": ".*"})
    result = await run_action("exec", params, ctx)
    assert result.status is Status.FAILED
    assert "control characters" in result.output


async def test_missing_label_names_it(session: aiohttp.ClientSession) -> None:
    ctx = context(session, labels={"alertname": "X"})
    result = await run_action("exec", ExecParams(argv=["true", "{{ labels.pod }}"]), ctx)
    assert result.status is Status.FAILED
    assert result.detail["label"] == "pod"
    assert "no such label" in result.output


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    # PID 1 here reaps orphans lazily: a zombie counts as stopped.
    return "State:\tZ" in state


async def test_timeout_kills_the_process_group(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    ctx = context(session)
    started = time.monotonic()
    result = await run_action("exec", ExecParams(argv=[PY, "-c", script], timeout=1.0), ctx)
    assert result.status is Status.TIMEOUT
    assert time.monotonic() - started < 5
    assert "started" in result.output
    assert "timeout" in result.output
    child = int(pidfile.read_text())
    for _ in range(100):
        if _gone(child):
            break
        await asyncio.sleep(0.05)
    assert _gone(child), f"grandchild {child} survived the timeout"


async def test_env_allow_list(session: aiohttp.ClientSession) -> None:
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": "/k", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
           "HOME": "/root"}
    ctx = context(session, env=env)
    result = await run_action("exec", ExecParams(argv=["env"], env=["KUBECONFIG", "UNSET"]), ctx)
    assert result.status is Status.OK
    names = sorted(line.split("=", 1)[0] for line in result.output.splitlines())
    assert names == ["KUBECONFIG", "PATH"]
    assert "s3cr3t" not in result.output


async def test_kubectl_in_a_pod_finds_its_api_server(session: aiohttp.ClientSession) -> None:
    # In a pod, kubectl reads the API address from these two; without them it tries
    # localhost:8080 and every kubectl action fails.
    env = {"PATH": os.environ["PATH"], "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    result = await run_action("exec", ExecParams(argv=["env"]), context(session, env=env))
    assert result.status is Status.OK
    assert sorted(result.output.splitlines()) == [
        "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443",
        f"PATH={os.environ['PATH']}"]


async def test_nonzero_exit_fails_with_output(session: aiohttp.ClientSession) -> None:
    ctx = context(session)
    script = "import sys; print('boom'); sys.exit(3)"
    result = await run_action("exec", ExecParams(argv=[PY, "-c", script]), ctx)
    assert result.status is Status.FAILED
    assert result.detail["returncode"] == 3
    assert "boom" in result.output


async def test_missing_program_fails(session: aiohttp.ClientSession) -> None:
    ctx = context(session)
    result = await run_action("exec", ExecParams(argv=["/nonexistent/kubectl", "get"]), ctx)
    assert result.status is Status.FAILED
    assert "FileNotFoundError" in result.output


async def test_output_is_truncated(session: aiohttp.ClientSession) -> None:
    ctx = context(session)
    script = "print('x' * 200000)"
    result = await run_action("exec", ExecParams(argv=[PY, "-c", script]), ctx)
    assert result.status is Status.OK
    assert len(result.output.encode()) < OUTPUT_LIMIT + 100
    assert "more bytes cut" in result.output


async def test_cut_count_is_of_every_byte_written(session: aiohttp.ClientSession) -> None:
    ctx = context(session)
    script = "import sys; sys.stdout.write('x' * 1_000_000)"
    result = await run_action("exec", ExecParams(argv=[PY, "-c", script]), ctx)
    assert result.status is Status.OK
    cut = 1_000_000 - OUTPUT_LIMIT
    assert result.output == "x" * OUTPUT_LIMIT + f"\n... [{cut} more bytes cut]"


async def test_cut_count_survives_a_timeout(session: aiohttp.ClientSession) -> None:
    # The timeout note goes in front: the cut note at the end must not be cut off again.
    ctx = context(session)
    script = "import sys, time; sys.stdout.write('y' * 100_000); sys.stdout.flush(); time.sleep(30)"
    result = await run_action("exec", ExecParams(argv=[PY, "-c", script], timeout=1.5), ctx)
    assert result.status is Status.TIMEOUT
    assert result.output == ("killed after 1.5s timeout\n" + "y" * OUTPUT_LIMIT
                             + f"\n... [{100_000 - OUTPUT_LIMIT} more bytes cut]")


async def test_a_character_split_at_the_cut_is_dropped(session: aiohttp.ClientSession) -> None:
    ctx = context(session)
    # "é" is 2 bytes: the limit falls in the middle of one.
    script = "import sys; sys.stdout.write('a' + 'é' * 5000)"
    result = await run_action("exec", ExecParams(argv=[PY, "-c", script]), ctx)
    kept, note = result.output.split("\n... ")
    assert kept == "a" + "é" * ((OUTPUT_LIMIT - 1) // 2)
    assert note == f"[{10_001 - OUTPUT_LIMIT} more bytes cut]"


async def test_passed_env_values_are_scrubbed(session: aiohttp.ClientSession) -> None:
    # A var the runbook passes to exec is hidden even when no watch or page entry names it.
    env = {"PATH": os.environ["PATH"], "API_TOKEN": "tok-9f8e7d6c5b4a"}
    script = "import os, sys; sys.exit('curl: 401 for token ' + os.environ['API_TOKEN'])"
    params = ExecParams(argv=[PY, "-c", script], env=["API_TOKEN"])
    result = await run_action("exec", params, context(session, env=env))
    assert result.status is Status.FAILED
    assert result.output == "curl: 401 for token <secret>\n"
    assert "tok-9f8e7d6c5b4a" not in json.dumps(result.as_json())


async def test_dry_run_shows_argv_and_runs_nothing(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    target = tmp_path / "made"
    ctx = context(session, labels={"name": "made"}, dry_run=True)
    params = ExecParams(argv=["touch", str(tmp_path) + "/{{ labels.name }}"])
    result = await run_action("exec", params, ctx)
    assert result.status is Status.DRY_RUN
    assert result.detail["argv"] == ["touch", str(target)]
    assert not target.exists()


async def test_counter_counts_each_status(session: aiohttp.ClientSession) -> None:
    registry = CollectorRegistry()
    metrics = ActionMetrics(registry)
    ctx = context(session)
    await run_action("exec", ExecParams(argv=["true"]), ctx, metrics)
    await run_action("exec", ExecParams(argv=["true"]), ctx, metrics)
    await run_action("exec", ExecParams(argv=["false"]), ctx, metrics)

    def value(status: str) -> float | None:
        return registry.get_sample_value(
            "runbook_action_runs_total", {"action": "exec", "status": status}
        )

    assert value("ok") == 2
    assert value("failed") == 1
    assert registry.get_sample_value(
        "runbook_action_duration_seconds_count", {"action": "exec"}
    ) == 3


async def test_cancelling_the_run_kills_the_group(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.ensure_future(
        run_action("exec", ExecParams(argv=[PY, "-c", script]), context(session)))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pidfile.read_text())
    for _ in range(100):
        if _gone(pid):
            break
        await asyncio.sleep(0.05)
    assert _gone(pid)


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=300), prefix=st.text(alphabet="abc/=-", max_size=5))
def test_any_value_is_refused_or_fills_exactly_one_argument(value: str, prefix: str) -> None:
    ctx = context(None, labels={"v": value})  # type: ignore[arg-type]
    params = ExecParams(argv=["prog", prefix + "{{ labels.v }}", "--fixed"])
    refused = ""
    try:
        argv = build_argv(ctx, params)
    except LabelError as exc:
        refused = exc.label
    if refused:
        assert refused == "v"
        return
    assert argv == ["prog", prefix + value, "--fixed"]
    assert re.fullmatch(DEFAULT_LABEL_PATTERN, value)
    assert not set(value) & set(";$`|&<>()\n\x00/ ")
