"""Fill `{{ labels.NAME }}` placeholders with alert label values, each validated first."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from runbook.actions import DEFAULT_LABEL_PATTERN, PLACEHOLDER

MAX_VALUE_LENGTH = 1024
# Never allowed in a filled value, whatever pattern a runbook writes.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


class LabelError(ValueError):
    """A placeholder's label is missing or its value fails validation."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"label {label!r}: {reason}")
        self.label = label


def label_value(label: str, labels: Mapping[str, str], patterns: Mapping[str, str]) -> str:
    """The value of one label, checked against its pattern (or the default one)."""
    if label not in labels:
        raise LabelError(label, "the alert has no such label")
    value = labels[label]
    if len(value) > MAX_VALUE_LENGTH:
        raise LabelError(label, f"value is {len(value)} characters (at most {MAX_VALUE_LENGTH})")
    if _FORBIDDEN.search(value):
        raise LabelError(label, "value holds control characters (newline, NUL, ...)")
    pattern = patterns.get(label, DEFAULT_LABEL_PATTERN)
    # fullmatch: `$` in a pattern would otherwise accept a trailing newline.
    if not re.fullmatch(pattern, value):
        raise LabelError(label, f"value {value[:80]!r} does not match {pattern!r}")
    return value


def fill(
    template: str,
    labels: Mapping[str, str],
    patterns: Mapping[str, str],
    escape: Callable[[str], str] = str,
) -> str:
    """The template with every placeholder replaced by its validated (and escaped) label value."""

    def one(match: re.Match[str]) -> str:
        return escape(label_value(match.group(1), labels, patterns))

    return PLACEHOLDER.sub(one, template)


def fill_json(value: object, labels: Mapping[str, str], patterns: Mapping[str, str]) -> object:
    """A copy of a JSON-like value with placeholders filled in its strings (keys included)."""
    if isinstance(value, str):
        return fill(value, labels, patterns)
    if isinstance(value, dict):
        return {
            fill(str(k), labels, patterns): fill_json(v, labels, patterns)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [fill_json(v, labels, patterns) for v in value]
    return value
