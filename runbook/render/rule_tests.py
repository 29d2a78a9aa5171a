"""promtool unit tests for every tier of every alert: silent just inside, pending, firing, cleared.

Each test feeds the raw metrics of the contract (counters for rates, histogram buckets for
quantiles) and predicts, evaluation by evaluation, what Prometheus computes from them: a step
for gauges and ratios of counters, a ramp over the window for a plain rate, a staircase for
increase(), a timestamp trailing the clock for staleness. A simulation of `for` then gives
the exact alerts expected at each checked time, with their labels and expanded annotations.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from runbook.loader import LoadedRunbook
from runbook.render import expressions as ex
from runbook.render.gotemplate import (
    expand,
    humanize,
    humanize1024,
    humanize_duration,
    humanize_percentage,
)
from runbook.render.rules import (
    HealthRule,
    SloRule,
    TierRule,
    health_rules,
    slo_rules,
    tier_rules,
)
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml
from runbook.schema import Runbook
from runbook.selectors import app_job, exporter_job
from runbook.signals import Unit

INSTANCE = "127.0.0.1:9817"
SCALE = 1000  # events per interval in counter inputs, so ratios are exact decimals
# How far past (or inside) a threshold the tests probe, relative to it: far enough that the
# rule's float arithmetic (a ratio of rates, a histogram interpolation) cannot cross it, close
# enough that moving the threshold by more than 0.1 % fails a test.
EPS = 1e-3


class Kind(enum.Enum):
    """How a signal's value follows its raw samples."""

    GAUGE = "gauge"  # the latest sample
    RATIO = "ratio"  # counters' ratio over the window: a constant while the window has events
    RATE = "rate"  # rate over the window: ramps up and down over the window
    INCREASE = "increase"  # increase over the window of a counter jumping once per window
    AGE = "age"  # time() minus a timestamp gauge: the gauge trails the clock by the value


KINDS = {
    "cpu_usage": Kind.RATE,
    "error_rate": Kind.RATIO, "success_rate": Kind.RATIO, "latency_p95": Kind.RATIO,
    "latency_p99": Kind.RATIO, "cache_hit_rate": Kind.RATIO, "db_cache_hit_rate": Kind.RATIO,
    "log_errors": Kind.INCREASE, "staleness": Kind.AGE,
}


@dataclass
class Scenario:
    """Sample-by-sample input: `active[k]` says whether sample k is in the breach phase."""

    value: float
    active: list[bool]


def scrape_labels(rb: Runbook) -> dict[str, str]:
    """The labels Prometheus adds to the exporter's series: its job is the runbook's own."""
    return {"instance": INSTANCE, "job": exporter_job(rb)}


def _dec(value: float) -> Decimal:
    return Decimal(repr(value))


def _fmt(value: float | None) -> str:
    if value is None:
        return "_"
    return ex.number(float(value)) if value == int(value) else repr(float(value))


def compress(values: list[float | None]) -> str:
    """promtool's expanding notation: runs of a constant slope become `a+bxn`."""
    out: list[str] = []
    i = 0
    while i < len(values):
        v = values[i]
        if v is None:
            j = i
            while j + 1 < len(values) and values[j + 1] is None:
                j += 1
            out.append("_" if j == i else f"_x{j - i + 1}")
            i = j + 1
            continue
        j = i
        step: Decimal | None = None
        while j + 1 < len(values) and values[j + 1] is not None:
            d = _dec(float(values[j + 1] or 0)) - _dec(float(values[j] or 0))
            if step is None:
                step = d
            elif d != step:
                break
            j += 1
        if j == i:
            out.append(_fmt(v))
        else:
            assert step is not None
            sign = "+" if step >= 0 else "-"
            out.append(f"{_fmt(v)}{sign}{_fmt(float(abs(step)))}x{j - i}")
        i = j + 1
    return " ".join(out)


# ------------------------------------------------------------------ inputs per signal


