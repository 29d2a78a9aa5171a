"""The event loop `runbook responder` and `runbook run` serve on."""

from __future__ import annotations

import asyncio
import gc

import uvloop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop: its C transports, timers and callbacks cost less per HTTP exchange than asyncio's
    selector loop (the responder spent 190-200 µs of CPU per resend on it, 230 µs without).
    """
    return uvloop.new_event_loop()


async def freeze_startup_heap(app: object) -> None:
    """An on_startup hook: move every object alive once the app has started (modules, the
    runbook model, pydantic's validators: about 80,000) out of the garbage collector's reach.

    A full collection walks them all: 15-25 ms on this machine, during which no webhook is
    answered, and the responder's steady allocation set one off every few seconds under load.
    Frozen, they are never walked again; what is created afterwards is collected as before.
    """
    del app
    gc.collect()
    gc.freeze()
