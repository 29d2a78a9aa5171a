"""Rendered Alertmanager, Prometheus and PrometheusRule configs, checked by the real tools."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from runbook.loader import load_runbook, load_text
from runbook.render import RenderError
from runbook.render.alertmanager import Delivery, alertmanager_config, page_only, static_labels
from runbook.render.operator import prometheus_rule
from runbook.render.output import Options, render_all, write_all
from runbook.render.prometheus import prometheus_config
from runbook.render.rules import rule_groups
from runbook.render.timing import Timing
from tests.stack import http_json, stack
from tests.test_render_rules import PROBES, SINK

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))
CRD = Path(__file__).parent / "fixtures" / "crds" / "monitoring.coreos.com_prometheusrules.yaml"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy")
    runbooks = [load_text(SINK, "sink.yml"), load_text(PROBES, "probes.yml")]
    write_all(render_all(runbooks, Options()), out)
    return out


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_amtool_accepts_alertmanager_config(amtool: str, rendered: Path) -> None:
    result = run([amtool, "check-config", str(rendered / "deploy" / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_committed_alertmanager_config(amtool: str) -> None:
    result = run([amtool, "check-config", str(ROOT / "deploy" / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_prometheus_config_and_its_rule_files(promtool: str,
                                                               rendered: Path) -> None:
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=rendered / "deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_accepts_committed_prometheus_config(promtool: str) -> None:
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=ROOT / "deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(EXAMPLES)} rule files found" in result.stdout


def routes(amtool: str, config: Path, labels: dict[str, str]) -> list[str]:
    result = run([amtool, "config", "routes", "test", f"--config.file={config}",
                  *(f"{k}={v}" for k, v in labels.items())])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().split(",")


def test_routes_send_page_only_alerts_to_pagers_and_the_responder(amtool: str,
                                                                   rendered: Path) -> None:
    config = rendered / "deploy" / "alertmanager.yml"
    base = {"service": "kitchen-sink", "signal": "x"}
    # A page rule names ErrorRateHigh: critical goes to PagerDuty+Slack, then to the responder
    # through the receiver that tells it Alertmanager has paged already.
    assert routes(amtool, config, {**base, "alertname": "ErrorRateHigh",
                                   "severity": "critical"}) == \
        ["kitchen-sink-page-critical", "runbook-responder-paged"]
    # No rule for MemoryUsageHigh warning: fail safe, paged (the `default` receiver).
    assert routes(amtool, config, {**base, "alertname": "MemoryUsageHigh",
                                   "severity": "warning"}) == \
        ["kitchen-sink-page-warning", "runbook-responder-paged"]
    # An auto rule acts on QueueDepthHigh critical: only the responder.
    assert routes(amtool, config, {**base, "alertname": "QueueDepthHigh",
                                   "severity": "critical"}) == ["runbook-responder"]
    # An approve rule whose matchers need a runtime label: the responder decides.
    assert routes(amtool, config, {**base, "alertname": "CacheHitRateLow",
                                   "severity": "critical"}) == ["runbook-responder"]
    # Another service's alert never reaches this service's pagers.
    assert routes(amtool, config, {"service": "probes-only", "alertname": "ErrorRateHigh",
                                   "severity": "critical"}) == ["runbook-responder"]


def test_page_only_decision() -> None:
    loaded = load_text(SINK)
    by_name = {(lb["alertname"], lb["severity"]): lb for lb in static_labels(loaded)}
    assert page_only(loaded, by_name[("ErrorRateHigh", "warning")])
    assert not page_only(loaded, by_name[("QueueDepthHigh", "critical")])
    assert page_only(loaded, by_name[("QueueDepthHigh", "warning")])
    assert not page_only(loaded, by_name[("CacheHitRateLow", "warning")])
    assert page_only(loaded, by_name[("AvailabilityErrorBudgetBurn", "critical")])


def test_responder_webhook_and_secrets_from_files(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "deploy" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    hook = receivers["runbook-responder"]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:9818/alerts"
    assert hook["send_resolved"] is True
    paged_hook = receivers["runbook-responder-paged"]["webhook_configs"][0]
    assert paged_hook["url"] == "http://127.0.0.1:9818/alerts?paged=alertmanager"
    assert paged_hook["http_config"] == hook["http_config"]
    assert hook["http_config"]["authorization"]["credentials_file"] == \
        "/run/secrets/webhook_token"
    assert config["route"]["group_by"] == ["..."]
    pager = receivers["kitchen-sink-page-critical"]
    assert pager["pagerduty_configs"][0]["routing_key_file"] == "/run/secrets/PD_KEY"
    assert pager["pagerduty_configs"][0]["severity"] == "critical"
    assert pager["slack_configs"][0]["api_url_file"] == "/run/secrets/SLACK_URL"
    default = receivers["kitchen-sink-page-warning"]["webhook_configs"][0]
    assert default["url"] == "http://127.0.0.1:9999/hook"
    assert default["http_config"]["authorization"]["credentials_file"] == \
        "/run/secrets/HOOK_TOKEN"
    text = (rendered / "deploy" / "alertmanager.yml").read_text()
    assert "&id" not in text  # no YAML anchors: every route reads on its own


def test_critical_inhibits_weaker_tiers_of_the_same_occurrence(amtool: str,
                                                               rendered: Path) -> None:
    config = yaml.safe_load((rendered / "deploy" / "alertmanager.yml").read_text())
    critical = next(r for r in config["inhibit_rules"]
                    if r["source_matchers"] == ['severity="critical"'])
    assert critical["target_matchers"] == ['severity=~"warning|medium|high"']
    assert {"alertname", "service", "target", "queue", "mount", "slo"} <= set(critical["equal"])


def test_a_critical_silences_the_warning_of_its_own_series_only(rendered: Path) -> None:
    # An expr alert split by instance: a critical on db-1 silences db-1's warning, not db-2's.
    now = datetime.now(UTC)
    alerts = [{"labels": {"alertname": "DbSlow", "service": "kitchen-sink", "severity": severity,
                          "instance": instance},
               "startsAt": (now - timedelta(minutes=1)).isoformat(),
               "endsAt": (now + timedelta(hours=1)).isoformat()}
              for severity, instance in (("critical", "db-1"), ("warning", "db-1"),
                                         ("warning", "db-2"))]
    with stack() as s:
        _, am = s.alertmanager(rendered / "deploy" / "alertmanager.yml")
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{am}/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            assert response.status == 200
        states: dict[tuple[str, str], str] = {}
        for _ in range(100):
            listed = http_json(f"{am}/api/v2/alerts")
            states = {(a["labels"]["severity"], a["labels"]["instance"]): a["status"]["state"]
                      for a in listed}
            if len(states) == 3 and states[("warning", "db-1")] == "suppressed":
                break
            time.sleep(0.05)
    assert states == {("critical", "db-1"): "active", ("warning", "db-1"): "suppressed",
                      ("warning", "db-2"): "active"}


def test_time_scale_shrinks_alertmanager_timers() -> None:
    config = alertmanager_config([load_text(SINK)], Timing(0.01), Delivery(
        responder_url="http://127.0.0.1:19818/alerts"))
    route = config["route"]
    assert (route["group_wait"], route["group_interval"]) == ("1s", "3s")
    assert config["receivers"][0]["webhook_configs"][0]["url"] == \
        "http://127.0.0.1:19818/alerts"


def test_prometheus_config_scrapes_exporter_and_responder(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    # One job per runbook, named as its rules' job matcher; the one plain address goes to the
    # first runbook, the other keeps its job without a target rather than scrape a stranger.
    assert jobs == {"runbook-kitchen-sink": ["127.0.0.1:9817"], "runbook-probes-only": [],
                    "runbook-responder": ["127.0.0.1:9818"]}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == \
        ["127.0.0.1:9093"]
    assert config["rule_files"] == ["../alert_rules/kitchen-sink.rules.yml",
                                    "../alert_rules/probes-only.rules.yml"]


def validate(manifest: object, schema: dict[str, object]) -> None:
    """Validate against the CRD's OpenAPI schema (its Go-syntax regexes are not checked)."""
    jsonschema.Draft7Validator(schema).validate(manifest)


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, object]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, object] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_committed_prometheusrule_is_valid_and_holds_the_rules(example: Path,
                                                               crd_schema: dict[str, object]
                                                               ) -> None:
    loaded = load_runbook(example)
    path = ROOT / "deploy" / "kubernetes" / f"prometheusrule-{loaded.service}.yaml"
    manifest = yaml.safe_load(path.read_text())
    validate(manifest, crd_schema)
    assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = yaml.safe_load((ROOT / "alert_rules" / f"{loaded.service}.rules.yml").read_text())
    assert manifest["spec"]["groups"] == rules["groups"]


