"""YAML reading that remembers the line of every key and refuses duplicate keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceError:
    """One problem found in a runbook file, located by line and key path."""

    file: str
    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.reason}"


@dataclass
class Source:
    """A parsed YAML document plus the line of each key path (1-based)."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of the deepest known prefix of `path`."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return 1


def format_path(path: Path) -> str:
    """`('respond', 2, 'cooldown')` -> `respond[2].cooldown`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self.errors: list[SourceError] = []
        self._scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        # Scalars: pyyaml's safe constructor resolves the tag (int, float, bool, null, str).
        return self._scalars.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.errors.append(
                    SourceError(self.file, key_node.start_mark.line + 1, format_path(path),
                                "YAML merge keys (<<) are not supported; write the keys out")
                )
                continue
            key = self.build(key_node, (*path, "<key>"))
            if not isinstance(key, str | int):
                self.errors.append(
                    SourceError(self.file, key_node.start_mark.line + 1, format_path(path),
                                f"a key must be a string, not {key!r}")
                )
                continue
            key_path = (*path, key)
            line = key_node.start_mark.line + 1
            if key in out:
                first = self.lines.get(key_path, line)
                self.errors.append(
                    SourceError(self.file, line, format_path(key_path),
                                f"duplicate key (first set on line {first}; YAML would silently "
                                "keep only the last one)")
                )
                continue
            self.lines[key_path] = line
            out[key] = self.build(value_node, key_path)
        self.lines.pop((*path, "<key>"), None)
        return out


def parse_yaml(text: str, file: str) -> tuple[Source | None, list[SourceError]]:
    """Parse one YAML document; return it with its line map, or the errors that stop it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = f"YAML syntax error: {exc.problem or exc.context}"
        start = exc.context_mark
        if exc.problem and exc.context and start is not None and start.line + 1 != line:
            reason += f" ({exc.context} started on line {start.line + 1})"
        return None, [SourceError(file, line, "", reason)]
    except yaml.YAMLError as exc:
        return None, [SourceError(file, 1, "", f"YAML error: {exc}")]
    if node is None:
        empty = "the file is empty (a runbook needs at least `service:`)"
        return None, [SourceError(file, 1, "", empty)]
    builder = _Builder(file)
    data = builder.build(node, ())
    builder._scalars.dispose()
    return Source(file, data, builder.lines), builder.errors