def _default_labels(rb: Runbook, signal: str, by: tuple[str, ...],
                    select: dict[str, str]) -> dict[str, str]:
    w = rb.watch
    defaults: dict[str, str] = {}
    targets = _targets(rb, signal)
    if targets:
        defaults["target"] = targets[0]
    if signal.startswith("queue_"):
        for target in w.redis:
            queues = [(kind, name) for kind in ("bullmq", "celery", "rq")
                      for name in getattr(target.queues, kind)]
            if queues:
                defaults.update(target=target.name, kind=queues[0][0], queue=queues[0][1])
                break
    defaults["mount"] = w.host.mounts[0] if w.host and w.host.mounts else "/"
    if w.logs:
        defaults["pattern"] = sorted(w.logs[0].patterns)[0]
    defaults.update(select)
    return {k: defaults.get(k, "x") for k in by}


def _targets(rb: Runbook, signal: str) -> list[str]:
    w = rb.watch
    if signal.startswith("queue_") or signal in ("cache_hit_rate", "redis_memory_usage"):
        return [t.name for t in w.redis]
    if signal.startswith("db_"):
        return [t.name for t in w.postgres]
    if signal == "log_errors":
        return [t.name for t in w.logs]
    if signal == "staleness":
        return [t.name for t in w.freshness]
    return [p.name for p in w.http]


def _sel(metric: str, labels: dict[str, str]) -> str:
    return ex.selector(metric, labels)


def events(value: float) -> int:
    """Events per sample making `value` (a fraction) a whole number of them.

    promtool expands `a+bxn` by adding b n times in float64: with a fractional b the run can
    end an ulp above the next segment's start, which rate() reads as a counter reset. Whole
    counts below 2^53 add up exactly.
    """
    exponent = Decimal(repr(value)).normalize().as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return int(10 ** max(3, decimals))


def _counter(active: list[bool], per_step: float) -> list[float | None]:
    """A counter from 0 growing by `per_step` after each active sample."""
    out: list[float | None] = []
    total = Decimal(0)
    for k, on in enumerate(active):
        if k > 0 and on:
            total += _dec(per_step)
        out.append(float(total))
    return out


def _gauge(active: list[bool], on: float, off: float) -> list[float | None]:
    return [on if a else off for a in active]


Samples = list[float | None]


