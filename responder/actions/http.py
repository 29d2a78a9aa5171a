"""The `http` action: call an endpoint with label values escaped for where they land."""

from __future__ import annotations

import json
from urllib.parse import quote

import aiohttp
from yarl import URL

from responder.actions.base import ActionContext, ActionFn, Outcome, Status, outcome
from responder.actions.labels import fill, fill_json
from runbook.actions import HttpParams


class MissingSecret(LookupError):
    """A header's env var is not set."""


def quote_value(value: str) -> str:
    """A label value as one URL path segment or query value (`..` cannot climb a level)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if set(value) <= {"."} else quoted


def build_request(
    ctx: ActionContext, params: HttpParams
) -> tuple[str, dict[str, str], bytes | None, list[str]]:
    """URL (values URL-quoted), headers, JSON body (built, then dumped) and secret header names."""
    labels, patterns = ctx.alert.labels, params.label_patterns
    url = fill(params.url, labels, patterns, quote_value)
    headers = {name: fill(value, labels, patterns) for name, value in params.headers.items()}
    for header, var in params.headers_env.items():
        secret = ctx.env.get(var)
        if not secret:
            raise MissingSecret(f"header {header}: env var {var} is not set")
        headers[header] = secret
    body = None
    if params.json_body is not None:
        body = json.dumps(fill_json(params.json_body, labels, patterns)).encode()
        headers.setdefault("Content-Type", "application/json")
    return url, headers, body, sorted(params.headers_env)


async def run_http(ctx: ActionContext, params: HttpParams) -> Outcome:
    """Send the request; the outcome is ok when the status is one of expect_status."""
    url, headers, body, secret_headers = build_request(ctx, params)
    # Secret header values never reach the outcome, only their names.
    shown = {k: ("<from env>" if k in secret_headers else v) for k, v in headers.items()}
    detail = {"method": params.method, "url": url, "headers": shown}
    if body is not None:
        detail["body"] = body.decode()
    if ctx.dry_run:
        return outcome("http", Status.DRY_RUN, f"would {params.method} {url}", **detail)
    timeout = aiohttp.ClientTimeout(total=params.timeout)
    async with ctx.session.request(
        params.method, URL(url, encoded=True), headers=headers, data=body, timeout=timeout,
        allow_redirects=False,
    ) as response:
        text = await response.text(errors="replace")
        status = Status.OK if response.status in params.expect_status else Status.FAILED
        return outcome(
            "http", status, f"HTTP {response.status}\n{text}", status_code=response.status, **detail
        )


IMPLS: dict[str, ActionFn] = {"http": run_http}
