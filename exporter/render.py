"""Render families as Prometheus text or OpenMetrics, gzipped when the client accepts it."""

from __future__ import annotations

import gzip
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Ready:
    """A prometheus_client collector handing out families built beforehand."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


def wants_openmetrics(accept: str | None) -> bool:
    """Whether the Accept header asks for OpenMetrics."""
    return bool(accept) and "application/openmetrics-text" in (accept or "")


def wants_gzip(accept_encoding: str | None) -> bool:
    """Whether Accept-Encoding allows gzip (and does not refuse it with q=0)."""
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else ""
            try:
                return not q or float(q) > 0
            except ValueError:
                return True
    return False


def render(families: Sequence[Metric], openmetrics_format: bool) -> tuple[bytes, str]:
    """The body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Ready(families))  # type: ignore[arg-type]
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return body, openmetrics.CONTENT_TYPE_LATEST
    return generate_latest(registry), TEXT_TYPE


def compress(body: bytes) -> bytes:
    """gzip at a level that is quick for scrape-sized bodies."""
    return gzip.compress(body, compresslevel=5)
