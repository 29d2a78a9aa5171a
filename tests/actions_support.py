"""Helpers for the action tests: a runbook from text and an ActionContext around it."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime

import aiohttp

from responder.actions.base import ActionContext, AlertView, Outcome
from runbook.loader import LoadedRunbook, load_text

STARTS = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)


def book(text: str = "service: shop\n") -> LoadedRunbook:
    """A loaded runbook from YAML text (dedented)."""
    return load_text(textwrap.dedent(text))


def context(
    session: aiohttp.ClientSession,
    runbook: LoadedRunbook | None = None,
    labels: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    dry_run: bool = False,
    history: list[Outcome] | None = None,
    annotations: Mapping[str, str] | None = None,
    fingerprint: str = "0123456789abcdef",
) -> ActionContext:
    """An ActionContext for one alert; env defaults to PATH only."""
    alert = AlertView(
        fingerprint=fingerprint,
        starts_at=STARTS,
        labels=dict(labels or {"alertname": "QueueDepthHigh", "severity": "critical"}),
        annotations=dict(annotations or {}),
    )
    return ActionContext(
        alert=alert,
        occurrence_id=f"{fingerprint}-1764057600",
        runbook=runbook or book(),
        session=session,
        env=dict(env) if env is not None else {"PATH": os.environ.get("PATH", os.defpath)},
        dry_run=dry_run,
        history=list(history or []),
        incident_url="http://responder.example/incidents/7",
    )