def build_inputs(rb: Runbook, rule: TierRule, scenario: Scenario, quiet: float,
                 labels: dict[str, str], interval: float, window: float) -> dict[str, Samples]:
    """Raw input series (selector -> samples) that make the signal take `scenario.value`."""
    alert = rule.alert
    v, act = scenario.value, scenario.active
    scrape = scrape_labels(rb)
    raw = {**scrape, **labels}
    if alert.signal is None:
        return {_sel(rule.query.record, labels): _gauge(act, v, quiet)}
    name = alert.signal.name

    def part(x: float) -> float:
        return float(_dec(x) * SCALE)

    if name in ("memory_usage", "redis_memory_usage", "db_connections", "disk_usage"):
        used, limit = {
            "memory_usage": ("runbook_host_memory_used_bytes", "runbook_host_memory_limit_bytes"),
            "redis_memory_usage": ("runbook_redis_memory_used_bytes",
                                   "runbook_redis_memory_max_bytes"),
            "db_connections": ('runbook_pg_connections{state="active"}',
                               "runbook_pg_max_connections"),
            "disk_usage": ("runbook_host_disk_used_bytes", "runbook_host_disk_size_bytes"),
        }[name]
        return {_with(used, raw): _gauge(act, part(v), part(quiet)),
                _sel(limit, raw): [float(SCALE)] * len(act)}
    if name == "cpu_usage":
        # CPU seconds and cores both scaled by `cores`, so the counter moves in whole seconds.
        cores = events(v)
        return {_sel("runbook_host_cpu_seconds_total", raw):
                _counter(act, float(_dec(v) * cores * _dec(interval))),
                _sel("runbook_host_cpu_limit_cores", raw): [float(cores)] * len(act)}
    if name in ("error_rate", "success_rate"):
        app = rb.watch.app
        if app and app.requests_total:
            base = {**scrape, "job": app_job(rb)}
            bad = {**base, app.status_label: "500"}
            good = {**base, app.status_label: "200"}
            metric = app.requests_total
        else:
            bad, good = {**raw, "result": "failure"}, {**raw, "result": "success"}
            metric = ex.PROBE_REQUESTS
        picked = 1 - _dec(v) if name == "success_rate" else _dec(v)
        per_step = events(float(picked))
        bad_step = float(picked * per_step)
        return {_sel(metric, bad): _counter(act, bad_step),
                _sel(metric, good): _counter(act, per_step - bad_step)}
    if name in ex.QUANTILES:
        hist = ex.app_histogram(rb)
        base_labels = {**scrape, "job": app_job(rb)} if hist else raw
        metric = f"{hist}_bucket" if hist else f"{ex.PROBE_LATENCY}_bucket"
        # The value is bucket_low + (bucket_high - bucket_low) * q with every observation in
        # (bucket_low, bucket_high]; see _quantile_value.
        low, high = scenario_bucket(v, ex.QUANTILES[name])
        out: dict[str, list[float | None]] = {}
        for le in sorted({low / 2 if low else high / 4, low, high, high * 2}):
            if le <= 0:
                continue
            filled = le >= high
            out[_sel(metric, {**base_labels, "le": ex.number(le)})] = \
                _counter(act, SCALE if filled else 0)
        out[_sel(metric, {**base_labels, "le": "+Inf"})] = _counter(act, SCALE)
        return out
    if name in ("cache_hit_rate", "db_cache_hit_rate"):
        hits, misses = {
            "cache_hit_rate": ("runbook_redis_keyspace_hits_total",
                               "runbook_redis_keyspace_misses_total"),
            "db_cache_hit_rate": ("runbook_pg_blocks_hit_total", "runbook_pg_blocks_read_total"),
        }[name]
        per_step = events(v)
        return {_sel(hits, raw): _counter(act, float(_dec(v) * per_step)),
                _sel(misses, raw): _counter(act, per_step - float(_dec(v) * per_step))}
    if name == "log_errors":
        jumps = set(_jumps(act, round(window / interval)))
        values: Samples = []
        total = Decimal(0)
        for k in range(len(act)):
            total += _dec(v) if k in jumps else 0
            values.append(float(total))
        return {_sel("runbook_log_lines_total", raw): values}
    if name == "staleness":
        stamps: Samples = [k * interval - (v if on else 0.0) for k, on in enumerate(act)]
        return {_sel("runbook_last_success_timestamp_seconds", raw): stamps}
    gauges = {
        "probe_failures": "runbook_probe_consecutive_failures",
        "queue_depth": "runbook_queue_depth",
        "queue_failed": 'runbook_queue_jobs{state="failed"}',
        "queue_oldest_age": "runbook_queue_oldest_job_age_seconds",
        "queue_workers": "runbook_queue_workers",
        "db_long_queries": "runbook_pg_long_running_queries",
        "db_longest_query": "runbook_pg_longest_query_seconds",
        "db_idle_in_transaction": "runbook_pg_idle_in_transaction",
        "db_query_time": "runbook_pg_statements_mean_seconds",
        "db_replication_lag": "runbook_pg_replication_lag_seconds",
    }
    return {_with(gauges[name], raw): _gauge(act, v, quiet)}


def _with(metric: str, labels: dict[str, str]) -> str:
    """`metric{state="x"}` plus labels."""
    if "{" not in metric:
        return _sel(metric, labels)
    name, inner = metric.split("{", 1)
    extra = dict(part.split("=", 1) for part in inner.rstrip("}").split(","))
    merged = {**labels, **{k: v.strip('"') for k, v in extra.items()}}
    return _sel(name, merged)


def scenario_bucket(value: float, q: float) -> tuple[float, float]:
    """Histogram bucket bounds (low, high) giving quantile `value` for quantile q."""
    # value = low + (high - low) * q with high = 2 * low: low = value / (1 + q).
    low = float(f"{value / (1 + q):.12g}")
    return low, 2 * low


# ------------------------------------------------------------------ the values Prometheus sees


