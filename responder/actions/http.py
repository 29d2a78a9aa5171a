"""The `http` action: call an endpoint with label values escaped for where they land."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp
from yarl import URL

from responder.actions.base import (
    OUTPUT_LIMIT,
    ActionContext,
    ActionFn,
    Outcome,
    Status,
    head,
    outcome,
)
from responder.actions.labels import LabelError, fill, fill_json, label_value
from runbook.actions import PLACEHOLDER, HttpParams

READ_CHUNK = 64 * 1024
BODY_KEPT = OUTPUT_LIMIT - 256
"""Response bytes kept in the outcome; the rest of OUTPUT_LIMIT holds the status line and the
note of how much was cut. The rest of the body is read and counted, never kept."""

# scheme://, then the authority up to the first `/`, `?` or `#` (a placeholder holds none).
_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)", re.DOTALL)
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# `_` is no DNS character, but container names (Compose's `app_web_1`) resolve with it.
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
# A last label that is a number makes resolvers and URL parsers read the whole host as an IPv4
# address in some form (`0x7f.1`, `2130706433`): only the dotted-quad form is taken.
_NUMERIC_END = re.compile(r"(?:.*\.)?(?:[0-9]+|0[xX][0-9A-Fa-f]*)\.?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")  # no `%zone`
_PORT = re.compile(r"[0-9]{1,5}")
# In the authority the host check replaces the default label pattern (which refuses the `[` of
# an IPv6 address); a pattern the runbook sets for the label still applies as well.
_ANY_VALUE = r".*"


class MissingSecret(LookupError):
    """A header's env var is not set."""


def quote_value(value: str) -> str:
    """A label value as one URL path segment or query value (`..` cannot climb a level)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if set(value) <= {"."} else quoted


def _parses(kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address], text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        return bool(_IPV6.fullmatch(inner)) and _parses(ipaddress.IPv6Address, inner)
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return False
    return not _NUMERIC_END.fullmatch(host) or _parses(ipaddress.IPv4Address, host)


def host_port_problem(value: str) -> str | None:
    """Why value is not `host` or `host:port` (hostname, dotted IPv4 or [IPv6], and a port
    1-65535); None when it is. Nothing else: no userinfo, `@`, path, query or `%` escape."""
    if value.startswith("["):
        end = value.find("]") + 1
        host, rest = (value[:end], value[end:]) if end else (value, "")
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
    if not _valid_host(host):
        return f"{host[:80]!r} is not a hostname, IPv4 address or [IPv6] address"
    if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])
                     and 0 < int(rest[1:]) < 65536):
        return f"{rest[:80]!r} after the host is not a port (:1 to :65535)"
    return None


def fill_authority(template: str, labels: Mapping[str, str], patterns: Mapping[str, str]) -> str:
    """The URL's `host[:port]` part with its placeholders filled: each value must itself be a
    host or host:port (Prometheus' `instance` label) and is put in as is, not percent-encoded."""
    names = PLACEHOLDER.findall(template)
    if not names:
        return template  # written in the runbook, as the author wants it
    wanted = {**{name: _ANY_VALUE for name in names}, **patterns}

    def one(match: re.Match[str]) -> str:
        label = match.group(1)
        value = label_value(label, labels, wanted)
        problem = host_port_problem(value)
        if problem:
            raise LabelError(label, f"fills the URL's host, but {problem}")
        return value

    filled = PLACEHOLDER.sub(one, template)
    # Each value is fine alone, but not always together (`{{ labels.instance }}:8080` with
    # `web:9100` in the label): the host part as a whole must still be one.
    problem = host_port_problem(filled.rpartition("@")[2])
    if problem:
        raise LabelError(names[0], f"the URL's host would be {filled[:80]!r}: {problem}")
    return filled


def fill_url(template: str, labels: Mapping[str, str], patterns: Mapping[str, str]) -> str:
    """The URL with placeholders filled: in the authority as a checked host[:port], in the path,
    query and fragment URL-quoted."""
    parts = _AUTHORITY.fullmatch(template)
    if parts is None:
        return fill(template, labels, patterns, quote_value)
    scheme, authority, rest = parts.groups()
    return (scheme + fill_authority(authority, labels, patterns)
            + fill(rest, labels, patterns, quote_value))


def build_request(
    ctx: ActionContext, params: HttpParams
) -> tuple[str, dict[str, str], bytes | None, list[str]]:
    """URL (values URL-quoted), headers, JSON body (built, then dumped) and secret header names."""
    labels, patterns = ctx.alert.labels, params.label_patterns
    url = fill_url(params.url, labels, patterns)
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


async def read_head(content: aiohttp.StreamReader, limit: int = BODY_KEPT) -> tuple[bytes, int]:
    """The first `limit` bytes of a body, and its whole length. The rest is read to the end, so
    the server is not cut off mid-answer, but only counted: a big answer (a cache warmed, a
    dump) must not grow the responder by its size."""
    kept = bytearray()
    total = 0
    async for chunk in content.iter_chunked(READ_CHUNK):
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept), total


async def run_http(ctx: ActionContext, params: HttpParams) -> Outcome:
    """Send the request; the outcome is ok when the status is one of expect_status."""
    url, headers, body, secret_headers = build_request(ctx, params)
    # Secret header values never reach the outcome, only their names.
    shown = {k: ("<from env>" if k in secret_headers else v) for k, v in headers.items()}
    detail: dict[str, object] = {"method": params.method, "url": url, "headers": shown}
    if body is not None:
        detail["body"] = body.decode()
    if ctx.dry_run:
        return outcome("http", Status.DRY_RUN, f"would {params.method} {url}", **detail)
    timeout = aiohttp.ClientTimeout(total=params.timeout)
    async with ctx.session.request(
        params.method, URL(url, encoded=True), headers=headers, data=body, timeout=timeout,
        allow_redirects=False,
    ) as response:
        kept, total = await read_head(response.content)
        status = Status.OK if response.status in params.expect_status else Status.FAILED
    # Cut once, here, where the total is known: outcome() would cut the note off again.
    output = f"HTTP {response.status}\n{head(kept, total, BODY_KEPT)}"
    return Outcome("http", status, 0.0, output, {
        **detail, "status_code": response.status, "response_bytes": total,
        "response_bytes_discarded": total - len(kept)})


IMPLS: dict[str, ActionFn] = {"http": run_http}
