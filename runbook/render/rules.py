"""Prometheus rule files: recording rules per signal, one alerting rule per tier, SLO burn rates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runbook.alerting import (
    COLLECTOR_DOWN,
    EXPORTER_DOWN,
    HEALTH_SEVERITIES,
    ResolvedAlert,
    Tier,
    slo_alertname,
)
from runbook.commands.show import format_threshold
from runbook.loader import LoadedRunbook
from runbook.render import expressions as ex
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml
from runbook.schema import Slo
from runbook.selectors import exporter_job
from runbook.signals import Unit

HUMANIZE = {Unit.RATIO: "humanizePercentage", Unit.SECONDS: "humanizeDuration",
            Unit.BYTES: "humanize1024", Unit.COUNT: "humanize"}


@dataclass(frozen=True)
class TierRule:
    """One rendered alerting rule: an alert's tier with its expression, labels and annotations."""

    alert: ResolvedAlert
    tier: Tier
    query: ex.SignalQuery
    expr: str
    hold: float
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(frozen=True)
class SloRule:
    """One rendered burn-rate alerting rule (page or ticket) of an SLO."""

    slo: Slo
    alertname: str
    severity: str
    tier: str
    expr: str
    labels: dict[str, str]
    annotations: dict[str, str]


def tier_rules(loaded: LoadedRunbook, timing: Timing) -> list[TierRule]:
    """Every alert's tiers, least severe first, in runbook order."""
    rb = loaded.runbook
    out: list[TierRule] = []
    for alert in loaded.alerts:
        query = ex.signal_query(rb, alert, timing)
        for tier in alert.tiers:
            labels = {**rb.labels, "severity": tier.severity, "service": rb.service,
                      "signal": alert.key, "tier": tier.severity}
            out.append(TierRule(alert, tier, query, ex.alert_expr(query, alert, tier.threshold),
                                timing.hold(tier.for_seconds), labels,
                                _annotations(loaded, alert, tier, query)))
    return out


def _annotations(loaded: LoadedRunbook, alert: ResolvedAlert, tier: Tier,
                 query: ex.SignalQuery) -> dict[str, str]:
    rb = loaded.runbook
    side = "below" if alert.below else "above"
    threshold = format_threshold(tier.threshold, alert.unit)
    where = ", ".join(f"{name} {{{{ $labels.{name} }}}}" for name in query.by)
    where = f" ({where})" if where else ""
    summary = alert.summary or f"{rb.service}: {alert.key} {side} {threshold}{where}"
    what = alert.signal.help if alert.signal else alert.key
    value = f"{{{{ $value | {HUMANIZE[alert.unit]} }}}}"
    description = alert.description or (
        f"{what}: {value}, {side} the {tier.severity} threshold {threshold} "
        f"for {dur(tier.for_seconds)}.")
    notes = {"summary": summary, "description": description}
    if rb.runbook_url:
        notes["runbook_url"] = f"{rb.runbook_url}#{alert.key}"
    return notes


@dataclass(frozen=True)
class HealthRule:
    """An alert about the runbook's own exporter: without it, an exporter that stops answering
    makes every other alert read nothing and resolve, and remediations count as healed."""

    alertname: str
    series: str
    """The metric the rule reads (with its job), and the one its promtool test feeds."""
    extra: dict[str, str]
    """Labels of that series besides job and instance."""
    expr: str
    hold: float
    labels: dict[str, str]
    annotations: dict[str, str]


def health_rules(loaded: LoadedRunbook, timing: Timing) -> list[HealthRule]:
    """The exporter cannot be scraped (critical, 5m); one collector cannot read (warning, 10m)."""
    rb = loaded.runbook
    job = exporter_job(rb)
    base = {**rb.labels, "service": rb.service}
    up = ex.exporter_selector(rb, "up")
    collector_up = ex.exporter_selector(rb, "runbook_collector_up")
    return [
        HealthRule(
            EXPORTER_DOWN, "up", {}, f"{up} == 0", timing.hold(300.0),
            {**base, "severity": HEALTH_SEVERITIES[EXPORTER_DOWN], "signal": "exporter",
             "tier": HEALTH_SEVERITIES[EXPORTER_DOWN]},
            {"summary": f"{rb.service}: its runbook exporter {{{{ $labels.instance }}}} cannot "
                        "be scraped",
             "description": f"Prometheus has failed to scrape job {job} for {dur(300.0)}: "
                            f"every other alert of {rb.service} reads no data and resolves, "
                            "so nothing of it is watched."}),
        HealthRule(
            COLLECTOR_DOWN, "runbook_collector_up", {"collector": "redis", "target": "main"},
            f"{collector_up} == 0", timing.hold(600.0),
            {**base, "severity": HEALTH_SEVERITIES[COLLECTOR_DOWN], "signal": "collector",
             "tier": HEALTH_SEVERITIES[COLLECTOR_DOWN]},
            {"summary": f"{rb.service}: the exporter cannot read {{{{ $labels.collector }}}} "
                        "{{ $labels.target }}",
             "description": f"The {{{{ $labels.collector }}}} collector of {rb.service}'s "
                            f"exporter has failed for {dur(600.0)}: the alerts on what it "
                            "reads see no data (its error is in the exporter's /health/detail)."}),
    ]


