"""Rendered rule files and their generated promtool tests, run by the real promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from runbook.loader import LoadedRunbook, load_runbook, load_text
from runbook.render import RenderError
from runbook.render.gotemplate import go_float, humanize, humanize_duration, humanize_percentage
from runbook.render.output import Options, render_all, write_all
from runbook.render.rules import rule_groups
from runbook.render.timing import Timing

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))

# Every catalog signal with tiers of every shape: two and three tiers, a per-tier `for`, `for: 0s`,
# `below` signals, `select:` narrowing, the app's own metrics, expr alerts and both SLO kinds.
SINK = """
service: kitchen-sink
description: every catalog signal, tiers of every kind
runbook_url: https://runbooks.example.com/kitchen-sink
labels: {team: platform}
watch:
  host: {mounts: ["/", "/data"]}
  http:
    - {name: api, url: "http://127.0.0.1:8080/health"}
  redis:
    - name: main
      url: redis://127.0.0.1:16379/0
      queues: {bullmq: [scrape], celery: [celery], rq: [default]}
  postgres:
    - {name: db, dsn_env: DATABASE_URL}
  logs:
    - {name: app, path: /var/log/app.log, patterns: {error: "ERROR", oom: "Out of memory"}}
  freshness:
    - {name: nightly, file: /var/run/nightly.stamp}
  app:
    job: web
    requests_total: http_requests_total
    latency_histogram: http_request_duration_seconds
alerts:
  memory_usage: {warning: 70%, critical: 85%, for: 5m}
  cpu_usage: {warning: 70%, critical: {threshold: 90%, for: 10m}, for: 5m}
  disk_usage: {select: {mount: /data}, medium: 80%, high: 90%, critical: 95%, for: 2m}
  error_rate: {warning: 1%, critical: 5%, for: 5m}
  success_rate: {warning: 99%, critical: 95%, for: 3m}
  latency_p95: {warning: 500ms, critical: 1s, for: 5m}
  latency_p99: {critical: 2s, for: 90s}
  probe_failures: {critical: 2, for: 1m}
  queue_depth:
    select: {queue: scrape}
    warning: {threshold: 50, for: 5m}
    critical: {threshold: 100, for: 10m}
  queue_failed: {warning: 0, for: 0s}
  queue_oldest_age: {warning: 10m, critical: 1h, for: 5m}
  queue_workers: {warning: 2, critical: 1, for: 2m}
  cache_hit_rate: {warning: 70%, critical: 50%, for: 10m}
  redis_memory_usage: {warning: 80%, for: 5m}
  db_connections: {warning: 75%, critical: 90%, for: 5m}
  db_long_queries: {warning: 0, for: 1m}
  db_longest_query: {warning: 5m, for: 1m}
  db_idle_in_transaction: {warning: 3, for: 5m}
  db_query_time: {warning: 100ms, critical: 500ms, for: 5m}
  db_replication_lag: {warning: 30s, critical: 5m, for: 2m}
  db_cache_hit_rate: {warning: 95%, critical: 90%, for: 15m}
  log_errors: {select: {pattern: error}, warning: 10, critical: 100, for: 2m}
  staleness: {warning: 25h, critical: 49h, for: 0s}
  jobs_stuck:
    expr: sum by (target) (runbook_queue_jobs{job="runbook-kitchen-sink", state="active"})
    unit: count
    warning: 20
    for: 15m
  pg_down:
    expr: runbook_pg_up{job="runbook-kitchen-sink", target="db"}
    unit: count
    below: true
    alertname: DatabaseDown
    critical: 1
    for: 30s
slos:
  - {name: availability, objective: 99.9%, window: 30d}
  - {name: latency, objective: 95%, sli: {kind: latency, latency: 500ms}}
respond:
  - match: {alertname: QueueDepthHigh, severity: critical}
    mode: auto
    do: [{exec: ["true"]}]
  - matchers: ['alertname="CacheHitRateLow"', 'target=~"main"']
    mode: approve
    do: [{exec: ["true"]}]
  - match: {alertname: ErrorRateHigh}
    mode: page
