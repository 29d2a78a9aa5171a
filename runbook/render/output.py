"""Every rendered file of a set of runbooks, as relative path -> text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runbook.loader import LoadedRunbook
from runbook.render import RenderError
from runbook.render.alertmanager import Delivery, render_alertmanager
from runbook.render.dashboard import render_dashboard
from runbook.render.operator import render_prometheus_rule
from runbook.render.prometheus import ALERTMANAGER, EXPORTER, render_prometheus
from runbook.render.rule_tests import render_rule_tests, render_slo_rule_tests
from runbook.render.rules import render_rules
from runbook.render.timing import Timing


@dataclass(frozen=True)
class Options:
    """Render options: time scale, where the responder, exporter and Alertmanager listen."""

    timing: Timing = field(default_factory=Timing)
    delivery: Delivery = field(default_factory=Delivery)
    exporters: list[str] = field(default_factory=lambda: [EXPORTER])
    alertmanager: str = ALERTMANAGER
    release: str = "kube-prometheus-stack"
    rules_dir: str = "../alert_rules"  # as prometheus.yml names them (relative to its directory)


def render_all(runbooks: list[LoadedRunbook], options: Options) -> dict[str, str]:
    """Relative path -> file text for every output, in a fixed order."""
    services = [lb.service for lb in runbooks]
    duplicates = sorted({s for s in services if services.count(s) > 1})
    if duplicates:
        raise RenderError(f"service {duplicates[0]!r} is rendered twice: each runbook needs "
                          "its own service name")
    files: dict[str, str] = {}
    timing = options.timing
    for loaded in runbooks:
        service = loaded.service
        files[f"alert_rules/{service}.rules.yml"] = render_rules(loaded, timing)
        files[f"alert_rules/{service}.rules_test.yml"] = render_rule_tests(
            loaded, timing, f"{service}.rules.yml")
        slo_tests = render_slo_rule_tests(loaded, timing, f"{service}.rules.yml")
        if slo_tests is not None:
            files[f"alert_rules/{service}.slo_test.yml"] = slo_tests
        files[f"grafana/{service}.json"] = render_dashboard(loaded, timing)
        files[f"deploy/kubernetes/prometheusrule-{service}.yaml"] = render_prometheus_rule(
            loaded, timing, options.release)
    if runbooks:
        files["deploy/alertmanager.yml"] = render_alertmanager(runbooks, timing, options.delivery)
        files["deploy/prometheus.yml"] = render_prometheus(
            runbooks, timing, options.delivery.responder_url, options.exporters,
            options.alertmanager, options.rules_dir.rstrip("/"))
    return files


def write_all(files: dict[str, str], out: Path) -> list[Path]:
    """Write the files under `out` (only those whose bytes changed); return the paths written."""
    written = []
    for rel, text in files.items():
        path = out / rel
        data = text.encode("utf-8")
        if path.exists() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written.append(path)
    return written


def drift(files: dict[str, str], out: Path) -> list[str]:
    """The relative paths whose committed bytes differ from a fresh render."""
    changed = []
    for rel, text in files.items():
        path = out / rel
        if not path.exists() or path.read_bytes() != text.encode("utf-8"):
            changed.append(rel)
    return changed