def values_at(kind: Kind, scenario: Scenario, quiet: float | None, interval: float,
              window: float, quantile: float | None) -> Callable[[int], float | None]:
    """The signal's value at evaluation step k (time k * interval), as Prometheus computes it."""
    act = scenario.active
    n = round(window / interval)
    v = scenario.value

    def events_in_window(k: int) -> int:
        # Sample j carries an event when it is active (its step from j-1); the window at step k
        # holds samples k-n..k, so steps k-n+1..k.
        return sum(1 for j in range(max(1, k - n + 1), k + 1) if act[j])

    def value(k: int) -> float | None:
        if kind is Kind.GAUGE:
            return v if act[k] else quiet
        if kind is Kind.RATIO:
            if events_in_window(k) == 0:
                return None
            if quantile is not None:
                low, high = scenario_bucket(v, quantile)
                return low + (high - low) * quantile
            return v
        if kind is Kind.RATE:
            return v * events_in_window(k) / n
        if kind is Kind.INCREASE:
            return float(v * sum(1 for j in _jumps(act, n) if k - n + 1 <= j <= k))
        return v if act[k] else 0.0

    return value


def _jumps(active: list[bool], steps: int) -> list[int]:
    """Samples where a once-per-window counter jumps: the first active one, then every window."""
    out = []
    since = None
    for k, on in enumerate(active):
        if on:
            since = k if since is None else since
            if (k - since) % steps == 0:
                out.append(k)
        else:
            since = None
    return out


def simulate(rules: list[TierRule], value: Callable[[int], float | None], steps: int,
             interval: float) -> list[list[TierRule]]:
    """For each evaluation step, the tiers firing (Prometheus' pending -> firing after `for`)."""
    since: dict[int, int | None] = {i: None for i in range(len(rules))}
    out: list[list[TierRule]] = []
    for k in range(steps):
        v = value(k)
        firing = []
        for i, rule in enumerate(rules):
            t = rule.tier.threshold
            on = v is not None and not math.isnan(v) and (v < t if rule.alert.below else v > t)
            if not on:
                since[i] = None
                continue
            start = since[i]
            if start is None:
                since[i] = start = k
            if (k - start) * interval >= rule.hold:
                firing.append(rule)
        out.append(firing)
    return out


# ------------------------------------------------------------------ values to test with


def breach_value(rule: TierRule, kind: Kind) -> float | None:
    """A value just past this tier's threshold (None when no value can pass it).

    Just past, so that a threshold moved the wrong way by more than EPS makes the firing test
    fail; counts step to the next whole number, since a count between two integers never occurs.
    """
    t, unit = rule.tier.threshold, rule.alert.unit
    whole = unit is Unit.COUNT and t == int(t)
    if rule.alert.below:
        if t <= 0:
            return None
        return float(math.ceil(t) - 1) if whole else _past(t, -1, unit)
    if unit is Unit.RATIO and kind is Kind.RATIO and t >= 1:
        return None  # a ratio of counters never exceeds 1
    if whole or kind is Kind.INCREASE:
        return float(math.floor(t) + 1)
    return _past(t, 1, unit) if t else EPS


def safe_value(rule: TierRule, kind: Kind) -> float:
    """A value at this tier's threshold where the rule computes it exactly, else just inside.

    A gauge, an increase of whole jumps and an age are exact: the threshold itself, silent
    under the strict comparison. A ratio of rates or an interpolated quantile is not exact to
    the last bit: EPS inside.
    """
    t = rule.tier.threshold
    if kind in (Kind.GAUGE, Kind.INCREASE, Kind.AGE):
        return t
    unit = rule.alert.unit
    if rule.alert.below:
        inside = _past(t, 1, unit) if t else EPS
        return min(inside, 1.0) if unit is Unit.RATIO else inside
    return max(_past(t, -1, unit), 0.0)


READABLE: dict[Unit, Callable[[float], str]] = {
    Unit.RATIO: humanize_percentage, Unit.SECONDS: humanize_duration, Unit.COUNT: humanize,
    Unit.BYTES: humanize1024}


def _past(t: float, sign: int, unit: Unit) -> float:
    """t moved by a small multiple of EPS (relative) in the direction `sign`.

    The annotations print the value rounded (`humanizePercentage` keeps four digits): a value
    on a rounding tie, such as 95.095 %, prints differently from a rule's ratio one bit off,
    so the first multiple whose printed form cannot flip that way is taken.
    """
    show = READABLE[unit]
    value = t
    for k in range(1, 10):
        value = float(f"{t * (1 + sign * k * EPS):.6g}")
        if show(value * (1 - 1e-9)) == show(value * (1 + 1e-9)):
            break
    assert (value > t) if sign > 0 else (value < t), (t, value)
    return value


