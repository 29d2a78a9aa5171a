"""Each example runbook reproduces its seed's thresholds, tiers, durations and responses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from runbook.actions import ExecParams, HttpParams
from runbook.alerting import ResolvedAlert
from runbook.loader import LoadedRunbook, load_runbook
from runbook.matchers import match_all
from runbook.schema import RespondRule, step_action
from runbook.units import parse_size

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"
SEEDS = Path(__file__).parent / "fixtures" / "seeds"
SEED_FILES = {
    "cinder-js": "000_ff10b3561c6728f2.txt",
    "ai-analysis": "001_af813dbdfbc2b2e4.txt",
    "blog-engine": "002_d84d9a38bb43653f.txt",
    "scraper": "003_1fa1f8e71fe8b478.txt",
    "umbrella": "004_d03b3a7924d3152c.txt",
}
MIN = 60.0


# ------------------------------------------------------------------ helpers


def load(name: str) -> LoadedRunbook:
    return load_runbook(EXAMPLES / f"{name}.yml")


def seed_text(name: str) -> str:
    path = SEEDS / SEED_FILES[name]
    assert path.is_file(), f"seed {path} is missing"
    return path.read_text(encoding="utf-8")


def seed_table(name: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in the seed whose header starts with this text."""
    lines = seed_text(name).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


_CELL = re.compile(r"([<>])\s*(\d+(?:\.\d+)?)\s*(%|ms|s|GB)?")


def seed_value(cell: str) -> tuple[str, float]:
    """`> 70% (2.8GB)` -> ('>', 0.7); `>500ms` -> ('>', 0.5); `P95 > 2s` -> ('>', 2.0)."""
    match = _CELL.search(cell)
    assert match, f"no threshold in seed cell {cell!r}"
    op, number, unit = match.groups()
    value = float(number)
    if unit == "%":
        value /= 100
    elif unit == "ms":
        value /= 1000
    return op, value


def tiers(alert: ResolvedAlert) -> dict[str, tuple[float, float]]:
    """severity -> (threshold in base units, for in seconds)."""
    return {t.severity: (t.threshold, t.for_seconds) for t in alert.tiers}


def alert(loaded: LoadedRunbook, key: str) -> ResolvedAlert:
    found = next((a for a in loaded.alerts if a.key == key), None)
    assert found is not None, f"{loaded.service} has no alert {key}"
    return found


def response(loaded: LoadedRunbook, alertname: str, severity: str) -> RespondRule:
    """The first respond rule matching an alert's labels, as the responder picks it."""
    labels = {"alertname": alertname, "severity": severity, "service": loaded.service}
    for rule, matchers in zip(loaded.runbook.respond, loaded.rule_matchers, strict=True):
        if match_all(matchers, labels):
            return rule
    raise AssertionError(f"no respond rule for {alertname} {severity}")


def steps(rule: RespondRule, section: str = "do") -> list[tuple[str, Any]]:
    return [step_action(s) for s in getattr(rule, section)]


def argvs(rule: RespondRule, section: str = "do") -> list[list[str]]:
    return [p.argv for n, p in steps(rule, section) if isinstance(p, ExecParams)]


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def test_every_example_loads_and_names_its_seed() -> None:
    for name, seed in SEED_FILES.items():
        text = (EXAMPLES / f"{name}.yml").read_text(encoding="utf-8")
        assert seed in "".join(text.splitlines()[:3]), f"{name}.yml must name {seed} at its top"
        assert load(name).service == name


# ------------------------------------------------------------------ 000 cinder-js


CINDER_TABLE_KEYS = {
    "Memory Usage": "memory_usage",
    "CPU Usage": "cpu_usage",
    "Error Rate": "error_rate",
    "P95 Latency": "latency_p95",
    "Queue Depth": "queue_depth",
}


