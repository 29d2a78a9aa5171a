"""What every collector is: a named source for one target, collected under a deadline."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Coroutine, Hashable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample


class NoData(Exception):
    """The source answered but has nothing to give (e.g. an extension not installed)."""


COLLECT_DEADLINE: ContextVar[float | None] = ContextVar("collect_deadline", default=None)
"""The event-loop time by which the collect() running in this context must have answered; the
scrape wrapper sets it from the scrape's deadline (see Collector.deadline)."""


class Collector(abc.ABC):
    """Collects the families of one source for one target.

    `start` opens what the collector keeps (background tasks); `close` releases it. The
    wrapper in exporter.scrape applies the deadline and records up and duration, so `collect`
    just raises when something is wrong.
    """

    kind: ClassVar[str]
    # The source-specific "up" gauge (e.g. runbook_redis_up) the wrapper sets 1/0, if any.
    up_metric: ClassVar[str | None] = None
    up_help: ClassVar[str] = ""

    def __init__(self, target: str, timeout: float) -> None:
        self.target = target
        self.timeout = timeout

    async def start(self) -> None:  # noqa: B027 - most collectors keep nothing
        """Open what this collector keeps between scrapes."""

    async def close(self) -> None:  # noqa: B027 - most collectors keep nothing
        """Release what `start` opened."""

    def detail(self) -> dict[str, object]:
        """Extra facts for /health/detail (e.g. a probe's last error)."""
        return {}

    def deadline(self) -> float:
        """The event-loop time by which this collect() must answer: the one the scrape gave
        (its deadline capped by this collector's timeout), else `timeout` from now. A collector
        splitting its time (the host's disk probes) splits this, as a scrape's deadline may be
        far shorter than the collector's own timeout."""
        given = COLLECT_DEADLINE.get()
        return given if given is not None else asyncio.get_running_loop().time() + self.timeout

    @abc.abstractmethod
    async def collect(self) -> list[Metric]:
        """The families of one scrape."""


def gauge(name: str, doc: str, labels: Sequence[str] = (), unit: str = "") -> GaugeMetricFamily:
    """A gauge family with these label names."""
    return GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    """A counter family with these label names (name given with or without _total)."""
    return CounterMetricFamily(name, doc, labels=list(labels))


def one(name: str, doc: str, target: str, value: float, kind: str = "gauge") -> Metric:
    """A family holding one sample labelled with the target."""
    family: Metric = counter(name, doc, ("target",)) if kind == "counter" \
        else gauge(name, doc, ("target",))
    family.add_metric([target], value)  # type: ignore[attr-defined]
    return family


def flatten(groups: Iterable[list[Metric]]) -> list[Metric]:
    """All families of several lists, in order."""
    return [family for group in groups for family in group]


Row = tuple[tuple[str, ...], float]


@dataclass
class RenderMemo:
    """Text of series rendered in earlier scrapes, kept by a collector whose series repeat
    from one scrape to the next (the same queues, mostly the same numbers).

    `heads` maps a row's label values to its `name{labels} `; `groups` maps a group's key to
    the rows it was last rendered from and their text; `whole` is the same for the family.
    The owner drops it when its set of series changes, so it never holds series that are gone.
    """

    heads: dict[tuple[str, ...], str] = field(default_factory=dict)
    groups: dict[Hashable, tuple[tuple[Row, ...], str]] = field(default_factory=dict)
    whole: tuple[list[Row], list[tuple[Hashable, tuple[Row, ...]]], bytes] | None = None
    """The family's rows and groups at the last scrape and their text: an idle scrape (every
    number as before) is written without looking at one row."""


class RowFamily(Metric):
    """A gauge family kept as rows of label values, for collectors with thousands of samples.

    The text renderer writes the rows directly; `samples` is built only when something asks
    for it (OpenMetrics rendering, tests), so it stays a plain prometheus_client family. Rows
    come one by one (`add`) or as groups under a key (`add_group`): a group whose rows equal
    those of the last scrape is written from the memo's text without rendering it again.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 memo: RenderMemo | None = None) -> None:
        self.rows: list[Row] = []
        self.groups: list[tuple[Hashable, tuple[Row, ...]]] = []
        self._samples: list[Sample] | None = None
        super().__init__(name, documentation, "gauge")
        self.labelnames = tuple(labelnames)
        self.memo = memo if memo is not None else RenderMemo()

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            names = self.labelnames
            rows = [*self.rows, *(row for _, group in self.groups for row in group)]
            self._samples = [Sample(self.name, dict(zip(names, values, strict=True)), value)
                             for values, value in rows]
            self.rows = []
            self.groups = []
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples = list(value) if value else None

    @property
    def pending(self) -> bool:
        """Whether the rows were not turned into samples yet."""
        return self._samples is None

    def add(self, values: tuple[str, ...], value: float) -> None:
        """One sample: label values in labelnames order, and its value."""
        self.rows.append((values, value))

    def add_group(self, key: Hashable, rows: tuple[Row, ...]) -> None:
        """Several samples rendered together, remembered under `key` (e.g. one queue's states)."""
        self.groups.append((key, rows))

    def absorb(self, other: RowFamily) -> None:
        """Take the other family's rows and groups (same name and label names)."""
        self.rows.extend(other.rows)
        self.groups.extend(other.groups)


class BackgroundTask:
    """One background task owned by a collector: started with it, cancelled and awaited on close."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._task = asyncio.create_task(work, name=name)

    def check(self) -> None:
        """Raise if the task ended by itself (a bug, an error nothing caught): the collector
        reporting from what the task keeps then fails its scrape (collector up 0, the reason
        in /health/detail) instead of repeating the task's last values for ever."""
        task = self._task
        if task is None or not task.done():
            return
        if task.cancelled():
            raise RuntimeError(f"background task {task.get_name()} ended: cancelled")
        exc = task.exception()
        reason = "returned" if exc is None else f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"background task {task.get_name()} ended: {reason}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A task that ended by an error was reported by check() at scrape time; raising
            # it here would stop the exporter's shutdown from closing everything else.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
