"""deploy/kubernetes/prometheusrule-<service>.yaml: the same rule groups for prometheus-operator."""

from __future__ import annotations

from typing import Any

from runbook.loader import LoadedRunbook
from runbook.render.rules import rule_groups
from runbook.render.timing import Timing
from runbook.render.yamlout import dump_yaml


def prometheus_rule(loaded: LoadedRunbook, timing: Timing, release: str) -> dict[str, Any]:
    """A monitoring.coreos.com/v1 PrometheusRule holding the runbook's rule groups."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": f"runbook-{loaded.service}",
            "labels": {"app.kubernetes.io/name": "runbook-autopilot",
                       "app.kubernetes.io/part-of": loaded.service,
                       "release": release},
        },
        "spec": {"groups": rule_groups(loaded, timing)},
    }


def render_prometheus_rule(loaded: LoadedRunbook, timing: Timing, release: str) -> str:
    """The text of the PrometheusRule manifest."""
    return dump_yaml(prometheus_rule(loaded, timing, release))
