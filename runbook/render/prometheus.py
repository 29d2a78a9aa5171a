"""deploy/prometheus.yml: scrape the exporter and the responder, load the rules, alert."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runbook.loader import LoadedRunbook
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml

EXPORTER = "127.0.0.1:9817"
ALERTMANAGER = "127.0.0.1:9093"


def responder_target(responder_url: str) -> str:
    """HOST:PORT of the responder, from its webhook URL."""
    parts = urlsplit(responder_url)
    if not parts.hostname:
        raise ValueError(f"{responder_url!r} is not an http URL (e.g. http://127.0.0.1:9818/alerts)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def prometheus_config(runbooks: list[LoadedRunbook], timing: Timing, responder_url: str,
                      exporters: list[str], alertmanager: str,
                      rules_dir: str = "../alert_rules") -> dict[str, Any]:
    """Prometheus' configuration for the runbooks rendered together."""
    interval = dur(timing.interval)
    timeout = dur(max(1.0, min(10.0, timing.interval * 0.8)))
    responder = urlsplit(responder_url)
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout,
                   "evaluation_interval": interval},
        "rule_files": [f"{rules_dir}/{lb.service}.rules.yml" for lb in runbooks],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": "runbook-exporter",
             "static_configs": [{"targets": sorted(set(exporters))}]},
            {"job_name": "runbook-responder", "scheme": responder.scheme or "http",
             "static_configs": [{"targets": [responder_target(responder_url)]}]},
        ],
    }


def render_prometheus(runbooks: list[LoadedRunbook], timing: Timing, responder_url: str,
                      exporters: list[str], alertmanager: str,
                      rules_dir: str = "../alert_rules") -> str:
    """The text of deploy/prometheus.yml."""
    return dump_yaml(prometheus_config(runbooks, timing, responder_url, exporters, alertmanager,
                                       rules_dir))