def quiet_value(rules: list[TierRule]) -> float:
    """A gauge value no tier alerts on."""
    below = rules[0].alert.below
    thresholds = [r.tier.threshold for r in rules]
    return max(thresholds) + 1 if below else min(0.0, min(thresholds))


# ------------------------------------------------------------------ the test file


def rule_tests(loaded: LoadedRunbook, timing: Timing, rules_file: str) -> dict[str, Any]:
    """The promtool test document for one runbook's rule file."""
    rb = loaded.runbook
    interval = timing.test_interval
    tests: list[dict[str, Any]] = []
    rules = tier_rules(loaded, timing)
    for alert in loaded.alerts:
        mine = [r for r in rules if r.alert is alert]
        # The window the alert's recording rule reads (longer for slow probes).
        window = ex.signal_window(rb, alert.signal.name, timing) if alert.signal \
            else timing.window()
        for rule in mine:
            tests.extend(_tier_tests(rb, mine, rule, interval, window))
    tests.extend(_health_test(rb, h, interval) for h in health_rules(loaded, timing))
    return {"rule_files": [rules_file], "evaluation_interval": dur(interval), "tests": tests}


def _health_test(rb: Runbook, rule: HealthRule, interval: float) -> dict[str, Any]:
    """Up, then down past the rule's `for`, then up again: pending just before its `for`,
    firing after it, clear on recovery."""
    labels = {**scrape_labels(rb), **rule.extra}
    before, hold = 5, max(1, math.ceil(rule.hold / interval))
    down = hold + 3
    values: list[float | None] = [*([1.0] * before), *([0.0] * down), *([1.0] * 3)]
    alert_labels = {**labels, **rule.labels}
    firing = [{"exp_labels": alert_labels,
               "exp_annotations": {k: expand(t, alert_labels, 0.0)
                                   for k, t in rule.annotations.items()}}]
    checks = [(before + hold - 1, []), (before + hold, firing), (before + down, [])]
    return {
        "name": f"{rule.alertname}: pending before its `for`, fires after it, clears on recovery",
        "interval": dur(interval),
        "input_series": [{"series": _sel(rule.series, labels), "values": compress(values)}],
        "alert_rule_test": [{"eval_time": dur(k * interval), "alertname": rule.alertname,
                             "exp_alerts": expected} for k, expected in checks],
    }


def slo_eval_interval(timing: Timing) -> float:
    """How often the SLO tests evaluate the rules.

    Burn-rate alerts have no `for`, so only the evaluation at the checked time matters; a
    coarse cadence keeps the multi-day ticket scenarios to a few hundred evaluations (at one a
    minute each would take promtool tens of seconds).
    """
    return timing.interval if timing.scaled else 1800.0


def slo_rule_tests(loaded: LoadedRunbook, timing: Timing, rules_file: str) -> dict[str, Any]:
    """The promtool test document for the SLO burn-rate alerts of one runbook's rule file."""
    return {"rule_files": [rules_file], "evaluation_interval": dur(slo_eval_interval(timing)),
            "tests": _slo_tests(loaded, timing)}


