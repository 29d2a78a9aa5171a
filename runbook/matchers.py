"""Alertmanager-style label matchers: `=`, `!=`, `=~`, `!~`, regexes fully anchored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_MATCHER = re.compile(
    r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s]*))\s*$'
)


@dataclass(frozen=True)
class Matcher:
    """One label matcher."""

    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, name: str, op: str, value: str) -> Matcher:
        """A matcher, its regex compiled and anchored as Alertmanager anchors it."""
        if op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"unknown matcher operator {op!r}")
        regex = None
        if op in ("=~", "!~"):
            try:
                # Alertmanager compiles "^(?:v)$" in Go: anchored at the very end of the text
                # (Python's "$" also matches before a final newline) and "." never matches a
                # newline. fullmatch without DOTALL is the same.
                regex = re.compile(f"(?:{value})")
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from exc
        return cls(name, op, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this matcher (a missing label is the empty string)."""
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def parse_matcher(text: str) -> Matcher:
    """Parse `name="value"`, `name=~"re"`, `name!=value`..."""
    match = _MATCHER.match(text)
    if match is None:
        raise ValueError(f'{text!r} is not a matcher (use name="value", name=~"regex", ...)')
    name, op, quoted, bare = match.groups()
    value = bare if quoted is None else re.sub(r"\\(.)", r"\1", quoted)
    return Matcher.create(name, op, value)


def matchers_for(match: Mapping[str, str], matchers: list[str]) -> tuple[Matcher, ...]:
    """Equality matchers from a `match:` map plus parsed `matchers:` strings."""
    out = [Matcher.create(k, "=", v) for k, v in match.items()]
    out.extend(parse_matcher(m) for m in matchers)
    return tuple(out)


def match_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """Whether every matcher matches."""
    return all(m.matches(labels) for m in matchers)
