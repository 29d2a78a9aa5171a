"""`runbook render FILE... --out DIR`: rules, rule tests, dashboards and deploy configs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runbook.loader import LoadedRunbook, RunbookError, load_runbook
from runbook.render import RenderError
from runbook.render.alertmanager import Delivery
from runbook.render.output import Options, drift, render_all, write_all
from runbook.render.prometheus import ALERTMANAGER, EXPORTER, responder_target
from runbook.render.timing import Timing

HELP = "render alert rules, promtool tests, Grafana dashboards and Prometheus/Alertmanager configs"
EXAMPLES = (
    "  runbook render examples/*.yml --out . --exporter cinder-js=127.0.0.1:9817\n"
    "  runbook render examples/*.yml --out . --exporter cinder-js=127.0.0.1:9817 --check\n"
    "      # exit 1 if committed files drifted\n"
    "  runbook render runbook.yml --out /tmp/fast --time-scale 0.01 \\\n"
    "      --responder-url http://127.0.0.1:19818/alerts  # a loop that fires in seconds\n"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="runbook YAML files")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="write alert_rules/, grafana/ and deploy/ under DIR")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing files that differ from a fresh render")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="FACTOR",
                        help="multiply every for, window and interval (e.g. 0.01 for tests; "
                             "floors: 1s intervals, windows of 4 intervals)")
    parser.add_argument("--responder-url", default=Delivery().responder_url, metavar="URL",
                        help="the responder's webhook (default %(default)s)")
    parser.add_argument("--exporter", action="append", metavar="[SERVICE=]HOST:PORT",
                        help="the exporter of a runbook's service, scraped under its "
                             "watch.exporter_job (repeatable; an address without SERVICE= goes "
                             f"to the next runbook not named; default {EXPORTER} for the first)")
    parser.add_argument("--alertmanager", default=ALERTMANAGER, metavar="HOST:PORT",
                        help="Alertmanager for Prometheus to send to (default %(default)s)")
    parser.add_argument("--secrets-dir", default=Delivery().secrets_dir, metavar="DIR",
                        help="where Alertmanager reads secret files, one per env var name "
                             "(default %(default)s)")
    parser.add_argument("--token-file", default=Delivery().token_file, metavar="PATH",
                        help="file Alertmanager reads the responder's bearer token from "
                             "(default %(default)s)")
    parser.add_argument("--rules-dir", default=Options().rules_dir, metavar="DIR",
                        help="the rule files' directory as prometheus.yml names it, relative to "
                             "prometheus.yml's own directory or absolute (default %(default)s)")
    parser.add_argument("--release", default=Options().release, metavar="NAME",
                        help="`release` label of the PrometheusRule (default %(default)s)")


def options_from(args: argparse.Namespace) -> Options:
    """Render options from the command line; ValueError on a bad value."""
    scale = float(args.time_scale)
    if not 0 < scale <= 1:
        raise ValueError(f"--time-scale {scale:g} must be above 0 and at most 1")
    responder_target(args.responder_url)
    return Options(timing=Timing(scale),
                   delivery=Delivery(args.responder_url, args.secrets_dir, args.token_file),
                   exporters=list(args.exporter or [EXPORTER]),
                   alertmanager=args.alertmanager, release=args.release,
                   rules_dir=args.rules_dir)


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"runbook render: {exc}", file=sys.stderr)
        return 2
    runbooks: list[LoadedRunbook] = []
    failed = False
    for file in args.files:
        try:
            runbooks.append(load_runbook(file))
        except RunbookError as exc:
            failed = True
            for error in exc.errors:
                print(error, file=sys.stderr)
    if failed:
        return 1
    try:
        files = render_all(runbooks, options)
    except RenderError as exc:
        print(f"runbook render: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    if args.check:
        changed = drift(files, out)
        for rel in changed:
            print(f"{out / rel}: differs from a fresh render", file=sys.stderr)
        return 1 if changed else 0
    for path in write_all(files, out):
        print(f"wrote {path}")
    return 0
