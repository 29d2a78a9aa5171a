"""Safety rails: maintenance windows, cooldown, attempt windows, rate and concurrency limits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from runbook.matchers import match_all, parse_matcher
from runbook.schema import MaintenanceWindow, Rails, RespondRule, Runbook

# Labels that name the tier or the alert rather than the thing an action works on: the
# warning and the critical alert of one queue are one target, so one cooldown holds for both.
_NOT_TARGET = frozenset({"alertname", "severity", "tier"})


@dataclass(frozen=True)
class RailCheck:
    """One rail applied to one decision: whether it stopped the action, and why."""

    rail: str
    hit: bool
    reason: str

    def as_json(self) -> dict[str, object]:
        return {"rail": self.rail, "hit": self.hit, "reason": self.reason}


@dataclass(frozen=True)
class RailFacts:
    """What the store knows about past runs, read inside the deciding transaction."""

    last_run_at: float | None
    """Last run of this rule on this target (cooldown)."""
    rule_runs_in_window: int
    """Runs of this rule within its window_limit.per."""
    runs_in_rate_window: int
    """Runs of any rule within rails.rate_limit.per."""
    active_runs: int
    """Remediations queued or running now, across replicas."""


def target_key(labels: Mapping[str, str]) -> str:
    """The labels that identify what an action works on, as one stable string.

    JSON, so that no label value (untrusted: it may hold "," or "=") can make two label
    sets one key and put one target in another's cooldown."""
    return json.dumps([[k, v] for k, v in sorted(labels.items()) if k not in _NOT_TARGET],
                      ensure_ascii=False, separators=(",", ":"))


def active_window(runbook: Runbook, labels: Mapping[str, str], now: float) -> str | None:
    """The name of a maintenance window covering this alert now, if any."""
    for window in runbook.maintenance:
        if window.matchers and not match_all(
            tuple(parse_matcher(m) for m in window.matchers), labels
        ):
            continue
        if _covers(window, now):
            return window.name
    return None


def _covers(window: MaintenanceWindow, now: float) -> bool:
    zone = ZoneInfo(window.timezone)
    moment = datetime.fromtimestamp(now, UTC)
    if window.weekly is None:
        assert window.start is not None
        assert window.end is not None
        start, end = window.zoned(window.start), window.zoned(window.end)
        return start <= moment < end
    weekly = window.weekly
    local = moment.astimezone(zone)
    start_t, end_t = _clock(weekly.start), _clock(weekly.end)
    # A window may start yesterday and run past midnight into today.
    for back in (0, 1):
        day = local.date() - timedelta(days=back)
        if ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()] not in weekly.days:
            continue
        start = datetime.combine(day, start_t, zone)
        end_day = day + timedelta(days=1) if end_t <= start_t else day
        end = datetime.combine(end_day, end_t, zone)
        if start <= local < end:
            return True
    return False


def _clock(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


def check_rails(
    rule: RespondRule, rails: Rails, facts: RailFacts, now: float, window: str | None
) -> list[RailCheck]:
    """Every rail applied to one automatic (or approvable) rule, in order."""
    checks: list[RailCheck] = []
    if rule.mode == "auto":
        checks.append(RailCheck(
            "maintenance", window is not None,
            f"maintenance window {window!r} is active: automatic actions become pages"
            if window else "no maintenance window is active"))
    if facts.last_run_at is not None and now - facts.last_run_at < rule.cooldown:
        ago = now - facts.last_run_at
        checks.append(RailCheck("cooldown", True, f"this rule acted on the same target {ago:.0f}s "
                                f"ago, within its cooldown of {rule.cooldown:.0f}s"))
    else:
        checks.append(RailCheck("cooldown", False, f"no run on this target within "
                                f"{rule.cooldown:.0f}s"))
    if rule.window_limit is not None:
        limit = rule.window_limit
        hit = facts.rule_runs_in_window >= limit.count
        checks.append(RailCheck("window_limit", hit, f"{facts.rule_runs_in_window} runs of this "
                                f"rule in the last {limit.per:.0f}s (limit {limit.count})"))
    rate = rails.rate_limit
    checks.append(RailCheck("rate_limit", facts.runs_in_rate_window >= rate.count,
                            f"{facts.runs_in_rate_window} automatic runs in the last "
                            f"{rate.per:.0f}s (limit {rate.count})"))
    checks.append(RailCheck("concurrency", facts.active_runs >= rails.max_concurrent,
                            f"{facts.active_runs} remediations queued or running "
                            f"(limit {rails.max_concurrent})"))
    return checks
