"""The action table (name -> implementation) and `run_action`, which runs one action safely.

`run_action` applies the action's timeout, turns every exception into a failed outcome, removes
known secrets from what it returns and counts each run in an `ActionMetrics`: pass your own
(built on your registry) or it uses `default_metrics()`, registered once on prometheus_client's
global REGISTRY.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import time
import typing
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from responder.actions import bullmq, celery, exec, files, http, notify, postgres, redis, rq
from responder.actions.base import ActionContext, ActionFn, Outcome, Status, truncate
from responder.actions.labels import LabelError
from runbook.actions import ACTIONS, CeleryPoolParams, ExecParams
from runbook.model_base import Strict

DEFAULT_TIMEOUT = 60.0
# exec kills its process group at its own timeout; this outer bound only backs it up.
_EXEC_GRACE = 5.0
_PG_GRACE = 15.0
_CELERY_GRACE = 10.0


def _check(name: str, fn: ActionFn) -> None:
    """An implementation is `async def f(ctx: ActionContext, params: <its model>) -> Outcome`."""
    if name not in ACTIONS:
        raise TypeError(f"{fn.__module__}.{fn.__name__}: {name!r} is not in runbook.actions")
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn.__name__} for {name!r} must be an async def")
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise TypeError(f"{fn.__name__} for {name!r} must take (ctx, params)")
    if hints.get(params[0]) is not ActionContext or hints.get("return") is not Outcome:
        raise TypeError(f"{fn.__name__} for {name!r} must be (ctx: ActionContext, ...) -> Outcome")
    if hints.get(params[1]) is not ACTIONS[name]:
        raise TypeError(f"{fn.__name__} for {name!r}: params must be {ACTIONS[name].__name__}, "
                        f"not {hints.get(params[1])}")


def build_table(*families: Mapping[str, ActionFn]) -> dict[str, ActionFn]:
    """One table from the family modules, every signature checked, every name implemented once."""
    table: dict[str, ActionFn] = {}
    for family in families:
        for name, fn in family.items():
            if name in table:
                raise TypeError(f"action {name!r} is implemented twice")
            _check(name, fn)
            table[name] = fn
    missing = sorted(set(ACTIONS) - set(table))
    if missing:
        raise TypeError(f"actions without an implementation: {', '.join(missing)}")
    return table


ACTION_IMPLS: dict[str, ActionFn] = build_table(
    exec.IMPLS, http.IMPLS, bullmq.IMPLS, celery.IMPLS, rq.IMPLS, redis.IMPLS, postgres.IMPLS,
    files.IMPLS, notify.IMPLS,
)
"""Action name -> implementation; its keys are exactly runbook.actions.ACTIONS' keys."""


IDEMPOTENT: frozenset[str] = frozenset({
    "redis_delete_pattern", "bullmq_retry_failed", "rq_requeue_failed", "rq_clean_registries",
    "pg_reindex",
})
"""Actions safe to run again after a crash mid-run (added to the responder's own list)."""


class ActionMetrics:
    """Runs by action and status, and durations, on the registry given."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.runs = Counter("runbook_action_runs", "Remediation action runs by final status",
                            ["action", "status"], registry=registry)
        self.duration = Histogram("runbook_action_duration_seconds",
                                  "Remediation action run time", ["action"], registry=registry,
                                  buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600))


@functools.cache
def default_metrics() -> ActionMetrics:
    """The metrics used when run_action is given none (on the global REGISTRY)."""
    return ActionMetrics(REGISTRY)


def timeout_of(params: Strict) -> float:
    """How long run_action lets one action run."""
    if isinstance(params, ExecParams):
        return params.timeout + _EXEC_GRACE
    if isinstance(params, CeleryPoolParams):
        # Its timeout is the window for collecting worker replies; connecting comes on top.
        return params.timeout + _CELERY_GRACE
    value = getattr(params, "timeout", None)
    if isinstance(value, float | int):
        return float(value)
    statement = getattr(params, "statement_timeout", None)
    if isinstance(statement, float | int):
        return float(statement) + _PG_GRACE
    return DEFAULT_TIMEOUT


def secrets(ctx: ActionContext, params: Strict) -> list[str]:
    """Values of every env var the runbook or these params name as a secret (and URL passwords)."""
    book = ctx.runbook.runbook
    names: set[str] = {t.url_env for t in book.watch.redis if t.url_env}
    names |= {t.dsn_env for t in book.watch.postgres}
    for receivers in book.page.values():
        for r in receivers:
            if r.pagerduty:
                names.add(r.pagerduty.routing_key_env)
            if r.slack:
                names.add(r.slack.webhook_url_env)
            if r.webhook:
                names |= {n for n in (r.webhook.url_env, r.webhook.token_env) if n}
    names |= set(getattr(params, "headers_env", {}).values())
    values = [ctx.env[n] for n in names if ctx.env.get(n)]
    for value in list(values):
        password = urlsplit(value).password if "://" in value else None
        if password:
            values.append(password)
    # Longest first, so a URL is replaced whole before its password inside it.
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def _scrub(value: Any, hidden: Iterable[str]) -> Any:
    if isinstance(value, str):
        for secret in hidden:
            value = value.replace(secret, "<secret>")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, hidden) for v in value]
    return value


async def run_action(
    name: str, params: Strict, ctx: ActionContext, metrics: ActionMetrics | None = None
) -> Outcome:
    """Run one action under its timeout; never raises (but for cancellation), always counts."""
    started = time.monotonic()
    limit = timeout_of(params)
    try:
        impl = ACTION_IMPLS[name]
        if not isinstance(params, ACTIONS[name]):
            raise TypeError(f"{name} takes {ACTIONS[name].__name__}, not {type(params).__name__}")
        async with asyncio.timeout(limit):
            result = await impl(ctx, params)
    except LabelError as exc:
        result = Outcome(name, Status.FAILED, 0.0, str(exc), {"label": exc.label})
    except TimeoutError:
        result = Outcome(name, Status.TIMEOUT, 0.0, f"did not finish within {limit:g}s")
    except KeyError as exc:
        result = Outcome(name, Status.FAILED, 0.0, f"unknown action {name!r}" if name not in
                         ACTION_IMPLS else f"KeyError: {exc}")
    except Exception as exc:  # every failure of one action becomes its outcome
        result = Outcome(name, Status.FAILED, 0.0, truncate(f"{type(exc).__name__}: {exc}"))
    hidden = secrets(ctx, params)
    result = dataclasses.replace(
        result,
        action=name,
        duration_seconds=time.monotonic() - started,
        output=_scrub(result.output, hidden),
        detail=_scrub(dict(result.detail), hidden),
    )
    chosen = metrics or default_metrics()
    chosen.runs.labels(name, result.status.value).inc()
    chosen.duration.labels(name).observe(result.duration_seconds)
    return result


__all__ = ["ACTION_IMPLS", "IDEMPOTENT", "ActionMetrics", "default_metrics", "run_action",
           "timeout_of"]
