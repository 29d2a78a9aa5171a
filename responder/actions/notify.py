"""The `page` action and its resolve: PagerDuty Events API v2, Slack webhook, generic webhook.

Receivers are chosen by severity from the runbook's `page` table: PageParams.severity, else the
alert's `severity` label, else "default". Secrets (routing keys, webhook URLs, tokens) come from
env vars and never enter an outcome or a log line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp

from responder.actions.base import ActionContext, ActionFn, Outcome, Status, outcome, truncate
from runbook.actions import PageParams
from runbook.schema import PAGERDUTY_SEVERITY, Receiver

Event = Literal["trigger", "resolve"]
SEND_TIMEOUT = 10.0


class SendError(Exception):
    """One receiver could not be notified (the message holds no secret)."""


def choose(ctx: ActionContext, severity: str | None) -> tuple[str, list[Receiver]]:
    """The severity used and its receivers (falling back to the `default` entry)."""
    wanted = severity or ctx.alert.labels.get("severity") or "default"
    table = ctx.runbook.runbook.page
    if wanted in table:
        return wanted, list(table[wanted])
    return wanted, list(table.get("default", []))


def summary(ctx: ActionContext, severity: str) -> str:
    """One line: severity, alertname, service and the alert's summary annotation."""
    labels = ctx.alert.labels
    text = f"[{severity.upper()}] {labels.get('alertname', 'alert')} on {ctx.runbook.service}"
    if ctx.alert.annotations.get("summary"):
        text += f": {ctx.alert.annotations['summary']}"
    return text[:1024]


def tried(ctx: ActionContext) -> list[dict[str, Any]]:
    """What was tried so far for this occurrence, each with its outcome."""
    return [o.as_json() for o in ctx.history]


def _details(ctx: ActionContext, message: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {
        "occurrence_id": ctx.occurrence_id,
        "fingerprint": ctx.alert.fingerprint,
        "starts_at": ctx.alert.starts_at.isoformat(),
        "labels": dict(ctx.alert.labels),
        "annotations": dict(ctx.alert.annotations),
        "tried": tried(ctx),
    }
    if message:
        details["message"] = message
    if ctx.incident_url:
        details["incident_url"] = ctx.incident_url
    return details


def pagerduty_body(
    ctx: ActionContext, routing_key: str, event: Event, severity: str, message: str | None
) -> dict[str, Any]:
    """An Events API v2 event; dedup_key is the occurrence id so resolve closes the same one."""
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": event,
                            "dedup_key": ctx.occurrence_id}
    if event == "trigger":
        body["payload"] = {
            "summary": summary(ctx, severity),
            "source": ctx.runbook.service,
            "severity": PAGERDUTY_SEVERITY.get(severity, "error"),
            "timestamp": ctx.alert.starts_at.isoformat(),
            "group": ctx.alert.labels.get("alertname", ""),
            "custom_details": _details(ctx, message),
        }
        if ctx.incident_url:
            body["links"] = [{"href": ctx.incident_url, "text": "incident"}]
    return body


def slack_escape(text: str) -> str:
    """Text shown as written in a Slack message: `<!everyone>` would ping everyone and
    `<https://x|text>` show a disguised link. Slack asks for exactly these three escapes
    (api.slack.com/reference/surfaces/formatting#escaping); `&` first, or it would re-escape."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(
    ctx: ActionContext, event: Event, severity: str, message: str | None
) -> dict[str, Any]:
    """A Slack incoming-webhook message: summary, message, what was tried, incident link.

    Every text in it but the incident link is escaped: alert labels and annotations come from
    whoever can fire an alert, action output from programs and endpoints.
    """
    if event == "resolve":
        lines = [f"Resolved: {summary(ctx, severity)}"]
    else:
        lines = [summary(ctx, severity)]
        if message:
            lines.append(message)
        if ctx.history:
            lines.append("Tried:")
            for item in ctx.history:
                first = item.output.strip().splitlines()[0][:200] if item.output.strip() else ""
                lines.append(f"- {item.action}: {item.status.value} "
                             f"({item.duration_seconds:.1f}s) {first}".rstrip())
        else:
            lines.append("Nothing was tried automatically.")
    lines = [slack_escape(line) for line in lines]
    if ctx.incident_url:
        # The responder's own URL, which Slack links as it is.
        lines.append(f"Incident: {ctx.incident_url}")
    return {"text": "\n".join(lines)}


def webhook_body(
    ctx: ActionContext, event: Event, severity: str, message: str | None
) -> dict[str, Any]:
    """The generic webhook's JSON: the event, the alert and what was tried."""
    return {"event": event, "service": ctx.runbook.service, "severity": severity,
            "summary": summary(ctx, severity), **_details(ctx, message)}


