"""The HTTP surface: auth, malformed bodies with reasons, limits, metrics, health, OpenAPI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from responder.app import ROUTES, STORE
from responder.store import open_store
from tests.test_responder_support import AUTH, TOKEN, alert, body, load, post, responder

RULE = "  - name: gauge\n    match: {alertname: GaugeHigh}\n    external: true\n    mode: page\n"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path) -> Client:
    async with responder(load(RULE), open_store(None, tmp_path / "data"), max_body=64 * 1024,
                         run_worker=False) as c:
        yield c  # type: ignore[misc]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", TOKEN])
async def test_wrong_or_missing_token_is_401(client: Client, header: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    response = await client.post("/alerts", data=json.dumps(body()), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/incidents", "/incidents/x"):
        assert (await client.get(path, headers=headers)).status == 401


@pytest.mark.parametrize(("payload", "status", "reason"), [
    (b"{not json", 400, "body is not JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({**body(), "version": "3"}).encode(), 400, "version"),
    (json.dumps({**body(), "alerts": []}).encode(), 400, "alerts"),
    (json.dumps({k: v for k, v in body().items() if k != "status"}).encode(), 400, "status"),
    (b"\xff\xfe", 400, "not JSON"),
    (json.dumps(body()).encode() + b" " * 70_000, 413, "larger than"),
    # An integer past Python's 4,300-digit limit raises ValueError, not JSONDecodeError.
    (b'{"x": ' + b"9" * 5000 + b"}", 400, "body is not JSON"),
    (json.dumps({**body(), "truncatedAlerts": 2**63}).encode(), 400, "truncatedAlerts"),
])
async def test_malformed_bodies_get_4xx_with_reason(client: Client, payload: bytes, status: int,
                                                     reason: str) -> None:
    response = await post(client, payload)
    assert response.status == status
    assert reason in (await response.json())["error"]


async def test_utf16_json_is_recorded(client: Client) -> None:
    response = await post(client, json.dumps(body()).encode("utf-16"))
    assert response.status == 200, await response.text()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-32"])
@pytest.mark.parametrize(("bad", "reason"), [("a\x00b", "NUL"), ("\ud800", "surrogate")])
async def test_nul_and_lone_surrogates_are_refused_in_every_encoding(
        client: Client, encoding: str, bad: str, reason: str) -> None:
    text = json.dumps(body(alert(instance=bad)))  # ASCII: the escapes \u0000 and \ud800
    response = await post(client, text.encode(encoding))
    assert response.status == 400, await response.text()
    assert reason in (await response.json())["error"]


async def test_utf16_without_bom_is_kept_as_utf8_json(client: Client, tmp_path: Path) -> None:
    sent = body(alert(instance="caf\u00e9"))
    response = await post(client, json.dumps(sent).encode("utf-16-le"))
    assert response.status == 200, await response.text()
    stored = await client.app[STORE].run(lambda tx: tx.fetchall("SELECT body FROM notifications"))
    assert [json.loads(r["body"]) for r in stored] == [sent]
    assert "\x00" not in stored[0]["body"]


async def test_content_type_is_checked(client: Client) -> None:
    response = await client.post("/alerts", data=json.dumps(body()),
                                 headers={**AUTH, "Content-Type": "text/plain"})
    assert response.status == 415
    assert "application/json" in (await response.json())["error"]


async def test_bad_query_parameters(client: Client) -> None:
    assert (await client.get("/incidents?limit=x", headers=AUTH)).status == 400
    assert (await client.get("/incidents?limit=0", headers=AUTH)).status == 400
    assert (await client.get("/incidents/unknown", headers=AUTH)).status == 404
    bad = await client.post("/incidents/x/approve", data="{", headers={
        **AUTH, "Content-Type": "application/json"})
    assert bad.status == 404  # no such incident, whatever the body
    await post(client, body())
    oid = (await (await client.get("/incidents", headers=AUTH)).json())["incidents"][0]["id"]
    for text in ("{", '{"by": ' + "9" * 5000 + "}"):
        bad = await client.post(f"/incidents/{oid}/approve", data=text, headers={
            **AUTH, "Content-Type": "application/json"})
        assert bad.status == 400, await bad.text()
    # Ids no occurrence can have are unknown before the store is asked (a NUL would make
    # PostgreSQL refuse the query, which is not the store failing).
    for path in ("/incidents/a%00b", "/incidents/a%00b/approve", "/incidents/" + "f" * 17):
        answer = await (client.get(path, headers=AUTH) if not path.endswith("approve")
                        else client.post(path, headers=AUTH))
        assert answer.status == 404, path


async def test_metrics_count_notifications_decisions_and_errors(client: Client) -> None:
    await post(client, body())
    await post(client, body())
    await post(client, b"{")
    text = await (await client.get("/metrics")).text()
    assert 'runbook_responder_notifications_total{result="recorded",status="firing"} 2.0' in text
    assert 'runbook_responder_notifications_total{result="invalid",status="unknown"} 1.0' in text
    assert 'runbook_responder_decisions_total{outcome="paging"} 1.0' in text
    assert 'runbook_responder_alerts_total{result="deduplicated"} 1.0' in text
    assert "runbook_responder_pending_work 1.0" in text
    assert "runbook_responder_intake_seconds_bucket" in text


async def test_truncated_alerts_are_in_the_audit(client: Client) -> None:
    response = await post(client, {**body(), "truncatedAlerts": 7})
    data = await response.json()
    assert data["truncated_alerts"] == 7
    oid = data["alerts"][0]["occurrence"]
    incident = await (await client.get(f"/incidents/{oid}", headers=AUTH)).json()
    received = incident["steps"][0]
    assert received["kind"] == "received"
    assert received["detail"]["truncated_alerts"] == 7
    assert "left 7 alerts out" in received["detail"]["warning"]


async def test_health_and_ready(client: Client) -> None:
    assert (await client.get("/health")).status == 200
    ready = await client.get("/health/ready")
    assert ready.status == 200
    assert (await ready.json())["store"] == "sqlite"


async def test_openapi_describes_every_route(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(method, path) for method, path, _ in ROUTES}
    assert described == served
    app_routes = {(r.method, r.resource.canonical) for r in client.app.router.routes()
                  if r.method != "HEAD" and r.resource is not None}
    assert app_routes == served
    assert "Notification" in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert "200" in op["responses"], path


async def test_every_answer_is_kept_out_of_caches_and_not_sniffed(client: Client) -> None:
    oid = (await (await post(client, body())).json())["alerts"][0]["occurrence"]
    for method, path, auth in [("GET", "/incidents", True), ("GET", f"/incidents/{oid}", True),
                               ("POST", f"/incidents/{oid}/approve", True),
                               ("GET", "/incidents", False), ("GET", "/metrics", False),
                               ("GET", "/openapi.json", False), ("GET", "/", False)]:
        response = await client.request(method, path, headers=AUTH if auth else {})
        assert response.headers.get("Cache-Control") == "no-store", (method, path)
        assert response.headers.get("X-Content-Type-Options") == "nosniff", (method, path)
