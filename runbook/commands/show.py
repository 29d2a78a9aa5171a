"""`runbook show FILE`: the normalized runbook as a readable table."""

from __future__ import annotations

import argparse

from runbook.alerting import ResolvedAlert
from runbook.loader import LoadedRunbook, load_or_report
from runbook.matchers import match_all
from runbook.schema import step_action
from runbook.signals import Unit
from runbook.units import format_duration

HELP = "print each signal, tier, threshold, duration and response of a runbook"
EXAMPLES = "  runbook show examples/cinder-js.yml\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE")


def format_threshold(value: float, unit: Unit) -> str:
    """A threshold as a person writes it: 70%, 4s, 2.8GiB, 50."""
    if unit is Unit.RATIO:
        return f"{value * 100:g}%"
    if unit is Unit.SECONDS:
        return format_duration(value)
    if unit is Unit.BYTES:
        for suffix, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value >= size:
                return f"{value / size:g}{suffix}"
        return f"{value:g}B"
    return f"{value:g}"


def _responses(loaded: LoadedRunbook, alert: ResolvedAlert, severity: str) -> str:
    labels = {"alertname": alert.alertname, "severity": severity, "service": loaded.service,
              "signal": alert.key, **alert.select}
    for rule, matchers in zip(loaded.runbook.respond, loaded.rule_matchers, strict=True):
        if match_all(matchers, labels):
            steps = ", ".join(step_action(s)[0] for s in rule.do) or "-"
            return f"{rule.mode}: {steps}"
    return "page (no rule)"


def render_table(loaded: LoadedRunbook) -> str:
    """The table `runbook show` prints."""
    rows = [("ALERT", "SIGNAL", "TIER", "WHEN", "FOR", "RESPONSE")]
    for alert in loaded.alerts:
        op = "<" if alert.below else ">"
        for tier in alert.tiers:
            rows.append((
                alert.alertname, alert.key, tier.severity,
                f"{op} {format_threshold(tier.threshold, alert.unit)}",
                format_duration(tier.for_seconds), _responses(loaded, alert, tier.severity),
            ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"service: {loaded.service}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.file)
    if loaded is None:
        return 1
    print(render_table(loaded))
    return 0
