"""Renderers: alert rules, their promtool tests, dashboards and deploy configs from a runbook."""

from __future__ import annotations


class RenderError(ValueError):
    """A runbook that cannot be rendered, with the reason."""
