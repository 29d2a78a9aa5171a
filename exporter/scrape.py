"""The scrape: every collector concurrently under its deadline, health kept, families merged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.collectors.base import COLLECT_DEADLINE, Collector, NoData, RowFamily

# Taken off Prometheus' scrape timeout so the answer arrives before Prometheus gives up
# (blackbox_exporter's --timeout-offset does the same).
MARGIN_SECONDS = 0.5
DEFAULT_DEADLINE_SECONDS = 10.0
MIN_DEADLINE_SECONDS = 0.05


@dataclass
class Health:
    """The last outcome of one collector for one target."""

    collector: str
    target: str
    up: bool = False
    last_success: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    no_data: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "collector": self.collector, "target": self.target, "up": self.up,
            "last_success": self.last_success, "last_duration_seconds": self.last_duration,
            "last_error": self.last_error, "no_data": self.no_data,
        }


@dataclass
class Outcome:
    """What one collector gave in one scrape."""

    collector: Collector
    families: list[Metric]
    up: bool
    duration: float


def deadline_from_header(value: str | None, default: float = DEFAULT_DEADLINE_SECONDS) -> float:
    """The scrape deadline from X-Prometheus-Scrape-Timeout-Seconds, less a margin."""
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        return default
    if not seconds > 0:
        return default
    return max(MIN_DEADLINE_SECONDS, seconds - MARGIN_SECONDS)


@dataclass
class Scraper:
    """Runs collectors, remembers their health, and builds one scrape's families."""

    collectors: Sequence[Collector]
    health: dict[tuple[str, str], Health] = field(default_factory=dict)
    _abandoned: set[asyncio.Future[list[Metric]]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for c in self.collectors:
            self.health[(c.kind, c.target)] = Health(c.kind, c.target)

    async def scrape(self, deadline: float) -> list[Metric]:
        """Every collector's families plus up and duration per collector and target."""
        outcomes = await asyncio.gather(*(self._run(c, deadline) for c in self.collectors))
        return merge(_health_families(outcomes), *(o.families for o in outcomes))

    async def _run(self, collector: Collector, deadline: float) -> Outcome:
        budget = max(MIN_DEADLINE_SECONDS, min(deadline, collector.timeout))
        health = self.health[(collector.kind, collector.target)]
        started = time.perf_counter()
        families: list[Metric] = []
        error: str | None = None
        health.no_data = None
        try:
            families = await self._within(collector, budget)
        except NoData as exc:
            health.no_data = str(exc)
        except TimeoutError:
            error = f"timed out after {budget:.3g}s"
        except Exception as exc:  # one failing source never breaks the scrape
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration = time.perf_counter() - started
        health.up = error is None
        health.last_duration = duration
        health.last_error = error if error is not None else health.last_error
        if error is None:
            health.last_success = time.time()
        return Outcome(collector, families, error is None, duration)


    async def _within(self, collector: Collector, budget: float) -> list[Metric]:
        """collect() within budget; a timed-out one is cancelled but not waited for, since a
        client's clean-up may itself hang (asyncpg cancelling a query on a stopped server)."""
        # The task copies the context as it is created: collect() sees its own deadline.
        token = COLLECT_DEADLINE.set(asyncio.get_running_loop().time() + budget)
        try:
            task = asyncio.ensure_future(collector.collect())
        finally:
            COLLECT_DEADLINE.reset(token)
        try:
            done, _ = await asyncio.wait({task}, timeout=budget)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(_forget(self._abandoned))
            raise TimeoutError
        return task.result()


def _forget(abandoned: set[asyncio.Future[list[Metric]]]
            ) -> Callable[[asyncio.Future[list[Metric]]], None]:
    def done(task: asyncio.Future[list[Metric]]) -> None:
        abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as lost
    return done


def _health_families(outcomes: Sequence[Outcome]) -> list[Metric]:
    up = GaugeMetricFamily("runbook_collector_up",
                           "1 if the collector's last scrape of the target succeeded",
                           labels=["collector", "target"])
    duration = GaugeMetricFamily("runbook_collector_duration_seconds",
                                 "How long the collector's scrape of the target took",
                                 labels=["collector", "target"])
    source_up: dict[str, GaugeMetricFamily] = {}
    for o in outcomes:
        c = o.collector
        up.add_metric([c.kind, c.target], 1.0 if o.up else 0.0)
        duration.add_metric([c.kind, c.target], o.duration)
        if c.up_metric is not None:
            family = source_up.get(c.up_metric)
            if family is None:
                family = GaugeMetricFamily(c.up_metric, c.up_help, labels=["target"])
                source_up[c.up_metric] = family
            family.add_metric([c.target], 1.0 if o.up else 0.0)
    return [up, duration, *source_up.values()]


def merge(*groups: Sequence[Metric]) -> list[Metric]:
    """Families of the same name joined into one, so each name is exposed once."""
    by_name: dict[str, Metric] = {}
    for group in groups:
        for family in group:
            seen = by_name.get(family.name)
            if seen is None:
                by_name[family.name] = family
            elif seen.type != family.type:
                raise ValueError(f"metric {family.name} is both {seen.type} and {family.type}")
            elif isinstance(seen, RowFamily) and isinstance(family, RowFamily) \
                    and seen.pending and family.pending \
                    and seen.labelnames == family.labelnames:
                seen.absorb(family)
            else:
                seen.samples.extend(family.samples)
    return list(by_name.values())
