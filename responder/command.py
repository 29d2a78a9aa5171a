"""`runbook responder`: serve the webhook, decide, and run the runbook's responses."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aiohttp import web

from responder.app import Settings, build_app
from responder.store import StoreError, open_store
from runbook import logs
from runbook.eventloop import freeze_startup_heap, new_event_loop
from runbook.loader import load_or_report
from runbook.units import parse_duration

HELP = "receive Alertmanager webhooks and run the runbook's responses within its safety rails"
EXAMPLES = """\
  RUNBOOK_WEBHOOK_TOKEN=... runbook responder --runbook runbook.yml
  runbook responder --runbook runbook.yml --listen 0.0.0.0:9818 \\
      --store postgresql://responder@db/responder --token-file /run/secrets/webhook-token
"""
TOKEN_ENV = "RUNBOOK_WEBHOOK_TOKEN"  # noqa: S105 - the name of the variable, not a secret


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runbook", required=True, metavar="FILE", help="the runbook file")
    parser.add_argument("--listen", default="127.0.0.1:9818", metavar="HOST:PORT",
                        help="address to serve on (default 127.0.0.1:9818)")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="postgresql://... to share state between replicas, or "
                             "sqlite:///PATH (default: SQLite in --data-dir)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="Redis to wake other replicas' workers when work is queued")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help=f"file holding the webhook bearer token (else ${TOKEN_ENV})")
    parser.add_argument("--data-dir", default="data", metavar="DIR",
                        help="where the SQLite store lives (default ./data)")
    parser.add_argument("--public-url", default="", metavar="URL",
                        help="this responder's URL as humans reach it (links in pages)")
    parser.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                        help="how long a replica holds claimed work without renewing it")
    parser.add_argument("--retention", type=parse_duration, default="30d", metavar="DURATION",
                        help="keep ended incidents and notification bodies this long "
                             "(default 30d; 0s keeps them forever)")
    logs.add_arguments(parser)


def read_token(token_file: str | None) -> str:
    """The bearer token from --token-file, else from the environment; '' when neither."""
    if token_file:
        return Path(token_file).read_text(encoding="utf-8").strip()
    return os.environ.get(TOKEN_ENV, "").strip()


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r} is not HOST:PORT (e.g. 127.0.0.1:9818)")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    loaded = load_or_report(args.runbook)
    if loaded is None:
        return 1
    try:
        token = read_token(args.token_file)
        host, port = parse_listen(args.listen)
        store = open_store(args.store, args.data_dir)
    except (OSError, ValueError) as exc:
        print(f"runbook responder: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"runbook responder: no webhook token: set {TOKEN_ENV} or pass --token-file",
              file=sys.stderr)
        return 2
    logs.setup(args.log_level, args.log_format,
               logs.secret_values(loaded.runbook, token, args.store or "", args.redis or ""))
    settings = Settings(token=token, lease=args.lease, public_url=args.public_url,
                        redis_url=args.redis, retention=args.retention)
    app = build_app(loaded, store, settings)
    app.on_startup.append(freeze_startup_heap)
    try:
        web.run_app(app, host=host, port=port, access_log=None, loop=new_event_loop(),
                    print=lambda _m: print(f"runbook responder: {loaded.service} on "
                                           f"http://{host}:{port}, store {store.dialect}",
                                           file=sys.stderr, flush=True))
    except OSError as exc:  # the address is taken or cannot be bound
        print(f"runbook responder: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"runbook responder: {exc}", file=sys.stderr)
        return 1
    return 0
