"""The Celery application of the end-to-end tests: one slow task, so one process falls behind."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("rbap_e2e", broker=os.environ.get("RBAP_E2E_BROKER", "redis://127.0.0.1:1/0"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                task_ignore_result=True)


@app.task(name="e2e.scrape")  # type: ignore[untyped-decorator]
def scrape(n: int) -> int:
    """A scrape that takes a second."""
    time.sleep(1.0)
    return n
