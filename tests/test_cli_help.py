"""Every subcommand has --help with examples, and the table names only modules that exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runbook.cli import COMMANDS, build_parser

RUNBOOK_BIN = str(Path(sys.executable).with_name("runbook"))


def test_every_listed_command_is_available() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_examples(name: str) -> None:
    done = subprocess.run([RUNBOOK_BIN, name, "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout
    examples = done.stdout.split("examples:", 1)[1]
    assert f"runbook {name}" in examples or name in examples