def _tier_tests(rb: Runbook, mine: list[TierRule], rule: TierRule, interval: float,
                window: float) -> list[dict[str, Any]]:
    alert = rule.alert
    kind = KINDS.get(alert.signal.name, Kind.GAUGE) if alert.signal else Kind.GAUGE
    quantile = ex.QUANTILES.get(alert.signal.name) if alert.signal else None
    labels = _default_labels(rb, alert.signal.name, rule.query.by, alert.select) \
        if alert.signal else dict(alert.select)
    quiet = quiet_value(mine)
    n = round(window / interval)
    longest = max(r.hold for r in mine)
    start = n + 1
    name = f"{alert.alertname} {rule.tier.severity}"
    out: list[dict[str, Any]] = []

    # Just inside the threshold, held long: this tier never fires.
    safe = safe_value(rule, kind)
    length = start + n + math.ceil(longest / interval) + 3
    scenario = Scenario(safe, [start <= k for k in range(length)])
    fired = simulate(mine, values_at(kind, scenario, quiet, interval, window, quantile),
                     length, interval)
    last = length - 1
    assert rule not in fired[last]
    out.append(_test(f"{name}: just inside the threshold stays silent", rb, rule, scenario,
                     quiet, labels, interval, window, [(last, fired[last])], kind, quantile))

    breach = breach_value(rule, kind)
    if breach is None:
        return out
    length = start + n + math.ceil(longest / interval) + 3
    probe = Scenario(breach, [start <= k for k in range(length)])
    value = values_at(kind, probe, quiet, interval, window, quantile)
    fired = simulate(mine, value, length, interval)
    fire_at = next((k for k in range(length) if rule in fired[k]), None)
    if fire_at is None:
        return out
    end = fire_at + 1
    total = end + n + 3
    scenario = Scenario(breach, [start <= k < end for k in range(total)])
    value = values_at(kind, scenario, quiet, interval, window, quantile)
    fired = simulate(mine, value, total, interval)
    checks: list[tuple[int, list[TierRule]]] = []
    if fire_at - 1 >= 0 and rule.hold > 0:
        assert rule not in fired[fire_at - 1]
        checks.append((fire_at - 1, fired[fire_at - 1]))
    checks.append((fire_at, fired[fire_at]))
    clear_at = next(k for k in range(end, total) if not fired[k])
    checks.append((clear_at, fired[clear_at]))
    return [*out, _test(f"{name}: pending before its `for`, fires after it, clears on recovery",
                        rb, rule, scenario, quiet, labels, interval, window, checks, kind,
                        quantile)]


def _test(name: str, rb: Runbook, rule: TierRule, scenario: Scenario, quiet: float,
          labels: dict[str, str], interval: float, window: float,
          checks: list[tuple[int, list[TierRule]]], kind: Kind,
          quantile: float | None) -> dict[str, Any]:
    series = build_inputs(rb, rule, scenario, quiet, labels, interval, window)
    value = values_at(kind, scenario, quiet, interval, window, quantile)
    checked = []
    for k, firing in checks:
        v = value(k)
        expected = []
        for r in firing:
            assert v is not None
            alert_labels = {**labels, **r.labels}
            expected.append({
                "exp_labels": alert_labels,
                "exp_annotations": {key: expand(text, alert_labels, v)
                                    for key, text in r.annotations.items()},
            })
        checked.append({"eval_time": dur(k * interval), "alertname": rule.alert.alertname,
                           "exp_alerts": expected})
    return {
        "name": name,
        "interval": dur(interval),
        "input_series": [{"series": s, "values": compress(vals)} for s, vals in series.items()],
        "alert_rule_test": checked,
    }


# ------------------------------------------------------------------ SLO tests

# Sample spacings an SLO scenario may use (seconds): the coarsest that still puts several
# samples in the pair's short window, so that multi-day scenarios stay a few hundred samples.
SLO_STEPS = (60.0, 300.0, 600.0, 1800.0)
# Events per sample in SLO inputs. Bad fractions have at most 7 decimals, so every count is a
# whole number: promtool adds `a+bxn` increments up in float64, and a fractional increment
# drifting below the next segment's start would read as a counter reset.
SLO_EVENTS = 10**7


@dataclass(frozen=True)
class SloScenario:
    """Traffic for one SLO test: after a first sample, `phases` of (samples, bad fraction)."""

    label: str
    step: float
    phases: tuple[tuple[int, Decimal], ...]

    def counters(self) -> tuple[list[Decimal], list[Decimal]]:
        """Cumulative (bad, total) events at each sample, SLO_EVENTS events per sample."""
        bad, total = [Decimal(0)], [Decimal(0)]
        for samples, fraction in self.phases:
            for _ in range(samples):
                bad.append(bad[-1] + fraction * SLO_EVENTS)
                total.append(total[-1] + SLO_EVENTS)
        return bad, total


Pair = tuple[float, float, float]


