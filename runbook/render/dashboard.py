"""grafana/<service>.json from Grafana's typed foundation SDK: alerts, queues, SLOs, collectors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard

from runbook.alerting import ResolvedAlert
from runbook.commands.show import format_threshold
from runbook.loader import LoadedRunbook
from runbook.render import expressions as ex
from runbook.render.rules import tier_rules
from runbook.render.timing import Timing, dur
from runbook.schema import Slo
from runbook.signals import Unit

WIDTH = 24
PANEL_W = 12
PANEL_H = 8
DATASOURCE = dashboard.DataSourceRef(type_val="prometheus", uid="${datasource}")
COLORS = {"info": "blue", "low": "blue", "warning": "yellow", "medium": "orange",
          "high": "red", "critical": "dark-red"}
UNITS = {Unit.RATIO: "percentunit", Unit.SECONDS: "s", Unit.COUNT: "short", Unit.BYTES: "bytes"}


@dataclass
class _Layout:
    """Places panels left to right, two to a row, rows below each other: no overlaps."""

    y: int = 0
    x: int = 0
    next_id: int = 1
    rows: list[str] = field(default_factory=list)

    def row(self, title: str) -> dash_b.Row:
        if self.x:
            self.y += PANEL_H
            self.x = 0
        row = dash_b.Row(title).id(self._id()).grid_pos(
            dashboard.GridPos(h=1, w=WIDTH, x=0, y=self.y))
        self.y += 1
        return row

    def place(self, w: int = PANEL_W, h: int = PANEL_H) -> tuple[int, dashboard.GridPos]:
        if self.x + w > WIDTH:
            self.y += h
            self.x = 0
        pos = dashboard.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        return self._id(), pos

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _query(expr: str, legend: str, ref: str = "A") -> prom_b.Dataquery:
    return prom_b.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _legend(labels: tuple[str, ...] | list[str]) -> str:
    return " ".join(f"{{{{{label}}}}}" for label in labels) or "value"


def _thresholds(steps: list[tuple[float | None, str]]) -> dash_b.ThresholdsConfig:
    return dash_b.ThresholdsConfig().mode(dashboard.ThresholdsMode.ABSOLUTE).steps(
        [dashboard.Threshold(value=v, color=c) for v, c in steps])


def alert_steps(alert: ResolvedAlert) -> list[tuple[float | None, str]]:
    """Threshold steps: green inside every tier, each tier's color from its threshold on."""
    if not alert.below:
        return [(None, "green"), *((t.threshold, COLORS.get(t.severity, "red"))
                                   for t in alert.tiers)]
    # Grafana colors a step from its value upwards: for `below` the worst tier is the base.
    tiers = list(reversed(alert.tiers))
    colors = [COLORS.get(t.severity, "red") for t in tiers]
    return [(None, colors[0]), *((t.threshold, c) for t, c in
                                 zip(tiers, [*colors[1:], "green"], strict=True))]


def _timeseries(layout: _Layout, title: str, description: str, unit: str,
                queries: list[prom_b.Dataquery],
                steps: list[tuple[float | None, str]] | None = None) -> ts_b.Panel:
    panel_id, pos = layout.place()
    panel = ts_b.Panel().id(panel_id).title(title).description(description).grid_pos(pos) \
        .datasource(DATASOURCE).unit(unit)
    for query in queries:
        panel = panel.with_target(query)
    if steps is not None:
        panel = panel.thresholds(_thresholds(steps)).thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE_AND_AREA))
    return panel