def test_cinder_js_numbers() -> None:
    rb = load("cinder-js")
    # Seed 000 lines 97-101 (Key Metrics table); for: lines 132, 141, 149, 314; others chosen 5m.
    assert tiers(alert(rb, "memory_usage")) == {"warning": (0.70, 5 * MIN),
                                                "critical": (0.85, 5 * MIN)}
    assert tiers(alert(rb, "cpu_usage")) == {"warning": (0.70, 5 * MIN),
                                             "critical": (0.90, 5 * MIN)}
    assert tiers(alert(rb, "error_rate")) == {"warning": (0.01, 5 * MIN),
                                              "critical": (0.05, 5 * MIN)}
    assert tiers(alert(rb, "latency_p95")) == {"warning": (4.0, 5 * MIN),
                                               "critical": (8.0, 5 * MIN)}
    # Line 314 "Queue depth > 50 for > 5 min"; line 148-149 "bullmq_queue_waiting > 100, for: 10m".
    assert tiers(alert(rb, "queue_depth")) == {"warning": (50.0, 5 * MIN),
                                               "critical": (100.0, 10 * MIN)}
    assert not any(a.below for a in rb.alerts)
    # Line 97: "> 70% (2.8GB)", "> 85% (3.4GB)" of the 4GB container (line 313).
    host = rb.runbook.watch.host
    assert host is not None
    assert host.memory_limit == 4_000_000_000
    assert 0.70 * host.memory_limit == approx(parse_size("2.8GB"))
    assert 0.85 * host.memory_limit == approx(parse_size("3.4GB"))
    # Line 107: GET /health answers 200 {"status": "healthy"}.
    health = rb.runbook.watch.http[0]
    assert health.url.endswith("/health")
    assert health.expect_json == {"status": "healthy"}
    # Line 298: new Worker('scrape', ...).
    assert "scrape" in rb.runbook.watch.redis[0].queues.bullmq


def test_cinder_js_against_seed_table() -> None:
    rb = load("cinder-js")
    rows = seed_table("cinder-js", "| Metric       | Warning")  # seed 000 lines 95-101
    assert [r["Metric"] for r in rows] == list(CINDER_TABLE_KEYS)
    for row in rows:
        got = tiers(alert(rb, CINDER_TABLE_KEYS[row["Metric"]]))
        for severity in ("warning", "critical"):
            op, value = seed_value(row[severity.title()])
            assert op == ">"
            assert got[severity][0] == approx(value), (row["Metric"], severity)


def test_cinder_js_responses() -> None:
    rb = load("cinder-js")
    # Line 101 "Scale workers"; line 330 `leapcell scale cinder-js --instances 3`.
    for severity in ("warning", "critical"):
        rule = response(rb, "QueueDepthHigh", severity)
        assert rule.mode == "auto"
        assert argvs(rule) == [["leapcell", "scale", "cinder-js", "--instances", "3"]]
        assert rule.cooldown == 30 * MIN
        assert rule.verify_after == 10 * MIN
    # Line 97 "Scale up or investigate leak"; line 313 "Add memory (4GB -> 8GB)", line 333.
    rule = response(rb, "MemoryUsageHigh", "critical")
    assert rule.mode == "approve"
    assert argvs(rule) == [["leapcell", "config", "set", "cinder-js", "resources.memory=8GB"]]
    # Lines 99, 100: investigate logs, check browser pool: humans.
    assert response(rb, "ErrorRateHigh", "critical").mode == "page"
    assert response(rb, "LatencyP95High", "critical").mode == "page"
    # Lines 353-360: force restart, then roll back.
    rule = response(rb, "ProbeFailuresHigh", "critical")
    assert argvs(rule) == [["leapcell", "restart", "cinder-js", "--force"]]
    assert argvs(rule, "escalate") == [["leapcell", "rollback", "cinder-js", "--revision",
                                        "previous"]]
    assert [n for n, _ in steps(rule, "escalate")] == ["exec", "page"]
    assert rb.runbook.page["critical"][0].pagerduty is not None
    assert rb.runbook.page["warning"][0].slack is not None


# ------------------------------------------------------------------ 001 ai-analysis


AI_TABLE_KEYS = {
    "API P95 Response Time": "latency_p95",
    "Error Rate": "error_rate",
    "Queue Length": "queue_depth",
    "Cache Hit Rate": "cache_hit_rate",
    "Disk Space": "disk_usage",
}


