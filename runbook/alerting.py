"""Alerts normalized: each signal's tiers as numbers in base units, with names and durations."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from runbook import units
from runbook.schema import AlertSpec, Slo, TierSpec
from runbook.signals import SIGNALS, Signal, Unit


@dataclass(frozen=True)
class Tier:
    """One threshold: fire at `severity` when the value passes `threshold` for `for_seconds`."""

    severity: str
    threshold: float
    for_seconds: float


@dataclass(frozen=True)
class ResolvedAlert:
    """An alert ready to render: the signal, its direction, and its ordered tiers."""

    key: str
    alertname: str
    signal: Signal | None
    expr: str | None
    unit: Unit
    below: bool
    tiers: tuple[Tier, ...]
    select: dict[str, str] = field(default_factory=dict)
    summary: str | None = None
    description: str | None = None

    @property
    def recorded_as(self) -> str:
        """The middle of its recording rule's name (`svc:<this>:<unit>`): a signal's alerts
        share their signal's rule, an expr alert records under its own key."""
        return self.signal.name if self.signal else self.key


class AlertProblem(ValueError):
    """A problem with one key of an alert, as (key path below the alert, reason)."""

    def __init__(self, subpath: tuple[str, ...], reason: str) -> None:
        super().__init__(reason)
        self.subpath = subpath
        self.reason = reason


def camel(name: str) -> str:
    """`cache_hit_rate` -> `CacheHitRate`."""
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))


def alertname_for(key: str, below: bool) -> str:
    """The alertname rendered for an alert key: `queue_depth` -> `QueueDepthHigh`."""
    return camel(key) + ("Low" if below else "High")


EXPORTER_DOWN = "RunbookExporterDown"
COLLECTOR_DOWN = "RunbookCollectorDown"
HEALTH_ALERTNAMES = (EXPORTER_DOWN, COLLECTOR_DOWN)
"""The alerts every runbook's rules carry about its own exporter (runbook/render/rules.py)."""
HEALTH_SEVERITIES = {EXPORTER_DOWN: "critical", COLLECTOR_DOWN: "warning"}


def slo_alertname(slo: Slo) -> str:
    """The alertname of an SLO's burn-rate alerts."""
    return camel(slo.name) + "ErrorBudgetBurn"


def parse_threshold(value: float | str, unit: Unit) -> float:
    """A threshold in the signal's base unit."""
    if unit is Unit.RATIO:
        return units.parse_ratio(value)
    if unit is Unit.SECONDS:
        return units.parse_duration(value)
    if unit is Unit.BYTES:
        return float(units.parse_size(value))
    return units.parse_count(value)


def never_crossed(name: str, unit: Unit, below: bool, severity: str, threshold: float,
                  written: object) -> str | None:
    """Why no value of the signal can pass this threshold, or None if some value can.

    Every unit is >= 0 and a ratio is at most 1 (a count threshold is already refused below 0),
    so `< 0` and `> 1` on a ratio are conditions no sample meets: the alert would never fire
    and its generated firing test would be left out without a word.
    """
    # As written (the tier's value reaches here as a float: 0 -> 0.0).
    shown = f"{written:g}" if isinstance(written, float) else str(written)
    if below and threshold <= 0:
        zero = "0%" if unit is Unit.RATIO else "0"
        example = "1%" if unit is Unit.RATIO else "1 (fires when it drops to 0)"
        return (f"{severity} {shown} can never be crossed: {name} is never below {zero} and "
                f"a `below` alert fires only under its threshold; write a threshold above "
                f"{zero}, e.g. {example}")
    if not below and unit is Unit.RATIO and threshold >= 1:
        return (f"{severity} {shown} can never be crossed: {name} is a ratio of at most "
                f"100% and fires only above its threshold; write a threshold below 100%, "
                f"e.g. 95%")
    return None


def resolve(key: str, spec: AlertSpec) -> ResolvedAlert:
    """Normalize one alert, or raise AlertProblem naming the key that is wrong."""
    signal: Signal | None = None
    if spec.expr is not None:
        if spec.signal is not None:
            raise AlertProblem(("expr",), "give either signal or expr, not both")
        if spec.unit is None:
            raise AlertProblem(("unit",), "an expr alert needs unit: ratio, seconds, count, bytes")
        unit = Unit(spec.unit)
        below = bool(spec.below)
    else:
        name = spec.signal or key
        signal = SIGNALS.get(name)
        if signal is None:
            from difflib import get_close_matches

            close = get_close_matches(name, SIGNALS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else " (or give expr and unit)"
            where = ("signal",) if spec.signal else ()
            raise AlertProblem(where, f"unknown signal {name!r}{hint}")
        if spec.unit is not None:
            raise AlertProblem(("unit",), "unit is only for expr alerts; a signal has its own")
        unit = signal.unit
        below = signal.below if spec.below is None else spec.below
        for label in spec.select:
            if label not in signal.selectable:
                allowed = ", ".join(signal.selectable) or "nothing"
                raise AlertProblem(("select", label), f"{signal.name} can be narrowed by {allowed}")
    written = spec.tier_values()
    if not written:
        raise AlertProblem((), "no tiers: give at least one of " + ", ".join(
            ("info", "low", "warning", "medium", "high", "critical")))
    tiers: list[Tier] = []
    for severity, value in written:
        raw = value.threshold if isinstance(value, TierSpec) else value
        tier_for = value.for_ if isinstance(value, TierSpec) else None
        try:
            threshold = parse_threshold(raw, unit)
        except units.UnitError as exc:
            raise AlertProblem((severity,), f"{exc} (this signal is in {unit.value})") from exc
        never = never_crossed(signal.name if signal else key, unit, below, severity, threshold,
                              raw)
        if never is not None:
            raise AlertProblem((severity,), never)
        duration = tier_for if tier_for is not None else spec.for_
        if duration is None:
            raise AlertProblem((severity,), "no `for` duration (add for: 5m to the alert or tier)")
        tiers.append(Tier(severity, threshold, duration))
    for lower, higher in pairwise(tiers):
        if below and not higher.threshold < lower.threshold:
            raise AlertProblem((higher.severity,), (
                f"tiers out of order: for a `below` signal {higher.severity} "
                f"({higher.threshold:g}) must be below {lower.severity} ({lower.threshold:g})"))
        if not below and not higher.threshold > lower.threshold:
            raise AlertProblem((higher.severity,), (
                f"tiers out of order: {higher.severity} ({higher.threshold:g}) must be above "
                f"{lower.severity} ({lower.threshold:g})"))
    return ResolvedAlert(
        key=key,
        alertname=spec.alertname or alertname_for(key, below),
        signal=signal,
        expr=spec.expr,
        unit=unit,
        below=below,
        tiers=tuple(tiers),
        select=dict(spec.select),
        summary=spec.summary,
        description=spec.description,
    )
