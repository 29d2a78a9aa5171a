"""Durations of the rendered configs, optionally shrunk for fast test loops."""

from __future__ import annotations

import math
from dataclasses import dataclass

from runbook.units import format_duration

RATE_WINDOW = 300.0  # the contract's [5m] for rate(), increase() and ratios over a window
SCRAPE_INTERVAL = 15.0


@dataclass(frozen=True)
class Timing:
    """Every duration the renderers write, scaled by `scale` (1 = as the runbook says)."""

    scale: float = 1.0

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0

    @property
    def interval(self) -> float:
        """Scrape and rule evaluation interval."""
        return SCRAPE_INTERVAL if not self.scaled else max(1.0, _ms(SCRAPE_INTERVAL * self.scale))

    @property
    def test_interval(self) -> float:
        """Sample and evaluation step of the generated promtool tests."""
        return 60.0 if not self.scaled else self.interval

    def window(self, seconds: float = RATE_WINDOW) -> float:
        """A range-vector window: scaled, at least four intervals, a whole number of them."""
        if not self.scaled:
            return seconds
        step = self.interval
        return max(4, math.ceil(_ms(seconds * self.scale) / step)) * step

    def hold(self, seconds: float) -> float:
        """An alert's `for`."""
        return _ms(seconds * self.scale)

    def group_wait(self) -> float:
        return 30.0 if not self.scaled else max(1.0, _ms(30.0 * self.scale))

    def group_interval(self) -> float:
        return 300.0 if not self.scaled else max(2.0, _ms(300.0 * self.scale))

    def repeat_interval(self) -> float:
        return 4 * 3600.0 if not self.scaled else max(60.0, _ms(4 * 3600.0 * self.scale))


def _ms(seconds: float) -> float:
    return round(seconds, 3)


def dur(seconds: float) -> str:
    """A Prometheus duration string."""
    return format_duration(round(seconds, 3))
