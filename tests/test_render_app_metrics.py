"""The service's own metrics (watch.app): scraped under their job, and read from that job only."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from runbook.loader import LoadedRunbook, load_runbook, load_text
from runbook.render import RenderError
from runbook.render.dashboard import dashboard_json
from runbook.render.output import Options, render_all, write_all
from runbook.render.prometheus import prometheus_config
from runbook.render.rules import rule_groups
from runbook.render.timing import Timing
from tests.test_render_rules import PROBES, SINK

ROOT = Path(__file__).resolve().parents[1]
APP_EXAMPLES = [ROOT / "examples" / "cinder-js.yml", ROOT / "examples" / "scraper.yml"]

# Where to scrape the app, and no job: its job is the service name.
SHOP = """
service: shop
watch:
  app:
    targets: ["10.0.0.5:8080", "10.0.0.6:8080"]
    metrics_path: /internal/metrics
    requests_total: http_requests_total
    latency_histogram: http_request_duration_seconds
alerts:
  error_rate: {warning: 1%, critical: 5%, for: 5m}
  latency_p95: {warning: 1s, for: 5m}
slos:
  - {name: availability, objective: 99.9%}
  - {name: fast, objective: 99%, sli: {kind: latency, latency: 500ms}}
"""


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def render(out: Path, texts: list[str]) -> None:
    runbooks = [load_text(t, f"runbook{i}.yml") for i, t in enumerate(texts)]
    write_all(render_all(runbooks, Options()), out)


def test_prometheus_config_scrapes_the_app_under_its_job(promtool: str, tmp_path: Path) -> None:
    # SINK names its app's job (web) but no targets: its Prometheus already scrapes it there.
    render(tmp_path, [SHOP, SINK])
    deploy = tmp_path / "deploy"
    config = yaml.safe_load((deploy / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert list(jobs) == ["runbook-shop", "runbook-kitchen-sink", "shop", "runbook-responder"]
    assert jobs["shop"] == {"job_name": "shop", "metrics_path": "/internal/metrics",
                            "static_configs": [{"targets": ["10.0.0.5:8080", "10.0.0.6:8080"]}]}
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=deploy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_app_job_named_like_another_scrape_job_is_refused() -> None:
    # Prometheus refuses two jobs of one name, and one job would mix both runbooks' series.
    clash = SHOP.replace("  app:\n", "  app:\n    job: runbook-probes-only\n", 1)
    runbooks = [load_text(clash, "shop.yml"), load_text(PROBES, "probes.yml")]
    with pytest.raises(RenderError, match="scrape job 'runbook-probes-only' is rendered twice"):
        prometheus_config(runbooks, Timing(), "http://127.0.0.1:9818/alerts", [],
                          "127.0.0.1:9093")


def _app_metrics(loaded: LoadedRunbook) -> set[str]:
    app = loaded.runbook.watch.app
    assert app is not None
    names = {app.requests_total} if app.requests_total else set()
    if app.latency_histogram:
        names |= {f"{app.latency_histogram}_{part}" for part in ("bucket", "count", "sum")}
    return names


def _app_selectors(expr: str, metrics: set[str]) -> list[Any]:
    """The selectors of the app's metrics in a PromQL expression."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name in metrics:
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr.replace("$__rate_interval", "5m")), visit)
    return found


def _job(selector: Any) -> str | None:
    return next((m.value for m in selector.matchers.matchers
                 if m.name == "job" and m.op == promql_parser.MatchOp.Equal), None)


def _load(name: str) -> LoadedRunbook:
    texts = {"shop": SHOP, "kitchen-sink": SINK}
    return load_text(texts[name]) if name in texts else \
        load_runbook(ROOT / "examples" / f"{name}.yml")


@pytest.mark.parametrize("name", [*(p.stem for p in APP_EXAMPLES), "shop", "kitchen-sink"])
def test_every_app_metric_selector_carries_the_apps_job(name: str) -> None:
    """Services share metric names (http_requests_total): each rendered query of the app's
    metrics must read its own job, the one prometheus.yml scrapes it under."""
    loaded = _load(name)
    app = loaded.runbook.watch.app
    assert app is not None
    job = app.job or loaded.service
    metrics = _app_metrics(loaded)
    exprs = [r["expr"] for g in rule_groups(loaded, Timing()) for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard_json(loaded, Timing())["panels"]
              for t in p.get("targets", [])]
    selectors = [s for e in exprs for s in _app_selectors(e, metrics)]
    assert selectors, f"{name}: no rule reads the app's metrics"
    assert [s.name for s in selectors if _job(s) != job] == []


def test_another_services_errors_do_not_fire_this_ones_alert(promtool: str,
                                                              tmp_path: Path) -> None:
    """shop serves every request fine while billing, in the same Prometheus, fails all of
    its own: summed across jobs shop's error rate would read 50 % and page shop."""
    render(tmp_path, [SHOP])
    rules = tmp_path / "alert_rules"

    def requests(job: str, status: int, per_minute: int) -> dict[str, str]:
        return {"series": f'http_requests_total{{job="{job}",instance="{job}:8080",'
                          f'status="{status}"}}', "values": f"0+{per_minute}x20"}

    firing = 'count by (severity) (ALERTS{alertname="ErrorRateHigh",alertstate="firing"})'
    test = {
        "rule_files": ["shop.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m",
             "input_series": [requests("shop", 200, 100), requests("billing", 500, 100)],
             "promql_expr_test": [{"expr": firing, "eval_time": "15m", "exp_samples": []}]},
            # The same rules do fire on shop's own errors, whatever billing does.
            {"interval": "1m",
             "input_series": [requests("shop", 200, 90), requests("shop", 500, 10),
                              requests("billing", 200, 100)],
             "promql_expr_test": [{"expr": firing, "eval_time": "15m", "exp_samples": [
                 {"labels": f'{{severity="{s}"}}', "value": 1} for s in ("critical", "warning")
             ]}]},
        ],
    }
    (rules / "crosstalk_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = run([promtool, "test", "rules", "crosstalk_test.yml"], cwd=rules)
    assert result.returncode == 0, result.stdout + result.stderr
