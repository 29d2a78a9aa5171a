"""Signal -> PromQL, from the metric contract: the value of each signal, per its labels."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from runbook.alerting import ResolvedAlert, resolve
from runbook.render import RenderError
from runbook.render.timing import RATE_WINDOW, Timing, dur
from runbook.schema import HttpProbe, Runbook, Slo
from runbook.selectors import app_job, exporter_job
from runbook.signals import Unit

QUANTILES = {"latency_p95": 0.95, "latency_p99": 0.99}
UNIT_SUFFIX = {Unit.RATIO: "ratio", Unit.SECONDS: "seconds", Unit.COUNT: "count",
               Unit.BYTES: "bytes"}
PROBE_REQUESTS = "runbook_probe_requests_total"
PROBE_LATENCY = "runbook_probe_duration_seconds"


@dataclass(frozen=True)
class SignalQuery:
    """A recorded signal: the recording rule's name, its PromQL and the labels it keeps."""

    record: str
    expr: str
    by: tuple[str, ...]


def number(value: float) -> str:
    """A threshold as PromQL writes it: 100, 0.7, 1e-05."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def metric_prefix(service: str) -> str:
    """The service name as the first part of a recording rule name (no dashes)."""
    name = service.replace("-", "_")
    return name if re.match(r"^[a-zA-Z_]", name) else "_" + name


def record_name(service: str, key: str, unit: Unit) -> str:
    """`cinder-js`, `memory_usage` -> `cinder_js:memory_usage:ratio`."""
    return f"{metric_prefix(service)}:{key}:{UNIT_SUFFIX[unit]}"


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(metric: str, matchers: dict[str, str] | None = None, regex: bool = False) -> str:
    """`metric{a="b"}` (or `=~` matchers when regex)."""
    op = "=~" if regex else "="
    inner = ",".join(f"{k}{op}{quote(v)}" for k, v in sorted((matchers or {}).items()))
    return f"{metric}{{{inner}}}" if inner else metric


def _by(labels: tuple[str, ...]) -> str:
    return f"by ({', '.join(labels)})" if labels else ""


def _sum(inner: str, by: tuple[str, ...], fn: str = "sum") -> str:
    return f"{fn} {_by(by)} ({inner})" if by else f"{fn}({inner})"


def app_requests(rb: Runbook) -> str | None:
    """The app's request counter, when the runbook names it."""
    return rb.watch.app.requests_total if rb.watch.app else None


def app_histogram(rb: Runbook) -> str | None:
    """The app's latency histogram base name, when the runbook names it."""
    return rb.watch.app.latency_histogram if rb.watch.app else None


def _app_job(rb: Runbook) -> dict[str, str]:
    """The matcher every selector of the app's own metrics carries: without it, one Prometheus
    scraping several services would sum their http_requests_total into this one's rules."""
    return {"job": app_job(rb)}


def exporter_selector(rb: Runbook, metric: str, matchers: dict[str, str] | None = None) -> str:
    """A selector of an exporter metric, scoped to this runbook's exporter job.

    Every exporter publishes the same runbook_* names; without the job matcher one service's
    rules would sum or pick another service's series once one Prometheus scrapes both.
    """
    return selector(metric, {**(matchers or {}), "job": exporter_job(rb)})


def probe_window(rb: Runbook) -> float:
    """The rate window of a probe-measured latency quantile: four of the longest probe interval.

    A counter that moves once per probe needs several probes in the window, else the ratio of
    a window holding one probe is 0 or 1: at least four of the longest probe interval, rounded
    up to whole minutes (a clean duration), and never shorter than the contract's window.
    Error and success ratios size theirs by their thresholds too (probe_ratio_window).
    """
    longest = max((p.interval for p in rb.watch.http), default=0.0)
    return probe_ratio_window(longest, None)


# Failed probes a probe-measured ratio's window holds when failures come at exactly the
# lowest threshold's rate (see probe_ratio_window).
FAILURES_AT_THRESHOLD = 3
RATIO_SIGNALS = ("error_rate", "success_rate")


