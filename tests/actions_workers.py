"""Work for the real Celery and RQ workers the action tests start (imported by those workers)."""

from __future__ import annotations

import os

from celery import Celery
from rq import get_current_job

FIXED_KEY = "rbap:fixed"

app = Celery("rbap_actions", broker=os.environ.get("RBAP_CELERY_BROKER", "redis://127.0.0.1:1/0"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="rbap.add")
def add(x: int, y: int) -> int:
    """A task that does nearly nothing."""
    return x + y


def flaky(n: int) -> int:
    """An RQ job that fails until the key FIXED_KEY is set (the bug 'fixed')."""
    job = get_current_job()
    assert job is not None
    if not job.connection.exists(FIXED_KEY):
        raise RuntimeError(f"job {n}: downstream still broken")
    return n