def build_dashboard(loaded: LoadedRunbook, timing: Timing) -> dashboard.Dashboard:
    """The dashboard model of one runbook."""
    rb = loaded.runbook
    layout = _Layout()
    board = dash_b.Dashboard(f"{rb.service} runbook").uid(f"runbook-{rb.service}"[:40]) \
        .description(rb.description or f"Signals, thresholds and SLOs of {rb.service}") \
        .tags(["runbook-autopilot", rb.service]).time("now-6h", "now").refresh("1m") \
        .timezone("browser").with_variable(
            dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    rules = tier_rules(loaded, timing)
    if loaded.alerts:
        board = board.with_row(layout.row("Alerts"))
    for alert in loaded.alerts:
        query = next(r.query for r in rules if r.alert is alert)
        op = "<" if alert.below else ">"
        threshold_text = ", ".join(
            f"{t.severity} {op} {format_threshold(t.threshold, alert.unit)}" for t in alert.tiers)
        what = alert.signal.help if alert.signal else alert.key
        board = board.with_panel(_timeseries(
            layout, f"{alert.alertname} ({alert.key})", f"{what}. Tiers: {threshold_text}.",
            UNITS[alert.unit],
            [_query(ex.selector(query.record, alert.select), _legend(query.by))],
            alert_steps(alert)))
    queues = [(t.name, kind, q) for t in rb.watch.redis for kind in ("bullmq", "celery", "rq")
              for q in getattr(t.queues, kind)]
    if queues:
        board = board.with_row(layout.row("Queues"))
    for target, kind, queue in queues:
        sel = {"target": target, "kind": kind, "queue": queue}
        jobs = ex.exporter_selector(rb, "runbook_queue_jobs", sel)
        depth = ex.exporter_selector(rb, "runbook_queue_depth", sel)
        board = board.with_panel(_timeseries(
            layout, f"{kind} queue {queue} on {target}", "jobs per state, and waiting jobs",
            "short",
            [_query(f"sum by (state) ({jobs})", "{{state}}"),
             _query(f"sum({depth})", "waiting", "B")]))
    if rb.slos:
        board = board.with_row(layout.row("SLOs"))
    for slo in rb.slos:
        board = _slo_panels(board, layout, loaded, slo, timing)
    board = board.with_row(layout.row("Collectors"))
    board = board.with_panel(_timeseries(
        layout, "Collectors up", "1 when the last scrape of a collector and target worked",
        "short", [_query(ex.exporter_selector(rb, "runbook_collector_up"),
                         "{{collector}} {{target}}")]))
    board = board.with_panel(_timeseries(
        layout, "Collector duration", "seconds each collector took in the last scrape", "s",
        [_query(ex.exporter_selector(rb, "runbook_collector_duration_seconds"),
                "{{collector}} {{target}}")]))
    if rb.watch.logs:
        board = board.with_panel(_timeseries(
            layout, "Matching log lines", "lines per second matching each pattern", "short",
            [_query("sum by (target, pattern) (rate("
                    f"{ex.exporter_selector(rb, 'runbook_log_lines_total')}[$__rate_interval]))",
                    "{{target}} {{pattern}}")]))
    if rb.watch.http:
        board = board.with_panel(_timeseries(
            layout, "Probe results", "health checks per second by result", "reqps",
            [_query("sum by (target, result) (rate("
                    f"{ex.exporter_selector(rb, ex.PROBE_REQUESTS)}[$__rate_interval]))",
                    "{{target}} {{result}}")]))
    return board.build()


def slo_steps(budget: float) -> list[tuple[float | None, str]]:
    """Burn-rate lines: each factor of the budget the burn-rate alerts use."""
    steps: list[tuple[float | None, str]] = [(None, "green")]
    factors = sorted((factor, severity) for severity, _, pairs in ex.BURN_RATES
                     for _, _, factor in pairs)
    steps.extend((round(factor * budget, 12), COLORS[severity]) for factor, severity in factors)
    return steps


def _slo_panels(board: dash_b.Dashboard, layout: _Layout, loaded: LoadedRunbook, slo: Slo,
                timing: Timing) -> dash_b.Dashboard:
    rb = loaded.runbook
    budget = 1 - slo.objective
    sel = {"slo": slo.name}
    queries = [_query(ex.selector(ex.slo_record(rb.service, slo, w, timing), sel), name, ref)
               for w, name, ref in ((3600.0, "1h", "A"), (6 * 3600.0, "6h", "B"))]
    board = board.with_panel(_timeseries(
        layout, f"SLO {slo.name}: error ratio",
        f"bad events over all events; objective {slo.objective * 100:g}%; lines at 1x, 3x, 6x "
        "and 14.4x the error budget (the burn-rate alerts)", "percentunit", queries,
        slo_steps(budget)))
    short = ex.selector(ex.slo_record(rb.service, slo, 300.0, timing), sel)
    remaining = f"1 - avg_over_time({short}[{dur(slo.window)}]) / {ex.number(round(budget, 12))}"
    panel_id, pos = layout.place()
    return board.with_panel(
        stat_b.Panel().id(panel_id).title(f"SLO {slo.name}: error budget left")
        .description(f"share of the {dur(slo.window)} error budget not yet spent")
        .grid_pos(pos).datasource(DATASOURCE).unit("percentunit")
        .with_target(_query(remaining, "budget left"))
        .thresholds(_thresholds([(None, "red"), (0.25, "orange"), (0.5, "green")])))


def dashboard_json(loaded: LoadedRunbook, timing: Timing) -> dict[str, Any]:
    """The dashboard as plain JSON data."""
    data: dict[str, Any] = json.loads(json.dumps(build_dashboard(loaded, timing), cls=JSONEncoder))
    return data


def render_dashboard(loaded: LoadedRunbook, timing: Timing) -> str:
    """The text of grafana/<service>.json."""
    return json.dumps(dashboard_json(loaded, timing), indent=2, sort_keys=True) + "\n"