def probe_ratio_window(interval: float, share: float | None) -> float:
    """The rate window of a ratio of probes made every `interval` seconds whose threshold is
    `share` of them for the rarer outcome: 2 % failures for `error_rate > 2%`, 5 % failures for
    `success_rate < 95%` (None: no threshold to size for).

    Each probe is one event, so a window of n probes moves the ratio in steps of 1/n. Over 5m
    of 15s probes (n = 20) a 2 % threshold lies between 0 and 1 failure: a steady 4 % failure
    rate reads 0 % or 5 % by window, every window without a failure resets the `for`, and the
    alert never fires. The window holds N = FAILURES_AT_THRESHOLD failures at the threshold's
    own rate, N / share probes, so one failure more or less moves the ratio by at most a third
    of the threshold: a steady rate over (1 + 1/N) x threshold reads above it in every window,
    one under (1 - 1/N) x threshold in none. Besides, at least four probes (a window of one
    reads 0 or 1) and the contract's 5m; rounded up to whole minutes, a clean duration.
    """
    probes = 4.0
    if share is not None and share > 0:  # `> 0%` fires on any failure: one probe tells it
        probes = max(probes, FAILURES_AT_THRESHOLD / share)
    minutes = math.ceil(round(probes * interval / 60, 6))  # 3 / 5% x 15s is 15m, not 16m
    return max(RATE_WINDOW, minutes * 60.0)


def probes_read(rb: Runbook, alert: ResolvedAlert) -> list[HttpProbe]:
    """The probes an alert on a probe-measured signal reads: the target it selects, else all
    (its recording rule keeps one series per target)."""
    target = alert.select.get("target")
    chosen = [p for p in rb.watch.http if p.name == target]
    return chosen if target is not None and chosen else list(rb.watch.http)


def _ratio_signal_window(rb: Runbook, signal: str) -> float:
    """The window of a probe-measured error or success ratio: one recording rule serves every
    alert on the signal, so the longest any of their tiers needs, each over the probes it reads."""
    alerts = [resolve(key, spec) for key, spec in rb.alerts.items()
              if spec.expr is None and (spec.signal or key) == signal]
    if not alerts:
        return probe_window(rb)
    return max(probe_ratio_window(max((p.interval for p in probes_read(rb, a)), default=0.0),
                                  min(min(t.threshold, 1 - t.threshold) for t in a.tiers))
               for a in alerts)


def uses_probes(rb: Runbook, signal: str) -> bool:
    """Whether the signal is computed from the exporter's probe counters or histogram."""
    if signal in RATIO_SIGNALS:
        return app_requests(rb) is None
    return signal in QUANTILES and app_histogram(rb) is None


def signal_window(rb: Runbook, signal: str, timing: Timing) -> float:
    """The (scaled) range window of a catalog signal's rate(), increase() or ratio."""
    if not uses_probes(rb, signal):
        return timing.window(RATE_WINDOW)
    if signal in RATIO_SIGNALS:
        return timing.window(_ratio_signal_window(rb, signal))
    return timing.window(probe_window(rb))