def test_ai_analysis_numbers() -> None:
    rb = load("ai-analysis")
    # Seed 001 lines 559-563; the seed gives no durations: 5m chosen for all.
    assert tiers(alert(rb, "latency_p95")) == {"warning": (0.5, 5 * MIN),
                                               "critical": (1.0, 5 * MIN)}
    assert tiers(alert(rb, "error_rate")) == {"warning": (0.02, 5 * MIN),
                                              "critical": (0.05, 5 * MIN)}
    assert tiers(alert(rb, "queue_depth")) == {"warning": (100.0, 5 * MIN),
                                               "critical": (500.0, 5 * MIN)}
    assert tiers(alert(rb, "cache_hit_rate")) == {"warning": (0.70, 5 * MIN),
                                                  "critical": (0.50, 5 * MIN)}
    assert alert(rb, "cache_hit_rate").below
    assert alert(rb, "cache_hit_rate").alertname == "CacheHitRateLow"
    assert tiers(alert(rb, "disk_usage")) == {"warning": (0.80, 5 * MIN),
                                              "critical": (0.90, 5 * MIN)}
    # Line 63: "Memory Usage: <80%".
    assert tiers(alert(rb, "memory_usage")) == {"warning": (0.80, 5 * MIN)}
    # Line 537: stat.failed / stat.total > 0.05.
    assert tiers(alert(rb, "queue_failure_rate")) == {"warning": (0.05, 5 * MIN)}
    # Lines 317-321: long-running queries are those over 5 minutes.
    assert rb.runbook.watch.postgres[0].long_query == 5 * MIN
    assert rb.runbook.watch.redis[0].queues.bullmq == ["ai-analysis"]


def test_ai_analysis_against_seed_table() -> None:
    rb = load("ai-analysis")
    rows = seed_table("ai-analysis", "| Metric | Warning")  # seed 001 lines 557-563
    assert [r["Metric"] for r in rows] == list(AI_TABLE_KEYS)
    for row in rows:
        resolved = alert(rb, AI_TABLE_KEYS[row["Metric"]])
        for severity in ("warning", "critical"):
            op, value = seed_value(row[severity.title()])
            assert resolved.below == (op == "<"), row["Metric"]
            assert tiers(resolved)[severity][0] == approx(value), (row["Metric"], severity)


def test_ai_analysis_responses() -> None:
    rb = load("ai-analysis")
    # Line 561 "pause queues" with POST /api/queue/:name/pause (lines 86, 686).
    rule = response(rb, "QueueDepthHigh", "critical")
    assert rule.mode == "approve"
    (name, params), = steps(rule)
    assert name == "http"
    assert isinstance(params, HttpParams)
    assert (params.method, params.url) == ("POST",
                                           "http://localhost:3001/api/queue/ai-analysis/pause")
    # Line 381 "Warm cache" with POST /api/cache/warm (line 206).
    for severity in ("warning", "critical"):
        rule = response(rb, "CacheHitRateLow", severity)
        (name, params), = steps(rule)
        assert rule.mode == "auto"
        assert isinstance(params, HttpParams)
        assert params.url == "http://localhost:3001/api/cache/warm"
    # Line 563 "Clean logs"; line 656 find /var/log -name "*.log" -mtime +30 -delete.
    rule = response(rb, "DiskUsageHigh", "critical")
    (name, params), = steps(rule)
    assert name == "files_clean"
    assert (params.root, params.glob, params.older_than, params.mode) == (
        "/var/log", "*.log", 30 * 86400.0, "delete")
    # Lines 318-321: terminate active queries over 5 minutes.
    (name, params), = steps(response(rb, "DbLongQueriesHigh", "warning"))
    assert name == "pg_terminate_long_queries"
    assert params.longer_than == 5 * MIN
    # Line 473: pm2 restart app.
    assert argvs(response(rb, "ProbeFailuresHigh", "critical")) == [["pm2", "restart", "app"]]
    # Lines 426 and 473: restart services with pm2, after approval.
    rule = response(rb, "MemoryUsageHigh", "warning")
    assert rule.mode == "approve"
    assert argvs(rule) == [["pm2", "restart", "app"]]
    # Line 450: retry failed jobs.
    assert [n for n, _ in steps(response(rb, "QueueFailureRateHigh", "warning"))] == [
        "bullmq_retry_failed"]
    # Line 639: Sunday 2-4 AM.
    weekly = rb.runbook.maintenance[0].weekly
    assert weekly is not None
    assert (weekly.days, weekly.start, weekly.end) == (
        ["sun"], "02:00", "04:00")


# ------------------------------------------------------------------ 002 blog-engine


BLOG_TABLE_KEYS = {
    "High Error Rate": "error_rate",
    "Slow Response Time": "latency_p95",
    "Service Down": "probe_failures",
    "Database Connection Pool": "db_connections",
    "Disk Space": "disk_usage",
    "Memory Usage": "memory_usage",
}


