"""Rendered Grafana dashboards, validated offline: SDK round trip, PromQL, layout, thresholds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from runbook.loader import LoadedRunbook, load_runbook, load_text
from runbook.render.dashboard import dashboard_json
from runbook.render.rules import rule_groups
from runbook.render.timing import Timing
from tests.test_render_rules import PROBES, SINK

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))

# The exporter's metrics, from the metric contract.
CONTRACT = {
    "runbook_collector_up", "runbook_collector_duration_seconds",
    "runbook_host_memory_used_bytes", "runbook_host_memory_limit_bytes",
    "runbook_host_cpu_seconds_total", "runbook_host_cpu_limit_cores",
    "runbook_host_disk_used_bytes", "runbook_host_disk_size_bytes",
    "runbook_probe_up", "runbook_probe_status_code", "runbook_probe_consecutive_failures",
    "runbook_probe_requests_total", "runbook_probe_duration_seconds_bucket",
    "runbook_probe_duration_seconds_count", "runbook_probe_duration_seconds_sum",
    "runbook_redis_up", "runbook_redis_memory_used_bytes", "runbook_redis_memory_max_bytes",
    "runbook_redis_keyspace_hits_total", "runbook_redis_keyspace_misses_total",
    "runbook_redis_connected_clients", "runbook_redis_evicted_keys_total",
    "runbook_queue_depth", "runbook_queue_jobs", "runbook_queue_paused",
    "runbook_queue_oldest_job_age_seconds", "runbook_queue_workers",
    "runbook_pg_up", "runbook_pg_connections", "runbook_pg_max_connections",
    "runbook_pg_long_running_queries", "runbook_pg_longest_query_seconds",
    "runbook_pg_idle_in_transaction", "runbook_pg_database_size_bytes",
    "runbook_pg_deadlocks_total", "runbook_pg_blocks_hit_total", "runbook_pg_blocks_read_total",
    "runbook_pg_replication_lag_seconds", "runbook_pg_statements_mean_seconds",
    "runbook_pg_statement_mean_seconds", "runbook_log_lines_total",
    "runbook_last_success_timestamp_seconds",
}

CASES = [("kitchen-sink", SINK), ("probes-only", PROBES)]


def _loaded() -> list[LoadedRunbook]:
    return [load_text(text, f"{name}.yml") for name, text in CASES] + \
        [load_runbook(p) for p in EXAMPLES]


LOADED = _loaded()


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = board["panels"]
    return panels


def _names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (Grafana's $__rate_interval taken as 5m)."""
    ast = promql_parser.parse(expr.replace("$__rate_interval", "5m"))
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(ast, visit)
    return names


def _recorded(loaded: LoadedRunbook) -> set[str]:
    return {r["record"] for g in rule_groups(loaded, Timing()) for r in g["rules"]
            if "record" in r}


def _app_metrics(loaded: LoadedRunbook) -> set[str]:
    app = loaded.runbook.watch.app
    if app is None:
        return set()
    out = {app.requests_total} if app.requests_total else set()
    if app.latency_histogram:
        out |= {f"{app.latency_histogram}_{s}" for s in ("bucket", "count", "sum")}
    return out


@pytest.mark.parametrize("loaded", LOADED, ids=lambda lb: lb.service)
def test_dashboard_round_trips_through_the_sdk_model(loaded: LoadedRunbook) -> None:
    data = dashboard_json(loaded, Timing())
    model = Dashboard.from_json(data)
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert again == data


@pytest.mark.parametrize("loaded", LOADED, ids=lambda lb: lb.service)
def test_every_query_parses_and_names_known_metrics(loaded: LoadedRunbook) -> None:
    known = CONTRACT | _recorded(loaded) | _app_metrics(loaded)
    for panel in _panels(dashboard_json(loaded, Timing())):
        for target in panel.get("targets", []):
            expr = target["expr"]
            unknown = _names(expr) - known
            assert not unknown, f"{panel['title']}: {expr} reads {unknown}"
            for call in re.finditer(r"\b(?:rate|irate|increase)\([^\[]*\[([^\]]+)\]", expr):
                assert call.group(1) == "$__rate_interval", f"{panel['title']}: {expr}"


def test_unknown_metric_in_a_query_is_caught() -> None:
    assert _names("sum(rate(runbook_made_up_total[$__rate_interval]))") - CONTRACT == \
        {"runbook_made_up_total"}
    with pytest.raises(ValueError, match=r"\S"):
        promql_parser.parse("sum(rate(x[5m]")