def signal_value(rb: Runbook, signal: str, by: tuple[str, ...], timing: Timing) -> str:
    """PromQL for a catalog signal's value, aggregated to the labels `by`."""
    w = dur(signal_window(rb, signal, timing))

    def sel(metric: str, matchers: dict[str, str] | None = None) -> str:
        return exporter_selector(rb, metric, matchers)

    def rate(metric: str) -> str:
        return _sum(f"rate({metric}[{w}])", by)

    def ratio(good: str, other: str) -> str:
        total = f"({rate(sel(good))} + {rate(sel(other))})"
        return f"{rate(sel(good))} / ({total} > 0)"

    gauges = {
        "probe_failures": ("runbook_probe_consecutive_failures", "max"),
        "queue_depth": ("runbook_queue_depth", "sum"),
        "queue_failed": ("runbook_queue_jobs", "sum"),
        "queue_oldest_age": ("runbook_queue_oldest_job_age_seconds", "max"),
        "queue_workers": ("runbook_queue_workers", "sum"),
        "db_long_queries": ("runbook_pg_long_running_queries", "max"),
        "db_longest_query": ("runbook_pg_longest_query_seconds", "max"),
        "db_idle_in_transaction": ("runbook_pg_idle_in_transaction", "max"),
        "db_query_time": ("runbook_pg_statements_mean_seconds", "max"),
        "db_replication_lag": ("runbook_pg_replication_lag_seconds", "max"),
    }
    if signal in gauges:
        metric, fn = gauges[signal]
        return _sum(sel(metric, {"state": "failed"} if signal == "queue_failed" else None),
                    by, fn)
    if signal == "memory_usage":
        return (f"{_sum(sel('runbook_host_memory_used_bytes'), by)} / "
                f"({_sum(sel('runbook_host_memory_limit_bytes'), by)} > 0)")
    if signal == "cpu_usage":
        cores = _sum(sel("runbook_host_cpu_limit_cores"), by)
        return f"{rate(sel('runbook_host_cpu_seconds_total'))} / ({cores} > 0)"
    if signal == "disk_usage":
        return (f"{_sum(sel('runbook_host_disk_used_bytes'), by)} / "
                f"({_sum(sel('runbook_host_disk_size_bytes'), by)} > 0)")
    if signal in RATIO_SIGNALS:
        bad, all_ = _request_selectors(rb, good=signal == "success_rate")
        return f"{rate(bad)} / ({rate(all_)} > 0)"
    if signal in QUANTILES:
        hist = app_histogram(rb)
        bucket = selector(f"{hist}_bucket", _app_job(rb)) if hist else sel(
            f"{PROBE_LATENCY}_bucket")
        inner = _sum(f"rate({bucket}[{w}])", (*by, "le"))
        return f"histogram_quantile({QUANTILES[signal]}, {inner})"
    if signal == "cache_hit_rate":
        return ratio("runbook_redis_keyspace_hits_total", "runbook_redis_keyspace_misses_total")
    if signal == "db_cache_hit_rate":
        return ratio("runbook_pg_blocks_hit_total", "runbook_pg_blocks_read_total")
    if signal == "redis_memory_usage":
        return (f"{_sum(sel('runbook_redis_memory_used_bytes'), by)} / "
                f"({_sum(sel('runbook_redis_memory_max_bytes'), by)} > 0)")
    if signal == "db_connections":
        return (f"{_sum(sel('runbook_pg_connections'), by)} / "
                f"({_sum(sel('runbook_pg_max_connections'), by)} > 0)")
    if signal == "log_errors":
        return _sum(f"increase({sel('runbook_log_lines_total')}[{w}])", by)
    if signal == "staleness":
        return _sum(f"time() - {sel('runbook_last_success_timestamp_seconds')}", by, "max")
    raise RenderError(f"no PromQL for signal {signal!r}")


def _request_selectors(rb: Runbook, good: bool) -> tuple[str, str]:
    """(selected requests, all requests) counters for error or success ratios."""
    app = rb.watch.app
    if app and app.requests_total:
        op = "!~" if good else "=~"
        job = _app_job(rb)
        inner = ",".join([*(f"{k}={quote(v)}" for k, v in job.items()),
                          f"{app.status_label}{op}{quote(app.error_status)}"])
        return f"{app.requests_total}{{{inner}}}", selector(app.requests_total, job)
    result = "success" if good else "failure"
    return (exporter_selector(rb, PROBE_REQUESTS, {"result": result}),
            exporter_selector(rb, PROBE_REQUESTS))