def test_blog_engine_numbers() -> None:
    rb = load("blog-engine")
    # Seed 002 lines 76-81, all critical; only Service Down has a duration (2 min), 5m chosen.
    assert tiers(alert(rb, "error_rate")) == {"critical": (0.05, 5 * MIN)}
    assert tiers(alert(rb, "latency_p95")) == {"critical": (2.0, 5 * MIN)}
    assert tiers(alert(rb, "probe_failures")) == {"critical": (0.0, 2 * MIN)}
    assert tiers(alert(rb, "db_connections")) == {"critical": (0.90, 5 * MIN)}
    assert tiers(alert(rb, "disk_usage")) == {"critical": (0.85, 5 * MIN)}
    assert tiers(alert(rb, "memory_usage")) == {"critical": (0.90, 5 * MIN)}
    # Lines 41-43 and 49: three health endpoints answering {"status": "healthy"}.
    probes = rb.runbook.watch.http
    assert [p.url.removeprefix("https://api.blogengine.com") for p in probes] == [
        "/health", "/auth/health", "/posts/health"]
    assert all(p.expect_json == {"status": "healthy"} for p in probes)


def test_blog_engine_against_seed_table() -> None:
    rb = load("blog-engine")
    rows = seed_table("blog-engine", "| Alert | Threshold")  # seed 002 lines 74-81
    assert [r["Alert"] for r in rows] == list(BLOG_TABLE_KEYS)
    for row in rows:
        resolved = alert(rb, BLOG_TABLE_KEYS[row["Alert"]])
        (severity, (threshold, for_seconds)), = tiers(resolved).items()
        assert severity == "critical"
        if row["Alert"] == "Service Down":
            # "Any service unhealthy > 2 min": any failure (> 0) held for the minutes given.
            minutes = re.fullmatch(r"Any service unhealthy > (\d+) min", row["Threshold"])
            assert minutes is not None
            assert (threshold, for_seconds) == (0.0, float(minutes.group(1)) * MIN)
            continue
        op, value = seed_value(row["Threshold"])
        assert op == ">"
        assert not resolved.below
        assert threshold == approx(value), row["Alert"]


def test_blog_engine_responses() -> None:
    rb = load("blog-engine")
    # Lines 110-114: rollout restart, then rollout status.
    rule = response(rb, "ProbeFailuresHigh", "critical")
    assert rule.mode == "auto"
    assert argvs(rule) == [
        ["kubectl", "rollout", "restart", "deployment/blog-engine", "-n", "production"],
        ["kubectl", "rollout", "status", "deployment/blog-engine", "-n", "production"],
    ]
    # Lines 166-173: DB_POOL_SIZE=50, then end sessions idle over 10 minutes.
    rule = response(rb, "DbConnectionsHigh", "critical")
    assert rule.mode == "approve"
    pool, kill = argvs(rule)
    assert pool == ["kubectl", "set", "env", "deployment/blog-engine", "DB_POOL_SIZE=50"]
    assert kill[:6] == ["psql", "-U", "admin", "-d", "blogengine", "-c"]
    assert "state = 'idle' AND state_change < NOW() - INTERVAL '10 minutes'" in kill[6]
    assert [n for n, _ in steps(response(rb, "DiskUsageHigh", "critical"))] == ["files_clean"]
    assert response(rb, "MemoryUsageHigh", "critical").mode == "approve"
    assert response(rb, "ErrorRateHigh", "critical").mode == "page"
    # Lines 84-85: PagerDuty for critical, Slack #alerts for warnings.
    assert rb.runbook.page["critical"][0].pagerduty is not None
    assert rb.runbook.page["warning"][0].slack is not None


# ------------------------------------------------------------------ 003 scraper


SCRAPER_SUBJECTS = {
    "Success rate": "scraper_success_rate",
    "Error rate": "error_rate",
    "P95": "latency_p95",
    "Memory": "memory_usage",
    "Disk": "disk_usage",
    "Queue depth": "queue_depth",
}
_ESCALATION = re.compile(r"^- (.+?) ([<>]) (\d+(?:\.\d+)?)(%|s)?: (Critical|High|Medium)\b")