def slo_rules(loaded: LoadedRunbook, timing: Timing) -> list[SloRule]:
    """Page and ticket burn-rate alerts for every SLO."""
    rb = loaded.runbook
    out: list[SloRule] = []
    for slo in rb.slos:
        budget = 1 - slo.objective
        for severity, tier, pairs in ex.BURN_RATES:
            parts = []
            for long, short, factor in pairs:
                bound = ex.number(round(factor * budget, 12))
                sel = {"slo": slo.name}
                parts.append(
                    f"({ex.selector(ex.slo_record(rb.service, slo, long, timing), sel)} > {bound}"
                    f" and {ex.selector(ex.slo_record(rb.service, slo, short, timing), sel)}"
                    f" > {bound})")
            labels = {**rb.labels, "severity": severity, "service": rb.service,
                      "signal": "slo", "slo": slo.name, "tier": tier}
            burns = " or ".join(
                f"{factor:g}x over {dur(long)} and {dur(short)}" for long, short, factor in pairs)
            notes = {
                "summary": f"{rb.service}: SLO {slo.name} is burning its error budget ({tier})",
                "description": (f"The {slo.name} SLO ({slo.objective * 100:g}% over "
                                f"{dur(slo.window)}) burns its error budget at {burns}."),
            }
            if rb.runbook_url:
                notes["runbook_url"] = f"{rb.runbook_url}#slo-{slo.name}"
            out.append(SloRule(slo, slo_alertname(slo), severity, tier, " or ".join(parts),
                               labels, notes))
    return out


def rule_groups(loaded: LoadedRunbook, timing: Timing) -> list[dict[str, Any]]:
    """The rule groups of one runbook, as Prometheus' rule file holds them."""
    rb = loaded.runbook
    tiers = tier_rules(loaded, timing)
    records: dict[str, ex.SignalQuery] = {}
    for rule in tiers:
        records.setdefault(rule.query.record, rule.query)
    rules: list[dict[str, Any]] = [{"record": q.record, "expr": q.expr} for q in records.values()]
    for rule in tiers:
        entry: dict[str, Any] = {"alert": rule.alert.alertname, "expr": rule.expr}
        if rule.hold:
            entry["for"] = dur(rule.hold)
        entry["labels"] = rule.labels
        entry["annotations"] = rule.annotations
        rules.append(entry)
    groups: list[dict[str, Any]] = []
    if rules:
        groups.append(_group(f"{rb.service}.rules", rules, timing))
    if rb.slos:
        slo_entries: list[dict[str, Any]] = []
        for slo in rb.slos:
            seen: set[str] = set()
            for window in ex.slo_windows():
                record = ex.slo_record(rb.service, slo, window, timing)
                if record in seen:
                    continue  # two windows scaled to the same floor record one series
                seen.add(record)
                slo_entries.append({"record": record,
                                    "expr": ex.slo_error_ratio(rb, slo, window, timing),
                                    "labels": {"slo": slo.name}})
        for s in slo_rules(loaded, timing):
            slo_entries.append({"alert": s.alertname, "expr": s.expr, "labels": s.labels,
                                "annotations": s.annotations})
        groups.append(_group(f"{rb.service}.slo", slo_entries, timing))
    groups.append(_group(f"{rb.service}.exporter", [
        {"alert": h.alertname, "expr": h.expr, "for": dur(h.hold), "labels": h.labels,
         "annotations": h.annotations} for h in health_rules(loaded, timing)], timing))
    return groups


def _group(name: str, rules: list[dict[str, Any]], timing: Timing) -> dict[str, Any]:
    group: dict[str, Any] = {"name": name}
    if timing.scaled:
        group["interval"] = dur(timing.interval)
    group["rules"] = rules
    return group


def render_rules(loaded: LoadedRunbook, timing: Timing) -> str:
    """The text of alert_rules/<service>.rules.yml."""
    return dump_yaml({"groups": rule_groups(loaded, timing)})
