"""The `exec` action: run a program from the runbook's argv, without a shell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from responder.actions.base import (
    OUTPUT_LIMIT,
    ActionContext,
    ActionFn,
    Outcome,
    Status,
    head,
    outcome,
)
from responder.actions.labels import fill
from runbook.actions import ExecParams


def build_argv(ctx: ActionContext, params: ExecParams) -> list[str]:
    """The argv with each placeholder filled by its validated label value, inside its own slot."""
    return [fill(arg, ctx.alert.labels, params.label_patterns) for arg in params.argv]


# Passed to every program when set: where the Kubernetes API is, which kubectl (and every
# client library) reads for its in-cluster config. An address, never a secret: the service
# account's token is a file.
ALWAYS_PASSED = ("PATH", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def build_env(ctx: ActionContext, params: ExecParams) -> dict[str, str]:
    """Only the allowed env vars, plus PATH and the in-cluster API address."""
    env = {"PATH": ctx.env.get("PATH", os.defpath)}
    env.update({name: ctx.env[name] for name in (*ALWAYS_PASSED, *params.env)
                if name in ctx.env})
    return env


class _Output:
    """The head of a program's output (what the outcome keeps) and how many bytes it wrote."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.total = 0


async def _read(stream: asyncio.StreamReader, sink: _Output) -> None:
    # Drained to the end so the program never blocks on a full pipe; only the head is stored.
    while chunk := await stream.read(65536):
        sink.total += len(chunk)
        if len(sink.kept) < OUTPUT_LIMIT:
            sink.kept.extend(chunk[: OUTPUT_LIMIT - len(sink.kept)])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_exec(ctx: ActionContext, params: ExecParams) -> Outcome:
    """Run the argv with a timeout; on timeout the whole process group is killed."""
    argv = build_argv(ctx, params)
    env = build_env(ctx, params)
    if ctx.dry_run:
        return outcome("exec", Status.DRY_RUN, f"would run {argv!r}", argv=argv, env=sorted(env))
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=params.cwd,
        start_new_session=True,  # its own process group, so a timeout kills its children too
    )
    assert process.stdout is not None
    buffer = _Output()
    reader = asyncio.ensure_future(_read(process.stdout, buffer))
    status = Status.OK
    try:
        async with asyncio.timeout(params.timeout):
            await process.wait()
            await reader
    except TimeoutError:
        status = Status.TIMEOUT
    finally:
        if process.returncode is None or status is Status.TIMEOUT:
            _kill_group(process.pid)
            await asyncio.shield(process.wait())
        if not reader.done():
            # A killed group closes the pipe; bound the wait in case a grandchild escaped it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            reader.cancel()
    # Cut once, here, where the total is known: outcome() would cut the note off again.
    output = head(bytes(buffer.kept), buffer.total)
    code = process.returncode
    if status is Status.TIMEOUT:
        output = f"killed after {params.timeout:g}s timeout\n{output}"
    elif code != 0:
        status = Status.FAILED
    return Outcome("exec", status, 0.0, output, {"argv": argv, "returncode": code})


IMPLS: dict[str, ActionFn] = {"exec": run_exec}
