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
    secret_margin,
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


DRAIN_SECONDS = 1.0
"""How long the output is still read after the program exited: what it wrote is in the pipe by
then; a child it left running (a daemon a restart script starts) may hold the pipe open forever."""


class _Output:
    """The head of a program's output (what the outcome keeps) and how many bytes it wrote."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.kept = bytearray()
        self.total = 0


async def _read(stream: asyncio.StreamReader, sink: _Output) -> None:
    # Drained to the end so the program never blocks on a full pipe; only the head is stored.
    while chunk := await stream.read(65536):
        sink.total += len(chunk)
        if len(sink.kept) < sink.keep:
            sink.kept.extend(chunk[: sink.keep - len(sink.kept)])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _spawn(
    argv: list[str], env: dict[str, str], cwd: str | None
) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.ReadTransport]:
    """Start the program, stdout and stderr on one pipe whose read end we close when we choose.

    Not asyncio's PIPE: that one closes only at EOF, which never comes while a child the program
    left running holds the write end, and its fd would stay open with it.
    """
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    stream = asyncio.StreamReader()
    pipe = os.fdopen(read_fd, "rb", buffering=0)  # the transport owns it from here on
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe)
    except BaseException:
        pipe.close()
        os.close(write_fd)
        raise
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except BaseException:
        transport.close()
        raise
    finally:
        os.close(write_fd)  # only the program (and what it starts) holds it now: EOF when it ends
    return process, stream, transport


async def _finish_reading(reader: asyncio.Future[None], pipe: asyncio.ReadTransport) -> None:
    """Give the reader DRAIN_SECONDS to reach EOF, then stop it and close our end of the pipe."""
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), DRAIN_SECONDS)
    finally:
        reader.cancel()
        # A child still holding the write end gets EPIPE if it writes; the responder keeps no fd.
        pipe.close()


async def run_exec(ctx: ActionContext, params: ExecParams) -> Outcome:
    """Run the argv with a timeout on the program itself; if it is still running then (or the
    run is cancelled), its whole process group is killed. Children it leaves running when it
    exits on its own (a daemon a restart script starts) are left alone."""
    argv = build_argv(ctx, params)
    env = build_env(ctx, params)
    if ctx.dry_run:
        return outcome("exec", Status.DRY_RUN, f"would run {argv!r}", argv=argv, env=sorted(env))
    process, stream, pipe = await _spawn(argv, env, params.cwd)
    # Past the limit by the longest secret, so head() can hide one straddling it before cutting.
    buffer = _Output(OUTPUT_LIMIT + secret_margin())
    reader = asyncio.ensure_future(_read(stream, buffer))
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(params.timeout):
                await process.wait()
        timed_out = process.returncode is None
    finally:
        if process.returncode is None:  # timed out, or the run was cancelled
            _kill_group(process.pid)
            await asyncio.shield(process.wait())
        await _finish_reading(reader, pipe)
    # Cut once, here, where the total is known: outcome() would cut the note off again.
    output = head(bytes(buffer.kept), buffer.total)
    code = process.returncode
    status = Status.OK
    if timed_out:
        status = Status.TIMEOUT
        output = f"killed after {params.timeout:g}s timeout\n{output}"
    elif code != 0:
        status = Status.FAILED
    return Outcome("exec", status, 0.0, output, {"argv": argv, "returncode": code})


IMPLS: dict[str, ActionFn] = {"exec": run_exec}
