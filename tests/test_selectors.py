"""Which of the exporter's metrics a runbook's PromQL reads without naming its exporter's job."""

from __future__ import annotations

import pytest

from runbook.selectors import unscoped


@pytest.mark.parametrize(("expr", "found"), [
    ('runbook_pg_up{target="main"}', ["runbook_pg_up"]),
    ("runbook_pg_up", ["runbook_pg_up"]),
    ('runbook_pg_up{job="runbook-api", target="main"}', []),
    ('runbook_pg_up{target="main",job=~"runbook-.*"}', []),
    ('avg_over_time(runbook_probe_up{ job = "x" }[1d])', []),
    ('sum(rate(runbook_a_total{job="x"}[5m])) / sum(rate(runbook_b_total[5m]))',
     ["runbook_b_total"]),
    # A label value may hold anything: neither "runbook_" nor "job=" inside one counts.
    ('up{target="runbook_pg_up"}', []),
    ('runbook_pg_up{target="job=x"}', ["runbook_pg_up"]),
    ('runbook_pg_up{nojob="x"}', ["runbook_pg_up"]),
    # Only a positive job matcher scopes: job!="x" reads every other job.
    ('runbook_pg_up{job!="runbook-api"}', ["runbook_pg_up"]),
    ('runbook_pg_up{job!~"runbook-api"}', ["runbook_pg_up"]),
    # The metric named in __name__, and label lists that are not metrics.
    ('{__name__="runbook_pg_up", target="main"}', ["runbook_pg_up"]),
    ('{__name__="runbook_pg_up", job="runbook-api"}', []),
    ('sum by (runbook_target) (up{job="x"})', []),
    ('a{job="x"} * on (runbook_x) group_left (runbook_y) b{job="x"}', []),
    # Other metrics are not the exporter's.
    ('http_requests_total{status=~"5.."}', []),
    ('my_runbook_metric{a="b"}', []),
])
def test_unscoped(expr: str, found: list[str]) -> None:
    assert unscoped(expr) == found


@pytest.mark.parametrize(("expr", "found"), [
    ('sum(rate(http_requests_total{status=~"5.."}[5m]))', ["http_requests_total"]),
    ('sum(rate(http_requests_total{job="api", status=~"5.."}[5m]))', []),
    ('rate(http_seconds_bucket{le="1"}[5m]) / rate(http_seconds_count{job="api"}[5m])',
     ["http_seconds_bucket"]),
    # Only the names given: longer names and the exporter's are not them.
    ("http_requests_total_created", []),
    ("runbook_pg_up", []),
    ('{__name__="http_requests_total"}', ["http_requests_total"]),
])
def test_unscoped_app_metrics(expr: str, found: list[str]) -> None:
    names = ["http_requests_total", "http_seconds_bucket", "http_seconds_count"]
    assert unscoped(expr, names) == found
