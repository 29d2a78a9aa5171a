"""The webhook model against real Alertmanager bodies and malformed ones."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from responder.payload import Notification, parse_time
from tests.test_responder_support import PAYLOADS, alert, body


@pytest.mark.parametrize("name", ["firing.json", "resolved.json"])
def test_real_payloads_validate(name: str) -> None:
    note = Notification.model_validate_json((PAYLOADS / name).read_text())
    assert note.version == "4"
    assert note.alerts[0].fingerprint == "2e93cb24a611194c"
    assert note.alerts[0].labels["alertname"] == "GaugeHigh"
    assert note.alerts[0].starts_key == "2026-11-24T07:12:19.279000Z"
    assert (note.alerts[0].ended is None) == (name == "firing.json")


def test_unknown_fields_are_kept_and_truncation_recorded() -> None:
    data = body(notification_reason="repeat", routeLabels={"team": "db"})
    data["truncatedAlerts"] = 3
    data["alerts"][0]["newAlertField"] = 1
    note = Notification.model_validate(data)
    assert note.extra_fields == {"notification_reason": "repeat", "routeLabels": {"team": "db"}}
    assert note.truncated_alerts == 3


def test_nanosecond_timestamps_and_zones_normalize() -> None:
    a = Notification.model_validate(body(alert(starts="2026-11-24T07:12:19.279123456Z")))
    b = Notification.model_validate(body(alert(starts="2026-11-24T08:12:19.279123+01:00")))
    assert a.alerts[0].starts_key == b.alerts[0].starts_key
    assert parse_time("0001-01-01T00:00:00Z").year == 1


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda d: d.update(version="3"), "version"),
    (lambda d: d.update(alerts=[]), "alerts"),
    (lambda d: d.pop("status"), "status"),
    (lambda d: d["alerts"][0].pop("fingerprint"), "fingerprint"),
    (lambda d: d["alerts"][0].update(startsAt="yesterday"), "startsAt"),
    (lambda d: d["alerts"][0].update(labels={}), "labels"),
    (lambda d: d["alerts"][0].update(status="pending"), "status"),
    (lambda d: d["alerts"][0]["labels"].update(n=1), "labels"),
    (lambda d: d.update(truncatedAlerts=-1), "truncatedAlerts"),
    # More than a store's INTEGER column keeps: refused here, not failed at the store.
    (lambda d: d.update(truncatedAlerts=2**31), "truncatedAlerts"),
    (lambda d: d.update(truncatedAlerts=2**63), "truncatedAlerts"),
    (lambda d: d["alerts"][0].update(startsAt="2026-11-24T07:12:19." + "1" * 60 + "Z"),
     "startsAt"),
    (lambda d: d["alerts"][0].update(endsAt="2026-11-24T07:12:19." + "1" * 60 + "Z"), "endsAt"),
])
def test_malformed_bodies_fail_naming_the_field(mutate: object, where: str) -> None:
    data = json.loads(json.dumps(body()))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ValidationError) as info:
        Notification.model_validate(data)
    assert where in str(info.value)


@pytest.mark.parametrize("value", [
    "2026-11-24T07:12:19.279Z", "2026-11-24T07:12:19.279123456Z", "2026-11-24T07:12:19.9999999Z",
    "2026-11-24T08:12:19.1234565+01:00", "2026-11-24T07:12:19Z", "2026-11-24T07:12:19,5Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"])
def test_timestamps_python_reads_as_written_parse_as_normalized(value: str) -> None:
    from responder.payload import _parse_normalized

    assert parse_time(value) == _parse_normalized(value)
    assert parse_time(value).utcoffset() == _parse_normalized(value).utcoffset()


@pytest.mark.parametrize(("value", "expected"), [
    (" 2026-11-24T07:12:19.279z ", "2026-11-24T07:12:19.279000+00:00"),
    ("2026-11-24T07:12:19.Z", "2026-11-24T07:12:19+00:00"),
])
def test_timestamps_python_refuses_as_written_are_normalized(value: str, expected: str) -> None:
    assert parse_time(value).isoformat() == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-11-24T07:12:19", "2026-11-24",
                                   "0001-01-01T00:00:00+01:00"])
def test_timestamps_without_zone_or_out_of_range_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"time zone|RFC 3339|out of range"):
        parse_time(value)


def test_utf8_text_is_none_for_other_encodings() -> None:
    from responder.payload import utf8_text

    text = json.dumps(body())
    assert utf8_text(text.encode()) == text
    assert utf8_text(text.encode("utf-16-le")) is None  # decodes as UTF-8, NULs and all
    assert utf8_text(text.encode("utf-32")) is None
    assert utf8_text(b'{"a": "\xff"}') is None


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_a_body_vouched_plain_is_not_walked_but_others_are(bad: str) -> None:
    from responder.payload import PLAIN_JSON

    data = body(alert(instance=bad))
    with pytest.raises(ValidationError, match=r"NUL|surrogate"):
        Notification.model_validate(data, context={PLAIN_JSON: False})
    with pytest.raises(ValidationError, match=r"NUL|surrogate"):
        Notification.model_validate(data)
    # Only the caller's word skips the walk: the app gives it for UTF-8 text without \u.
    assert Notification.model_validate(data, context={PLAIN_JSON: True})


def test_a_long_fraction_is_cut_to_microseconds() -> None:
    value = "2026-11-24T07:12:19." + "1" * 200 + "+01:00"
    assert parse_time(value) == parse_time("2026-11-24T06:12:19.111111Z")
