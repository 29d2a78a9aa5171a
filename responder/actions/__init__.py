"""The action table (name -> implementation), `run_action`, which runs one action safely, and
`resolve_page`, which tells the paged receivers an incident healed just as safely.

Both apply a timeout, turn every exception into a failed outcome, remove known secrets from what
they return and count each run in an `ActionMetrics`: pass your own (built on your registry) or
they use `default_metrics()`, registered once on prometheus_client's global REGISTRY.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import time
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from responder.actions import bullmq, celery, exec, files, http, notify, postgres, redis, rq
from responder.actions.base import (
    ActionContext,
    ActionFn,
    Outcome,
    Status,
    hiding,
    scrub,
    truncate,
)
from responder.actions.labels import LabelError
from runbook.actions import ACTIONS, CeleryPoolParams, ExecParams
from runbook.model_base import Strict

DEFAULT_TIMEOUT = 60.0
# exec kills its process group at its own timeout; this outer bound only backs it up.
_EXEC_GRACE = 5.0
_PG_GRACE = 15.0
_CELERY_GRACE = 2 * celery.IO_TIMEOUT  # room to connect and publish, each bounded by it
RESOLVE_TIMEOUT = notify.SEND_TIMEOUT + 5.0
"""How long resolve_page may take: the receivers are told in parallel, each within its own
send timeout."""


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
    # A REINDEX CONCURRENTLY cut short leaves an invalid copy of each index; pg_reindex drops
    # an earlier run's copies before it starts (and does not start if it cannot), so a re-run
    # after a crash rebuilds the indexes again without adding copies.
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


def _names(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, Mapping):
        return {v for v in value.values() if isinstance(v, str)}
    if isinstance(value, list | tuple | set | frozenset):
        return {v for v in value if isinstance(v, str)}
    return set()


def passed_env(params: object) -> set[str]:
    """Names of the env vars these params pass in from the environment: exec's `env` list and
    every `*_env` field (one name, or a list or mapping of names), whatever the action."""
    names: set[str] = set()
    # Not every caller's params are a model (run_action reports a wrong type as an outcome).
    for field in getattr(type(params), "model_fields", {}):
        if field == "env" or field.endswith("_env"):
            names |= _names(getattr(params, field))
    return names


def secrets(ctx: ActionContext, params: object) -> list[str]:
    """Values of every env var the runbook or these params name or pass in (and URL passwords).

    A var passed to an action is hidden whatever its name: the runbook passes it because the
    action needs it, and a program echoing its token in an error must not put it in the audit.
    """
    book = ctx.runbook.runbook
    names: set[str] = {t.url_env for t in book.watch.redis if t.url_env}
    names |= {t.dsn_env for t in book.watch.postgres}
    names |= {name for receivers in book.page.values() for r in receivers
              for _, name in notify.receiver_env(r)}
    names |= passed_env(params)
    values = [ctx.env[n] for n in names if ctx.env.get(n)]
    for value in list(values):
        password = urlsplit(value).password if "://" in value else None
        if password:
            values.append(password)
    # Longest first, so a URL is replaced whole before its password inside it.
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def _scrub(value: Any, hidden: Sequence[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, hidden)
    if isinstance(value, dict):
        return {k: _scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, hidden) for v in value]
    return value


async def _guarded(
    name: str, call: Callable[[], Awaitable[Outcome]], limit: float, hidden: Sequence[str],
    metrics: ActionMetrics | None,
) -> Outcome:
    """Await `call` under `limit`; never raises (but for cancellation), scrubs, always counts.

    The one path every outcome takes to the audit, so no entry point can skip a part of it.
    """
    started = time.monotonic()
    # Hidden while the action runs too: what it cuts (outcome(), truncate(), exec's head) is
    # scrubbed before the cut, where a secret straddling it is still whole.
    with hiding(hidden):
        try:
            async with asyncio.timeout(limit):
                result = await call()
        except LabelError as exc:
            result = Outcome(name, Status.FAILED, 0.0, str(exc), {"label": exc.label})
        except TimeoutError:
            result = Outcome(name, Status.TIMEOUT, 0.0, f"did not finish within {limit:g}s")
        except Exception as exc:  # every failure of one action becomes its outcome
            result = Outcome(name, Status.FAILED, 0.0, truncate(f"{type(exc).__name__}: {exc}"))
    # Again on the result, whatever built it: this also drops the start of a secret left at a
    # cut note by text cut without the secrets at hand.
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


async def run_action(
    name: str, params: Strict, ctx: ActionContext, metrics: ActionMetrics | None = None
) -> Outcome:
    """Run one action under its timeout; never raises (but for cancellation), always counts."""

    async def call() -> Outcome:
        impl = ACTION_IMPLS.get(name)
        if impl is None:
            return Outcome(name, Status.FAILED, 0.0, f"unknown action {name!r}")
        if not isinstance(params, ACTIONS[name]):
            raise TypeError(f"{name} takes {ACTIONS[name].__name__}, not {type(params).__name__}")
        return await impl(ctx, params)

    return await _guarded(name, call, timeout_of(params), secrets(ctx, params), metrics)


RESOLVE_ACTION = "page_resolve"
"""The action name of resolve_page's outcome and metrics."""


async def resolve_page(
    ctx: ActionContext, severity: str | None = None, metrics: ActionMetrics | None = None
) -> Outcome:
    """Tell the receivers paged for this occurrence that it healed (PagerDuty by dedup_key).

    `severity` defaults to the one the last successful page in ctx.history went out with. Like
    run_action: bounded by RESOLVE_TIMEOUT, never raises (but for cancellation), secrets
    scrubbed, counted in `metrics` under the action name "page_resolve".
    """
    return await _guarded(RESOLVE_ACTION, lambda: notify.resolve(ctx, severity),
                          RESOLVE_TIMEOUT, secrets(ctx, None), metrics)


__all__ = ["ACTION_IMPLS", "IDEMPOTENT", "RESOLVE_TIMEOUT", "ActionMetrics", "default_metrics",
           "passed_env", "resolve_page", "run_action", "secrets", "timeout_of"]
