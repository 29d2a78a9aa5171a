"""Structured logs for every command: text, JSON or logfmt lines, with secrets masked."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import BaseModel

FORMATS = ("text", "json", "logfmt")
MASK = "<redacted>"
# Record attributes every LogRecord has; anything else was passed with `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_LOGFMT_BARE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The --log-level and --log-format flags every long-running command takes."""
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=FORMATS,
                        help="text for people, json or logfmt for log pipelines")


class SecretMask(logging.Filter):
    """Replaces every known secret value in a record's message and fields."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would mask ordinary words; real tokens and keys are long.
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._mask(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self._mask(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The line's fields: time, level, logger, message, then the `extra=` fields."""
    out: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            out[key] = value
    if record.exc_text:
        out["error"] = record.exc_text
    elif record.exc_info:
        out["error"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields_of(record), default=str, ensure_ascii=False)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if _LOGFMT_BARE.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """One `key=value ...` line a record, values quoted when they need it."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields_of(record).items())


class TextFormatter(logging.Formatter):
    """A readable line, with `extra=` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        fields = fields_of(record)
        head = f"{fields.pop('ts')} {fields.pop('level').upper()} {fields.pop('logger')}: " \
               f"{fields.pop('msg')}"
        error = fields.pop("error", None)
        tail = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        line = f"{head} {tail}".rstrip()
        return f"{line}\n{error}" if error else line


def secret_values(runbook: BaseModel | None, *extra: str) -> list[str]:
    """The values of every env var a runbook names as a secret (`*_env` keys), plus `extra`."""
    names: list[str] = []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
                if key == "headers_env" and isinstance(v, str):
                    names.append(v)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        elif isinstance(value, str) and key.endswith("_env"):
            names.append(value)

    if runbook is not None:
        walk(runbook.model_dump(mode="json", by_alias=True))
    return [v for v in (*(os.environ.get(n, "") for n in names), *extra) if v]


def setup(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = (),
          stream: TextIO | None = None) -> None:
    """Configure the root logger once for a command."""
    formatter: logging.Formatter = {"json": JsonFormatter, "logfmt": LogfmtFormatter}.get(
        fmt, TextFormatter)()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(SecretMask(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log repeats every request; keep it at warnings unless debugging.
    if level != "DEBUG":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
