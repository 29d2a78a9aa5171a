"""Byte-stable YAML output: key order kept, long lines never folded, a header line."""

from __future__ import annotations

from typing import Any

import yaml

HEADER = "# Rendered by `runbook render` from the runbook; edit the runbook, not this file.\n"


class _Dumper(yaml.SafeDumper):
    """Indents list items under their key, as hand-written Prometheus configs do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any, header: bool = True) -> str:
    """YAML text of plain data, the same bytes for the same data."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000,
                     default_flow_style=False, allow_unicode=True)
    return (HEADER if header else "") + text
