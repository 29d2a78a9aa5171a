"""Safety rails, each recorded with its reason: maintenance, cooldown, windows, rate, concurrency,
dry-run; and matching with `continue`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from responder.payload import Notification
from responder.policy import Policy
from responder.rails import active_window, target_key
from responder.store import Store
from responder.store.intake import intake
from responder.store.queries import get_incident
from runbook.matchers import Matcher
from tests.test_responder_support import alert, append_argv, body, load


def rule(out: Path, extra: str = "", name: str = "gauge", mode: str = "auto") -> str:
    return (f"  - name: {name}\n    match: {{alertname: GaugeHigh}}\n    external: true\n"
            f"    mode: {mode}\n    do: [{{exec: {json.dumps(append_argv(out))}}}]\n{extra}")


async def decide(store: Store, policy: Policy, *alerts: dict[str, Any], now: float
                 ) -> list[dict[str, Any]]:
    note = Notification.model_validate(body(*alerts))
    result = await store.run(lambda tx: intake(tx, note, "{}", policy, now))
    out = []
    for a in result.alerts:
        data = await store.run(lambda tx, i=a.occurrence_id: get_incident(tx, i))
        assert data is not None
        out.append(data)
    return out


def hit(incident: dict[str, Any]) -> str | None:
    rails = [s["detail"] for s in incident["steps"] if s["kind"] == "rail" and s["detail"]["hit"]]
    return rails[0]["rail"] if rails else None


async def test_cooldown_per_rule_and_target(store: Store, tmp_path: Path) -> None:
    policy = Policy(load(rule(tmp_path / "o", "    cooldown: 10m\n")))
    now = time.time()
    first, = await decide(store, policy, alert("a", instance="h1"), now=now)
    assert first["state"] == "queued"
    again, = await decide(store, policy, alert("b", instance="h1"), now=now + 60)
    assert again["state"] == "paging"
    assert hit(again) == "cooldown"
    assert "within its cooldown of 600s" in again["decision"][0]["reason"]
    other, = await decide(store, policy, alert("c", instance="h2"), now=now + 60)
    assert other["state"] == "queued"
    later, = await decide(store, policy, alert("d", instance="h1"), now=now + 601)
    assert later["state"] == "queued"


async def test_window_limit_rate_limit_and_concurrency(store: Store, tmp_path: Path) -> None:
    extra = "rails: {max_concurrent: 3, rate_limit: {count: 2, per: 1m}}\n"
    policy = Policy(load(rule(tmp_path / "o", "    cooldown: 0s\n"), extra=extra))
    now = time.time()
    results = await decide(store, policy, *(alert(f"f{i}", instance=f"h{i}") for i in range(4)),
                           now=now)
    assert sorted(r["state"] for r in results) == ["paging", "paging", "queued", "queued"]
    assert {hit(r) for r in results if r["state"] == "paging"} == {"rate_limit"}
    # After the rate window, the concurrency limit (3 queued or running) still holds.
    more = await decide(store, policy, *(alert(f"g{i}", instance=f"k{i}") for i in range(2)),
                        now=now + 61)
    assert sorted(r["state"] for r in more) == ["paging", "queued"]
    assert {hit(r) for r in more if r["state"] == "paging"} == {"concurrency"}

    windowed = Policy(load(rule(tmp_path / "o", "    cooldown: 0s\n    window_limit: "
                                "{count: 1, per: 1h}\n", name="win")))
    w1, = await decide(store, windowed, alert("w1", instance="x1"), now=now + 200)
    w2, = await decide(store, windowed, alert("w2", instance="x2"), now=now + 210)
    assert w1["state"] == "queued"
    assert hit(w2) == "window_limit"


async def test_maintenance_turns_auto_into_page(store: Store, tmp_path: Path) -> None:
    extra = ("maintenance:\n  - name: deploys\n    weekly: {days: [mon, tue, wed, thu, fri, sat, "
             "sun], start: '00:00', end: '23:59'}\n    timezone: Europe/Berlin\n"
             "    matchers: ['instance=\"h1\"']\n")
    policy = Policy(load(rule(tmp_path / "o"), extra=extra))
    now = time.time()
    inside, outside = await decide(store, policy, alert("m1", instance="h1"),
                                   alert("m2", instance="h2"), now=now)
    by_instance = {i["labels"]["instance"]: i for i in (inside, outside)}
    assert by_instance["h1"]["state"] == "paging"
    assert hit(by_instance["h1"]) == "maintenance"
    assert "'deploys'" in by_instance["h1"]["decision"][0]["reason"]
    assert by_instance["h2"]["state"] == "queued"


def test_weekly_windows_cross_midnight_in_their_time_zone(tmp_path: Path) -> None:
    extra = ("maintenance:\n  - name: night\n    weekly: {days: [mon], start: '23:00', "
             "end: '01:00'}\n    timezone: America/New_York\n")
    rb = load(rule(tmp_path / "o"), extra=extra).runbook
    # Monday 23:30 and Tuesday 00:30 in New York (UTC-5 in November) are inside.
    monday_late = datetime(2026, 11, 24, 4, 30, tzinfo=UTC).timestamp()
    tuesday_late = datetime(2026, 11, 25, 4, 30, tzinfo=UTC).timestamp()
    monday_noon = datetime(2026, 11, 23, 17, 0, tzinfo=UTC).timestamp()
    assert active_window(rb, {}, monday_late) == "night"
    assert active_window(rb, {}, tuesday_late) is None
    assert active_window(rb, {}, monday_noon) is None
    once = ("maintenance:\n  - name: migration\n    start: 2026-11-24T10:00:00\n"
            "    end: 2026-11-24T12:00:00\n    timezone: Europe/Berlin\n")
    rb = load(rule(tmp_path / "o"), extra=once).runbook
    assert active_window(rb, {}, datetime(2026, 11, 24, 9, 30, tzinfo=UTC).timestamp())
    assert not active_window(rb, {}, datetime(2026, 11, 24, 11, 30, tzinfo=UTC).timestamp())


async def test_dry_run_global_and_per_rule(store: Store, tmp_path: Path) -> None:
    policy = Policy(load(rule(tmp_path / "o", "    dry_run: true\n")))
    one, = await decide(store, policy, alert("d1"), now=time.time())
    assert one["decision"][0]["dry_run"] is True
    assert "dry run" in one["decision"][0]["reason"]
    policy = Policy(load(rule(tmp_path / "o"), extra="rails: {dry_run: true}\n"))
    two, = await decide(store, policy, alert("d2", instance="h9"), now=time.time())
    assert two["decision"][0]["plan"]["dry_run"] is True


async def test_first_match_wins_unless_continue(store: Store, tmp_path: Path) -> None:
    rules = (rule(tmp_path / "o", "    continue: true\n", name="notify", mode="page")
             + rule(tmp_path / "o", "    cooldown: 0s\n", name="fix")
             + rule(tmp_path / "o", name="never"))
    policy = Policy(load(rules))
    occ, = await decide(store, policy, alert("c1"), now=time.time())
    assert [d["rule"] for d in occ["decision"]] == ["notify", "fix"]
    assert [d["outcome"] for d in occ["decision"]] == ["paging", "queued"]
    assert occ["state"] == "queued"


@pytest.mark.parametrize(("op", "pattern", "value", "expected"), [
    ("=~", "web-1", "web-1", True),
    # Alertmanager anchors at the very end of the text: a trailing newline is not the end.
    ("=~", "web-1", "web-1\n", False),
    ("!~", "prod", "prod\n", True),
    # Its "." never matches a newline.
    ("=~", "a.b", "a\nb", False),
    ("=~", "a.b", "axb", True),
    ("=~", "a|b", "ab", False),
    ("=~", "", "", True),
])
def test_regex_matchers_match_as_alertmanager_does(op: str, pattern: str, value: str,
                                                    expected: bool) -> None:
    assert Matcher.create("instance", op, pattern).matches({"instance": value}) is expected


def test_target_keys_of_different_label_sets_never_collide() -> None:
    assert target_key({"a": "1,b=2"}) != target_key({"a": "1", "b": "2"})
    assert target_key({"a": "1", "alertname": "X", "severity": "page"}) == target_key({"a": "1"})


async def test_continue_tracks_count_against_the_global_rails(store: Store,
                                                              tmp_path: Path) -> None:
    rules = (rule(tmp_path / "o", "    continue: true\n    cooldown: 0s\n", name="first")
             + rule(tmp_path / "o", "    cooldown: 0s\n", name="second"))
    now = time.time()
    policy = Policy(load(rules, extra="rails: {max_concurrent: 1}\n"))
    occ, = await decide(store, policy, alert("t1"), now=now)
    assert [d["outcome"] for d in occ["decision"]] == ["queued", "paging"]
    assert "rail concurrency: 1 remediations queued or running (limit 1)" \
        in occ["decision"][1]["reason"]
    # An hour on (t1's run still counts as active, against a higher limit now).
    policy = Policy(load(rules, extra="rails: {max_concurrent: 5, rate_limit: {count: 1, "
                                      "per: 1m}}\n"))
    occ, = await decide(store, policy, alert("t2", instance="h7"), now=now + 3600)
    assert [d["outcome"] for d in occ["decision"]] == ["queued", "paging"]
    assert "rail rate_limit: 1 automatic runs in the last 60s (limit 1)" \
        in occ["decision"][1]["reason"]


async def test_one_cooldown_holds_for_every_tier_of_an_alert(store: Store, tmp_path: Path) -> None:
    # The rendered rules label each tier (tier: warning, tier: critical): the critical alert
    # of a queue whose warning just ran its remediation is the same target, still cooling down.
    policy = Policy(load(rule(tmp_path / "o", "    cooldown: 30m\n")))
    now = time.time()
    warning, = await decide(store, policy, alert("w", severity="warning", tier="warning"),
                            now=now)
    assert warning["state"] == "queued"
    critical, = await decide(store, policy, alert("c", severity="critical", tier="critical"),
                             now=now + 300)
    assert critical["state"] == "paging"
    assert hit(critical) == "cooldown"


async def test_a_stopped_action_pages_the_rails_reason_not_the_rules_own_page(
        store: Store, tmp_path: Path) -> None:
    fyi = "api was restarted automatically (FYI)"
    extra = (f"    cooldown: 1h\n    do: [{{exec: {json.dumps(append_argv(tmp_path / 'o'))}}}, "
             f"{{page: {{severity: warning, message: {json.dumps(fyi)}}}}}]\n")
    text = rule(tmp_path / "o").split("    do:")[0] + extra
    policy = Policy(load(text))
    now = time.time()
    ran, = await decide(store, policy, alert("a"), now=now)
    assert ran["state"] == "queued"
    stopped, = await decide(store, policy, alert("b"), now=now + 60)
    assert stopped["state"] == "paging"
    work = await store.run(lambda tx: tx.fetchall(
        "SELECT plan FROM work WHERE occurrence_id = ? AND kind = 'page'", stopped["id"]))
    steps = json.loads(work[0]["plan"])["steps"]
    assert [s["action"] for s in steps] == ["page"]
    params = steps[0]["params"]
    assert "rail cooldown" in params["message"]
    assert fyi not in json.dumps(steps)
    assert params.get("severity") is None  # the alert's own severity routes it


def test_one_off_window_with_an_offset_and_a_local_end(tmp_path: Path) -> None:
    text = rule(tmp_path / "o")
    loaded = load(text, extra=(
        "maintenance:\n  - name: upgrade\n    start: 2026-12-01T09:00:00Z\n"
        "    end: 2026-12-01T11:30:00\n    timezone: Europe/Berlin\n"))
    inside = datetime(2026, 12, 1, 10, 29, tzinfo=UTC).timestamp()
    after = datetime(2026, 12, 1, 10, 30, tzinfo=UTC).timestamp()  # 11:30 in Berlin
    labels = {"alertname": "GaugeHigh"}
    assert active_window(loaded.runbook, labels, inside) == "upgrade"
    assert active_window(loaded.runbook, labels, after) is None
