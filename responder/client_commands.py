"""`runbook incidents`, `runbook approve ID`, `runbook reject ID`: talk to a running responder."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URL_ENV = "RUNBOOK_RESPONDER_URL"
TOKEN_ENV = "RUNBOOK_WEBHOOK_TOKEN"  # noqa: S105 - the name of the variable, not a secret
DEFAULT_URL = "http://127.0.0.1:9818"


class ClientError(Exception):
    """The responder could not be reached or refused the request."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, metavar="URL",
                        help=f"the responder (default ${URL_ENV} or {DEFAULT_URL})")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help=f"file holding the responder's token (`runbook run` keeps it in "
                             f"DATA_DIR/webhook_token); default ${TOKEN_ENV}")
    parser.add_argument("--json", action="store_true", help="print the JSON answer")


def _shown(url: str) -> str:
    """The URL without user and password, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "(an unreadable URL)"
    if parts.username is None and parts.password is None:
        return url
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(f"cannot read the token file {args.token_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc
    # Stripped as the responder strips its own (a file or `echo` leaves a newline).
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ClientError(f"give the responder's token: --token-file FILE or {TOKEN_ENV}")
    return token


def _header_safe(token: str) -> str:
    """The token, if an HTTP header can carry it; never echoed in the error."""
    if not token.isprintable() or not token.isascii():
        raise ClientError("the token holds a control or a non-ASCII character, which no HTTP "
                          "header can carry: check the token file or variable")
    return token


def request(args: argparse.Namespace, method: str, path: str,
            payload: dict[str, Any] | None = None) -> Any:
    """One call to the responder with its bearer token."""
    base = (args.url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ClientError(f"{_shown(base)!r} is not an http(s) URL")
    token = _header_safe(_token(args))
    data = None if payload is None else json.dumps(payload).encode()
    try:
        req = urllib.request.Request(f"{base}{path}", data=data, method=method,  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - http(s) checked
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            reason = ""
        raise ClientError(f"{method} {path}: HTTP {exc.code} {reason}".rstrip()) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise ClientError(f"cannot reach the responder at {_shown(base)}: "
                          f"{getattr(exc, 'reason', None) or exc}") from exc
    except ValueError as exc:  # an unreadable URL, or an answer that is not JSON
        raise ClientError(f"{method} {_shown(base)}{path}: {exc}") from exc


def _row(item: dict[str, Any]) -> str:
    rule = ", ".join(d.get("rule", "") for d in item.get("decision", [])) or "-"
    target = item["labels"].get("instance") or item["labels"].get("target") or ""
    return (f"{item['id']}  {item['state']:<17} {item['alertname']:<24} {target:<20} "
            f"{rule:<16} {item['first_seen']}")


@dataclass(frozen=True)
class _Incidents:
    HELP: str = "list the responder's incidents (alert occurrences) and their states"
    EXAMPLES: str = "  runbook incidents --active\n  runbook incidents --json | jq .\n"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        _common(parser)
        parser.add_argument("--active", action="store_true", help="only open incidents")
        parser.add_argument("--limit", type=int, default=100)

    def run(self, args: argparse.Namespace) -> int:
        query = f"/incidents?limit={args.limit}" + ("&active=1" if args.active else "")
        try:
            data = request(args, "GET", query)
        except ClientError as exc:
            print(f"runbook incidents: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(data, indent=2))
            return 0
        items = data.get("incidents", [])
        if not items:
            print("no incidents" + (" open" if args.active else ""))
        for item in items:
            print(_row(item))
        return 0


@dataclass(frozen=True)
class _Answer:
    verb: str
    HELP: str
    EXAMPLES: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        _common(parser)
        parser.add_argument("id", metavar="ID", help="the incident id (runbook incidents)")
        parser.add_argument("--reason", default="", help="why, for the audit")
        parser.add_argument("--by", default=os.environ.get("USER", "cli"),
                            help="who answers (default $USER)")

    def run(self, args: argparse.Namespace) -> int:
        try:
            # Quoted whole: an id is one path segment, never "../.." nor a query.
            oid = urllib.parse.quote(args.id, safe="")
            data = request(args, "POST", f"/incidents/{oid}/{self.verb}",
                           {"by": args.by, "reason": args.reason})
        except ClientError as exc:
            print(f"runbook {self.verb}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(data) if args.json else f"{data['id']}: {data['state']}")
        return 0


COMMAND_INCIDENTS = _Incidents()
COMMAND_APPROVE = _Answer("approve", "approve the actions of an incident awaiting approval",
                          "  runbook approve 3fddb16d60342e8c --reason 'checked the graphs'\n")
COMMAND_REJECT = _Answer("reject", "reject the actions of an incident awaiting approval",
                         "  runbook reject 3fddb16d60342e8c --reason 'deploy in progress'\n")
