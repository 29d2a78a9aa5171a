"""The Alertmanager webhook body (version 4), validated; unknown fields are accepted."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from functools import cached_property
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

ZERO_TIME = "0001-01-01T00:00:00Z"
MAX_TRUNCATED = 2**31 - 1
_DIGITS = re.compile(r"\d*")
PLAIN_JSON = "plain_json"
"""Validation context key: the body came from UTF-8 JSON text without any \\u escape. Only an
escape can then put NUL or a lone surrogate into a string (a raw control character is not JSON,
and UTF-8 cannot encode a surrogate), so the walk over every string is skipped."""


class _Open(BaseModel):
    """Newer Alertmanagers add fields: keep them instead of refusing the body."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Alert(_Open):
    """One alert of a notification."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    # RFC 3339 with nanoseconds and an offset is 35 characters: room to spare, not for a flood.
    starts_at: str = Field(alias="startsAt", min_length=1, max_length=64)
    ends_at: str = Field(default=ZERO_TIME, alias="endsAt", max_length=64)
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=128)

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        parse_time(value)
        return value

    @field_validator("labels")
    @classmethod
    def _has_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("an alert has at least one label (alertname)")
        return value

    @cached_property
    def started(self) -> datetime:
        return parse_time(self.starts_at)

    @property
    def ended(self) -> datetime | None:
        when = parse_time(self.ends_at)
        return None if when.year <= 1 else when

    @cached_property
    def starts_key(self) -> str:
        """startsAt normalized (UTC, microseconds) so copies from HA peers compare equal."""
        # isoformat, not strftime("%Y"): glibc writes year 1 as "1", which nothing parses back.
        utc = self.started.astimezone(UTC).replace(tzinfo=None)
        return utc.isoformat(timespec="microseconds") + "Z"


def unstorable(value: object) -> str | None:
    """Where a string holds NUL or a lone surrogate (no store can keep them), else None."""
    if _storable(value):  # the common case, without building a path for every value
        return None
    # Iterative: a deeply nested body must not exhaust the stack.
    todo: list[tuple[str, object]] = [("body", value)]
    while todo:
        where, item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{where}: NUL characters are not allowed"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where}: not valid Unicode (lone surrogate)"
        elif isinstance(item, dict):
            todo.extend((f"{where} (a key)", k) for k in item)
            # Keys are escaped: the message itself must be storable and encodable.
            todo.extend((f"{where}.{_printable(str(k))}"[:200], v) for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return None


def _storable(value: object) -> bool:
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class Notification(_Open):
    """One webhook POST from Alertmanager."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: object, info: ValidationInfo) -> object:
        if isinstance(info.context, dict) and info.context.get(PLAIN_JSON) is True:
            return data
        found = unstorable(data)
        if found:
            raise ValueError(found)
        return data

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_key: str = Field(default="", alias="groupKey")
    # Bounded by what a store's INTEGER column keeps: a bigger count is no Alertmanager's.
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0, le=MAX_TRUNCATED)
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[Alert] = Field(min_length=1, max_length=10_000)

    @cached_property
    def occurrences(self) -> dict[str, Alert]:
        """The alerts by occurrence id, in a fixed order (the first copy of an occurrence wins),
        so two transactions never wait on each other's rows in opposite orders."""
        seen: dict[str, Alert] = {}
        for alert in self.alerts:
            seen.setdefault(occurrence_id(alert.fingerprint, alert.starts_key), alert)
        return {oid: seen[oid] for oid in sorted(seen)}

    @property
    def extra_fields(self) -> dict[str, object]:
        """Fields this model does not know (e.g. notification_reason, routeLabels)."""
        return dict(self.model_extra or {})


def occurrence_id(fingerprint: str, starts_key: str) -> str:
    """A stable id of one occurrence: the same on every replica and after restarts."""
    return hashlib.sha256(f"{fingerprint}|{starts_key}".encode()).hexdigest()[:16]


def utf8_text(raw: bytes) -> str | None:
    """The text of a body json.loads accepted, if it was UTF-8; None for UTF-16 or UTF-32
    (JSON in UTF-8 holds no NUL byte, so NULs mean json.loads read another encoding)."""
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp as Alertmanager writes it (nanoseconds allowed) -> aware datetime."""
    try:
        # Python 3.11 reads Alertmanager's form itself ("Z", nanoseconds cut to microseconds).
        when = datetime.fromisoformat(value)
    except ValueError:
        when = _parse_normalized(value)
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    try:
        when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is out of range once in UTC") from None
    return when


def _parse_normalized(value: str) -> datetime:
    """What fromisoformat refuses as written: spaces around, a lower-case z, a bare '.'."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Go writes up to 9 fractional digits; Python takes at most 6.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = _DIGITS.match(rest)
        assert digits is not None  # \d* matches every string
        text = f"{head}.{(digits.group() + '000000')[:6]}{rest[digits.end():]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
