"""HTTP health probes, each on its own interval in a background task."""

from __future__ import annotations

import asyncio
import json
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.core import HistogramMetricFamily, Metric

from exporter.collectors.base import BackgroundTask, Collector, counter, gauge

# Prometheus client defaults; the runbook's latency thresholds are added to them exactly.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0)


def buckets_with(thresholds: Sequence[float]) -> tuple[float, ...]:
    """The default buckets plus every threshold, sorted, without duplicates."""
    return tuple(sorted({*DEFAULT_BUCKETS, *(float(t) for t in thresholds if t > 0)}))


@dataclass
class ProbeState:
    """What one probe has seen so far."""

    buckets: tuple[float, ...]
    up: float = 0.0
    status: float = 0.0
    consecutive_failures: int = 0
    success: int = 0
    failure: int = 0
    last_error: str | None = None
    bucket_counts: list[int] = field(default_factory=list)
    duration_sum: float = 0.0

    def __post_init__(self) -> None:
        self.bucket_counts = [0] * (len(self.buckets) + 1)

    def observe(self, seconds: float) -> None:
        self.bucket_counts[bisect_left(self.buckets, seconds)] += 1
        self.duration_sum += seconds


# What a probe or a freshness check reads of a body at most: health and heartbeat answers are
# small, and a runaway endpoint must not make the exporter buffer hundreds of megabytes.
MAX_BODY = 1 << 20
_CHUNK = 64 << 10


class BodyTooLarge(ValueError):
    """The body is over MAX_BODY; the rest of it was not read."""


async def read_capped(response: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    """The body (decompressed, as aiohttp hands it out), or BodyTooLarge once it passes `limit`.

    The connection is closed rather than drained then, so the rest is never buffered.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise BodyTooLarge(f"body of {declared} bytes is over the {_size(limit)} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            raise BodyTooLarge(f"body is over the {_size(limit)} limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def json_equal(got: Any, want: Any) -> bool:
    """Whether two parsed JSON values are the same JSON value.

    Stricter than Python's ==, for which True == 1 and 0 == False: a bool equals only a bool.
    Numbers compare by value, so 1 and 1.0 are equal: JSON has one number type, and how a
    service happens to write a number is not part of its health. Lists compare item by item,
    objects key by key (exactly; only the top of expect_json is a subset, see json_holds).
    """
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(want, bool) and isinstance(got, bool) and got == want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and got == want
    if isinstance(want, str):
        return isinstance(got, str) and got == want
    if want is None:
        return got is None
    if isinstance(want, list):
        return (isinstance(got, list) and len(got) == len(want)
                and all(json_equal(g, w) for g, w in zip(got, want, strict=True)))
    if isinstance(want, dict):
        return (isinstance(got, dict) and got.keys() == want.keys()
                and all(json_equal(got[k], w) for k, w in want.items()))
    return False


def json_holds(body: Any, expected: dict[str, Any]) -> bool:
    """Whether the JSON body holds every expected field (nested dicts compared as subsets,
    other values with json_equal)."""
    if not isinstance(body, dict):
        return False
    for key, want in expected.items():
        if key not in body:
            return False
        got = body[key]
        if isinstance(want, dict):
            if not json_holds(got, want):
                return False
        elif not json_equal(got, want):
            return False
    return True


class HttpProbeCollector(Collector):
    """One health endpoint: probed in the background, reported from memory at scrape time."""

    kind = "http"

    def __init__(self, target: str, url: str, *, session: aiohttp.ClientSession,
                 interval: float = 15.0, timeout: float = 5.0,
                 expect_status: Sequence[int] = (200,), expect_json: dict[str, Any] | None = None,
                 buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        super().__init__(target, 1.0)
        self.url = url
        self.session = session
        self.interval = interval
        self.probe_timeout = timeout
        self.expect_status = tuple(expect_status)
        self.expect_json = expect_json
        self.state = ProbeState(buckets)
        self._background = BackgroundTask()

    async def start(self) -> None:
        self._background.start(self._loop(), f"probe-{self.target}")

    async def close(self) -> None:
        await self._background.stop()

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            await self.probe_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def probe_once(self) -> None:
        """Probe the endpoint once and record the outcome."""
        s = self.state
        started = time.perf_counter()
        status = 0
        error: str | None = None
        try:
            # The probe's own timeout for the request, not the shared session's defaults
            # (which would cut a longer one short and be reported as this one).
            async with asyncio.timeout(self.probe_timeout), self.session.get(
                    self.url, allow_redirects=True,
                    timeout=aiohttp.ClientTimeout(total=self.probe_timeout)) as response:
                status = response.status
                if status not in self.expect_status:
                    error = f"status {status}, expected {list(self.expect_status)}"
                elif self.expect_json is not None:
                    body = json.loads(await read_capped(response))
                    if not json_holds(body, self.expect_json):
                        error = f"JSON body does not hold {self.expect_json}"
        except TimeoutError:
            error = f"timed out after {self.probe_timeout:g}s"
        except Exception as exc:
            # Any error is a failed probe, not only the expected ones (ClientError, OSError, a
            # bad body's ValueError): e.g. RecursionError from a deeply nested JSON body would
            # otherwise end the probe loop, and runbook_probe_up would keep its last value.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        elapsed = time.perf_counter() - started
        s.observe(elapsed)
        s.status = float(status)
        s.last_error = error
        if error is None:
            s.up, s.consecutive_failures = 1.0, 0
            s.success += 1
        else:
            s.up = 0.0
            s.consecutive_failures += 1
            s.failure += 1

    def detail(self) -> dict[str, object]:
        s = self.state
        return {"probe_up": bool(s.up), "status_code": int(s.status),
                "consecutive_failures": s.consecutive_failures, "probe_error": s.last_error}

    async def collect(self) -> list[Metric]:
        self._background.check()  # never report a dead loop's last probe as current
        s, t = self.state, self.target
        up = gauge("runbook_probe_up", "1 if the last probe met its expectations", ("target",))
        up.add_metric([t], s.up)
        status = gauge("runbook_probe_status_code", "HTTP status of the last probe (0: none)",
                       ("target",))
        status.add_metric([t], s.status)
        failures = gauge("runbook_probe_consecutive_failures",
                         "Probes failed in a row", ("target",))
        failures.add_metric([t], float(s.consecutive_failures))
        total = counter("runbook_probe_requests", "Probes made, by result", ("target", "result"))
        total.add_metric([t, "success"], float(s.success))
        total.add_metric([t, "failure"], float(s.failure))
        histogram = HistogramMetricFamily("runbook_probe_duration_seconds",
                                          "Probe latency", labels=["target"])
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*s.buckets, float("inf")), s.bucket_counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else _le(bound), float(running)))
        histogram.add_metric([t], cumulative, s.duration_sum)
        return [up, status, failures, total, histogram]


def _le(bound: float) -> str:
    # Prometheus' own formatting of le: shortest float repr, so 0.3 stays "0.3".
    return repr(bound)
