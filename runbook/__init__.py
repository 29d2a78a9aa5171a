"""runbook-autopilot: an operations runbook that runs itself."""

__version__ = "0.1.0"