@pytest.mark.parametrize("loaded", LOADED, ids=lambda lb: lb.service)
def test_panel_ids_are_unique_and_panels_do_not_overlap(loaded: LoadedRunbook) -> None:
    panels = _panels(dashboard_json(loaded, Timing()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {p['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


@pytest.mark.parametrize("loaded", LOADED, ids=lambda lb: lb.service)
def test_dashboard_thresholds_equal_the_rules(loaded: LoadedRunbook) -> None:
    """Every threshold step on an alert panel is a tier threshold of the rule it plots."""
    groups = rule_groups(loaded, Timing())
    rule_thresholds: dict[str, set[float]] = {}
    for rule in groups[0]["rules"] if groups else []:
        if "alert" in rule:
            selector, _, number = rule["expr"].rpartition(" ")
            rule_thresholds.setdefault(selector.rsplit(" ", 1)[0], set()).add(float(number))
    slo_numbers = {float(n) for g in groups[1:] for r in g["rules"] if "alert" in r
                   for n in re.findall(r"> ([0-9.e-]+)", r["expr"])}
    checked = 0
    for panel in _panels(dashboard_json(loaded, Timing())):
        steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get(
            "steps", [])
        values = {s["value"] for s in steps if s["value"] is not None}
        title = panel["title"]
        if title.startswith("SLO") and "error ratio" in title:
            assert values <= slo_numbers, title
            assert values
            checked += 1
        elif panel.get("targets") and panel["targets"][0]["expr"] in rule_thresholds:
            assert values == rule_thresholds[panel["targets"][0]["expr"]], title
            checked += 1
    assert checked == len(loaded.alerts) + len(loaded.runbook.slos)


def test_queue_panels_per_queue() -> None:
    board = dashboard_json(load_text(SINK), Timing())
    titles = [p["title"] for p in _panels(board)]
    for queue in ("bullmq queue scrape on main", "celery queue celery on main",
                  "rq queue default on main"):
        assert queue in titles


def test_below_signal_colors_worst_tier_from_the_bottom() -> None:
    board = dashboard_json(load_text(SINK), Timing())
    panel = next(p for p in _panels(board) if p["title"].startswith("CacheHitRateLow"))
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "dark-red", "value": None}, {"color": "yellow", "value": 0.5},
                     {"color": "green", "value": 0.7}]


def test_committed_dashboards_are_grafana_json() -> None:
    for path in sorted((ROOT / "grafana").glob("*.json")):
        data = json.loads(path.read_text())
        assert data["uid"].startswith("runbook-")
        assert yaml.safe_load(path.read_text()) == data


def _unscoped(expr: str, job: str) -> set[str]:
    """runbook_* metrics an expression reads without the matcher job="<job>"."""
    ast = promql_parser.parse(expr.replace("$__rate_interval", "5m"))
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name and \
                node.name.startswith("runbook_"):
            scoped = any(m.name == "job" and m.value == job and m.op == promql_parser.MatchOp.Equal
                         for m in node.matchers.matchers)
            if not scoped:
                found.add(node.name)

    promql_parser.walk(ast, visit)
    return found


@pytest.mark.parametrize("loaded", LOADED, ids=lambda lb: lb.service)
def test_every_exporter_selector_is_scoped_to_the_runbooks_job(loaded: LoadedRunbook) -> None:
    """Two services' exporters in one Prometheus publish the same runbook_* names: each
    rendered query must read its own exporter's job only (the runbook's own `expr` aside)."""
    job = loaded.runbook.watch.exporter_job or f"runbook-{loaded.service}"
    custom = {a.key for a in loaded.alerts if a.signal is None}
    for group in rule_groups(loaded, Timing()):
        for rule in group["rules"]:
            if "record" in rule and rule["record"].split(":")[1] not in custom:
                assert not _unscoped(rule["expr"], job), rule["record"]
    board = dashboard_json(loaded, Timing())
    for panel in _panels(board):
        for target in panel.get("targets", []):
            assert not _unscoped(target["expr"], job), (panel["title"], target["expr"])


def test_an_unscoped_selector_is_caught() -> None:
    assert _unscoped("sum(runbook_queue_depth{job=\"other\"}) + runbook_pg_up", "mine") == \
        {"runbook_queue_depth", "runbook_pg_up"}
