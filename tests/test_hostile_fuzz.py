"""Hostile input, generated: thousands of webhook bodies (hypothesis) and requests built from the
responder's own /openapi.json (schemathesis) against a real responder process; only 2xx or 4xx,
never a 5xx, never a crash."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fault_support import TOKEN, exec_rule, report, runbook_text, start_responder
from tests.stack import Proc, http_get, stack

HOSTILE = [
    "; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a\nb", "a\x00b", "../../etc/passwd",
    "\ud800", "\udfff", "x" * 100_000, "", " ", "{{ labels.instance }}", "%s%n", "\\", "'\"",
    "\u202e", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "NaN", "-1", "🔥",
]
TIMES = ["2026-11-24T07:12:19.279Z", "2026-11-24T07:12:19.123456789+02:00",
         "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
         "2026-11-24T07:12:19", "2026-13-45T99:99:99Z", "yesterday", ""]
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40),
                 st.text(alphabet=st.characters(codec="utf-8"), max_size=10))
# Most label values are storable, so most bodies get past validation to the store and rules.
value = st.one_of(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                          max_size=40), st.sampled_from(HOSTILE[:6] + HOSTILE[7:]))
label_name = st.one_of(st.sampled_from(["alertname", "instance", "severity", "queue"]), text)
labels = st.dictionaries(label_name, st.one_of(value, value, value, text), max_size=5).map(
    lambda d: {"alertname": "FaultHostile", **d} if len(d) % 2 else d)
good_time = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
alert = st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "firing", "resolved", "unknown"]),
     "labels": labels,
     "startsAt": st.one_of(good_time, good_time, st.sampled_from(TIMES), text),
     "fingerprint": st.one_of(st.text(min_size=1, max_size=128), text)},
    optional={"annotations": st.dictionaries(text, text, max_size=3),
              "endsAt": st.one_of(st.sampled_from(TIMES), text), "generatorURL": text,
              "extra": st.integers()})
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20)
webhook = st.fixed_dictionaries(
    {"version": st.sampled_from(["4", "4", "4", "4", "3", 4]),
     "status": st.sampled_from(["firing", "resolved", "resolved", "x"]),
     "alerts": st.lists(alert, min_size=0, max_size=4)},
    optional={"receiver": text, "groupKey": text, "truncatedAlerts": st.integers(-5, 10**12),
              "groupLabels": st.dictionaries(text, text, max_size=3), "commonLabels": json_value,
              "externalURL": text, "notification_reason": text, "routeLabels": json_value})
storable = st.characters(codec="utf-8", exclude_characters="\x00")
valid_alert = st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "firing", "resolved"]),
     "labels": st.dictionaries(
         st.one_of(st.sampled_from(["instance", "queue", "severity"]),
                   st.text(alphabet=storable, min_size=1, max_size=20)), value,
         max_size=5).map(lambda d: {"alertname": "FaultHostile", **d}),
     "startsAt": good_time,
     "fingerprint": st.one_of(st.text(alphabet=storable, min_size=1, max_size=128),
                              st.sampled_from(["fp1", "fp2", "fp3"]))},
    optional={"annotations": st.dictionaries(st.text(alphabet=storable, max_size=10), value,
                                             max_size=3),
              "endsAt": good_time, "generatorURL": value})
valid_webhook = st.fixed_dictionaries(
    {"version": st.just("4"), "status": st.sampled_from(["firing", "resolved"]),
     "alerts": st.lists(valid_alert, min_size=1, max_size=4)},
    optional={"receiver": value, "groupKey": value, "truncatedAlerts": st.integers(0, 10**6),
              "notification_reason": value, "routeLabels": st.dictionaries(value, value,
                                                                          max_size=2)})
# Half the bodies are well-formed webhooks with hostile but storable values (they reach the
# store, the rules and the dry-run action); the rest are malformed in every other way.
body = st.one_of(
    valid_webhook.map(lambda b: json.dumps(b).encode()),
    valid_webhook.map(lambda b: json.dumps(b).encode()),
    valid_webhook.map(lambda b: json.dumps(b).encode()),
    webhook.map(lambda b: json.dumps(b).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    """A real responder on SQLite whose rule matches the fuzzed alerts in dry-run."""
    tmp = tmp_path_factory.mktemp("hostile")
    rb = tmp / "runbook.yml"
    rb.write_text(runbook_text(exec_rule(
        "argv", "FaultHostile", ["/bin/echo", "{{ labels.instance }}", "{{ labels.queue }}"],
        extra="    dry_run: true\n")))
    with stack() as s:
        yield start_responder(s, "responder", rb, "--data-dir", str(tmp / "data"))


class Poster:
    """One keep-alive connection to the responder, reopened when the server closes it."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("POST", "/alerts", body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def test_generated_webhook_bodies_get_2xx_or_4xx(responder: tuple[Proc, str],
                                                long_run: bool) -> None:
    proc, url = responder
    examples = 20_000 if long_run else 1_000
    poster = Poster(url)
    statuses: Counter[int] = Counter()
    failures: list[tuple[int, bytes, bytes]] = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    started = time.monotonic()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=not long_run,
              suppress_health_check=list(HealthCheck))
    @given(data=body)
    def one(data: bytes) -> None:
        status, answer = poster.post(data, headers)
        statuses[status] += 1
        if not 200 <= status < 500:
            failures.append((status, data[:300], answer[:300]))
            print(f"\n{status} for {data[:2000]!r}")
        assert 200 <= status < 500, (status, data[:300], answer[:300])

    try:
        one()
    finally:
        elapsed = time.monotonic() - started
        report("hostile_hypothesis_bodies", bodies=sum(statuses.values()),
               statuses=dict(sorted(statuses.items())), server_errors=len(failures),
               seconds=round(elapsed, 1))
    assert proc.process is not None
    assert proc.process.poll() is None, proc.tail()
    assert sum(statuses.values()) >= examples
    assert http_get(f"{url}/metrics")[0] == 200  # nothing from the bodies broke the exposition
    assert "Traceback" not in proc.tail(1_000_000), proc.tail()


def test_openapi_operations_never_answer_5xx(responder: tuple[Proc, str], tmp_path: Path,
                                            long_run: bool) -> None:
    """schemathesis, driven by the responder's own /openapi.json: every operation, valid and
    invalid requests, with and without the token; the not_a_server_error check must hold."""
    proc, url = responder
    per_operation = 300 if long_run else 15
    started = time.monotonic()
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", str(per_operation),
         "--header", f"Authorization: Bearer {TOKEN}", "--seed", "20261124", "--no-color",
         "--continue-on-failure", "--request-timeout", "30",
         "--report", "ndjson", "--report-ndjson-path", str(tmp_path / "schemathesis.ndjson")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, check=False)
    found = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    cases = int(found.group(1)) if found else 0
    report("hostile_schemathesis", test_cases=cases, exit_code=run.returncode,
           seconds=round(time.monotonic() - started, 1))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert found, run.stdout[-3000:]
    assert found.group(1) == found.group(2), run.stdout[-3000:]
    assert cases >= 11 * per_operation // 3
    assert proc.process is not None
    assert proc.process.poll() is None
    # aiohttp logs the malformed requests it refused (400) with a traceback; no handler may fail.
    assert "Internal Server Error" not in proc.tail(1_000_000)
