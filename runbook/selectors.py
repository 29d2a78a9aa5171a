"""The exporter's metrics in a runbook's own PromQL, and the jobs that scope them and the app's."""

from __future__ import annotations

import re
from collections.abc import Collection

from runbook.schema import Runbook

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Label lists (`by (…)`, `on (…)`, …) name labels, not metrics.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_EXPORTER_NAMES = "runbook_[A-Za-z0-9_:]*"
# Only a positive matcher scopes a selector to one job: job!="x" still reads every other one.
_JOB = re.compile(r"(?:^|[{,\s])job\s*(?:=~|=)(?!~)")


def _patterns(names: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Selectors of these metric names: plain (`name{…}`) and by `{__name__="name"}`."""
    plain = re.compile(rf"(?<![A-Za-z0-9_:])({names})(?![A-Za-z0-9_:])\s*(\{{[^}}]*\}})?")
    named = re.compile(rf"\{{[^}}]*__name__\s*=~?\s*\"({names})\"[^}}]*\}}")
    return plain, named


def exporter_job(rb: Runbook) -> str:
    """The scrape job of this runbook's exporter."""
    return rb.watch.exporter_job or f"runbook-{rb.service}"


def app_job(rb: Runbook) -> str:
    """The scrape job of the service's own metrics (watch.app): its job, else the service name.

    Services often publish the same metric names (http_requests_total), so every selector of
    the app's metrics carries this job, as the exporter's carry theirs.
    """
    app = rb.watch.app
    return (app.job if app else None) or rb.service


def app_series(rb: Runbook) -> list[str]:
    """The series names of the app's metrics that watch.app names."""
    app = rb.watch.app
    if app is None:
        return []
    counters = [app.requests_total] if app.requests_total else []
    histogram = app.latency_histogram
    return counters + ([f"{histogram}_{part}" for part in ("bucket", "sum", "count")]
                       if histogram else [])


def unscoped(expr: str, names: Collection[str] = ()) -> list[str]:
    """The metrics this PromQL selects without a job matcher: the exporter's (runbook_*), or,
    given names, those.

    Every service's exporter publishes the same names (runbook_pg_up{target="main"}), and
    services share names of their own (http_requests_total), so in one Prometheus such a
    selector also reads the other services' series, and fires on them.
    """
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) \
        if names else _EXPORTER_NAMES
    selector, named = _patterns(pattern)
    found = []
    # {__name__="runbook_x"} names the metric in a label value: read before values are blanked.
    for match in named.finditer(expr):
        if not _JOB.search(_QUOTED.sub('""', match.group(0))) and match.group(1) not in found:
            found.append(match.group(1))
    # Label values may hold anything, "runbook_" and braces too: blank them out first.
    text = _LABEL_LIST.sub("", _QUOTED.sub('""', expr))
    for match in selector.finditer(text):
        name, braces = match.group(1), match.group(2) or ""
        if not _JOB.search(braces) and name not in found:
            found.append(name)
    return found