def _slo_firing(rules: list[SloRule], budget: float, timing: Timing,
                scenario: SloScenario, without: Pair | None = None) -> list[SloRule] | None:
    """The burn-rate tiers firing at the scenario's last sample, as Prometheus computes them
    (None when a ratio lands within rounding of a bound: such a test would be a coin toss),
    optionally as if the burn-rate pair `without` were not in its rule.

    promtool 2.x reads a range [t - w, t] inclusive; with samples every `step` and w a multiple
    of it the first sample sits on the range's start, so rate() does not extrapolate and each
    recorded error ratio is exactly bad / total over the window (none with one sample or no
    traffic). SLO alerts have no `for`: the last evaluation alone decides.
    """
    bad, total = scenario.counters()
    last = len(bad) - 1

    def ratio(window: float) -> Decimal | None:
        w = timing.window(window)
        if w < scenario.step:
            return None
        m = round(w / scenario.step)
        assert abs(m * scenario.step - w) < 1e-9, (w, scenario.step)
        first = max(0, last - m)
        events = total[last] - total[first]
        return (bad[last] - bad[first]) / events if last > first and events else None

    firing = []
    for rule in rules:
        pairs = next(p for _, tier, p in ex.BURN_RATES if tier == rule.tier)
        for long, short, factor in pairs:
            if (long, short, factor) == without:
                continue
            bound = Decimal(ex.number(round(factor * budget, 12)))
            values = [ratio(long), ratio(short)]
            if any(v is not None and abs(v - bound) <= bound * Decimal("1e-6") for v in values):
                return None
            if all(v is not None and v > bound for v in values):
                firing.append(rule)
                break
    return firing


def _slo_step(timing: Timing, short: float) -> float:
    """The coarsest sample spacing dividing every window it does not exceed, with at least
    five samples in the short window."""
    if timing.scaled:
        return timing.interval
    windows = [timing.window(w) for w in ex.slo_windows()]
    fits = [s for s in SLO_STEPS if s <= timing.window(short) / 4
            and all(round(w / s) * s == w for w in windows if w >= s)]
    return max(fits)


def _slo_scenarios(rules: list[SloRule], budget: float,
                   timing: Timing) -> list[tuple[SloScenario, list[SloRule]]]:
    """Per burn-rate pair: just under and just over its factor, a burn in its short window
    only and a burn of its long window that stopped within the short one, each after the
    shortest clean history that keeps the other pairs from deciding the outcome."""
    out: list[tuple[SloScenario, list[SloRule]]] = []
    for rule in rules:
        pairs = next(p for _, tier, p in ex.BURN_RATES if tier == rule.tier)
        for long, short, factor in pairs:
            if timing.scaled and rule.tier != ex.BURN_RATES[0][1]:
                continue  # days of scaled time at one evaluation a second: the page tier only
            step = _slo_step(timing, short)
            n_long = round(timing.window(long) / step)
            n_short = round(timing.window(short) / step)
            what = f"{factor:g}x over {dur(long)} and {dur(short)}"

            def frac(x: float) -> Decimal:
                return Decimal(f"{min(x, 1.0):.7f}")

            under, over = frac(factor * budget * (1 - EPS)), frac(factor * budget * (1 + EPS))
            spike = frac(0.5 * factor * budget * long / short)
            burnt = frac(2 * factor * budget * long / (long - short))
            wanted: list[tuple[str, tuple[tuple[int, Decimal], ...], bool]] = [
                (f"a burn just under {what} does not open it", ((n_long, under),), False),
                (f"a burn just over {what} opens it", ((n_long, over),), True),
            ]
            if spike > Decimal(repr(factor * budget)) * (1 + Decimal(EPS)):
                wanted.append((f"a burn in the last {dur(short)} alone does not open it",
                               ((n_short, spike),), False))
            if n_long > n_short:
                wanted.append((f"a burn over {dur(long)} that stopped {dur(short)} ago does not "
                               "open it", ((n_long - n_short, burnt), (n_short, Decimal(0))),
                               False))
            for label, phases, fires in wanted:
                found = _with_history(rules, rule, (long, short, factor), budget, timing,
                                      step, phases, fires,
                                      f"{rule.alertname} {rule.tier}: {label}")
                if found is not None:
                    out.append(found)
    return out


