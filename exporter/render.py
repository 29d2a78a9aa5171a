"""Render families as Prometheus text or OpenMetrics, gzipped when the client accepts it."""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.collectors.base import RowFamily

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Ready:
    """A prometheus_client collector handing out families built beforehand."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


def _q(value: str) -> float | None:
    """A q value (0 to 1), None when it is not one: such an entry is ignored."""
    try:
        q = float(value)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None  # also False for NaN


def _entries(header: str) -> list[tuple[str, dict[str, str], float]]:
    """An Accept or Accept-Encoding header as (lower-cased name, parameters, q) entries."""
    entries = []
    for part in header.split(","):
        name, *params = part.split(";")
        name = name.strip().lower()
        if not name:
            continue
        parsed: dict[str, str] = {}
        for param in params:
            key, _, val = param.partition("=")
            parsed[key.strip().lower()] = val.strip().strip('"')
        q = _q(parsed.pop("q")) if "q" in parsed else 1.0
        if q is not None:
            entries.append((name, parsed, q))
    return entries


# Per format we serve: its media type and its version, which an Accept range can name. Our
# OpenMetrics is 1.0.0 whatever version a range names (0.0.1 in what Prometheus sends): that
# is prometheus_client's choose_encoder, and Prometheus parses 0.0.1 and 1.0.0 alike.
_OPENMETRICS = ("application/openmetrics-text", "1.0.0")
_TEXT = ("text/plain", "0.0.4")


def _accepts(entries: list[tuple[str, dict[str, str], float]], served: tuple[str, str],
             ) -> tuple[float, int]:
    """The q the header gives a format we serve and how specific the range giving it is.

    The most specific matching range decides (RFC 9110 12.5.1): the type with our version,
    then the type with any or no version, then `type/*`, then `*/*`; equal ones take the
    highest q.
    """
    media, version = served
    group = media.partition("/")[0] + "/*"
    best, rank = 0.0, 0
    for name, params, q in entries:
        if name == media:
            here = 4 if params.get("version") == version else 3
        elif name == group:
            here = 2
        elif name == "*/*":
            here = 1
        else:
            continue
        if here > rank or (here == rank and q > best):
            best, rank = q, here
    return best, rank


@functools.lru_cache(maxsize=64)
def wants_openmetrics(accept: str | None) -> bool:
    """Whether to answer OpenMetrics rather than text, as the Accept header prefers.

    The higher q wins; q=0 refuses. On a tie OpenMetrics wins only when named outright (what
    prometheus_client does whenever it is named), so `*/*` and `text/*` get text; so does a
    header that accepts neither. Cached: Prometheus sends the same header every scrape.
    """
    if not accept:
        return False
    entries = _entries(accept)
    om_q, om_rank = _accepts(entries, _OPENMETRICS)
    text_q, _ = _accepts(entries, _TEXT)
    if om_q <= 0.0:
        return False
    return om_q > text_q or (om_q == text_q and om_rank >= 3)


@functools.lru_cache(maxsize=64)
def wants_gzip(accept_encoding: str | None) -> bool:
    """Whether Accept-Encoding allows gzip: an explicit `gzip` (or `x-gzip`) entry decides,
    else `*`; q=0 refuses. Cached like wants_openmetrics."""
    explicit: float | None = None
    wildcard: float | None = None
    for name, _, q in _entries(accept_encoding or ""):
        if name in ("gzip", "x-gzip"):
            explicit = q if explicit is None else max(explicit, q)
        elif name == "*":
            wildcard = q if wildcard is None else max(wildcard, q)
    chosen = explicit if explicit is not None else wildcard
    return chosen is not None and chosen > 0.0


def render(families: Sequence[Metric], openmetrics_format: bool) -> tuple[bytes, str]:
    """The body and its content type."""
    if openmetrics_format:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Ready(families))  # type: ignore[arg-type]
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return body, openmetrics.CONTENT_TYPE_LATEST
    return render_text(families), TEXT_TYPE


def render_prometheus_client(families: Sequence[Metric]) -> bytes:
    """The text format as prometheus_client writes it (the reference render_text matches)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Ready(families))  # type: ignore[arg-type]
    return generate_latest(registry)


_SUFFIX = {"counter": "_total", "info": "_info"}
# Most samples of a big scrape are empty queues' zeros and flags.
_VALUE_TEXT = {0.0: "0.0\n", 1.0: "1.0\n"}
_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def _special(v: float) -> str:
    if v != v:
        return "NaN"
    return "+Inf" if v > 0 else "-Inf"


def _label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _rows(family: RowFamily) -> bytes:
    memo = family.memo
    last = memo.whole
    if last is not None and last[0] == family.rows and last[1] == family.groups:
        return last[2]
    out: list[str] = []
    _render_rows(family, out.append)
    memo.whole = (family.rows, family.groups, "".join(out).encode())
    return memo.whole[2]


def _render_rows(family: RowFamily, append: Callable[[str], None]) -> None:
    inner = ",".join(f'{k}="%s"' for k in family.labelnames)
    template = f"{family.name}{{{inner}}} " if inner else f"{family.name} "
    heads, groups = family.memo.heads, family.memo.groups

    def line(values: tuple[str, ...], v: float) -> str:
        head = heads.get(values)
        if head is None:
            head = heads[values] = template % tuple(_label_value(x) for x in values)
        text = _VALUE_TEXT.get(v)
        if text is None:
            text = repr(v) + "\n" if v - v == 0 else _special(v) + "\n"
        return head + text

    for values, v in family.rows:
        append(line(values, v))
    for key, rows in family.groups:
        seen = groups.get(key)
        if seen is None or seen[0] != rows:
            seen = groups[key] = (rows, "".join([line(values, v) for values, v in rows]))
        append(seen[1])


def render_text(families: Sequence[Metric]) -> bytes:
    """The Prometheus text format (0.0.4), written directly: generate_latest costs several
    times more on scrapes of thousands of queue samples."""
    # Bytes, family by family: a big scrape's text is mostly reused, and one join of bytes
    # costs far less than joining a megabyte of str and then encoding it.
    parts: list[bytes] = []
    for family in families:
        name = family.name + _SUFFIX.get(family.type, "")
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        parts.append(f"# HELP {name} {doc}\n# TYPE {name} "
                     f"{_TYPE.get(family.type, family.type)}\n".encode())
        if isinstance(family, RowFamily) and family.pending:
            parts.append(_rows(family))
            continue
        out: list[str] = []
        append = out.append
        samples = family.samples
        raw = "".join(v for sample in samples for v in sample.labels.values())
        escape = "\\" in raw or '"' in raw or "\n" in raw
        keys: tuple[str, ...] = ()
        template = ""
        for sample in samples:
            labels = sample.labels
            v = float(sample.value)
            text = repr(v) if v - v == 0 else _special(v)
            if not labels:
                append(f"{sample.name} {text}\n")
                continue
            values = [_label_value(x) for x in labels.values()] if escape else labels.values()
            if tuple(labels) != keys:
                keys = tuple(labels)
                template = "{}{{" + ",".join(f'{k}="{{}}"' for k in keys) + "}} "
            append(template.format(sample.name, *values) + text + "\n")
        parts.append("".join(out).encode())
    return b"".join(parts)


def compress(body: bytes) -> bytes:
    """gzip at a level that is quick for scrape-sized bodies."""
    return gzip.compress(body, compresslevel=5)
