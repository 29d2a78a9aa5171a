"""Structured log lines: JSON and logfmt parse back, secrets never appear."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from runbook import logs

TOKEN = "s3cr3t-token-value-123"


@pytest.fixture
def capture() -> io.StringIO:
    return io.StringIO()


def _emit(fmt: str, stream: io.StringIO) -> list[str]:
    logs.setup("INFO", fmt, secrets=[TOKEN], stream=stream)
    log = logging.getLogger("responder.test")
    log.info("decision for %s", "occ-1", extra={"occurrence": "occ-1", "mode": "auto",
                                                 "detail": f"Bearer {TOKEN}"})
    log.warning("auth header was %s", f"Bearer {TOKEN}")
    try:
        raise RuntimeError(f"connect failed with {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_fields(capture: io.StringIO) -> None:
    lines = [line for line in _emit("json", capture) if line.startswith("{")]
    first = json.loads(lines[0])
    assert first["msg"] == "decision for occ-1"
    assert first["occurrence"] == "occ-1"
    assert first["mode"] == "auto"
    assert first["level"] == "info"
    assert first["logger"] == "responder.test"
    assert json.loads(lines[2])["error"].startswith("Traceback")


def test_logfmt_quotes_values_that_need_it(capture: io.StringIO) -> None:
    lines = _emit("logfmt", capture)
    assert re.search(r'\bmsg="decision for occ-1"', lines[0])
    assert " occurrence=occ-1 " in lines[0] + " "
    assert "level=info" in lines[0]


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_secrets_never_appear(fmt: str, capture: io.StringIO) -> None:
    text = "\n".join(_emit(fmt, capture))
    assert TOKEN not in text
    assert logs.MASK in text


def test_short_values_are_not_masked(capture: io.StringIO) -> None:
    logs.setup("INFO", "text", secrets=["abc"], stream=capture)
    logging.getLogger("x").info("abc stays")
    assert "abc stays" in capture.getvalue()
