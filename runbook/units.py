"""Exact parsing of the units a runbook is written in: durations, ratios, sizes, counts."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# Prometheus duration units, largest first as Prometheus requires them in order.
_DURATION_UNITS: dict[str, Decimal] = {
    "y": Decimal(365 * 24 * 3600),
    "w": Decimal(7 * 24 * 3600),
    "d": Decimal(24 * 3600),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION_ORDER = ["y", "w", "d", "h", "m", "s", "ms"]
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")

# Decimal (SI) sizes are powers of 1000, binary (IEC) sizes powers of 1024: 3.4GB != 3.4GiB.
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class UnitError(ValueError):
    """A value that is not written in the unit its key expects."""


def _finite(value: float, what: str, example: str) -> None:
    """Refuse YAML's .inf and .nan: Prometheus durations and thresholds are finite, and the
    renderer cannot write either (a threshold of NaN never compares true)."""
    if not math.isfinite(value):
        raise UnitError(f"{value!r} is not a {what}: it must be a finite number ({example})")


def parse_duration(value: object) -> float:
    """Seconds from a Prometheus duration such as `5m`, `1h30m` or `500ms`.

    A bare number is taken as seconds. Units must come largest first, each at most once,
    as Prometheus itself requires.
    """
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration (use 30s, 5m, 1h30m)")
    if isinstance(value, int | float):
        _finite(value, "duration", "use 30s, 5m, 1h30m")
        if value < 0:
            raise UnitError(f"{value!r} is not a duration: it is negative")
        return float(value)
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a duration (use 30s, 5m, 1h30m)")
    text = value.strip()
    pos = 0
    total = Decimal(0)
    last_rank = -1
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise UnitError(f"{value!r} is not a duration (use 30s, 5m, 1h30m)")
        number, unit = match.groups()
        rank = _DURATION_ORDER.index(unit)
        if rank <= last_rank:
            raise UnitError(f"{value!r} is not a duration: units must go largest first, once each")
        last_rank = rank
        total += Decimal(number) * _DURATION_UNITS[unit]
        pos = match.end()
    if not text:
        raise UnitError("an empty string is not a duration (use 30s, 5m, 1h30m)")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for a number of seconds (`300` -> `5m`)."""
    remaining = Decimal(str(seconds))
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit in _DURATION_ORDER:
        size = _DURATION_UNITS[unit]
        count = int(remaining // size)
        if count:
            parts.append(f"{count}{unit}")
            remaining -= size * count
    if remaining:
        raise UnitError(f"{seconds} s is finer than a millisecond")
    return "".join(parts)


def parse_ratio(value: object) -> float:
    """A 0..1 ratio from `70%`, `99.9%` or `0.7`."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a ratio (use 70% or 0.7)")
    if isinstance(value, int | float):
        number = float(value)
        _finite(number, "ratio", "use 70% or 0.7")
        if not 0 <= number <= 1:
            raise UnitError(f"{value!r} is not a ratio between 0 and 1 (percent: {value}%)")
        return number
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            number = float(Decimal(match.group(1)) / 100)
            if number > 1:
                raise UnitError(f"{value!r} is over 100%")
            return number
        try:
            return parse_ratio(float(value))
        except ValueError:
            pass
    raise UnitError(f"{value!r} is not a ratio (use 70% or 0.7)")


def parse_size(value: object) -> int:
    """Bytes from `3.4GB` (decimal, powers of 1000) or `2.8GiB` (binary, powers of 1024)."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size (use 512MiB or 3.4GB)")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value!r} is not a size: it is negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = match.group(2).lower()
            if unit in _SIZE_UNITS:
                try:
                    return int(Decimal(match.group(1)) * _SIZE_UNITS[unit])
                except InvalidOperation:
                    pass
    raise UnitError(
        f"{value!r} is not a size (use 512MiB or 3.4GB; B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )


def parse_count(value: object) -> float:
    """A plain non-negative number (queue depth, connections)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnitError(f"{value!r} is not a number")
    _finite(value, "number", "e.g. 100")
    if value < 0:
        raise UnitError(f"{value!r} is negative")
    return float(value)
