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
from runbook.render.gotemplate import expand
from runbook.render.rules import TierRule, slo_rules, tier_rules
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml
from runbook.schema import Runbook
from runbook.signals import Unit

SCRAPE_LABELS = {"instance": "127.0.0.1:9817", "job": "runbook-exporter"}
SCALE = 1000  # events per interval in counter inputs, so ratios are exact decimals


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
    raw = {**SCRAPE_LABELS, **labels}
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
        return {_sel("runbook_host_cpu_seconds_total", raw): _counter(act, v * interval),
                _sel("runbook_host_cpu_limit_cores", raw): [1.0] * len(act)}
    if name in ("error_rate", "success_rate"):
        app = rb.watch.app
        if app and app.requests_total:
            job = {"job": app.job} if app.job else {}
            base = {**SCRAPE_LABELS, **job}
            bad = {**base, app.status_label: "500"}
            good = {**base, app.status_label: "200"}
            metric = app.requests_total
        else:
            bad, good = {**raw, "result": "failure"}, {**raw, "result": "success"}
            metric = ex.PROBE_REQUESTS
        picked = v if name == "error_rate" else 1 - float(_dec(v))
        bad_step = part(picked)
        return {_sel(metric, bad): _counter(act, bad_step),
                _sel(metric, good): _counter(act, SCALE - bad_step)}
    if name in ex.QUANTILES:
        hist = ex.app_histogram(rb)
        app = rb.watch.app
        base_labels = {**SCRAPE_LABELS, **({"job": app.job} if app and app.job else {})} \
            if hist else raw
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
        return {_sel(hits, raw): _counter(act, part(v)),
                _sel(misses, raw): _counter(act, SCALE - part(v))}
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
    """A value past this tier's threshold (None when no value can pass it)."""
    t, unit = rule.tier.threshold, rule.alert.unit
    if rule.alert.below:
        if t <= 0:
            return None
        if unit is Unit.RATIO:
            return _round4(t - min(0.05, t / 2))
        return _round4(t - max(1.0, t * 0.1)) if t >= 1 else _round4(t / 2)
    if unit is Unit.RATIO:
        if kind is Kind.RATE:
            return _round4(t + 0.05)
        return None if t >= 1 else _round4(t + min(0.05, (1 - t) / 2))
    if unit is Unit.SECONDS:
        quantile = ex.QUANTILES.get(rule.alert.signal.name) if rule.alert.signal else None
        if quantile is not None and t > 0:
            return t * (1 + quantile)  # every observation in the bucket just above t
        return _round4(t * 1.5) if t > 0 else 1.0
    return float(math.floor(t) + max(1, math.ceil(t * 0.1)))


def safe_value(rule: TierRule, kind: Kind) -> float:
    """A value just inside this tier's threshold: the threshold itself where it is exact."""
    t, unit = rule.tier.threshold, rule.alert.unit
    if kind in (Kind.GAUGE, Kind.INCREASE, Kind.AGE):
        return t
    quantile = ex.QUANTILES.get(rule.alert.signal.name) if rule.alert.signal else None
    if quantile is not None and not rule.alert.below:
        return t * (1 + quantile) / 2  # every observation in the bucket just below t
    margin = min(0.005, t / 2) if unit is Unit.RATIO else t * 0.025
    if rule.alert.below:
        return _round4(min(t + margin, 1.0) if unit is Unit.RATIO else t + margin)
    return _round4(max(t - margin, 0.0))


def _round4(value: float) -> float:
    return float(f"{value:.4g}")


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
    window = timing.window()
    tests: list[dict[str, Any]] = []
    rules = tier_rules(loaded, timing)
    for alert in loaded.alerts:
        mine = [r for r in rules if r.alert is alert]
        for rule in mine:
            tests.extend(_tier_tests(rb, mine, rule, interval, window))
    tests.extend(_slo_tests(loaded, timing))
    return {"rule_files": [rules_file], "evaluation_interval": dur(interval), "tests": tests}


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


def _slo_tests(loaded: LoadedRunbook, timing: Timing) -> list[dict[str, Any]]:
    rb = loaded.runbook
    interval = timing.test_interval
    out: list[dict[str, Any]] = []
    all_rules = slo_rules(loaded, timing)
    for slo in rb.slos:
        if slo.sli.kind == "custom":
            continue  # its counters are the runbook's own PromQL: nothing to feed generically
        mine = [r for r in all_rules if r.slo is slo]
        budget = 1 - slo.objective
        steps = 10
        for label, bad_fraction, firing_tiers in (
            ("no errors stays silent", 0.0, ()),
            ("errors at twice the budget open a ticket, no page", 2 * budget, ("ticket",)),
            ("only errors page and open a ticket", 1.0, ("page", "ticket")),
        ):
            series = _slo_inputs(rb, slo.sli.kind, slo.sli.latency, bad_fraction, steps)
            expected = [{"exp_labels": r.labels, "exp_annotations": r.annotations}
                        for r in mine if r.tier in firing_tiers]
            out.append({
                "name": f"{mine[0].alertname}: {label}",
                "interval": dur(interval),
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [{"eval_time": dur(steps * interval),
                                     "alertname": mine[0].alertname, "exp_alerts": expected}],
            })
    return out


def _slo_inputs(rb: Runbook, kind: str, latency: float | None, bad: float,
                steps: int) -> dict[str, str]:
    bad_step = float(_dec(bad) * SCALE)
    good_step = SCALE - bad_step
    if kind == "latency":
        assert latency is not None
        hist = ex.app_histogram(rb)
        base = hist or ex.PROBE_LATENCY
        app = rb.watch.app
        labels = {**SCRAPE_LABELS, **({"job": app.job} if hist and app and app.job else {})}
        good_le = {**labels, "le": ex.number(latency)}
        inf = {**labels, "le": "+Inf"}
        return {
            _sel(f"{base}_bucket", good_le): f"0+{_fmt(good_step)}x{steps}",
            _sel(f"{base}_bucket", inf): f"0+{SCALE}x{steps}",
            _sel(f"{base}_count", labels): f"0+{SCALE}x{steps}",
        }
    app = rb.watch.app
    if app and app.requests_total:
        job = {"job": app.job} if app.job else {}
        bad_labels = {**SCRAPE_LABELS, **job, app.status_label: "500"}
        good_labels = {**SCRAPE_LABELS, **job, app.status_label: "200"}
        metric = app.requests_total
    else:
        bad_labels = {**SCRAPE_LABELS, "result": "failure"}
        good_labels = {**SCRAPE_LABELS, "result": "success"}
        metric = ex.PROBE_REQUESTS
    return {_sel(metric, bad_labels): f"0+{_fmt(bad_step)}x{steps}",
            _sel(metric, good_labels): f"0+{_fmt(good_step)}x{steps}"}


def render_rule_tests(loaded: LoadedRunbook, timing: Timing, rules_file: str) -> str:
    """The text of alert_rules/<service>.rules_test.yml."""
    return dump_yaml(rule_tests(loaded, timing, rules_file))