def test_prometheusrule_schema_rejects_a_broken_manifest(crd_schema: dict[str, object]) -> None:
    manifest = prometheus_rule(load_text(SINK), Timing(), "prom")
    alert = next(r for r in manifest["spec"]["groups"][0]["rules"] if "for" in r)
    alert["for"] = "5 minutes"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        validate(manifest, crd_schema)


def test_prometheusrule_has_same_groups_as_rule_file() -> None:
    loaded = load_text(SINK)
    manifest = prometheus_rule(loaded, Timing(), "prom")
    assert manifest["spec"]["groups"] == rule_groups(loaded, Timing())
    assert manifest["metadata"]["labels"]["release"] == "prom"


def _jobs(runbooks: list[str], exporters: list[str]) -> dict[str, list[str]]:
    config = prometheus_config([load_text(t, f"r{i}.yml") for i, t in enumerate(runbooks)],
                               Timing(), "http://127.0.0.1:9818/alerts", exporters,
                               "127.0.0.1:9093")
    return {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]
            if j["job_name"] != "runbook-responder"}


def test_each_runbook_gets_its_exporters_job() -> None:
    named = PROBES.replace("watch:\n", "watch:\n  exporter_job: edge-probes\n", 1)
    assert _jobs([SINK, named], ["probes-only=10.0.0.2:9817", "kitchen-sink=10.0.0.1:9817"]) \
        == {"runbook-kitchen-sink": ["10.0.0.1:9817"], "edge-probes": ["10.0.0.2:9817"]}
    assert _jobs([SINK, PROBES], ["10.0.0.1:9817", "10.0.0.2:9817"]) == {
        "runbook-kitchen-sink": ["10.0.0.1:9817"], "runbook-probes-only": ["10.0.0.2:9817"]}
    # A runbook rendered alone: every plain address is one of its replicas.
    assert _jobs([PROBES], ["10.0.0.1:9817", "10.0.0.2:9817"]) == {
        "runbook-probes-only": ["10.0.0.1:9817", "10.0.0.2:9817"]}
    with pytest.raises(RenderError, match="no rendered runbook has service 'nope'"):
        _jobs([SINK, PROBES], ["nope=10.0.0.1:9817"])
    with pytest.raises(RenderError, match="SERVICE=HOST:PORT"):
        _jobs([SINK, PROBES], ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"])


def test_rendered_job_matches_the_rules_job_matcher(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "deploy" / "prometheus.yml").read_text())
    for service in ("kitchen-sink", "probes-only"):
        groups = yaml.safe_load((rendered / "alert_rules" / f"{service}.rules.yml").read_text())
        exprs = [r["expr"] for g in groups["groups"] for r in g["rules"]]
        assert any(f'job="runbook-{service}"' in e for e in exprs), service
        assert f"runbook-{service}" in [j["job_name"] for j in config["scrape_configs"]]


