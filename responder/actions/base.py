"""What every remediation action is: an async function of (context, typed params) -> Outcome."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from runbook.loader import LoadedRunbook

OUTPUT_LIMIT = 4096
"""Bytes of an action's output kept in its outcome and the audit trail."""


class Status(enum.Enum):
    """How an action ended."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    DRY_RUN = "dry_run"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class AlertView:
    """The alert an action works on, as Alertmanager sent it (all values untrusted)."""

    fingerprint: str
    starts_at: datetime
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: str = "firing"
    generator_url: str = ""


@dataclass(frozen=True)
class Outcome:
    """The typed result of one action run."""

    action: str
    status: Status
    duration_seconds: float
    output: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.DRY_RUN)

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "status": self.status.value,
            "duration_seconds": round(self.duration_seconds, 6),
            "output": self.output,
            "detail": dict(self.detail),
        }


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the head of long output and say how much was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept}\n... [{len(data) - limit} more bytes cut]"


@dataclass
class ActionContext:
    """Everything an action may use; dependencies are passed in, never global."""

    alert: AlertView
    occurrence_id: str
    runbook: LoadedRunbook
    session: aiohttp.ClientSession
    env: Mapping[str, str]
    dry_run: bool = False
    history: list[Outcome] = field(default_factory=list)
    """Outcomes of the steps run before this one for the same occurrence (for pages)."""
    incident_url: str = ""


ActionFn = Callable[[ActionContext, Any], Awaitable[Outcome]]
"""An action implementation: `async def act(ctx, params: TheirParams) -> Outcome`."""


def outcome(action: str, status: Status, output: str = "", **detail: Any) -> Outcome:
    """An outcome whose duration `run_action` fills in."""
    return Outcome(action, status, 0.0, truncate(output), detail)
