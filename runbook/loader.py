"""Load a runbook file: parse, validate, cross-check, and report every error with file and line."""

from __future__ import annotations

import copy
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path as FilePath
from typing import Any

from pydantic import BaseModel, ValidationError

from runbook.actions import PLACEHOLDER
from runbook.alerting import (
    HEALTH_ALERTNAMES,
    AlertProblem,
    ResolvedAlert,
    resolve,
    slo_alertname,
)
from runbook.matchers import Matcher, matchers_for, parse_matcher
from runbook.paging import unpaged_severities
from runbook.schema import SEVERITIES, AlertSpec, RespondRule, Runbook, step_action
from runbook.selectors import app_job, app_series, exporter_job, unscoped
from runbook.signals import SIGNALS
from runbook.signals import Source as SignalSource
from runbook.slo_probes import COUNTS_PROBES, unmeasurable_slos
from runbook.yamlsource import Path, Source, SourceError, format_path, parse_yaml


class RunbookError(Exception):
    """A runbook that cannot be loaded, with every problem found."""

    def __init__(self, errors: list[SourceError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class LoadedRunbook:
    """A validated runbook with its alerts normalized and its matchers compiled."""

    file: str
    runbook: Runbook
    alerts: tuple[ResolvedAlert, ...]
    rule_matchers: tuple[tuple[Matcher, ...], ...]

    @property
    def service(self) -> str:
        return self.runbook.service

    def alert_named(self, alertname: str) -> ResolvedAlert | None:
        """The alert rendered under this alertname, if this runbook defines it."""
        return next((a for a in self.alerts if a.alertname == alertname), None)


def load_runbook(path: str | FilePath) -> LoadedRunbook:
    """Read and validate one runbook file; raise RunbookError listing every problem."""
    name = str(path)
    try:
        text = FilePath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookError([SourceError(name, 1, "", f"cannot read the file: {exc}")]) from exc
    return load_text(text, name)


def load_or_report(path: str | FilePath) -> LoadedRunbook | None:
    """Load a runbook for a command: on errors print each to stderr and return None."""
    try:
        return load_runbook(path)
    except RunbookError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return None


def load_text(text: str, file: str = "<runbook>") -> LoadedRunbook:
    """Validate runbook YAML text; raise RunbookError listing every problem."""
    source, errors = parse_yaml(text, file)
    if source is None:
        raise RunbookError(errors)
    if not isinstance(source.data, dict):
        kind = type(source.data).__name__
        reason = f"a runbook is a mapping of keys (service:, watch:, alerts:, ...), not {kind}"
        raise RunbookError([SourceError(file, 1, "", reason)])
    try:
        runbook = Runbook.model_validate(source.data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, source))
        errors.extend(_alert_errors(source))
        errors.extend(_pruned_cross_check(source, exc))
        raise RunbookError(_sorted(_unique(errors))) from None
    loaded, problems = _cross_check(runbook)
    written = [(_as_written(source.data, p), r) for p, r in problems]
    errors.extend(SourceError(file, source.line_of(p), format_path(p), r) for p, r in written)
    if errors:
        raise RunbookError(_sorted(errors))
    assert loaded is not None
    return LoadedRunbook(file, runbook, *loaded)


def _unique(errors: list[SourceError]) -> list[SourceError]:
    return list(dict.fromkeys(errors))


# Cross-check problems that a pruned entry could cause by its absence alone.
_ABSENCE = ("no alert in this runbook is named", "is not a target defined under", COUNTS_PROBES)


def _pruned_cross_check(source: Source, exc: ValidationError) -> list[SourceError]:
    """Cross-check what is well-formed, so one run shows those problems too.

    The entries with schema errors (an alert, a respond rule, a watch target...) are left out
    and the rest is validated again; if that passes, its cross-checks are reported, except
    those the left-out entries could cause just by being absent.
    """
    data = copy.deepcopy(source.data)
    pruned: set[str] = set()
    removed: dict[tuple[Any, ...], set[int]] = {}
    # Last first, so removing a list item never shifts another one still to remove.
    for loc in sorted({_entry(e["loc"]) for e in exc.errors()}, key=_loc_key, reverse=True):
        if loc is None or not _remove(data, loc):
            return []
        pruned.add(str(loc[0]))
        if isinstance(loc[-1], int):
            removed.setdefault(loc[:-1], set()).add(loc[-1])
    try:
        runbook = Runbook.model_validate(data)
    except ValidationError:
        return []
    _, problems = _cross_check(runbook)
    out = []
    for path, reason in problems:
        if pruned & {"alerts", "slos", "watch"} and any(a in reason for a in _ABSENCE):
            continue
        path = _as_written(source.data, _original(path, removed))
        out.append(SourceError(source.file, source.line_of(path), format_path(path), reason))
    return out


def _original(path: Path, removed: dict[tuple[Any, ...], set[int]]) -> Path:
    """A path in the pruned data as the same entry's path in the file."""
    out: list[str | int] = []
    for part in path:
        gone = removed.get(tuple(out), set())
        if isinstance(part, int) and gone:
            index = -1
            for _ in range(part + 1):
                index += 1
                while index in gone:
                    index += 1
            part = index
        out.append(part)
    return tuple(out)


def _entry(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The removable entry holding an error: an alert, a respond rule, a watch target..."""
    depth = 3 if loc[:1] == ("watch",) and len(loc) >= 3 and isinstance(loc[2], int) else 2
    if len(loc) < depth or loc[0] in ("service",):
        return None
    return tuple(loc[:depth])


def _loc_key(loc: tuple[Any, ...] | None) -> tuple[str, ...]:
    return tuple(f"{p:09d}" if isinstance(p, int) else str(p) for p in loc or ())


def _remove(data: Any, loc: tuple[Any, ...]) -> bool:
    parent = data
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = loc[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    if isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
        del parent[last]
        return True
    return False


def _alert_errors(source: Source) -> list[SourceError]:
    """Tier and signal problems of the alerts that are well-formed, so one run shows them all."""
    alerts = source.data.get("alerts")
    if not isinstance(alerts, dict):
        return []
    out: list[SourceError] = []
    for key, value in alerts.items():
        try:
            resolve(str(key), AlertSpec.model_validate(value))
        except ValidationError:
            continue  # already reported with the rest of the file
        except AlertProblem as exc:
            path = ("alerts", key, *exc.subpath)
            out.append(SourceError(source.file, source.line_of(path), format_path(path),
                                   exc.reason))
    return out


def _sorted(errors: list[SourceError]) -> list[SourceError]:
    return sorted(errors, key=lambda e: (e.line, e.path))


# ------------------------------------------------------------ cross-checks


Problem = tuple[Path, str]


def _cross_check(
    rb: Runbook,
) -> tuple[tuple[tuple[ResolvedAlert, ...], tuple[tuple[Matcher, ...], ...]] | None, list[Problem]]:
    problems: list[Problem] = []
    alerts: list[ResolvedAlert] = []
    for key, spec in rb.alerts.items():
        try:
            resolved = resolve(key, spec)
        except AlertProblem as exc:
            problems.append((("alerts", key, *exc.subpath), exc.reason))
            continue
        missing = _missing_source(rb, resolved)
        if missing:
            problems.append((("alerts", key), missing))
        else:
            problems.extend(_unexported_for_kinds(rb, resolved))
        alerts.append(resolved)
    seen: dict[str, str] = {}
    for alert in alerts:
        if alert.alertname in HEALTH_ALERTNAMES:
            problems.append((("alerts", alert.key), f"alertname {alert.alertname} is the "
                             "rendered rules' own alert about the exporter; choose another"))
        if alert.alertname in seen:
            problems.append((("alerts", alert.key), f"alertname {alert.alertname} is also used by "
                             f"alerts.{seen[alert.alertname]}; set alertname: to tell them apart"))
        seen[alert.alertname] = alert.key
    problems.extend(_name_collisions(rb, alerts))
    problems.extend(_reserved_labels(rb))
    problems.extend(_unscoped_selectors(rb))
    problems.extend(unmeasurable_slos(rb))
    problems.extend(unpaged_severities(rb, alerts))
    known_alertnames = set(seen) | {slo_alertname(s) for s in rb.slos} | set(HEALTH_ALERTNAMES)
    redis_names = {t.name for t in rb.watch.redis}
    pg_names = {t.name for t in rb.watch.postgres}

    rule_matchers: list[tuple[Matcher, ...]] = []
    for i, rule in enumerate(rb.respond):
        matchers = _rule_matchers(rule, ("respond", i), problems)
        rule_matchers.append(matchers)
        for m in matchers:
            if m.name == "alertname" and m.op == "=" and not rule.external \
                    and m.value not in known_alertnames:
                close = get_close_matches(m.value, known_alertnames, n=1)
                hint = f"did you mean {close[0]}?" if close else \
                    "set external: true if another rule file defines it"
                where = ("respond", i, "match", "alertname") if "alertname" in rule.match \
                    else ("respond", i, "matchers")
                problems.append((where, f"no alert in this runbook is named {m.value!r} ({hint})"))
        for section in ("do", "escalate"):
            for j, step in enumerate(getattr(rule, section)):
                step_path: Path = ("respond", i, section, j)
                problems.extend(_check_step(step, step_path, redis_names, pg_names))
    for severity in rb.page:
        if severity not in (*SEVERITIES, "default"):
            problems.append((("page", severity), "page is keyed by severity: "
                             + ", ".join((*SEVERITIES, "default"))))
    for i, window in enumerate(rb.maintenance):
        for j, text in enumerate(window.matchers):
            try:
                parse_matcher(text)
            except ValueError as exc:
                problems.append((("maintenance", i, "matchers", j), str(exc)))
    for i, fresh in enumerate(rb.watch.freshness):
        if fresh.redis and fresh.redis not in redis_names:
            problems.append((("watch", "freshness", i, "redis"), _unknown_target(
                fresh.redis, redis_names, "watch.redis")))
        if fresh.postgres and fresh.postgres not in pg_names:
            problems.append((("watch", "freshness", i, "postgres"), _unknown_target(
                fresh.postgres, pg_names, "watch.postgres")))
    problems.extend(_duplicate_names(rb))
    if problems:
        return None, problems
    return (tuple(alerts), tuple(rule_matchers)), problems


# Why a name must be unique in its list, by section (default: _WHY_UNIQUE[""]).
_WHY_UNIQUE = {
    "": "it is the target label of the entry's series, so two would give duplicate series",
    "logs": "it is the target label of the log's series and names its saved position, so two "
            "would give duplicate series and two followers would share one state file",
    "queries": "each query is the gauge runbook_pg_query_<name>, so two would give duplicate "
               "series",
}


def _duplicate_names(rb: Runbook) -> Iterator[Problem]:
    """An entry named like an earlier one of the same watch list. Every list of the watch
    section is checked, found from the schema, so a section added later is checked too; and
    each PostgreSQL target's custom queries."""
    for section, entries in rb.watch:
        if isinstance(entries, list):
            yield from _repeated_names(entries, ("watch", section), _WHY_UNIQUE.get(
                section, _WHY_UNIQUE[""]))
    for i, pg in enumerate(rb.watch.postgres):
        yield from _repeated_names(pg.queries, ("watch", "postgres", i, "queries"),
                                   _WHY_UNIQUE["queries"])
    if rb.watch.host is not None:
        first: dict[str, int] = {}
        for j, mount in enumerate(rb.watch.host.mounts):
            if mount in first:
                yield ("watch", "host", "mounts", j), (
                    f"{mount!r} is also watch.host.mounts[{first[mount]}]: each mount is "
                    "listed once (it is the mount label of its series)")
            first.setdefault(mount, j)


def _repeated_names(entries: list[Any], where: Path, why: str) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for j, entry in enumerate(entries):
        name = getattr(entry, "name", None)
        if not isinstance(name, str):
            continue
        if name in first:
            yield (*where, j, "name"), (
                f"{name!r} is also the name of {format_path((*where, first[name]))}: names "
                f"must be unique in {format_path(where)} ({why})")
        else:
            first[name] = j


def _unscoped_selectors(rb: Runbook) -> Iterator[Problem]:
    """The runbook's own PromQL must read its own exporter's series, not every service's."""
    exprs: list[tuple[Path, str]] = [(("alerts", key, "expr"), spec.expr)
                                     for key, spec in rb.alerts.items()
                                     if isinstance(spec, AlertSpec) and spec.expr]
    for i, slo in enumerate(rb.slos):
        exprs += [(("slos", i, "sli", part), text) for part, text in
                  (("errors", slo.sli.errors), ("total", slo.sli.total)) if text]
    app_names = app_series(rb)
    for path, text in exprs:
        names = unscoped(text)
        if names:
            yield path, (f"selects {', '.join(names)} without a job matcher: every service's "
                         "exporter publishes these names, so this would read (and fire on) "
                         f"other services' series too; add job=\"{exporter_job(rb)}\"")
        names = unscoped(text, app_names) if app_names else []
        if names:
            yield path, (f"selects {', '.join(names)} (watch.app) without a job matcher: "
                         "services share metric names, so this would read (and fire on) other "
                         f"services' series too; add job=\"{app_job(rb)}\"")


def _name_collisions(rb: Runbook, alerts: list[ResolvedAlert]) -> Iterator[Problem]:
    """Names two parts of one runbook would both render: one rule would read the other's."""
    # A recording rule is named svc:<signal or expr key>:<unit>: an expr alert keyed like a
    # signal another alert uses would make that alert read the expr (or the expr the signal).
    signals = {(a.recorded_as, a.unit): a.key for a in alerts if a.signal is not None}
    for alert in alerts:
        other = signals.get((alert.recorded_as, alert.unit))
        if alert.signal is None and other is not None:
            yield ("alerts", alert.key), (
                f"this expr alert records under the name of signal {alert.key} "
                f"({rb.service}:{alert.key}:{alert.unit.value}), which alerts.{other} alarms on; "
                "the two rules would read one series: rename this alert's key")
    slo_names: dict[str, int] = {}
    slo_alertnames: dict[str, str] = {}
    for i, slo in enumerate(rb.slos):
        if slo.name in slo_names:
            yield ("slos", i, "name"), (
                f"slos[{slo_names[slo.name]}] is also named {slo.name}: its burn-rate rules "
                "would be written twice; give each SLO its own name")
            continue
        slo_names[slo.name] = i
        name = slo_alertname(slo)
        if name in slo_alertnames:
            yield ("slos", i, "name"), (
                f"its alertname {name} is also the one of SLO {slo_alertnames[name]}; "
                "rename one of them")
            continue
        slo_alertnames[name] = slo.name
    for alert in alerts:
        if alert.alertname in slo_alertnames:
            written = rb.alerts[alert.key].alertname is not None
            yield ("alerts", alert.key, *(("alertname",) if written else ())), (
                f"alertname {alert.alertname} is the one SLO {slo_alertnames[alert.alertname]} "
                "alerts under (slos get <Name>ErrorBudgetBurn): "
                + ("choose another alertname" if written else "set alertname: to another name"))


# Labels runbook `labels:` may not set, and why: the rules set them, keep them per series
# (recording rules group by them) or Prometheus and Alertmanager give them a meaning. Overriding
# one would merge distinct series into one labelset, which Prometheus refuses at evaluation.
_RULE_LABELS = {
    "alertname": "Prometheus names the alert with it",
    "severity": "each tier's rule sets it (and Alertmanager routes by it)",
    "tier": "each tier's rule sets it",
    "service": "every rule sets it to the runbook's service (and Alertmanager groups by it)",
    "signal": "every rule sets it to the alert's key",
    "slo": "SLO rules tell their SLOs apart by it",
    "job": "Prometheus sets it to the scrape job",
    "instance": "Prometheus sets it to the scraped address",
    "le": "histogram buckets are told apart by it",
}


def _reserved_label(name: str) -> str | None:
    if name.startswith("__"):
        return "label names starting with __ are Prometheus' own"
    if name in _RULE_LABELS:
        return _RULE_LABELS[name]
    if any(name in s.selectable for s in SIGNALS.values()):
        return "signals keep one series per value of it (the rules group by it)"
    return None


def _reserved_labels(rb: Runbook) -> Iterator[Problem]:
    for name in rb.labels:
        why = _reserved_label(name)
        if why is not None:
            yield ("labels", name), (
                f"{name!r} is reserved: {why}; setting it on every rule would override it "
                "(pick another label name)")


# Signals the exporter measures only for some queue kinds (exporter/collectors/queues.py):
# the metric it would need, and why Celery queues have none.
_QUEUE_KINDS = ("bullmq", "celery", "rq")
_NOT_FOR_CELERY = {
    "queue_workers": ("runbook_queue_workers",
                      "Celery keeps no passive worker registry in Redis"),
    "queue_oldest_age": ("runbook_queue_oldest_job_age_seconds",
                         "the exporter reads no enqueue time from Celery's Redis lists"),
}


def _unexported_for_kinds(rb: Runbook, alert: ResolvedAlert) -> Iterator[Problem]:
    """Refuse an alert on a queue signal that none of the queues it watches can produce.

    The queues an alert watches are those of its select (target, queue, kind); a target that
    discovers queues may find any kind. The alert is refused only when every queue it can
    watch is a Celery queue: with one BullMQ or RQ queue among them it still fires for that one.
    """
    if alert.signal is None or alert.signal.name not in _NOT_FOR_CELERY:
        return
    select = alert.select
    kinds: set[str] = set()
    for target in rb.watch.redis:
        if "target" in select and target.name != select["target"]:
            continue
        for kind in _QUEUE_KINDS:
            names: list[str] = getattr(target.queues, kind)
            if target.queues.discover or any(select.get("queue", n) == n for n in names):
                kinds.add(kind)
    if "kind" in select:
        kinds &= {select["kind"]}
    if kinds != {"celery"} and select.get("kind") != "celery":
        return
    where: Path = ("alerts", alert.key, "select", "kind") if select.get("kind") == "celery" \
        else ("alerts", alert.key)
    metric, why = _NOT_FOR_CELERY[alert.signal.name]
    yield where, (
        f"{alert.signal.name} can never fire here: every queue this alert watches is a Celery "
        f"queue, and {metric} is not exported for Celery queues ({why}); it is exported for "
        "BullMQ and RQ queues only. For Celery, have the workers write a heartbeat and alert on "
        "its staleness (a watch.freshness check and the staleness signal)")


def _rule_matchers(rule: RespondRule, path: Path, problems: list[Problem]) -> tuple[Matcher, ...]:
    out: list[Matcher] = []
    for j, text in enumerate(rule.matchers):
        try:
            out.append(parse_matcher(text))
        except ValueError as exc:
            problems.append(((*path, "matchers", j), str(exc)))
    return (*matchers_for(rule.match, []), *out)


def _unknown_target(name: str, known: set[str], section: str) -> str:
    close = get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{name!r} is not a target defined under {section}{hint}"


def _check_step(step: BaseModel, path: Path, redis: set[str], pg: set[str]) -> Iterator[Problem]:
    name, params = step_action(step)
    for field_name, known, section in (("redis", redis, "watch.redis"),
                                       ("broker", redis, "watch.redis"),
                                       ("postgres", pg, "watch.postgres")):
        value = getattr(params, field_name, None)
        if isinstance(value, str) and value not in known:
            yield (*path, name, field_name), _unknown_target(value, known, section)
    for arg_index, arg in enumerate(getattr(params, "argv", [])):
        if "{{" in arg and not PLACEHOLDER.search(arg):
            yield (*path, name, "argv", arg_index), (
                "a placeholder is written {{ labels.NAME }}")


def _missing_source(rb: Runbook, alert: ResolvedAlert) -> str | None:
    if alert.signal is None:
        return None
    w = rb.watch
    present = {
        SignalSource.HOST: w.host is not None,
        SignalSource.HTTP: bool(w.http),
        SignalSource.APP: w.app is not None or bool(w.http),
        SignalSource.REDIS: bool(w.redis),
        SignalSource.QUEUES: any(t.queues.bullmq or t.queues.celery or t.queues.rq
                                 or t.queues.discover for t in w.redis),
        SignalSource.POSTGRES: bool(w.postgres),
        SignalSource.LOGS: bool(w.logs),
        SignalSource.FRESHNESS: bool(w.freshness),
    }[alert.signal.source]
    if present:
        return None
    needs = {
        SignalSource.HOST: "watch.host",
        SignalSource.HTTP: "watch.http probes",
        SignalSource.APP: "watch.app metrics or watch.http probes",
        SignalSource.REDIS: "a watch.redis target",
        SignalSource.QUEUES: "queues under a watch.redis target",
        SignalSource.POSTGRES: "a watch.postgres target",
        SignalSource.LOGS: "watch.logs",
        SignalSource.FRESHNESS: "watch.freshness checks",
    }[alert.signal.source]
    return f"signal {alert.signal.name} is measured from {needs}, which this runbook lacks"


# ------------------------------------------------------------ pydantic errors


def _pydantic_errors(exc: ValidationError, source: Source) -> list[SourceError]:
    out: list[SourceError] = []
    errors = exc.errors(include_url=False)
    # `routing_key: ...` written inline is one mistake: do not also report routing_key_env missing.
    inline = {(*e["loc"][:-1], f"{e['loc'][-1]}_env") for e in errors
              if e["type"] == "extra_forbidden"}
    # A value that matches no member of a union of scalars (and maybe a model) is one mistake,
    # reported once at the value: pydantic lists one error per member tried.
    at_union: dict[Path, list[tuple[Any, _Branch]]] = {}
    for err in errors:
        if err["type"] == "missing" and tuple(err["loc"]) in inline:
            continue
        data_path, fields, branches = _walk(Runbook, err["loc"])
        if not _on_written_branch(source.data, branches):
            continue
        if branches and branches[-1].path == data_path:
            at_union.setdefault(data_path, []).append((err, branches[-1]))
            continue
        out.append(_source_error(source, data_path, _reason(err, fields)))
    for data_path, tried in at_union.items():
        out.append(_source_error(source, data_path, _union_reason(tried)))
    return out


def _source_error(source: Source, data_path: Path, reason: str) -> SourceError:
    written = _as_written(source.data, data_path)
    return SourceError(source.file, source.line_of(written), format_path(written), reason)


@dataclass(frozen=True)
class _Branch:
    """A union an error location went through: where its value is and which member was tried."""

    path: Path
    member: Any
    members: tuple[Any, ...]


_MISSING = object()


def _value_at(data: Any, path: Path) -> Any:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def _on_written_branch(data: Any, branches: list[_Branch]) -> bool:
    """Whether an error belongs to a union member the value could have been written for.

    A mapping under a union of scalars and a model (a long-form tier) can only be meant as the
    model: the scalar members' errors name types the user never wrote, so they are dropped.
    """
    for branch in branches:
        if _is_model(branch.member) or not any(_is_model(m) for m in branch.members):
            continue
        if isinstance(_value_at(data, branch.path), dict):
            return False
    return True


def _union_reason(tried: list[tuple[Any, _Branch]]) -> str:
    """One reason for a value no member of a union accepted."""
    # A validator's own reason (a bad duration...) says more than the list of types.
    own = [err for err, _ in tried if err["type"] in ("value_error", "assertion_error")]
    if len(own) == 1:
        return _reason(own[0], [])
    members = tried[0][1].members
    value = tried[0][0].get("input")
    forms = " or ".join(dict.fromkeys(_describe(m) for m in members))
    return f"expected {forms}: got {value!r}"


def _describe(member: Any) -> str:
    if _is_model(member):
        return "a mapping of " + ", ".join(_keys(member))
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return names.get(typing.get_origin(member) or member, str(member))


def _as_written(data: Any, path: Path) -> Path:
    """Drop the parts a shorthand added: `page.critical[0]` for a single receiver written as a
    mapping, `exec.argv` for an argv written as a list."""
    out: list[str | int] = []
    node = data
    for part in path:
        if isinstance(part, int) and isinstance(node, dict) and part == 0 and part not in node:
            continue
        if isinstance(part, str) and isinstance(node, list):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _reason(err: Any, fields: list[str]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        close = get_close_matches(str(key), fields, n=1)
        hint = f"did you mean {close[0]}?" if close else "known keys: " + ", ".join(sorted(fields))
        secret = " (secrets are never inline: name an env var with a *_env key)" \
            if f"{key}_env" in fields else ""
        return f"unknown key {key!r} ({hint}){secret}"
    if kind == "missing":
        return "required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        from runbook.actions import ACTIONS

        tag = err.get("ctx", {}).get("tag")
        if tag is None:
            return f"an action is a mapping with one key naming it (e.g. exec:), got {value!r}"
        close = get_close_matches(str(tag), ACTIONS, n=1)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(ACTIONS)
        return f"unknown action {tag!r} ({hint})"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind != "value_error" and not isinstance(value, dict | list):
        msg = f"{msg}: got {value!r}"
    return msg


def _walk(model: Any, loc: tuple[Any, ...]) -> tuple[Path, list[str], list[_Branch]]:
    """Follow a pydantic error location through the schema types.

    Returns the path as written in the file (union tags dropped), the keys allowed at the
    parent of the last element (for "did you mean") and the unions passed on the way.
    """
    path: list[str | int] = []
    current: Any = model
    fields: list[str] = []
    branches: list[_Branch] = []
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, tuple):  # a union: a tag names the member, and is not in the file
            members = current
            member = next((m for m in members if isinstance(part, str)
                           and (part in _keys(m) or part == getattr(m, "__name__", None))), None)
            if member is None and not all(_is_model(m) for m in members):
                # A member pydantic tags by its schema (`function-after[...]`): a scalar one.
                member = next((m for m in members if not _is_model(m)), None)
            if member is not None:
                branches.append(_Branch(tuple(path), member, members))
                current = member
                continue
            current = next((m for m in members if _is_model(m)), None)
        if _is_model(current):
            fields = _keys(current)
            path.append(part)
            current = _field_type(current, part)
        else:
            path.append(part)
            current = _element(current)
    return tuple(path), fields, branches


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _keys(model: Any) -> list[str]:
    if not _is_model(model):
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _field_type(model: Any, key: Any) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f.annotation
    return None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            # Every member, scalars too: pydantic tags each one in an error's location.
            return tuple(members) if members else None
        return tp


def _element(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, tuple, set) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None
