"""HA, exactly once: two clustered Alertmanagers, three responder replicas on one PostgreSQL;
every occurrence posted to both Alertmanagers and re-sent is remediated exactly once."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.fault_support import (
    APPEND_CODE,
    am_cluster,
    am_config,
    am_peers,
    exec_rule,
    incidents,
    kinds,
    lines,
    metric,
    post_alerts_to_am,
    python_argv,
    report,
    runbook_text,
    start_responder,
    until,
)
from tests.stack import stack


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_ha_alertmanagers_and_replicas_remediate_each_occurrence_once(
        tmp_path: Path, postgres_dsn: str, alertmanager_bin: str, long_run: bool) -> None:
    del alertmanager_bin  # checks it is installed; Stack finds it the same way
    n = 200 if long_run else 60
    runs = tmp_path / "runs.txt"
    rb = tmp_path / "runbook.yml"
    rb.write_text(runbook_text(exec_rule(
        "fix", "FaultHA", python_argv(APPEND_CODE, str(runs), "{{ labels.instance }}"))))
    started = time.monotonic()
    with stack() as s:
        urls = [start_responder(s, f"replica-{i}", rb, "--store", postgres_dsn, "--lease", "5")[1]
                for i in range(3)]
        config = tmp_path / "am.yml"
        config.write_text(am_config(urls))
        ams = am_cluster(s, config)
        until(lambda: all(am_peers(am) == 2 for am in ams), 30, "the two Alertmanagers to peer")
        starts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        alerts = [{"labels": {"alertname": "FaultHA", "instance": f"host-{i:03d}",
                              "severity": "critical"},
                   "annotations": {"summary": "ha"}, "startsAt": _rfc3339(starts),
                   "endsAt": _rfc3339(starts + timedelta(hours=1)),
                   "generatorURL": "http://prometheus/graph"} for i in range(n)]
        # Both Alertmanagers get every alert, then get them again (Prometheus re-sends).
        for _ in range(3):
            for am in ams:
                post_alerts_to_am(am, alerts)
            time.sleep(1.0)
        expected = {f"host-{i:03d}" for i in range(n)}
        until(lambda: set(lines(runs)) >= expected, 120, f"{n} remediations", every=0.5)
        # Let repeat_interval resend every group at least once more to every replica.
        received = metric(urls[0], r'runbook_responder_notifications_total\{.*result="recorded"')
        until(lambda: metric(urls[0], r'runbook_responder_notifications_total\{.*'
                                      r'result="recorded"') >= received + n, 60, "repeats")
        time.sleep(1.0)  # any second run would have started by now
        found = incidents(urls[1])
        notes = sum(metric(u, r'runbook_responder_notifications_total\{.*result="recorded"')
                    for u in urls)
        errors = sum(metric(u, r'runbook_responder_notifications_total\{.*result='
                               r'"store_error"') for u in urls)
        runners = Counter(step["detail"]["by"].rsplit(":", 2)[0] + ":" +
                          step["detail"]["by"].rsplit(":", 2)[1]
                          for inc in found for step in inc["steps"]
                          if step["kind"] == "action_started")
    counts = Counter(lines(runs))
    twice = sorted(k for k, v in counts.items() if v > 1)
    lost = sorted(expected - set(counts))
    elapsed = time.monotonic() - started
    report("ha_exactly_once", occurrences=n, alertmanagers=2, replicas=3,
           notifications_recorded=int(notes), store_errors=int(errors),
           remediations=sum(counts.values()), run_twice=len(twice), lost=len(lost),
           runs_by_replica=sorted(runners.values()), seconds=round(elapsed, 1))
    assert not twice, f"remediated more than once: {twice[:10]}"
    assert not lost, f"never remediated: {lost[:10]}"
    assert sum(counts.values()) == n
    assert len(found) == n
    for inc in found:
        steps = kinds(inc)
        assert steps.count("received") == 1, inc["id"]
        assert steps.count("action_started") == 1, inc["id"]
        assert inc["state"] == "acted", (inc["id"], inc["state"])
    # Every replica got copies from both Alertmanagers: far more notifications than occurrences.
    assert notes >= 3 * n