def signal_query(rb: Runbook, alert: ResolvedAlert, timing: Timing) -> SignalQuery:
    """The recording rule behind one alert (catalog signal or the runbook's own expr)."""
    record = record_name(rb.service, alert.signal.name if alert.signal else alert.key, alert.unit)
    if alert.signal is None:
        assert alert.expr is not None
        return SignalQuery(record, " ".join(alert.expr.split()), ())
    by = signal_labels(rb, alert.signal.name, alert.signal.selectable)
    return SignalQuery(record, signal_value(rb, alert.signal.name, by, timing), by)


def signal_labels(rb: Runbook, signal: str, selectable: tuple[str, ...]) -> tuple[str, ...]:
    """The labels a signal's value keeps: the app's own metrics carry no exporter target."""
    if signal in ("error_rate", "success_rate") and app_requests(rb):
        return ()
    if signal in QUANTILES and app_histogram(rb):
        return ()
    return selectable


def alert_expr(query: SignalQuery, alert: ResolvedAlert, threshold: float) -> str:
    """`<record>{select} > threshold` (or `<` for a below signal)."""
    op = "<" if alert.below else ">"
    return f"{selector(query.record, alert.select)} {op} {number(threshold)}"


# ------------------------------------------------------------------ SLOs

# (severity, tier, [(long window, short window, burn factor)]) from the SRE workbook.
BURN_RATES: tuple[tuple[str, str, tuple[tuple[float, float, float], ...]], ...] = (
    ("critical", "page", ((3600.0, 300.0, 14.4), (6 * 3600.0, 1800.0, 6.0))),
    ("warning", "ticket", ((86400.0, 7200.0, 3.0), (3 * 86400.0, 6 * 3600.0, 1.0))),
)


def slo_windows() -> list[float]:
    """Every window the burn-rate alerts read, shortest first."""
    return sorted({w for _, _, pairs in BURN_RATES for pair in pairs for w in pair[:2]})


def slo_record(service: str, slo: Slo, window: float, timing: Timing) -> str:
    """`svc:slo_errors:ratio_rate1h` (the SLO is told apart by its `slo` label)."""
    del slo
    return f"{metric_prefix(service)}:slo_errors:ratio_rate{dur(timing.window(window))}"


def le_regex(bound: float) -> str:
    """A regex matching `le` as Go (`1`, `0.5`) and Python (`1.0`, `0.5`) clients write it."""
    text = number(bound)
    return re.escape(text) + (r"(\.0+)?" if "." not in text and "e" not in text else "0*")


def slo_error_ratio(rb: Runbook, slo: Slo, window: float, timing: Timing) -> str:
    """PromQL for the fraction of bad events over one window."""
    w = dur(timing.window(window))
    if slo.sli.kind == "custom":
        assert slo.sli.errors is not None
        assert slo.sli.total is not None
        if "$window" not in slo.sli.errors or "$window" not in slo.sli.total:
            raise RenderError(f"slos.{slo.name}: a custom SLI writes its range as [$window], "
                              "e.g. sum(rate(jobs_failed_total[$window]))")
        errors = slo.sli.errors.replace("$window", w)
        total = slo.sli.total.replace("$window", w)
        return f"({errors}) / (({total}) > 0)"
    if slo.sli.kind == "latency":
        assert slo.sli.latency is not None
        hist = app_histogram(rb)
        base = hist if hist else PROBE_LATENCY
        job = _app_job(rb) if hist else {"job": exporter_job(rb)}
        good_matchers = ",".join([*(f"{k}={quote(v)}" for k, v in job.items()),
                                  f"le=~{quote(le_regex(slo.sli.latency))}"])
        good = f"sum(rate({base}_bucket{{{good_matchers}}}[{w}]))"
        total = f"sum(rate({selector(base + '_count', job)}[{w}]))"
        return f"1 - {good} / ({total} > 0)"
    bad, all_ = _request_selectors(rb, good=False)
    return f"sum(rate({bad}[{w}])) / (sum(rate({all_}[{w}])) > 0)"