def _with_history(rules: list[SloRule], rule: SloRule, pair: Pair, budget: float,
                  timing: Timing, step: float, phases: tuple[tuple[int, Decimal], ...],
                  fires: bool, label: str) -> tuple[SloScenario, list[SloRule]] | None:
    """The scenario after the shortest clean history (0 or one window) for which `rule` fires
    exactly when `fires` says, and when it fires, through `pair` alone (so that the test pins
    that pair's factor and both its windows); None when no history does."""
    histories = sorted({0, *(round(timing.window(w) / step) for w in ex.slo_windows()
                             if timing.window(w) >= step)})
    every = round(slo_eval_interval(timing) / step)  # samples between evaluations
    assert every * step == slo_eval_interval(timing), (step, slo_eval_interval(timing))
    length = sum(n for n, _ in phases)
    for base in histories:
        # A longer clean history, so that the checked time falls on an evaluation.
        history = base + (-(base + length)) % every
        scenario = SloScenario(label, step, ((history, Decimal(0)), *phases))
        firing = _slo_firing(rules, budget, timing, scenario)
        if firing is None or (rule in firing) != fires:
            continue
        if fires and rule in (_slo_firing(rules, budget, timing, scenario, pair) or [rule]):
            continue
        return scenario, firing
    return None


def _slo_tests(loaded: LoadedRunbook, timing: Timing) -> list[dict[str, Any]]:
    rb = loaded.runbook
    out: list[dict[str, Any]] = []
    all_rules = slo_rules(loaded, timing)
    for slo in rb.slos:
        if slo.sli.kind == "custom":
            continue  # its counters are the runbook's own PromQL: nothing to feed generically
        mine = [r for r in all_rules if r.slo is slo]
        budget = 1 - slo.objective
        quiet = SloScenario(f"{mine[0].alertname}: no errors stays silent", timing.interval,
                            ((round(2 * slo_eval_interval(timing) / timing.interval),
                              Decimal(0)),))
        for scenario, firing in [(quiet, []), *_slo_scenarios(mine, budget, timing)]:
            series = _slo_inputs(rb, slo.sli.kind, slo.sli.latency, scenario)
            expected = [{"exp_labels": r.labels, "exp_annotations": r.annotations}
                        for r in firing]
            last = sum(n for n, _ in scenario.phases)
            out.append({
                "name": scenario.label,
                "interval": dur(scenario.step),
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{"eval_time": dur(last * scenario.step),
                                     "alertname": mine[0].alertname, "exp_alerts": expected}],
            })
    return out


def _slo_inputs(rb: Runbook, kind: str, latency: float | None,
                scenario: SloScenario) -> dict[str, str]:
    bad_events, total_events = scenario.counters()
    bad = compress([float(v) for v in bad_events])
    good = compress([float(t - b) for t, b in zip(total_events, bad_events, strict=True)])
    total = compress([float(v) for v in total_events])
    scrape = scrape_labels(rb)
    if kind == "latency":
        assert latency is not None
        hist = ex.app_histogram(rb)
        base = hist or ex.PROBE_LATENCY
        labels = {**scrape, "job": app_job(rb)} if hist else scrape
        return {
            _sel(f"{base}_bucket", {**labels, "le": ex.number(latency)}): good,
            _sel(f"{base}_bucket", {**labels, "le": "+Inf"}): total,
            _sel(f"{base}_count", labels): total,
        }
    app = rb.watch.app
    if app and app.requests_total:
        bad_labels = {**scrape, "job": app_job(rb), app.status_label: "500"}
        good_labels = {**scrape, "job": app_job(rb), app.status_label: "200"}
        metric = app.requests_total
    else:
        bad_labels = {**scrape, "result": "failure"}
        good_labels = {**scrape, "result": "success"}
        metric = ex.PROBE_REQUESTS
    return {_sel(metric, bad_labels): bad, _sel(metric, good_labels): good}


def render_rule_tests(loaded: LoadedRunbook, timing: Timing, rules_file: str) -> str:
    """The text of alert_rules/<service>.rules_test.yml."""
    return dump_yaml(rule_tests(loaded, timing, rules_file))


def render_slo_rule_tests(loaded: LoadedRunbook, timing: Timing, rules_file: str) -> str | None:
    """The text of alert_rules/<service>.slo_test.yml (None: no SLO promtool can feed)."""
    doc = slo_rule_tests(loaded, timing, rules_file)
    return dump_yaml(doc) if doc["tests"] else None

