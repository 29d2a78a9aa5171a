"""Which respond rules an alert matches: the first one wins unless it says `continue`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runbook.loader import LoadedRunbook
from runbook.matchers import match_all
from runbook.schema import RespondRule


@dataclass(frozen=True)
class RuleMatch:
    """A rule an alert matched, with its position and its stable key."""

    index: int
    rule: RespondRule
    key: str


def rule_key(rule: RespondRule, index: int) -> str:
    """The name rails and the audit use for a rule: its name, else its position."""
    return rule.name or f"respond[{index}]"


def match_rules(loaded: LoadedRunbook, labels: Mapping[str, str]) -> list[RuleMatch]:
    """The matching rules in order, stopping after the first one without `continue`."""
    out: list[RuleMatch] = []
    for index, (rule, matchers) in enumerate(
        zip(loaded.runbook.respond, loaded.rule_matchers, strict=True)
    ):
        if match_all(matchers, labels):
            out.append(RuleMatch(index, rule, rule_key(rule, index)))
            if not rule.continue_:
                break
    return out