def test_scraper_numbers() -> None:
    rb = load("scraper")
    # Seed 003 lines 117-118, 157-159, 197-199, 237, 277-279, 317, 356-357; no durations: 5m.
    assert tiers(alert(rb, "scraper_success_rate")) == {"high": (0.80, 5 * MIN),
                                                        "critical": (0.50, 5 * MIN)}
    assert alert(rb, "scraper_success_rate").below
    assert tiers(alert(rb, "error_rate")) == {"medium": (0.05, 5 * MIN), "high": (0.10, 5 * MIN),
                                              "critical": (0.20, 5 * MIN)}
    assert tiers(alert(rb, "latency_p95")) == {"medium": (1.0, 5 * MIN), "high": (2.0, 5 * MIN),
                                               "critical": (5.0, 5 * MIN)}
    assert tiers(alert(rb, "memory_usage")) == {"high": (0.90, 5 * MIN)}
    assert tiers(alert(rb, "disk_usage")) == {"medium": (0.80, 5 * MIN), "high": (0.90, 5 * MIN),
                                              "critical": (0.95, 5 * MIN)}
    # "Cache misses > 50%: High" is a hit rate below 50%.
    assert tiers(alert(rb, "cache_hit_rate")) == {"high": (0.50, 5 * MIN)}
    assert alert(rb, "cache_hit_rate").below
    assert tiers(alert(rb, "queue_depth")) == {"high": (1000.0, 5 * MIN)}
    # "No workers running: High": /health's Celery status failing (Celery has no worker
    # registry the exporter could read), held for 2m.
    assert tiers(alert(rb, "celery_workers_down")) == {"high": (0.0, 2 * MIN)}
    assert alert(rb, "celery_workers_down").signal.name == "probe_failures"
    assert alert(rb, "celery_workers_down").select == {"target": "celery"}
    assert tiers(alert(rb, "database_down")) == {"critical": (1.0, 1 * MIN)}
    assert tiers(alert(rb, "redis_down")) == {"medium": (1.0, 1 * MIN)}
    assert tiers(alert(rb, "oom_errors")) == {"critical": (0.0, 0.0)}
    assert rb.runbook.watch.redis[0].queues.celery == ["celery"]


def test_scraper_against_seed_escalations() -> None:
    rb = load("scraper")
    found: list[tuple[str, str]] = []
    for line in seed_text("scraper").splitlines():
        match = _ESCALATION.match(line)
        if not match:
            continue
        subject, op, number, unit, severity = match.groups()
        value = float(number) / (100 if unit == "%" else 1)
        if subject == "Cache misses":  # misses above x is hits below 1 - x
            key, op, value = "cache_hit_rate", "<", 1 - value
        else:
            key = SCRAPER_SUBJECTS[subject]
        resolved = alert(rb, key)
        assert resolved.below == (op == "<"), line
        assert tiers(resolved)[severity.lower()][0] == approx(value), line
        found.append((key, severity.lower()))
    # Every escalation with a number in the seed (lines 117-118, 157-159, 197-199, 237, 277-279,
    # 317, 357) was checked.
    assert len(found) == 14


def test_scraper_responses() -> None:
    rb = load("scraper")
    # Line 357 "Queue depth > 1000: High - Scale workers".
    rule = response(rb, "QueueDepthHigh", "high")
    (name, params), = steps(rule)
    assert rule.mode == "auto"
    assert name == "celery_pool_grow"
    assert params.broker == "main"
    # Line 259 "Clean up old log files" at high and critical; medium "Plan cleanup" pages.
    for severity in ("high", "critical"):
        rule = response(rb, "DiskUsageHigh", severity)
        assert rule.mode == "auto"
        assert [n for n, _ in steps(rule)] == ["files_clean"]
    assert response(rb, "DiskUsageHigh", "medium").mode == "page"
    for alertname, severity in (("ScraperSuccessRateLow", "critical"),
                                ("ErrorRateHigh", "critical"), ("CeleryWorkersDown", "high"),
                                ("DatabaseDown", "critical"), ("RedisDown", "medium")):
        assert response(rb, alertname, severity).mode == "page"
    # warning: the rules' own RunbookCollectorDown, beside the seed's three levels.
    assert set(rb.runbook.page) == {"critical", "high", "medium", "warning"}


# ------------------------------------------------------------------ 004 umbrella


UMBRELLA_TABLE_KEYS = {
    "Uptime": "uptime",
    "P95 Latency": "latency_p95",
    "Error Rate": "error_rate",
    "Request Success Rate": "success_rate",
    "Database Query Time": "db_query_time_d1",
}


