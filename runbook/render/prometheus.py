"""deploy/prometheus.yml: scrape the exporter and the responder, load the rules, alert."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runbook.loader import LoadedRunbook
from runbook.render import RenderError
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml
from runbook.selectors import exporter_job

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


def exporter_targets(runbooks: list[LoadedRunbook], exporters: list[str]) -> dict[str, list[str]]:
    """Service -> the exporter addresses its scrape job scrapes.

    An exporter serves exactly one runbook, so each address belongs to one service:
    `SERVICE=HOST:PORT` names it; plain `HOST:PORT` addresses go, in order, one each to the
    runbooks not named (all of them to a runbook rendered alone: its replicas). A runbook left
    without an address keeps its job with no targets, rather than scraping another service's
    exporter under its job name.
    """
    services = [lb.service for lb in runbooks]
    out: dict[str, list[str]] = {s: [] for s in services}
    plain: list[str] = []
    for entry in exporters:
        service, sep, address = entry.rpartition("=")
        if not sep:
            plain.append(entry)
        elif service in out:
            out[service].append(address)
        else:
            raise RenderError(f"--exporter {entry}: no rendered runbook has service {service!r} "
                              f"(rendered: {', '.join(services)})")
    unnamed = [s for s in services if not out[s]]
    if len(unnamed) == 1:
        out[unnamed[0]].extend(plain)
    elif len(plain) > len(unnamed):
        raise RenderError(f"{len(plain)} exporter addresses for {len(unnamed)} runbooks: write "
                          "each as SERVICE=HOST:PORT")
    else:
        for service, address in zip(unnamed, plain, strict=False):
            out[service].append(address)
    return {s: sorted(set(t)) for s, t in out.items()}


def prometheus_config(runbooks: list[LoadedRunbook], timing: Timing, responder_url: str,
                      exporters: list[str], alertmanager: str,
                      rules_dir: str = "../alert_rules") -> dict[str, Any]:
    """Prometheus' configuration for the runbooks rendered together."""
    interval = dur(timing.interval)
    timeout = dur(max(1.0, min(10.0, timing.interval * 0.8)))
    responder = urlsplit(responder_url)
    targets = exporter_targets(runbooks, exporters)
    # One job per runbook, named as its rules' job matcher expects (watch.exporter_job).
    jobs: list[dict[str, Any]] = [
        {"job_name": exporter_job(lb.runbook),
         "static_configs": [{"targets": targets[lb.service]}]} for lb in runbooks]
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout,
                   "evaluation_interval": interval},
        "rule_files": [f"{rules_dir}/{lb.service}.rules.yml" for lb in runbooks],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            *jobs,
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
