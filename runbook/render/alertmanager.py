"""deploy/alertmanager.yml: routes by service, severity and response mode; inhibition by tier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runbook.alerting import slo_alertname
from runbook.loader import LoadedRunbook
from runbook.matchers import Matcher
from runbook.render.expressions import BURN_RATES
from runbook.render.rules import health_rules
from runbook.render.timing import Timing, dur
from runbook.render.yamlout import dump_yaml
from runbook.schema import PAGERDUTY_SEVERITY, SEVERITIES, Receiver
from runbook.signals import SIGNALS

RESPONDER = "runbook-responder"
# Alerts Alertmanager already paged for reach the responder through this receiver, whose URL
# says so: the responder records them and does not page a second time.
RESPONDER_PAGED = "runbook-responder-paged"
PAGED_QUERY = "paged=alertmanager"
# Labels that tell one alert occurrence of the same alertname apart (for inhibition): the
# catalog's, and those a runbook's own `expr` alerts are most often split by (the scrape's
# target labels, PostgreSQL's and Kubernetes' names). A label absent from both alerts compares
# equal, so each one here only narrows what a higher tier silences, never widens it.
SPLIT_LABELS = ("container", "datname", "deployment", "instance", "job", "namespace", "pod")
OCCURRENCE_LABELS = ("alertname", "service", "slo", *sorted(
    {label for s in SIGNALS.values() for label in s.selectable} | set(SPLIT_LABELS)))
PAGE_GROUP_BY = ["alertname", "service", "severity"]


@dataclass(frozen=True)
class Delivery:
    """Where the rendered routes send alerts: the responder, and where secrets are read from."""

    responder_url: str = "http://127.0.0.1:9818/alerts"
    secrets_dir: str = "/run/secrets"
    token_file: str = "/run/secrets/webhook_token"  # noqa: S105 - a path, not a secret

    def secret(self, env: str) -> str:
        """The file Alertmanager reads the secret from (the env var's value, written there)."""
        return f"{self.secrets_dir.rstrip('/')}/{env}"


def static_labels(loaded: LoadedRunbook) -> list[dict[str, str]]:
    """The labels known before firing of every rule the runbook renders (tiers, the exporter's
    own health, SLOs)."""
    rb = loaded.runbook
    out = []
    for alert in loaded.alerts:
        for tier in alert.tiers:
            out.append({**rb.labels, **alert.select, "alertname": alert.alertname,
                        "severity": tier.severity, "service": rb.service, "signal": alert.key,
                        "tier": tier.severity})
    for health in health_rules(loaded, Timing()):
        out.append({**health.labels, "alertname": health.alertname})
    for slo in rb.slos:
        for severity, tier_name, _ in BURN_RATES:
            out.append({**rb.labels, "alertname": slo_alertname(slo), "severity": severity,
                        "service": rb.service, "signal": "slo", "slo": slo.name,
                        "tier": tier_name})
    return out


def page_only(loaded: LoadedRunbook, labels: Mapping[str, str]) -> bool:
    """Whether no respond rule could act on an alert with these labels (so it only pages).

    A matcher on a label only known at firing time (a queue, a target) may match: a rule with
    such a matcher that acts keeps the alert off the page-only route, as the responder decides.
    """
    for rule, matchers in zip(loaded.runbook.respond, loaded.rule_matchers, strict=True):
        state = _match_state(matchers, labels)
        if state == "no":
            continue
        if rule.mode != "page":
            return False
        if state == "yes" and not rule.continue_:
            return True
    return True


def _match_state(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> str:
    unknown = False
    for m in matchers:
        if m.name not in labels:
            unknown = True
        elif not m.matches(labels):
            return "no"
    return "maybe" if unknown else "yes"


def _receiver_configs(receivers: list[Receiver], delivery: Delivery,
                      severity: str) -> dict[str, Any]:
    configs: dict[str, list[dict[str, Any]]] = {}
    for r in receivers:
        if r.pagerduty:
            # Alertmanager's default is "error": a critical page must say critical, as the
            # responder's own pages do.
            configs.setdefault("pagerduty_configs", []).append({
                "routing_key_file": delivery.secret(r.pagerduty.routing_key_env),
                "url": r.pagerduty.url, "severity": PAGERDUTY_SEVERITY.get(severity, "error"),
                "send_resolved": True})
        if r.slack:
            configs.setdefault("slack_configs", []).append({
                "api_url_file": delivery.secret(r.slack.webhook_url_env), "send_resolved": True})
        if r.webhook and r.webhook.url:
            hook: dict[str, Any] = {"url": r.webhook.url, "send_resolved": True}
            if r.webhook.token_env:
                hook["http_config"] = {"authorization": {
                    "type": "Bearer", "credentials_file": delivery.secret(r.webhook.token_env)}}
            configs.setdefault("webhook_configs", []).append(hook)
        # A webhook whose URL is in an env var (url_env): Alertmanager 0.25 cannot read a
        # webhook URL from a file, so _service_route leaves that severity to the responder.
    return configs


def _service_route(loaded: LoadedRunbook, receivers: dict[str, dict[str, Any]],
                   delivery: Delivery) -> dict[str, Any]:
    rb = loaded.runbook
    paged: dict[str, list[str]] = {}
    for labels in static_labels(loaded):
        if page_only(loaded, labels):
            names = paged.setdefault(labels["severity"], [])
            if labels["alertname"] not in names:
                names.append(labels["alertname"])
    routes: list[dict[str, Any]] = []
    for severity in SEVERITIES[::-1]:
        alertnames = paged.get(severity, [])
        targets: list[Receiver] = rb.page.get(severity) or rb.page.get("default") or []
        if not alertnames or not targets:
            continue
        if any(r.webhook and not r.webhook.url for r in targets):
            # A webhook whose URL is in an env var (url_env) only the responder can page: it
            # pages every receiver of this severity itself, so none is told twice or skipped.
            continue
        configs = _receiver_configs(targets, delivery, severity)
        if not configs:
            continue
        name = f"{rb.service}-page-{severity}"
        receivers[name] = {"name": name, **configs}
        matchers = [f'severity="{severity}"', f'alertname=~"{"|".join(sorted(alertnames))}"']
        routes.append({
            "receiver": name, "matchers": matchers, "group_by": PAGE_GROUP_BY, "continue": True,
        })
        routes.append({"receiver": RESPONDER_PAGED, "matchers": matchers})
    routes.append({"receiver": RESPONDER})
    return {"receiver": RESPONDER, "matchers": [f'service="{rb.service}"'], "routes": routes}


def alertmanager_config(runbooks: list[LoadedRunbook], timing: Timing,
                        delivery: Delivery) -> dict[str, Any]:
    """The whole Alertmanager configuration for the runbooks rendered together."""
    separator = "&" if "?" in delivery.responder_url else "?"
    receivers: dict[str, dict[str, Any]] = {
        name: {"name": name, "webhook_configs": [{
            "url": url,
            "send_resolved": True,
            "max_alerts": 0,
            "http_config": {"authorization": {
                "type": "Bearer", "credentials_file": delivery.token_file}},
        }]}
        for name, url in ((RESPONDER, delivery.responder_url),
                          (RESPONDER_PAGED, f"{delivery.responder_url}{separator}{PAGED_QUERY}"))
    }
    routes = [_service_route(loaded, receivers, delivery) for loaded in runbooks]
    used = [s for s in SEVERITIES
            if any(labels["severity"] == s for lb in runbooks for labels in static_labels(lb))]
    inhibit = []
    for i, severity in enumerate(used):
        weaker = used[:i]
        if weaker:
            inhibit.append({
                "source_matchers": [f'severity="{severity}"'],
                "target_matchers": [f'severity=~"{"|".join(weaker)}"'],
                "equal": list(OCCURRENCE_LABELS),
            })
    return {
        "route": {
            "receiver": RESPONDER,
            # The responder records each occurrence: one alert per group, every label kept.
            "group_by": ["..."],
            "group_wait": dur(timing.group_wait()),
            "group_interval": dur(timing.group_interval()),
            "repeat_interval": dur(timing.repeat_interval()),
            "routes": routes,
        },
        "inhibit_rules": inhibit,
        "receivers": list(receivers.values()),
    }


def render_alertmanager(runbooks: list[LoadedRunbook], timing: Timing,
                        delivery: Delivery) -> str:
    """The text of deploy/alertmanager.yml."""
    return dump_yaml(alertmanager_config(runbooks, timing, delivery))
