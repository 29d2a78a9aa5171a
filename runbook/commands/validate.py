"""`runbook validate FILE...`: check runbooks; exit 1 listing every error."""

from __future__ import annotations

import argparse
import sys

from runbook.loader import RunbookError, load_runbook

HELP = "check runbook files and list every error with file, line and key path"
EXAMPLES = "  runbook validate examples/*.yml\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="runbook YAML files")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for file in args.files:
        try:
            loaded = load_runbook(file)
        except RunbookError as exc:
            failed += 1
            for error in exc.errors:
                print(error, file=sys.stderr)
            continue
        print(f"{file}: ok ({loaded.service}: {len(loaded.alerts)} alerts, "
              f"{len(loaded.runbook.respond)} responses)")
    return 1 if failed else 0