page:
  critical:
    - pagerduty: {routing_key_env: PD_KEY}
    - slack: {webhook_url_env: SLACK_URL}
  default:
    webhook: {url: "http://127.0.0.1:9999/hook", token_env: HOOK_TOKEN}
"""

# Error rate and latency from the exporter's probes (no app metrics), one tier each.
PROBES = """
service: probes-only
watch:
  http:
    - {name: web, url: "http://127.0.0.1:8080/health"}
alerts:
  error_rate: {critical: 5%, for: 5m}
  success_rate: {warning: 98%, for: 5m}
  latency_p95: {warning: 2s, for: 5m}
slos:
  - {name: uptime, objective: 99.5%}
  - {name: fast, objective: 99%, sli: {kind: latency, latency: 1s}}
"""


def subset(keys: list[str], slos: bool = False) -> str:
    """The kitchen sink with only some alerts (and no SLOs unless asked): a fast promtool run."""
    data = yaml.safe_load(SINK)
    data["alerts"] = {k: v for k, v in data["alerts"].items() if k in keys}
    if not slos:
        del data["slos"]
    data["respond"] = []
    return str(yaml.safe_dump(data, sort_keys=False))


def render_to(out: Path, texts: list[str], scale: float = 1.0) -> None:
    runbooks = [load_text(t, f"runbook{i}.yml") for i, t in enumerate(texts)]
    write_all(render_all(runbooks, Options(timing=Timing(scale))), out)


def promtool_run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, check=False)


@pytest.fixture(scope="module")
def sink_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sink")
    render_to(out, [SINK, PROBES])
    return out / "alert_rules"


def test_sink_rules_check_and_their_tests_pass(promtool: str, sink_dir: Path) -> None:
    for service in ("kitchen-sink", "probes-only"):
        check = promtool_run(promtool, "check", "rules", f"{service}.rules.yml", cwd=sink_dir)
        assert check.returncode == 0, check.stdout + check.stderr
        for tests in (f"{service}.rules_test.yml", f"{service}.slo_test.yml"):
            run = promtool_run(promtool, "test", "rules", tests, cwd=sink_dir)
            assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_rules_check_and_their_tests_pass(promtool: str, example: Path,
                                                   tmp_path: Path) -> None:
    write_all(render_all([load_runbook(example)], Options()), tmp_path)
    service = load_runbook(example).service
    rules = tmp_path / "alert_rules"
    check = promtool_run(promtool, "check", "rules", f"{service}.rules.yml", cwd=rules)
    assert check.returncode == 0, check.stdout + check.stderr
    for tests in sorted(rules.glob(f"{service}.*test.yml")):
        run = promtool_run(promtool, "test", "rules", tests.name, cwd=rules)
        assert run.returncode == 0, run.stdout + run.stderr


def test_time_scaled_rules_and_tests_pass(promtool: str, tmp_path: Path) -> None:
    keys = ["memory_usage", "cpu_usage", "error_rate", "latency_p95", "queue_depth",
            "cache_hit_rate", "log_errors", "staleness", "pg_down"]
    render_to(tmp_path, [subset(keys, slos=True)], scale=0.01)
    rules = tmp_path / "alert_rules"
    groups = yaml.safe_load((rules / "kitchen-sink.rules.yml").read_text())["groups"]
    assert {g["interval"] for g in groups} == {"1s"}
    fors = {r["alert"]: r.get("for") for r in groups[0]["rules"] if "alert" in r}
    assert fors["MemoryUsageHigh"] == "3s"
    assert "[4s]" in groups[0]["rules"][1]["expr"]  # cpu rate window: four 1s intervals
    run = promtool_run(promtool, "test", "rules", "kitchen-sink.rules_test.yml", cwd=rules)
    assert run.returncode == 0, run.stdout + run.stderr


def _tests_of(path: Path) -> list[dict[str, object]]:
    tests: list[dict[str, object]] = yaml.safe_load(path.read_text())["tests"]
    return tests


def test_every_tier_has_a_silent_test_and_a_firing_test(sink_dir: Path) -> None:
    loaded = load_text(SINK)
    tests = _tests_of(sink_dir / "kitchen-sink.rules_test.yml")
    for alert in loaded.alerts:
        for tier in alert.tiers:
            prefix = f"{alert.alertname} {tier.severity}: "
            mine = [t for t in tests if str(t["name"]).startswith(prefix)]
            assert len(mine) == 2, prefix
            silent, firing = mine
            checks = firing["alert_rule_test"]
            assert isinstance(checks, list)
            fired = [a["exp_labels"] for c in checks for a in c["exp_alerts"]]
            assert any(labels["severity"] == tier.severity for labels in fired), prefix
            assert checks[-1]["exp_alerts"] == [], f"{prefix} recovery must clear the alert"
            if tier.for_seconds:
                assert all(a["exp_labels"]["severity"] != tier.severity
                           for a in checks[0]["exp_alerts"]), f"{prefix} fired before its for"
            silent_checks = silent["alert_rule_test"]
            assert isinstance(silent_checks, list)
            assert all(a["exp_labels"]["severity"] != tier.severity
                       for c in silent_checks for a in c["exp_alerts"])


def test_firing_alert_carries_labels_and_annotations(sink_dir: Path) -> None:
    tests = _tests_of(sink_dir / "kitchen-sink.rules_test.yml")
    test = next(t for t in tests if str(t["name"]).startswith("QueueDepthHigh critical: pending"))
    checks = test["alert_rule_test"]
    assert isinstance(checks, list)
    alert = next(a for a in checks[1]["exp_alerts"] if a["exp_labels"]["severity"] == "critical")
    assert alert["exp_labels"] == {
        "target": "main", "queue": "scrape", "kind": "bullmq", "team": "platform",
        "severity": "critical", "service": "kitchen-sink", "signal": "queue_depth",
        "tier": "critical"}
    assert alert["exp_annotations"]["runbook_url"] == \
        "https://runbooks.example.com/kitchen-sink#queue_depth"
    assert ": 101, " in alert["exp_annotations"]["description"]  # the next whole job past 100
    assert "critical threshold 100 for 10m" in alert["exp_annotations"]["description"]


MUTATIONS = [
    ("DiskUsageHigh", "> 0.9", "> 0.88"),  # a threshold lowered: the silent test catches it
    ("MemoryUsageHigh", "> 0.7", "> 0.75"),  # a gauge ratio
    ("CpuUsageHigh", "> 0.9", "> 0.96"),  # a rate ramping over its window
    ("LatencyP95High", "> 0.5", "> 0.99"),  # a histogram quantile
    ("CacheHitRateLow", "< 0.5", "< 0.45"),  # a below ratio of counters
    ("LogErrorsHigh", "> 10", "> 11"),  # increase() over the window
    ("StalenessHigh", "> 90000", "> 89940"),  # time() minus a timestamp
    ("QueueWorkersLow", "< 2", "< 3"),  # a below gauge
]


@pytest.mark.parametrize(("alertname", "old", "new"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_generated_tests_fail_when_a_threshold_moves(promtool: str, tmp_path: Path,
                                                     alertname: str, old: str, new: str) -> None:
    key = next(a.key for a in load_text(SINK).alerts if a.alertname == alertname)
    render_to(tmp_path, [subset([key])])
    rules_dir = tmp_path / "alert_rules"
    rules_file = rules_dir / "kitchen-sink.rules.yml"
    data = yaml.safe_load(rules_file.read_text())
    hits = [r for r in data["groups"][0]["rules"]
            if r.get("alert") == alertname and r["expr"].endswith(old)]
    assert len(hits) == 1, f"{alertname} has no rule ending {old!r}"
    hits[0]["expr"] = hits[0]["expr"][: -len(old)] + new
    rules_file.write_text(yaml.safe_dump(data, sort_keys=False))
    run = promtool_run(promtool, "test", "rules", "kitchen-sink.rules_test.yml", cwd=rules_dir)
    assert run.returncode == 1, run.stdout
    assert f"alertname: {alertname}" in run.stdout + run.stderr


def test_generated_tests_fail_when_a_for_changes(promtool: str, tmp_path: Path) -> None:
    render_to(tmp_path, [subset(["queue_depth"])])
    rules_dir = tmp_path / "alert_rules"
    rules_file = rules_dir / "kitchen-sink.rules.yml"
    text = rules_file.read_text()
    target = "expr: kitchen_sink:queue_depth:count{queue=\"scrape\"} > 100\n        for: 10m"
    assert target in text
    rules_file.write_text(text.replace(target, target.replace("10m", "9m")))
    run = promtool_run(promtool, "test", "rules", "kitchen-sink.rules_test.yml", cwd=rules_dir)
    assert run.returncode == 1
    assert "alertname: QueueDepthHigh" in run.stdout + run.stderr


def test_below_ratio_stays_silent_without_traffic(promtool: str, sink_dir: Path) -> None:
    """No hits and no misses at all is no data, not a 0% hit rate."""
    test = {
        "rule_files": ["kitchen-sink.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'runbook_redis_keyspace_hits_total{target="main"}', "values": "0+0x60"},
                {"series": 'runbook_redis_keyspace_misses_total{target="main"}',
                 "values": "0+0x60"},
                {"series": 'runbook_pg_blocks_hit_total{target="db"}', "values": "0+0x60"},
                {"series": 'runbook_pg_blocks_read_total{target="db"}', "values": "0+0x60"},
                {"series": 'http_requests_total{job="web",status="200"}', "values": "0+0x60"},
            ],
            "alert_rule_test": [
                {"eval_time": "60m", "alertname": name, "exp_alerts": []}
                for name in ("CacheHitRateLow", "DbCacheHitRateLow", "SuccessRateLow")
            ],
            "promql_expr_test": [
                {"expr": "kitchen_sink:cache_hit_rate:ratio", "eval_time": "60m",
                 "exp_samples": []},
            ],
        }],
    }
    path = sink_dir / "no_traffic_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    run = promtool_run(promtool, "test", "rules", path.name, cwd=sink_dir)
    assert run.returncode == 0, run.stdout + run.stderr


def test_rules_carry_the_contract_expressions() -> None:
    groups = rule_groups(load_text(SINK), Timing())
    records = {r["record"]: r["expr"] for r in groups[0]["rules"] if "record" in r}
    assert records["kitchen_sink:memory_usage:ratio"] == (
        'sum(runbook_host_memory_used_bytes{job="runbook-kitchen-sink"}) / '
        '(sum(runbook_host_memory_limit_bytes{job="runbook-kitchen-sink"}) > 0)')
    assert records["kitchen_sink:queue_depth:count"] == (
        'sum by (target, queue, kind) (runbook_queue_depth{job="runbook-kitchen-sink"})')
    assert records["kitchen_sink:error_rate:ratio"] == (
        'sum(rate(http_requests_total{job="web",status=~"5.."}[5m])) / '
        '(sum(rate(http_requests_total{job="web"}[5m])) > 0)')
    assert records["kitchen_sink:latency_p95:seconds"] == (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(http_request_duration_seconds_bucket{job="web"}[5m])))')
    assert "runbook_probe_requests_total" in rule_groups(load_text(PROBES), Timing())[0][
        "rules"][0]["expr"]
    slo = groups[1]["rules"]
    alert = next(r for r in slo if r.get("alert") == "AvailabilityErrorBudgetBurn"
                 and r["labels"]["severity"] == "critical")
    assert "ratio_rate1h{slo=\"availability\"} > 0.0144" in alert["expr"]
    assert "ratio_rate30m{slo=\"availability\"} > 0.006" in alert["expr"]
    ticket = next(r for r in slo if r.get("alert") == "AvailabilityErrorBudgetBurn"
                  and r["labels"]["tier"] == "ticket")
    assert "ratio_rate3d{slo=\"availability\"} > 0.001" in ticket["expr"]
    assert "ratio_rate2h{slo=\"availability\"} > 0.003" in ticket["expr"]


def test_all_tiers_share_the_alertname_and_differ_by_severity() -> None:
    groups = rule_groups(load_text(SINK), Timing())
    disk = [r for r in groups[0]["rules"] if r.get("alert") == "DiskUsageHigh"]
    assert [r["labels"]["severity"] for r in disk] == ["medium", "high", "critical"]
    assert [r["expr"] for r in disk] == [
        'kitchen_sink:disk_usage:ratio{mount="/data"} > 0.8',
        'kitchen_sink:disk_usage:ratio{mount="/data"} > 0.9',
        'kitchen_sink:disk_usage:ratio{mount="/data"} > 0.95',
    ]


def test_custom_sli_without_window_placeholder_is_a_clear_error() -> None:
    text = """
