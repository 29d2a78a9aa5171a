"""`runbook exporter --runbook FILE [--listen HOST:PORT]`: serve the runbook's metrics."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from exporter.app import build_app
from exporter.collectors import COLLECTORS, Options
from exporter.resources import ConfigError
from runbook import logs
from runbook.loader import LoadedRunbook, load_or_report

# The project's pair: exporter 9817, responder 9818 (what `runbook render` and `runbook run` use).
DEFAULT_LISTEN = "127.0.0.1:9817"

HELP = "serve the metrics a runbook watches on /metrics (with no runbook: the host and itself)"
EXAMPLES = (
    "  runbook exporter --runbook runbook.yml\n"
    "  runbook exporter --runbook runbook.yml --listen 0.0.0.0:9817\n"
    "  runbook exporter            # host and exporter metrics only\n"
)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as host and port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9817)")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":9817" means every address


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runbook", metavar="FILE", help="the runbook file (default: none)")
    parser.add_argument("--listen", type=parse_listen, default=parse_listen(DEFAULT_LISTEN),
                        metavar="HOST:PORT", help=f"address to serve on (default {DEFAULT_LISTEN})")
    parser.add_argument("--collectors", metavar="NAMES",
                        help="comma-separated collectors to run (default: all of "
                             + ", ".join(COLLECTORS) + ")")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where log followers keep their positions across restarts")
    logs.add_arguments(parser)
    parser.add_argument("--proc-root", default="/proc", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--cgroup-root", default="/sys/fs/cgroup", metavar="DIR",
                        help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    loaded: LoadedRunbook | None = None
    if args.runbook:
        loaded = load_or_report(args.runbook)
        if loaded is None:
            return 1
    logs.setup(args.log_level, args.log_format,
               logs.secret_values(loaded.runbook if loaded else None))
    names = [n.strip() for n in args.collectors.split(",") if n.strip()] \
        if args.collectors else None
    options = Options(proc_root=args.proc_root, cgroup_root=args.cgroup_root,
                      state_dir=args.state_dir)
    try:
        app = build_app(loaded, collectors=names, options=options)
    except ConfigError as exc:
        print(f"runbook exporter: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen

    def announce(_: str) -> None:
        # run_app calls this once the port is bound, so the line never precedes a bind error.
        print(f"runbook exporter: serving http://{host}:{port}/metrics", file=sys.stderr,
              flush=True)

    try:
        web.run_app(app, host=host, port=port, print=announce, access_log=None)
    except OSError as exc:
        # A port in use or an address not on this host: one line, as `runbook run` says it.
        print(f"runbook exporter: {exc}", file=sys.stderr)
        return 2
    return 0
