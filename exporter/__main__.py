"""`python -m exporter ...`: the exporter command alone, without the other subcommands loaded."""

from __future__ import annotations

import argparse
import sys

from exporter import command


def main() -> int:
    """Parse the exporter's arguments and run it."""
    parser = argparse.ArgumentParser(prog="runbook exporter", description=command.HELP,
                                     epilog="examples:\n" + command.EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.configure(parser)
    try:
        return command.run(parser.parse_args())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