service: custom
watch: {host: {}}
slos:
  - name: jobs
    objective: 99%
    sli:
      kind: custom
      errors: "sum(rate(jobs_failed_total[5m]))"
      total: "sum(rate(jobs_total[5m]))"
"""
    with pytest.raises(RenderError, match=r"\[\$window\]"):
        render_all([load_text(text)], Options())


def test_custom_sli_renders_each_window() -> None:
    text = """
service: custom
watch: {host: {}}
slos:
  - name: jobs
    objective: 99%
    sli:
      kind: custom
      errors: "sum(rate(jobs_failed_total[$window]))"
      total: "sum(rate(jobs_total[$window]))"
"""
    groups = rule_groups(load_text(text), Timing())
    exprs = [r["expr"] for r in groups[0]["rules"] if "record" in r]
    assert "(sum(rate(jobs_failed_total[3d]))) / ((sum(rate(jobs_total[3d]))) > 0)" in exprs


def test_unexpandable_annotation_template_is_a_clear_error() -> None:
    text = """
service: tmpl
watch: {host: {}}
alerts:
  memory_usage: {warning: 70%, for: 5m, summary: "{{ range $x := .Labels }}{{ end }}"}
"""
    with pytest.raises(RenderError, match="cannot expand"):
        render_all([load_text(text)], Options())


def test_duplicate_services_are_rejected() -> None:
    loaded = load_text(PROBES)
    with pytest.raises(RenderError, match="rendered twice"):
        render_all([loaded, loaded], Options())


@pytest.mark.parametrize(("value", "text"), [
    (0.85, "85%"), (0.0105, "1.05%"), (1.0, "100%"), (0.123456, "12.35%")])
def test_humanize_percentage_as_prometheus(value: float, text: str) -> None:
    assert humanize_percentage(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (0.4875, "487.5ms"), (7.8, "7.8s"), (90.0, "1m 30s"), (90000.0, "1d 1h 0m 0s"), (0.0, "0s")])
def test_humanize_duration_as_prometheus(value: float, text: str) -> None:
    assert humanize_duration(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (110.0, "110"), (1234.0, "1.234k"), (0.001, "1m"), (2e6, "2M")])
def test_humanize_as_prometheus(value: float, text: str) -> None:
    assert humanize(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (1e6, "1e+06"), (100000.0, "100000"), (0.7, "0.7"), (1e-05, "1e-05"), (3.0, "3")])
def test_value_printed_as_go_does(value: float, text: str) -> None:
    assert go_float(value) == text


def test_recorded_names_are_valid_metric_names() -> None:
    text = SINK.replace("service: kitchen-sink", "service: 9-lives")
    groups = rule_groups(load_text(text), Timing())
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"]), rule["record"]


# Two services whose exporters publish the same series names (same target and queue names):
# one Prometheus scrapes both, each under its own job.
TWIN = """
service: {service}
watch:
  redis:
    - name: main
      url: redis://127.0.0.1:16379/0
      queues: {{celery: [celery]}}
