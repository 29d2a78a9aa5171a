"""Refuse an SLO measured by the exporter's HTTP probes when one bad probe fires its alerts.

A probe is a sparse event: a 99.9% SLO probed every 5 minutes has a 30-day budget of 8.6 failed
probes, and one failure is a larger share of every burn-rate window than the tier's threshold
(12 probes in 1h: 8.3% > 1.44%; 864 in 3d: 0.116% > 0.1%), so each tier pages on a blip. Such an
SLO needs more frequent probes, a lower objective, or the app's own request metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from runbook.render.expressions import BURN_RATES, app_histogram, app_requests
from runbook.render.timing import dur
from runbook.schema import Runbook, Slo
from runbook.yamlsource import Path

# Float slack: one probe's share equal to a bound does not fire it (the rules compare with `>`).
_TOLERANCE = 1e-9
# Every refusal says this: the loader knows it for one a pruned (broken) probe could cause.
COUNTS_PROBES = "SLI counts the watch.http probes"


@dataclass(frozen=True)
class BurnPair:
    """One burn-rate condition of an SLO's alert, as rendered: its tier, long window and the
    error ratio both of its windows must exceed."""

    tier: str
    long: float
    factor: float
    bound: float


def burn_pairs(objective: float) -> list[BurnPair]:
    """Every burn-rate condition for this objective, with the bound the rules write."""
    budget = 1 - objective
    return [BurnPair(tier, long, factor, round(factor * budget, 12))
            for _, tier, pairs in BURN_RATES for long, _short, factor in pairs]


def probe_measured(rb: Runbook, slo: Slo) -> bool:
    """Whether the rendered SLI counts the exporter's probes (see slo_error_ratio)."""
    if slo.sli.kind == "availability":
        return app_requests(rb) is None
    if slo.sli.kind == "latency":
        return app_histogram(rb) is None
    return False


def probes_per_second(rb: Runbook) -> float:
    """How often the probes the SLI sums run: all of the exporter job's, of every target."""
    return sum(1 / p.interval if p.interval > 0 else math.inf for p in rb.watch.http)


def probes_in(window: float, rate: float) -> float:
    """Probes made in a window, on average."""
    return window * rate


def fires_on_one_probe(pair: BurnPair, rate: float) -> bool:
    """Whether one bad probe among those of the pair's long window exceeds its bound (the
    short window holds fewer probes, so it exceeds it too)."""
    return probes_in(pair.long, rate) * pair.bound < 1 - _TOLERANCE


def longest_spacing(pairs: list[BurnPair]) -> float:
    """The longest mean time between probes at which one bad probe fires no tier."""
    return min(p.long * p.bound for p in pairs)


def highest_objective(rate: float) -> float:
    """The highest objective these probes can alert on, floored to a hundredth of a percent
    (0 or less: none)."""
    if rate == 0:
        return 0.0
    exact = min(1 - 1 / (probes_in(long, rate) * factor)
                for _, _, pairs in BURN_RATES for long, _short, factor in pairs)
    return math.floor(exact * 10_000 + _TOLERANCE) / 10_000


def unmeasurable_slos(rb: Runbook) -> Iterator[tuple[Path, str]]:
    """Each probe-measured SLO whose burn-rate alerts one bad probe would fire."""
    rate = probes_per_second(rb)
    for i, slo in enumerate(rb.slos):
        if not probe_measured(rb, slo):
            continue
        pairs = burn_pairs(slo.objective)
        firing = [p for p in pairs if fires_on_one_probe(p, rate)]
        if firing:
            yield ("slos", i, "objective"), _reason(rb, slo, rate, pairs, firing)


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.3g}%"


def _reason(rb: Runbook, slo: Slo, rate: float, pairs: list[BurnPair],
            firing: list[BurnPair]) -> str:
    tiers = " and ".join(dict.fromkeys(p.tier for p in firing))
    fix = _fixes(rb, slo, rate, pairs)
    if rate == 0:
        return (f"this {COUNTS_PROBES} and this runbook has none, so its "
                f"{tiers} burn-rate alerts would never see an event. {fix}")
    bad = ("failed probe" if slo.sli.kind == "availability"
           else f"probe slower than {dur(slo.sli.latency or 0.0)}")
    # The worst pair has the fewest probes per unit of bound; the longest shows no tier is
    # spared.
    worst = min(firing, key=lambda p: p.long * p.bound)
    longest = max(firing, key=lambda p: p.long)
    said = (f"one {bad} would fire its {tiers} burn-rate alerts: the {COUNTS_PROBES} "
            f"and {dur(worst.long)} holds {_count(worst.long, rate)} of them, "
            f"so one is {_percent(1 / probes_in(worst.long, rate))}, over the {worst.tier} "
            f"tier's bound {worst.factor:g} x (1 - {slo.objective * 100:g}%) = "
            f"{_percent(worst.bound)}")
    if longest != worst:
        said += (f"; even {dur(longest.long)} holds only {_count(longest.long, rate)}: "
                 f"{_percent(1 / probes_in(longest.long, rate))} > the {longest.tier} tier's "
                 f"bound {_percent(longest.bound)}")
    return f"{said}. {fix}"


def _count(window: float, rate: float) -> str:
    return f"{probes_in(window, rate):.4g}"


def _fixes(rb: Runbook, slo: Slo, rate: float, pairs: list[BurnPair]) -> str:
    """What would make it measurable: more probes, a lower objective, or the app's metrics."""
    app_metric = ("watch.app.requests_total" if slo.sli.kind == "availability"
                  else "watch.app.latency_histogram")
    options = []
    spacing = math.floor(longest_spacing(pairs))
    if spacing >= 1:  # else it would take more than a probe a second
        options.append(_probe_more_often(rb, rate, spacing))
    highest = highest_objective(rate)
    if highest > 0:
        options.append(f"lower objective to at most {highest * 100:g}%")
    options.append(f"measure the SLI from the app's own metrics ({app_metric})")
    return f"To alert on {slo.objective * 100:g}%: " + ", or ".join(options)


def _probe_more_often(rb: Runbook, rate: float, spacing: int) -> str:
    """Probes at least every `spacing` seconds in all: the interval to set, or to add."""
    probes = len(rb.watch.http)
    if probes == 0:
        return f"add a watch.http probe with interval: {dur(spacing)} or less"
    # A probe added every `extra` seconds brings them to one every `spacing` seconds in all.
    extra = math.floor(1 / (1 / spacing - rate))
    add = f"add a probe of the same endpoint with interval: {dur(extra)} or less"
    if probes == 1:
        return f"set watch.http[0].interval to {dur(spacing)} or less, or {add}"
    return f"probe at least once every {dur(spacing)} counting all {probes} probes (e.g. {add})"
