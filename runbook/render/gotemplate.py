"""The few Prometheus template functions the rendered annotations use, as Prometheus prints them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal

from runbook.render import RenderError

_ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def _g4(value: float) -> str:
    """Go's `%.4g`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


def humanize(value: float) -> str:
    """Prometheus' humanize: SI prefixes, four significant digits."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return _g4(value)
    prefix = ""
    if abs(value) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(value) < 1000:
                break
            prefix = p
            value /= 1000
        return _g4(value) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = p
        value *= 1000
    return _g4(value) + prefix


def humanize1024(value: float) -> str:
    """Prometheus' humanize1024: binary prefixes."""
    if abs(value) <= 1 or math.isnan(value) or math.isinf(value):
        return _g4(value)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(value) < 1024:
            break
        prefix = p
        value /= 1024
    return _g4(value) + prefix


def humanize_duration(value: float) -> str:
    """Prometheus' humanizeDuration."""
    if math.isnan(value) or math.isinf(value):
        return _g4(value)
    if value == 0:
        return _g4(value) + "s"
    if abs(value) >= 1:
        sign = "-" if value < 0 else ""
        value = abs(value)
        whole = int(value)
        seconds, minutes = whole % 60, (whole // 60) % 60
        hours, days = (whole // 3600) % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(value)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(value) >= 1:
            break
        prefix = p
        value *= 1000
    return f"{_g4(value)}{prefix}s"


def humanize_percentage(value: float) -> str:
    """Prometheus' humanizePercentage."""
    return _g4(value * 100) + "%"


def go_float(value: float) -> str:
    """A float as Go's `%v` prints it (shortest digits; exponent below 1e-4 and from 1e6)."""
    if math.isnan(value) or math.isinf(value):
        return _g4(value)
    if value == 0:
        return "0"
    number = Decimal(repr(value)).normalize()
    exponent = number.adjusted()
    if -4 <= exponent < 6:
        return format(number, "f")
    sign, digits, _ = number.as_tuple()
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


FUNCTIONS = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": humanize_percentage,
}


def expand(template: str, labels: Mapping[str, str], value: float) -> str:
    """The text Prometheus makes of an annotation, for the template forms the renderer writes."""

    def action(match: re.Match[str]) -> str:
        body = match.group(1)
        label = re.fullmatch(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", body)
        if label:
            return labels.get(label.group(1), "")
        piped = re.fullmatch(r"\$value(?:\s*\|\s*([A-Za-z0-9]+))?", body)
        if piped:
            fn = piped.group(1)
            if fn is None:
                return go_float(value)
            if fn in FUNCTIONS:
                return FUNCTIONS[fn](value)
        raise RenderError(f"cannot expand {match.group(0)!r} for the generated rule tests "
                          "(use {{ $labels.NAME }}, {{ $value }} or {{ $value | humanize... }})")

    return _ACTION.sub(action, template)