alerts:
  memory_usage: {{warning: 70%, critical: 85%, for: 5m}}
  queue_depth: {{warning: 50, critical: 100, for: 5m}}
"""


def test_each_services_alerts_fire_only_from_its_own_exporter(promtool: str,
                                                              tmp_path: Path) -> None:
    """alpha's host is at 90 % memory with an empty queue; beta's queue holds 500 jobs on a
    quiet host. Summed across jobs, alpha would read 50 % memory and beta's queue as its own."""
    render_to(tmp_path, [TWIN.format(service="alpha"), TWIN.format(service="beta")])
    rules = tmp_path / "alert_rules"
    series = []
    for service, used, depth in (("alpha", 900, 0), ("beta", 100, 500)):
        scrape = f'job="runbook-{service}",instance="{service}:9817"'
        series += [
            {"series": f"runbook_host_memory_used_bytes{{{scrape},target=\"host\"}}",
             "values": f"{used}x20"},
            {"series": f"runbook_host_memory_limit_bytes{{{scrape},target=\"host\"}}",
             "values": "1000x20"},
            {"series": f"runbook_queue_depth{{{scrape},target=\"main\",kind=\"celery\","
                       "queue=\"celery\"}", "values": f"{depth}x20"},
        ]
    firing = [("alpha", "MemoryUsageHigh", "critical"), ("alpha", "MemoryUsageHigh", "warning"),
              ("beta", "QueueDepthHigh", "critical"), ("beta", "QueueDepthHigh", "warning")]
    test = {
        "rule_files": ["alpha.rules.yml", "beta.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'count by (service, alertname, severity) (ALERTS{alertstate="firing"})',
                "eval_time": "10m",
                "exp_samples": [{"labels": f'{{service="{s}",alertname="{a}",severity="{sev}"}}',
                                 "value": 1} for s, a, sev in firing],
            }],
        }],
    }
    (rules / "twins_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    run = promtool_run(promtool, "test", "rules", "twins_test.yml", cwd=rules)
    assert run.returncode == 0, run.stdout + run.stderr


SLOW_PROBE = """
service: edge
watch:
  host: null
  http:
    - {name: health, url: "https://edge.example/health", interval: 5m}
alerts:
  error_rate: {warning: 5%, high: 10%, critical: 20%, for: 5m}
"""


def _probe_series(failed: set[int], probes: int) -> list[dict[str, str]]:
    """The probe counters sampled every minute, one probe every 5 minutes (probe k at 5k min)."""
    fail, ok = [0], [0]
    for minute in range(1, 5 * probes + 1):
        probe = minute // 5 if minute % 5 == 0 else 0
        fail.append(fail[-1] + (1 if probe in failed else 0))
        ok.append(ok[-1] + (1 if probe and probe not in failed else 0))
    base = 'runbook_probe_requests_total{job="runbook-edge",instance="edge:9817",target="health"'
    return [{"series": f'{base},result="failure"}}', "values": " ".join(map(str, fail))},
            {"series": f'{base},result="success"}}', "values": " ".join(map(str, ok))}]


def test_slow_probes_are_rated_over_enough_probes_for_the_lowest_tier(promtool: str,
                                                                     tmp_path: Path) -> None:
    """With a probe every 5m a 5m window holds one probe: the error ratio read 0 or 100 %.
    The 5 % tier needs three failures' worth of probes, 3 / 5 % = 60 of them: 5h; the ratio is
    the share of failed probes in it, and a sustained failure still fires every tier."""
    render_to(tmp_path, [SLOW_PROBE])
    rules = tmp_path / "alert_rules"
    groups = yaml.safe_load((rules / "edge.rules.yml").read_text())["groups"]
    assert "[5h]" in groups[0]["rules"][0]["expr"]
    firing = 'count by (severity) (ALERTS{alertname="ErrorRateHigh",alertstate="firing"})'
    test = {
        "rule_files": ["edge.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {   # probes 4 and 10 of 14 fail: at 40m the window holds probes 1..8
                "interval": "1m",
                "input_series": _probe_series({4, 10}, 14),
                "promql_expr_test": [{"expr": "edge:error_rate:ratio", "eval_time": "40m",
                                      "exp_samples": [{"labels": 'edge:error_rate:ratio'
                                                       '{target="health"}', "value": 0.125}]}],
            },
            {   # every probe fails: every tier fires once it held for its `for`
                "interval": "1m",
                "input_series": _probe_series(set(range(1, 15)), 14),
                "promql_expr_test": [{"expr": firing, "eval_time": "30m", "exp_samples": [
                    {"labels": f'{{severity="{s}"}}', "value": 1}
                    for s in ("warning", "high", "critical")]}],
            },
        ],
    }
    (rules / "slow_probe_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    run = promtool_run(promtool, "test", "rules", "slow_probe_test.yml", cwd=rules)
    assert run.returncode == 0, run.stdout + run.stderr


def test_probe_windows_follow_the_probe_intervals() -> None:
    from runbook.render.expressions import probe_window, signal_window

    rb = load_text(SLOW_PROBE).runbook
    assert probe_window(rb) == 1200.0  # four probes: what a probe-measured quantile reads
    assert signal_window(rb, "latency_p95", Timing()) == 1200.0
    assert signal_window(rb, "error_rate", Timing()) == 5 * 3600.0  # 3 / 5 % = 60 probes
    assert signal_window(rb, "cpu_usage", Timing()) == 300.0  # not fed by the probes
    fast = load_text(SLOW_PROBE.replace("interval: 5m", "interval: 30s")).runbook
    assert probe_window(fast) == 300.0  # 4 x 30s is under the default: the default
    assert signal_window(fast, "error_rate", Timing()) == 1800.0  # 60 x 30s
    odd = load_text(SLOW_PROBE.replace("interval: 5m", "interval: 100s")).runbook
    assert probe_window(odd) == 420.0  # 4 x 100s rounded up to whole minutes
    # The app's own request counter is not the probes': the default window.
    assert signal_window(load_text(SINK).runbook, "error_rate", Timing()) == 300.0


PROBE_SAMPLE = 30.0  # seconds between samples of the probe counters fed to promtool


def _probe_counters(loaded: LoadedRunbook, failed: dict[str, set[float]],
                    end: float) -> list[dict[str, str]]:
    """Every probe's counters until `end`, a probe every `interval` of its own; the probes
    made at the times in `failed[target]` fail."""
    from runbook.render.expressions import PROBE_REQUESTS, selector
    from runbook.render.rule_tests import compress, scrape_labels

    rb = loaded.runbook
    out = []
    for probe in rb.watch.http:
        assert probe.interval % PROBE_SAMPLE == 0, probe.interval
        failures = failed.get(probe.name, set())
        bad: list[float | None] = []
        good: list[float | None] = []
        for k in range(round(end / PROBE_SAMPLE) + 1):
            now = k * PROBE_SAMPLE
            failed_by_now = sum(1 for at in failures if at <= now)
            bad.append(float(failed_by_now))
            good.append(float(now // probe.interval - failed_by_now))
        labels = {**scrape_labels(rb), "target": probe.name}
        out += [{"series": selector(PROBE_REQUESTS, {**labels, "result": "failure"}),
                 "values": compress(bad)},
                {"series": selector(PROBE_REQUESTS, {**labels, "result": "success"}),
                 "values": compress(good)}]
    return out


def test_one_failed_health_check_does_not_page_umbrellas_availability_slo(
        promtool: str, tmp_path: Path) -> None:
    """Seed 004 alerts after "2+ consecutive checks" (line 135): one failed probe, of either
    health probe, fires no burn-rate tier of the 99.9% SLO; two in a row of the 30s probe page."""
    loaded = load_runbook(ROOT / "examples" / "umbrella.yml")
    write_all(render_all([loaded], Options()), tmp_path)
    at = 25 * 3600.0  # after a day of clean probes: every window up to 1d is full
    fastest = min(loaded.runbook.watch.http, key=lambda p: p.interval)
    firing = ('count by (tier) (ALERTS{alertname="AvailabilityErrorBudgetBurn",'
              'alertstate="firing"})')

    def case(failed: dict[str, set[float]], after: list[float],
             tiers: list[str]) -> dict[str, object]:
        return {"interval": f"{PROBE_SAMPLE:g}s",
                "input_series": _probe_counters(loaded, failed, at + max(after)),
                "promql_expr_test": [
                    {"expr": firing, "eval_time": f"{(at + wait) / 60:g}m",
                     "exp_samples": [{"labels": f'{{tier="{t}"}}', "value": 1} for t in tiers]}
                    for wait in after]}

    tests = [case({probe.name: {at}}, [60.0, 300.0, 1800.0], [])
             for probe in loaded.runbook.watch.http]
    tests.append(case({fastest.name: {at, at + fastest.interval}}, [120.0], ["page"]))
    rules = tmp_path / "alert_rules"
    test = {"rule_files": ["umbrella.rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (rules / "one_failed_probe_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    run = promtool_run(promtool, "test", "rules", "one_failed_probe_test.yml", cwd=rules)
    assert run.returncode == 0, run.stdout + run.stderr


# A reviewer's edits of committed rule files that the generated tests used to pass: a tier
# threshold quadrupled, a latency tier almost doubled, the page burn factor cut to a sixth,
# and the page's 5m short window stretched to 3d.
REVIEWER_MUTATIONS = [
    ("cinder-js", "ErrorRateHigh", "cinder_js:error_rate:ratio > 0.01",
     "cinder_js:error_rate:ratio > 0.04"),
    ("umbrella", "LatencyP95High", 'umbrella:latency_p95:seconds{target="health_frequent"} > 1',
     'umbrella:latency_p95:seconds{target="health_frequent"} > 1.9'),
    ("umbrella", "AvailabilityErrorBudgetBurn", "> 0.0144", "> 0.0025"),
    ("umbrella", "AvailabilityErrorBudgetBurn", 'ratio_rate5m{slo="availability"}',
     'ratio_rate3d{slo="availability"}'),
]


@pytest.mark.parametrize(("service", "alertname", "old", "new"), REVIEWER_MUTATIONS,
                         ids=[f"{m[0]}-{m[1]}-{m[3]}" for m in REVIEWER_MUTATIONS])
def test_generated_tests_catch_the_reviewers_mutations(promtool: str, tmp_path: Path,
                                                       service: str, alertname: str, old: str,
                                                       new: str) -> None:
    example = ROOT / "examples" / f"{service}.yml"
    write_all(render_all([load_runbook(example)], Options()), tmp_path)
    rules_dir = tmp_path / "alert_rules"
    rules_file = rules_dir / f"{service}.rules.yml"
    data = yaml.safe_load(rules_file.read_text())
    hits = [r for g in data["groups"] for r in g["rules"]
            if r.get("alert") == alertname and (r["expr"] == old or
                                                (not old.startswith(service.replace("-", "_"))
                                                 and old in r["expr"]))]
    assert len(hits) == 1, f"{alertname}: {len(hits)} rules hold {old!r}"
    hits[0]["expr"] = hits[0]["expr"].replace(old, new)
    rules_file.write_text(yaml.safe_dump(data, sort_keys=False))
    failed = []
    for tests in sorted(rules_dir.glob(f"{service}.*test.yml")):
        run = promtool_run(promtool, "test", "rules", tests.name, cwd=rules_dir)
        if run.returncode != 0:
            assert f"alertname: {alertname}" in run.stdout + run.stderr, run.stdout
            failed.append(tests.name)
    assert failed, f"no generated test noticed {old!r} -> {new!r}"