def receiver_env(receiver: Receiver) -> list[tuple[str, str]]:
    """The env vars a receiver reads when it pages: (its key, the var's name)."""
    if receiver.pagerduty is not None:
        return [("pagerduty.routing_key_env", receiver.pagerduty.routing_key_env)]
    if receiver.slack is not None:
        return [("slack.webhook_url_env", receiver.slack.webhook_url_env)]
    assert receiver.webhook is not None
    hook = receiver.webhook
    return [(f"webhook.{key}", name) for key, name in
            (("url_env", hook.url_env), ("token_env", hook.token_env)) if name]


def unset_page_env(page: Mapping[str, list[Receiver]], env: Mapping[str, str]) -> list[str]:
    """Where the runbook's paging receivers read an env var that is empty or not set
    (`page.critical[0].slack.webhook_url_env: SLACK_URL`); never the values."""
    return [f"page.{severity}[{i}].{key}: {name}"
            for severity, receivers in page.items()
            for i, receiver in enumerate(receivers)
            for key, name in receiver_env(receiver) if not env.get(name)]


def _secret(ctx: ActionContext, var: str) -> str:
    value = ctx.env.get(var)
    if not value:
        raise SendError(f"env var {var} is not set")
    return value


async def _post(
    ctx: ActionContext, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> int:
    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
    try:
        async with ctx.session.post(url, json=body, headers=headers, timeout=timeout,
                                    allow_redirects=False) as response:
            text = await response.text(errors="replace")
            if response.status >= 300:
                raise SendError(f"HTTP {response.status}: {truncate(text, 300)}")
            return response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Only the exception type: its text may carry the (secret) URL.
        raise SendError(f"request failed: {type(exc).__name__}") from None


async def _send(
    ctx: ActionContext, receiver: Receiver, event: Event, severity: str, message: str | None
) -> tuple[str, int]:
    if receiver.pagerduty is not None:
        key = _secret(ctx, receiver.pagerduty.routing_key_env)
        body = pagerduty_body(ctx, key, event, severity, message)
        return "pagerduty", await _post(ctx, receiver.pagerduty.url, body)
    if receiver.slack is not None:
        url = _secret(ctx, receiver.slack.webhook_url_env)
        return "slack", await _post(ctx, url, slack_body(ctx, event, severity, message))
    assert receiver.webhook is not None  # a Receiver is exactly one of the three
    hook = receiver.webhook
    url = hook.url if hook.url is not None else _secret(ctx, hook.url_env or "")
    headers = None
    if hook.token_env:
        headers = {"Authorization": f"Bearer {_secret(ctx, hook.token_env)}"}
    return "webhook", await _post(ctx, url, webhook_body(ctx, event, severity, message), headers)


def _kind(receiver: Receiver) -> str:
    return "pagerduty" if receiver.pagerduty else "slack" if receiver.slack else "webhook"


async def notify(
    ctx: ActionContext, name: str, event: Event, severity: str | None, message: str | None
) -> Outcome:
    """Send one event to every receiver of the severity; one failing never stops the others."""
    chosen, receivers = choose(ctx, severity)
    if not receivers:
        return outcome(name, Status.FAILED, f"no receiver for severity {chosen!r} and no "
                       "'default' entry under page", severity=chosen)
    labels = [f"{_kind(r)}#{i}" for i, r in enumerate(receivers)]
    if ctx.dry_run:
        return outcome(name, Status.DRY_RUN, f"would {event} {', '.join(labels)}",
                       severity=chosen, receivers=labels)
    results = await asyncio.gather(
        *(_send(ctx, r, event, chosen, message) for r in receivers), return_exceptions=True
    )
    report: dict[str, str] = {}
    missed: list[str] = []
    for label, result in zip(labels, results, strict=True):
        if isinstance(result, SendError):
            report[label] = f"failed: {result}"
        elif isinstance(result, BaseException):
            report[label] = f"failed: {type(result).__name__}"
        else:
            report[label] = f"sent (HTTP {result[1]})"
            continue
        missed.append(label)
    text = "\n".join(f"{label}: {line}" for label, line in report.items())
    # `reached`: someone was told, though another receiver failed (the page still counts, and
    # is resolved with the alert); `missed`: who was not.
    return outcome(name, Status.FAILED if missed else Status.OK, text, severity=chosen,
                   receivers=report, reached=len(missed) < len(labels), missed=missed)


async def page(ctx: ActionContext, params: PageParams) -> Outcome:
    """Page the receivers of a severity with the alert and what was tried (ctx.history)."""
    return await notify(ctx, "page", "trigger", params.severity, params.message)


def paged_severity(ctx: ActionContext) -> str | None:
    """The severity the last page of this occurrence went out with, if any (from ctx.history)."""
    for item in reversed(ctx.history):
        if item.action == "page" and item.detail.get("severity") and (
                item.status is Status.OK or item.detail.get("reached")):
            return str(item.detail["severity"])
    return None


async def resolve(ctx: ActionContext, severity: str | None = None) -> Outcome:
    """Tell the receivers that were paged that the incident healed (PagerDuty: by dedup_key)."""
    return await notify(ctx, "page_resolve", "resolve", severity or paged_severity(ctx), None)


IMPLS: dict[str, ActionFn] = {"page": page}
