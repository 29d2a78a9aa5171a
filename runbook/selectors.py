"""The exporter's metrics in a runbook's own PromQL, and the job that scopes them to it."""

from __future__ import annotations

import re

from runbook.schema import Runbook

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(runbook_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
_JOB = re.compile(r"(?:^|[{,\s])job\s*(?:=|!=|=~|!~)")


def exporter_job(rb: Runbook) -> str:
    """The scrape job of this runbook's exporter."""
    return rb.watch.exporter_job or f"runbook-{rb.service}"


def unscoped(expr: str) -> list[str]:
    """The exporter's metrics (runbook_*) this PromQL selects without a job matcher.

    Every service's exporter publishes the same names (runbook_pg_up{target="main"}), so in one
    Prometheus such a selector also reads the other services' series, and fires on them.
    """
    # Label values may hold anything, "runbook_" and braces too: blank them out first.
    text = _QUOTED.sub('""', expr)
    found = []
    for match in _SELECTOR.finditer(text):
        name, braces = match.group(1), match.group(2) or ""
        if not _JOB.search(braces) and name not in found:
            found.append(name)
    return found
