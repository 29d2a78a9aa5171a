"""Bodies validated before: Alertmanager's byte-for-byte resends reuse the validated
notification, and anything that differs by one character is validated on its own."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from responder.app import BODIES, STORE
from responder.bodies import ValidatedBodies
from responder.payload import Notification, occurrence_id
from responder.store import open_store
from tests.test_responder_support import AUTH, alert, body, load, post, responder

RULE = "  - name: gauge\n    match: {alertname: GaugeHigh}\n    external: true\n    mode: page\n"
Client = TestClient[web.Request, web.Application]


def note(fingerprint: str = "fp1") -> tuple[str, Notification]:
    text = json.dumps(body(alert(fingerprint)))
    return text, Notification.model_validate_json(text)


def keep(bodies: ValidatedBodies, text: str, validated: Notification) -> None:
    """Two copies: the second one keeps the notification."""
    bodies.add(text, validated)
    bodies.add(text, validated)


def test_a_body_seen_once_keeps_only_its_text() -> None:
    bodies = ValidatedBodies()
    text, validated = note()
    bodies.add(text, validated)
    assert bodies.get(text) is None
    assert len(bodies) == 0
    bodies.add(text, validated)
    assert bodies.get(text) is validated
    assert len(bodies) == 1


def test_a_kept_body_is_returned_for_exactly_its_text() -> None:
    bodies = ValidatedBodies()
    text, validated = note()
    keep(bodies, text, validated)
    assert bodies.get(text) is validated
    assert bodies.get(text + " ") is None
    assert bodies.get(text.replace("fp1", "fp2")) is None


def test_occurrences_are_computed_before_the_note_is_shared() -> None:
    bodies = ValidatedBodies()
    text, validated = note()
    keep(bodies, text, validated)
    first = validated.alerts[0]
    assert vars(validated)["occurrences"] == {
        occurrence_id("fp1", first.starts_key): first}


def test_entries_are_bounded_least_recent_first() -> None:
    bodies = ValidatedBodies(max_entries=2)
    kept = [note(f"fp{i}") for i in range(3)]
    keep(bodies, *kept[0])
    keep(bodies, *kept[1])
    assert bodies.get(kept[0][0]) is kept[0][1]  # now the most recent
    keep(bodies, *kept[2])
    assert len(bodies) == 2
    assert bodies.get(kept[1][0]) is None
    assert bodies.get(kept[0][0]) is kept[0][1]
    assert bodies.get(kept[2][0]) is kept[2][1]


def test_bodies_are_bounded_per_body_and_in_bytes() -> None:
    text, validated = note()
    small = ValidatedBodies(max_body_chars=len(text) - 1)
    keep(small, text, validated)
    assert small.get(text) is None
    two = ValidatedBodies(max_total_bytes=2 * ValidatedBodies.entry_bytes(text, True) + 10)
    kept = [note(f"fp{i}") for i in range(3)]  # same length: fp0, fp1, fp2
    for entry in kept:
        keep(two, *entry)
    assert len(two) == 2
    assert two.get(kept[0][0]) is None


def big_body(i: int, label: str) -> tuple[str, Notification]:
    """About 60 KiB: many alerts, as a big group's notification."""
    alerts = [alert(f"fp{i}-{j}", instance=f"{label}-{j}") for j in range(150)]
    text = json.dumps(body(*alerts), ensure_ascii=False)
    return text, Notification.model_validate_json(text)


@pytest.mark.parametrize("label", ["host", "h\U0001f525st"])
def test_a_flood_of_big_distinct_bodies_stays_within_the_budget(label: str) -> None:
    budget = 4 * 1024 * 1024
    bodies = ValidatedBodies(max_total_bytes=budget)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(150):
            text, validated = big_body(i, label)
            keep(bodies, text, validated)
            del text, validated
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < len(bodies) < 150
    # The estimate may err by a tenth either way; 1.25 x the budget leaves room for the rest.
    assert held < 1.25 * budget, f"{held / 2**20:.1f} MiB held for a {budget >> 20} MiB budget"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    async with responder(load(RULE), open_store(None, tmp_path / "data"),
                         run_worker=False) as c:
        yield c


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every body the app validates."""
    seen: list[Any] = []
    real = Notification.model_validate

    def counting(data: Any, **kwargs: Any) -> Notification:
        seen.append(data)
        return real(data, **kwargs)

    monkeypatch.setattr(Notification, "model_validate", counting)
    return seen


async def test_resends_are_served_validated_and_recorded_as_every_copy(
        client: Client, validations: list[Any]) -> None:
    text = json.dumps(body(alert("fp1")))
    sent = [await post(client, text.encode()) for _ in range(4)]
    assert [r.status for r in sent] == [200] * 4
    assert len(validations) == 2  # the third and fourth copies were not parsed
    assert len(client.app[BODIES]) == 1
    answers = [await r.json() for r in sent]
    assert [a["alerts"][0]["status"] for a in answers] == ["new"] + ["deduplicated"] * 3
    rows = await client.app[STORE].run(
        lambda tx: tx.fetchall("SELECT id, body FROM notifications ORDER BY id"))
    assert [r["body"] for r in rows] == [text] * 4
    assert [a["notification"] for a in answers] == [r["id"] for r in rows]
    oid = answers[0]["alerts"][0]["occurrence"]
    steps = await client.app[STORE].run(lambda tx: tx.fetchall(
        "SELECT kind, detail FROM steps WHERE occurrence_id = ? AND kind = 'deduplicated' "
        "ORDER BY id", oid))
    assert [json.loads(s["detail"])["notification"] for s in steps] == [
        r["id"] for r in rows[1:]]


async def test_a_copy_differing_by_one_character_is_validated_on_its_own(
        client: Client, validations: list[Any]) -> None:
    text = json.dumps(body(alert("fp1")))
    for _ in range(2):
        assert (await post(client, text.encode())).status == 200
    broken = text.replace('"version": "4"', '"version": "3"')
    assert broken != text
    refused = await post(client, broken.encode())
    assert refused.status == 400
    assert "version" in (await refused.json())["error"]
    other = await post(client, text.replace("fp1", "fp2").encode())
    assert (await other.json())["alerts"][0]["status"] == "new"
    assert len(validations) == 4


async def test_a_kept_body_still_passes_every_check_of_the_request(
        client: Client, validations: list[Any]) -> None:
    text = json.dumps(body(alert("fp1")))
    for _ in range(2):
        assert (await post(client, text.encode())).status == 200
    no_token = await client.post("/alerts", data=text,
                                 headers={"Content-Type": "application/json"})
    assert no_token.status == 401
    wrong_type = await client.post("/alerts", data=text,
                                   headers={**AUTH, "Content-Type": "text/plain"})
    assert wrong_type.status == 415
    bad_query = await client.post("/alerts?paged=someone", data=text,
                                  headers={**AUTH, "Content-Type": "application/json"})
    assert bad_query.status == 400
    assert "paged" in (await bad_query.json())["error"]
    assert len(validations) == 2


async def test_utf16_bodies_are_validated_each_time(client: Client,
                                                    validations: list[Any]) -> None:
    data = json.dumps(body(alert("fp1"))).encode("utf-16")
    for _ in range(3):
        assert (await post(client, data)).status == 200
    assert len(validations) == 3
    assert len(client.app[BODIES]) == 0
