"""Every severity the rendered rules fire at must reach a human."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from runbook.actions import PageParams
from runbook.alerting import HEALTH_SEVERITIES, ResolvedAlert, slo_alertname
from runbook.render.expressions import BURN_RATES
from runbook.schema import SEVERITIES, Runbook, step_action
from runbook.yamlsource import Path

Problem = tuple[Path, str]


def fired_severities(rb: Runbook, alerts: Sequence[ResolvedAlert]) -> dict[str, str]:
    """Each severity something of this runbook pages at, with the first thing that does."""
    found: dict[str, str] = {}
    for alert in alerts:
        for tier in alert.tiers:
            found.setdefault(tier.severity, f"{alert.alertname} (alerts.{alert.key})")
    for alertname, severity in HEALTH_SEVERITIES.items():
        found.setdefault(severity, f"{alertname} (the rules' own alert about the exporter)")
    for slo in rb.slos:
        for severity, burn_tier, _pairs in BURN_RATES:
            found.setdefault(severity,
                             f"{slo_alertname(slo)} ({burn_tier} tier of slos.{slo.name})")
    for i, rule in enumerate(rb.respond):
        for part in ("do", "escalate"):
            for j, step in enumerate(getattr(rule, part)):
                _, params = step_action(step)
                if isinstance(params, PageParams) and params.severity:
                    found.setdefault(params.severity, f"the page step respond[{i}].{part}[{j}]")
    return found


def unpaged_severities(rb: Runbook, alerts: Sequence[ResolvedAlert]) -> Iterator[Problem]:
    """Severities with no receiver under `page` and no `page.default` to fall back on.

    Alertmanager's paging routes and the responder's pages both find receivers by severity: an
    alert at a severity nobody receives is recorded, retried and never reaches a human (the
    rules' own warning about a dead collector among them). A runbook with no `page` at all
    pages no one by design (tests, a responder that only acts), and is left as it is.
    """
    if not rb.page or "default" in rb.page or set(rb.page) - {*SEVERITIES, "default"}:
        return  # (a key that is no severity is refused on its own)
    for severity, first in fired_severities(rb, alerts).items():
        if severity not in rb.page:
            yield ("page",), (f"no receiver for severity {severity!r}, at which {first} fires, "
                              f"and no page.default: add page.{severity} or page.default, or "
                              "those pages reach no one")
