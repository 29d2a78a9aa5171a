"""The `runbook` command line: one subcommand per module, listed in one table."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast


class Command(Protocol):
    """A subcommand module: it describes its arguments and runs."""

    HELP: str
    EXAMPLES: str

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# Subcommand name -> module implementing it.
COMMANDS: dict[str, str] = {
    "validate": "runbook.commands.validate",
    "show": "runbook.commands.show",
    "render": "runbook.commands.render",
    "exporter": "exporter.command",
    "responder": "responder.command",
    "run": "runbook.commands.run",
    "incidents": "responder.client_commands",
    "approve": "responder.client_commands",
    "reject": "responder.client_commands",
    "replay": "responder.replay",
    "explain": "responder.explain",
    "demo": "runbook.commands.demo",
}


def _load(name: str) -> Command | None:
    try:
        module = importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name and COMMANDS[name].startswith(exc.name):
            return None  # not built yet in this version
        raise
    command = getattr(module, "COMMAND_" + name.upper(), module)
    return cast(Command, command)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every available subcommand, or with `only` that one.

    Loading one subcommand keeps start-up lean: `runbook exporter` never imports the
    dashboard SDK that `runbook render` needs.
    """
    parser = argparse.ArgumentParser(
        prog="runbook",
        description="Make an operations runbook run itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        command = _load(name)
        if command is None:
            continue
        child = sub.add_parser(
            name,
            help=command.HELP,
            description=command.HELP,
            epilog="examples:\n" + command.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.configure(child)
        child.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `runbook` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    command = cast(Command, args._command)
    try:
        return command.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
