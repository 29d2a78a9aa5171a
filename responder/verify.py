"""Is an alert occurrence still firing? Asked of Prometheus (ALERTS) or Alertmanager (v2 API).

`still_firing(ctx)` is what the responder calls after a rule's verify_after. The URLs come from
the keyword arguments, else from ctx.env (RUNBOOK_PROMETHEUS_URL, RUNBOOK_ALERTMANAGER_URL), else
Prometheus is found from the alert's generatorURL. None means neither could tell.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from responder.actions.base import ActionContext

PROMETHEUS_ENV = "RUNBOOK_PROMETHEUS_URL"
ALERTMANAGER_ENV = "RUNBOOK_ALERTMANAGER_URL"
# ALERTS labels that are not the alert's own.
_SERIES_ONLY = {"__name__", "alertstate"}
_LIVE_STATES = {"active", "suppressed", "unprocessed"}

log = logging.getLogger("responder.verify")


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal holding exactly `value`.

    JSON's escapes are Go's, except that ensure_ascii would write characters outside the BMP as
    surrogate pairs, which Go's unquoting refuses: those are written as they are (UTF-8)."""
    return json.dumps(value, ensure_ascii=False)


def alertmanager_string(value: str) -> str:
    """A double-quoted matcher value as Alertmanager's filter parser reads it: it knows only
    the escapes \\, \" and \n and takes any other backslash sequence literally."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def prometheus_from_generator(generator_url: str) -> str | None:
    """The Prometheus base URL an alert's generatorURL points into (…/graph?g0.expr=…)."""
    parts = urlsplit(generator_url)
    if parts.scheme not in ("http", "https") or "/graph" not in parts.path:
        return None
    base = parts.path.rsplit("/graph", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, base, "", ""))


def firing_in(result: list[dict[str, Any]], labels: Mapping[str, str]) -> bool:
    """Whether any ALERTS series belongs to this alert (its labels are a subset of the alert's:
    Alertmanager's copy may carry external labels Prometheus added on sending)."""
    for series in result:
        metric: dict[str, str] = series.get("metric", {})
        own = {k: v for k, v in metric.items() if k not in _SERIES_ONLY}
        if all(labels.get(k) == v for k, v in own.items()):
            return True
    return False


async def ask_prometheus(
    session: aiohttp.ClientSession, base: str, labels: Mapping[str, str], seconds: float
) -> bool | None:
    """Ask ALERTS{alertname=…, alertstate="firing"} and match the alert's labels."""
    name = labels.get("alertname")
    if not name:
        return None
    query = f'ALERTS{{alertname={promql_string(name)},alertstate="firing"}}'
    async with session.get(f"{base.rstrip('/')}/api/v1/query", params={"query": query},
                           timeout=aiohttp.ClientTimeout(total=seconds)) as response:
        if response.status != 200:
            return None
        body = await response.json()
    if body.get("status") != "success":
        return None
    if firing_in(body["data"]["result"], labels):
        return True
    # No series: only an answer if this Prometheus has the rule at all (else the alert may come
    # from another Prometheus, and "not firing here" says nothing).
    return False if await _has_rule(session, base, name, seconds) else None


async def _has_rule(session: aiohttp.ClientSession, base: str, name: str, seconds: float) -> bool:
    async with session.get(f"{base.rstrip('/')}/api/v1/rules", params={"type": "alert"},
                           timeout=aiohttp.ClientTimeout(total=seconds)) as response:
        if response.status != 200:
            return False
        body = await response.json()
    groups = body.get("data", {}).get("groups", [])
    return any(rule.get("name") == name for group in groups for rule in group.get("rules", []))


def _ends_in_future(ends_at: str, now: datetime) -> bool:
    try:
        ends = datetime.fromisoformat(ends_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    return ends > now


async def ask_alertmanager(
    session: aiohttp.ClientSession, base: str, fingerprint: str, labels: Mapping[str, str],
    seconds: float,
) -> bool | None:
    """Look for the alert's fingerprint among Alertmanager's live alerts (silenced ones too)."""
    params: dict[str, str] = {"active": "true", "silenced": "true", "inhibited": "true",
                              "unprocessed": "true"}
    if labels.get("alertname"):
        params["filter"] = f"alertname={alertmanager_string(labels['alertname'])}"
    async with session.get(f"{base.rstrip('/')}/api/v2/alerts", params=params,
                           timeout=aiohttp.ClientTimeout(total=seconds)) as response:
        if response.status != 200:
            return None
        alerts: list[dict[str, Any]] = await response.json()
    now = datetime.now(UTC)
    return any(
        a.get("fingerprint") == fingerprint
        and a.get("status", {}).get("state") in _LIVE_STATES
        and _ends_in_future(str(a.get("endsAt", "")), now)
        for a in alerts
    )


async def still_firing(
    ctx: ActionContext,
    *,
    prometheus_url: str | None = None,
    alertmanager_url: str | None = None,
    seconds: float = 5.0,
) -> bool | None:
    """True/False from Prometheus if it answers, else from Alertmanager; None when neither can."""
    prometheus = (prometheus_url or ctx.env.get(PROMETHEUS_ENV)
                  or prometheus_from_generator(ctx.alert.generator_url))
    alertmanager = alertmanager_url or ctx.env.get(ALERTMANAGER_ENV)
    labels = ctx.alert.labels
    if prometheus:
        try:
            answer = await ask_prometheus(ctx.session, prometheus, labels, seconds)
        # TypeError, AttributeError: a 200 whose JSON is not shaped as the API documents.
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            log.warning("Prometheus at %s could not say: %s", prometheus, type(exc).__name__)
            answer = None
        if answer is not None:
            return answer
    if alertmanager:
        try:
            return await ask_alertmanager(ctx.session, alertmanager, ctx.alert.fingerprint,
                                          labels, seconds)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            log.warning("Alertmanager at %s could not say: %s", alertmanager,
                        type(exc).__name__)
    return None