def test_a_severity_with_an_env_url_webhook_is_paged_by_the_responder(amtool: str,
                                                                       tmp_path: Path) -> None:
    # Alertmanager cannot read a webhook URL from the environment: were the critical page
    # route kept for PagerDuty and Slack, the responder would hear "paged already" and the
    # webhook would never be told.
    text = SINK.replace("    - slack: {webhook_url_env: SLACK_URL}\n",
                        "    - slack: {webhook_url_env: SLACK_URL}\n"
                        "    - webhook: {url_env: ONCALL_HOOK_URL}\n")
    assert text != SINK
    write_all(render_all([load_text(text, "sink.yml")], Options()), tmp_path)
    config = tmp_path / "deploy" / "alertmanager.yml"
    assert run([amtool, "check-config", str(config)]).returncode == 0
    base = {"service": "kitchen-sink", "signal": "x"}
    assert routes(amtool, config, {**base, "alertname": "ErrorRateHigh",
                                   "severity": "critical"}) == ["runbook-responder"]
    # A severity whose receivers Alertmanager can all reach keeps its page route.
    assert routes(amtool, config, {**base, "alertname": "MemoryUsageHigh",
                                   "severity": "warning"}) == \
        ["kitchen-sink-page-warning", "runbook-responder-paged"]


def test_the_exporters_own_alerts_page_a_human(amtool: str, rendered: Path) -> None:
    # No respond rule acts on them: the exporter down (critical) and one collector down
    # (warning) go to the pagers of their severity, then to the responder for the audit.
    config = rendered / "deploy" / "alertmanager.yml"
    base = {"service": "kitchen-sink", "job": "runbook-kitchen-sink"}
    assert routes(amtool, config, {**base, "alertname": "RunbookExporterDown",
                                   "severity": "critical", "signal": "exporter"}) == \
        ["kitchen-sink-page-critical", "runbook-responder-paged"]
    assert routes(amtool, config, {**base, "alertname": "RunbookCollectorDown",
                                   "severity": "warning", "signal": "collector"}) == \
        ["kitchen-sink-page-warning", "runbook-responder-paged"]
    rules = yaml.safe_load((rendered / "alert_rules" / "kitchen-sink.rules.yml").read_text())
    exporter = next(g for g in rules["groups"] if g["name"] == "kitchen-sink.exporter")
    assert [(r["alert"], r["expr"], r["for"]) for r in exporter["rules"]] == [
        ("RunbookExporterDown", 'up{job="runbook-kitchen-sink"} == 0', "5m"),
        ("RunbookCollectorDown", 'runbook_collector_up{job="runbook-kitchen-sink"} == 0', "10m")]
