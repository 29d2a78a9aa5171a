"""The decision for one matched rule (or no rule): act, wait for approval, or page; and its plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from responder.matching import RuleMatch, match_rules
from responder.rails import RailCheck, RailFacts, active_window, check_rails, target_key
from runbook.actions import PageParams
from runbook.loader import LoadedRunbook
from runbook.schema import step_action

Outcome = Literal["queued", "awaiting_approval", "paging"]
NO_RULE = "(no rule)"


def plan_step(name: str, params: BaseModel) -> dict[str, Any]:
    """One action step as stored with the work: name and JSON parameters."""
    return {"action": name, "params": params.model_dump(mode="json", by_alias=True)}


def page_step(message: str, severity: str | None = None) -> dict[str, Any]:
    """The `page` step that tells a human `message`."""
    return plan_step("page", PageParams(severity=severity, message=message))


def _steps(steps: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [plan_step(*step_action(s)) for s in steps]


@dataclass(frozen=True)
class TrackDecision:
    """What one matched rule decided for one occurrence, with every rail and its reason."""

    rule_index: int | None
    rule_key: str
    target_key: str
    mode: str
    outcome: Outcome
    dry_run: bool
    reason: str
    rails: tuple[RailCheck, ...] = ()
    plan: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "rule_index": self.rule_index, "rule": self.rule_key, "target": self.target_key,
            "mode": self.mode, "outcome": self.outcome, "dry_run": self.dry_run,
            "reason": self.reason, "rails": [r.as_json() for r in self.rails], "plan": self.plan,
        }


class Policy:
    """Matching and deciding for one runbook; pure (rail facts are passed in)."""

    def __init__(self, loaded: LoadedRunbook) -> None:
        self.loaded = loaded

    def matches(self, labels: Mapping[str, str]) -> list[RuleMatch]:
        """The rules this alert matches, in order."""
        return match_rules(self.loaded, labels)

    def needs_facts(self, match: RuleMatch | None) -> bool:
        """Whether deciding this match reads the rails' shared state."""
        return match is not None and match.rule.mode != "page"

    def decide(self, match: RuleMatch | None, labels: Mapping[str, str],
               facts: RailFacts | None, now: float) -> TrackDecision:
        """One decision: the first rail hit turns an action into a page, with the reason."""
        target = target_key(labels)
        rb = self.loaded.runbook
        if match is None:
            reason = "no respond rule matches this alert: paging a human"
            return TrackDecision(None, NO_RULE, target, "page", "paging", False, reason,
                                 plan=self._page_plan(None, reason))
        rule = match.rule
        dry_run = rb.rails.dry_run or rule.dry_run
        if rule.mode == "page":
            reason = f"rule {match.key} says page"
            return TrackDecision(match.index, match.key, target, "page", "paging", dry_run,
                                 reason, plan=self._page_plan(match, reason))
        assert facts is not None
        window = active_window(rb, labels, now)
        checks = tuple(check_rails(rule, rb.rails, facts, now, window))
        hit = next((c for c in checks if c.hit), None)
        if hit is not None:
            reason = f"rail {hit.rail}: {hit.reason}"
            # The rule's own page steps were written for its remediation (an "FYI, restarted"
            # note, say): a stopped action pages with the rail's reason, at the alert's severity.
            return TrackDecision(match.index, match.key, target, rule.mode, "paging", dry_run,
                                 reason, checks, self._page_plan(match, reason,
                                                                 own_pages=False))
        plan = {
            "rule_index": match.index, "rule": match.key, "target": target,
            "steps": _steps(rule.do), "escalate": _steps(rule.escalate),
            "verify_after": rule.verify_after, "max_attempts": rule.max_attempts,
            "dry_run": dry_run,
        }
        if rule.mode == "approve":
            return TrackDecision(match.index, match.key, target, "approve", "awaiting_approval",
                                 dry_run, f"rule {match.key} needs a human's approval",
                                 checks, plan)
        suffix = " (dry run: actions only say what they would do)" if dry_run else ""
        return TrackDecision(match.index, match.key, target, "auto", "queued", dry_run,
                             f"rule {match.key} acts automatically{suffix}", checks, plan)

    def _page_plan(self, match: RuleMatch | None, reason: str,
                   own_pages: bool = True) -> dict[str, Any]:
        rule = match.rule if match and own_pages else None
        pages = [s for s in (rule.do if rule else []) if step_action(s)[0] == "page"]
        steps = _steps(pages) if pages else [page_step(reason)]
        return {"rule_index": match.index if match else None,
                "rule": match.key if match else NO_RULE, "steps": steps, "reason": reason,
                "dry_run": False}
