"""deploy/prometheus.yml: scrape the exporters, the apps, the responder; load the rules, alert."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from runbook.loader import LoadedRunbook
from runbook.render import RenderError
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml
from runbook.schema import Runbook
from runbook.selectors import app_job, exporter_job

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


def app_scrape_job(rb: Runbook) -> dict[str, Any] | None:
    """The scrape job of the service's own metrics, when watch.app says where they are.

    Named as the rules' selectors of those metrics expect (watch.app.job, else the service).
    Without targets the user's Prometheus already scrapes them under that job: nothing to add.
    """
    app = rb.watch.app
    if app is None or not app.targets:
        return None
    return {"job_name": app_job(rb), "metrics_path": app.metrics_path,
            "static_configs": [{"targets": list(app.targets)}]}


def _refuse_repeated_jobs(jobs: list[dict[str, Any]]) -> None:
    # Prometheus refuses a config naming one job twice; and one job holding the app's and an
    # exporter's series would make each one's rules read the other's.
    seen: set[str] = set()
    for job in jobs:
        name = job["job_name"]
        if name in seen:
            raise RenderError(f"scrape job {name!r} is rendered twice: every watch.exporter_job "
                              "and watch.app.job of the runbooks rendered together must differ "
                              "(and differ from runbook-responder)")
        seen.add(name)


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
    jobs += [job for lb in runbooks if (job := app_scrape_job(lb.runbook)) is not None]
    responder_job = {"job_name": "runbook-responder", "scheme": responder.scheme or "http",
                     "static_configs": [{"targets": [responder_target(responder_url)]}]}
    _refuse_repeated_jobs([*jobs, responder_job])
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout,
                   "evaluation_interval": interval},
        "rule_files": [f"{rules_dir}/{lb.service}.rules.yml" for lb in runbooks],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [*jobs, responder_job],
    }


def render_prometheus(runbooks: list[LoadedRunbook], timing: Timing, responder_url: str,
                      exporters: list[str], alertmanager: str,
                      rules_dir: str = "../alert_rules") -> str:
    """The text of deploy/prometheus.yml."""
    return dump_yaml(prometheus_config(runbooks, timing, responder_url, exporters, alertmanager,
                                       rules_dir))
