"""The responder's own metrics, in a registry of its own (one per app, never global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Counters, gauges and histograms of intake, decisions, rails, store and work."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.notifications = Counter(
            "runbook_responder_notifications", "Webhook notifications by status and result",
            ["status", "result"], registry=r)
        self.alerts = Counter(
            "runbook_responder_alerts", "Alerts received, by what intake did with them",
            ["result"], registry=r)
        self.truncated = Counter(
            "runbook_responder_truncated_alerts", "Alerts Alertmanager left out of bodies",
            registry=r)
        self.decisions = Counter(
            "runbook_responder_decisions", "Decisions by outcome", ["outcome"], registry=r)
        self.rail_hits = Counter(
            "runbook_responder_rail_hits", "Rails that turned an action into a page",
            ["rail"], registry=r)
        self.store_errors = Counter(
            "runbook_responder_store_errors", "Store operations that failed", ["operation"],
            registry=r)
        self.actions = Counter(
            "runbook_responder_actions", "Actions run, by action and status",
            ["action", "status"], registry=r)
        self.pending = Gauge(
            "runbook_responder_pending_work", "Work queued or running (all replicas)",
            registry=r)
        self.intake_seconds = Histogram(
            "runbook_responder_intake_seconds", "POST /alerts: received to answered (recorded)",
            buckets=_FAST, registry=r)
        self.action_seconds = Histogram(
            "runbook_responder_action_seconds", "Duration of actions", ["action"],
            buckets=_SLOW, registry=r)
