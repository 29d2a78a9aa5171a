"""The runbook exporter: one async Prometheus exporter configured by the runbook."""
