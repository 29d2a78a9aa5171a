"""The OpenAPI 3 document of the responder's HTTP API."""

from __future__ import annotations

import functools
from typing import Any

from responder.payload import Notification

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_STEP = {"type": "object", "properties": {
    "at": {"type": "string", "format": "date-time"},
    "kind": {"type": "string", "description": "received, deduplicated, matched, rail, queued, "
             "awaiting_approval, paging, approved, rejected, action_started, action_finished, "
             "verifying, verified, retry, escalated, paged, page_resolved, resolved, resumed, "
             "interrupted, late_finish, acted, closed, reopened"},
    "detail": {"type": "object"}}}
_INCIDENT = {"type": "object", "properties": {
    "id": {"type": "string"}, "fingerprint": {"type": "string"},
    "startsAt": {"type": "string"}, "alertname": {"type": "string"},
    "generatorURL": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "state": {"type": "string", "enum": [
        "new", "queued", "awaiting_approval", "paging", "running", "verifying", "acted",
        "escalating", "escalated", "paged", "page_failed", "healed", "resolved", "rejected"]},
    "active": {"type": "boolean"}, "decision": {"type": "array", "items": {"type": "object"}},
    "first_seen": {"type": "string"}, "updated_at": {"type": "string"},
    "resolved_at": {"type": ["string", "null"]}, "notifications": {"type": "integer"},
    "paged": {"type": "boolean"},
    "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}}}}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _resp(description: str, ref: str | None = None) -> dict[str, Any]:
    return {"description": description, **(_json(ref) if ref else {})}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "malformed request", 401: "missing or wrong bearer token",
             404: "no such incident", 408: "the body did not arrive in time",
             409: "no approval waiting (none, or answered)", 413: "body too large",
             415: "not application/json", 503: "the store cannot record or read: retry"}
    return {str(c): _resp(names[c], "Error") for c in codes}


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_ANSWER = {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"by": {"type": "string"}, "reason": {"type": "string"}}}}}}
_SECURE: list[dict[str, list[str]]] = [{"bearer": []}]


def _static(content_type: str) -> dict[str, Any]:
    return {"description": "a static file", "content": {content_type: {
        "schema": {"type": "string"}}}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document served at /openapi.json."""
    schema = Notification.model_json_schema(by_alias=True, ref_template="#/components/schemas/"
                                            "{model}")
    defs = schema.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "runbook responder", "version": "1",
                 "description": "Alertmanager webhooks in; one decision per alert occurrence "
                                "(fingerprint + startsAt); audit, approvals, metrics."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Notification": schema, **defs, "Error": _ERROR, "Step": _STEP,
                        "Incident": _INCIDENT,
                        "Incidents": {"type": "object", "properties": {"incidents": {
                            "type": "array", "items": {"$ref": "#/components/schemas/Incident"}}}},
                        "Answered": {"type": "object", "properties": {
                            "id": {"type": "string"}, "state": {"type": "string"}},
                            "required": ["id", "state"]},
                        "Status": {"type": "object", "properties": {
                            "status": {"type": "string"}}, "required": ["status"]},
                        "Intake": {"type": "object", "properties": {
                            "notification": {"type": "integer"},
                            "alerts": {"type": "array", "items": {"type": "object"}},
                            "truncated_alerts": {"type": "integer"}}}},
        },
        "paths": {
            "/alerts": {"post": {
                "summary": "Receive an Alertmanager webhook (version 4); 200 only once recorded",
                "security": _SECURE, "requestBody": {"required": True, **_json("Notification")},
                "parameters": [{
                    "name": "paged", "in": "query", "required": False,
                    "description": "alertmanager: Alertmanager's route paged these alerts "
                                   "already; a decision to page is recorded, not sent again",
                    "schema": {"type": "string", "enum": ["alertmanager"]}}],
                "responses": {"200": _resp("recorded", "Intake"),
                              **_errors(400, 401, 408, 413, 415, 503)}}},
            "/incidents": {"get": {
                "summary": "Occurrences, newest first, with their steps", "security": _SECURE,
                "parameters": [
                    {"name": "active", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": {"200": _resp("incidents", "Incidents"),
                              **_errors(400, 401, 503)}}},
            "/incidents/{id}": {"get": {
                "summary": "One occurrence with its steps", "security": _SECURE,
                "parameters": _ID, "responses": {"200": _resp("the incident", "Incident"),
                                                 **_errors(401, 404, 503)}}},
            "/incidents/{id}/approve": {"post": {
                "summary": "Approve the actions of an occurrence awaiting approval",
                "security": _SECURE, "parameters": _ID, "requestBody": _ANSWER,
                "responses": {"200": _resp("approved: its actions are queued", "Answered"),
                              **_errors(400, 401, 404, 409, 503)}}},
            "/incidents/{id}/reject": {"post": {
                "summary": "Reject the actions of an occurrence awaiting approval",
                "security": _SECURE, "parameters": _ID, "requestBody": _ANSWER,
                "responses": {"200": _resp("rejected", "Answered"),
                              **_errors(400, 401, 404, 409, 503)}}},
            "/metrics": {"get": {"summary": "The responder's own metrics (Prometheus text)",
                                 "responses": {"200": {"description": "metrics", "content": {
                                     "text/plain; version=0.0.4; charset=utf-8": {
                                         "schema": {"type": "string"}}}}}}},
            "/health": {"get": {"summary": "Alive",
                                "responses": {"200": _resp("alive", "Status")}}},
            "/health/ready": {"get": {"summary": "Ready when the store answers", "responses": {
                "200": _resp("ready"), "503": _resp("the store does not answer")}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": _resp("OpenAPI 3 document")}}},
            "/": {"get": {"summary": "The incidents page (its data comes from /incidents)",
                          "responses": {"200": _static("text/html")}}},
            "/ui/app.js": {"get": {"summary": "The incidents page's script",
                                   "responses": {"200": _static("application/javascript")}}},
            "/ui/style.css": {"get": {"summary": "The incidents page's style sheet",
                                      "responses": {"200": _static("text/css")}}},
        },
    }