def test_umbrella_numbers() -> None:
    rb = load("umbrella")
    # Seed 004 lines 135, 146, 154, 162, 344, 419, 618-622.
    assert tiers(alert(rb, "probe_failures")) == {"critical": (1.0, 0.0)}
    assert tiers(alert(rb, "latency_p95")) == {"warning": (1.0, 5 * MIN), "high": (2.0, 5 * MIN)}
    assert tiers(alert(rb, "error_rate")) == {"warning": (0.05, 5 * MIN),
                                              "high": (0.10, 5 * MIN),
                                              "critical": (0.20, 5 * MIN)}
    assert tiers(alert(rb, "success_rate")) == {"warning": (0.95, 5 * MIN)}
    assert tiers(alert(rb, "uptime")) == {"warning": (0.99, 5 * MIN)}
    assert tiers(alert(rb, "db_query_time_d1")) == {"warning": (0.5, 5 * MIN)}
    assert tiers(alert(rb, "staleness")) == {"warning": (25 * 3600.0, 0.0)}
    # Line 33: health check every 5 minutes.
    assert rb.runbook.watch.http[0].interval == 5 * MIN
    # The same check every 30s measures the 99.9% SLO (one failed 5-minute check would page).
    health, frequent = rb.runbook.watch.http
    assert (frequent.url, frequent.interval) == (health.url, 30.0)
    slos = {s.name: s for s in rb.runbook.slos}
    assert slos["availability"].objective == approx(0.999)
    assert slos["availability"].window == 30 * 86400.0
    assert slos["latency"].sli.latency == 0.5
    weekly = rb.runbook.maintenance[0].weekly
    assert weekly is not None
    assert (weekly.days, weekly.start, weekly.end) == (
        ["sun"], "02:00", "04:00")
    assert rb.runbook.maintenance[0].timezone == "UTC"


def test_umbrella_against_seed_table() -> None:
    rb = load("umbrella")
    rows = seed_table("umbrella", "| Metric | Target")  # seed 004 lines 616-622
    assert [r["Metric"] for r in rows] == list(UMBRELLA_TABLE_KEYS)
    for row in rows:
        resolved = alert(rb, UMBRELLA_TABLE_KEYS[row["Metric"]])
        op, value = seed_value(row["Alert Threshold"])
        assert resolved.below == (op == "<"), row["Metric"]
        assert tiers(resolved)["warning"][0] == approx(value), row["Metric"]
    slos = {s.name: s for s in rb.runbook.slos}
    targets = {r["Metric"]: r["Target"] for r in rows}
    assert slos["availability"].objective == approx(float(targets["Uptime"].rstrip("%")) / 100)
    assert slos["latency"].sli.latency == approx(seed_value(targets["P95 Latency"])[1])


def test_umbrella_responses() -> None:
    rb = load("umbrella")
    # Lines 48, 216, 437: ENVIRONMENT=production npm run rollback, for SEV-1 and > 20% errors.
    for alertname in ("ProbeFailuresHigh", "ErrorRateHigh"):
        rule = response(rb, alertname, "critical")
        assert rule.mode == "approve"
        assert argvs(rule)[0] == ["npm", "run", "rollback"]
        exec_params = steps(rule)[0][1]
        assert "ENVIRONMENT" in exec_params.env
    assert response(rb, "ErrorRateHigh", "high").mode == "page"
    assert response(rb, "LatencyP95High", "warning").mode == "page"
    assert rb.runbook.page["critical"][0].pagerduty is not None


def test_scraper_success_rate_fires_when_nothing_succeeds(promtool: str, tmp_path: Path) -> None:
    # Every run failing: the success series was never created, and the ratio must read 0 %.
    rules = Path(__file__).resolve().parents[1] / "alert_rules" / "scraper.rules.yml"
    labels = {"service": "scraper", "signal": "scraper_success_rate", "team": "scraper"}
    test = {
        "rule_files": [str(rules)], "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": 'scraper_runs_total{job="scraper",'
                                               'status="failed"}',
                                     "values": "0+10x40"}],
                   "alert_rule_test": [{"eval_time": "30m", "alertname": "ScraperSuccessRateLow",
                                        "exp_alerts": [
                                            {"exp_labels": {**labels, "severity": s, "tier": s},
                                             "exp_annotations": {
                                                 "summary": f"scraper: scraper_success_rate "
                                                            f"below {t}",
                                                 "description": f"scraper_success_rate: 0%, "
                                                                f"below the {s} threshold {t} "
                                                                "for 5m."}}
                                            for s, t in (("critical", "50%"), ("high", "80%"))]}]}],
    }
    (tmp_path / "t.yml").write_text(json.dumps(test))
    result = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
