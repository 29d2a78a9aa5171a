"""Generate the Markdown reference of every runbook key, action and signal from the schema."""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Discriminator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from runbook import model_base
from runbook.actions import ACTIONS
from runbook.schema import SEVERITIES, Runbook
from runbook.signals import SIGNALS
from runbook.units import format_duration

# Field types of model_base, known by the validator functions that make them.
_NAMED_TYPES: dict[Any, str] = {
    model_base._duration: "duration",
    model_base._ratio: "ratio",
    model_base._size: "size",
    model_base._env_name: "env var name",
}
_SCALARS: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", typing.Any: "any",
    type(None): "null",
}

# The name standing for a mapping's keys in key paths.
_PLACEHOLDERS = {"alerts": "<key>", "page": "<severity>"}

# What a key means, where the schema's field carries no description of its own.
NOTES: dict[str, str] = {
    "service": "the service's name: lowercase letters, digits, - and _; a label on every rule",
    "description": "what the service is, for people",
    "watch": "what the exporter collects; each target's name becomes the `target` label",
    "watch.host.mounts": "mount points whose disk usage is measured, each once",
    "watch.http[].name": "the probe's name (the `target` label), unique in the list",
    "watch.http[].url": "the URL probed with GET",
    "watch.http[].interval": "time between probes",
    "watch.http[].timeout": "a probe slower than this fails",
    "watch.http[].expect_status": "status codes counted as success",
    "watch.redis[].name": "the target's name (the `target` label; actions name it), "
                          "unique in the list",
    "watch.redis[].url_env": "env var holding the redis:// or rediss:// URL (with its password)",
    "watch.redis[].queues.bullmq": "BullMQ queue names",
    "watch.redis[].queues.bullmq_prefix": "BullMQ key prefix",
    "watch.redis[].queues.celery": "Celery queue names (Redis lists)",
    "watch.redis[].queues.rq": "RQ queue names",
    "watch.redis[].timeout": "a collection slower than this reports the target down",
    "watch.postgres[].name": "the target's name (the `target` label; actions name it), "
                             "unique in the list",
    "watch.postgres[].dsn_env": "env var holding the connection string",
    "watch.postgres[].timeout": "a collection slower than this reports the target down",
    "watch.postgres[].top_statements": "slowest statements (pg_stat_statements) exported",
    "watch.postgres[].queries[].name": "metric name: runbook_pg_query_<name>, unique in "
                                       "the target's queries",
    "watch.postgres[].queries[].sql": "the query, run on every scrape",
    "watch.postgres[].queries[].help": "the metric's help text",
    "watch.logs[].name": "the log's name (the `target` label; names its saved position), "
                         "unique in the list",
    "watch.logs[].path": "the file, followed across rotation",
    "watch.freshness[].name": "the check's name (the `target` label), unique in the list",
    "watch.freshness[].postgres": "watch.postgres target for sql",
    "alerts": "alert key -> alert; the key is the signal unless signal or expr is given",
    "alerts.<key>.alertname": "the rendered alertname instead of CamelCase(key)+High/Low",
    "alerts.<key>.for": "how long a tier's threshold must be passed before it fires",
    "alerts.<key>.summary": "the summary annotation",
    "alerts.<key>.description": "the description annotation",
    "alerts.<key>.info": "a tier: its threshold, or {threshold, for}",
    "alerts.<key>.low": "a tier: its threshold, or {threshold, for}",
    "alerts.<key>.warning": "a tier: its threshold, or {threshold, for}",
    "alerts.<key>.medium": "a tier: its threshold, or {threshold, for}",
    "alerts.<key>.high": "a tier: its threshold, or {threshold, for}",
    "alerts.<key>.critical": "a tier: its threshold, or {threshold, for}",
    **{f"alerts.<key>.{tier}.threshold": "the tier's threshold, in the signal's unit"
       for tier in SEVERITIES},
    **{f"alerts.<key>.{tier}.for": "this tier's own `for`, instead of the alert's"
       for tier in SEVERITIES},
    "slos[].name": "the SLO's name; its alerts are <Name>ErrorBudgetBurn",
    "slos[].objective": "the share of good events, e.g. 99.9%",
    "slos[].window": "the period the objective holds over",
    "slos[].sli.kind": "availability (non-error requests), latency (requests under a bound), "
                       "or custom",
    "respond": "rules tried in order; the first whose matchers all hold decides",
    "respond[].name": "the rule's name in the audit trail",
    "respond[].mode": "auto runs the actions, approve waits for a person, page only pages",
    "respond[].dry_run": "record what would run without running it",
    "respond[].cooldown": "no second run for the same alert and target within this time",
    "respond[].max_attempts": "runs per alert occurrence before escalating (each retry passes "
                              "the rails again, all but the cooldown)",
    "respond[].verify_after": "still firing this long after the actions: escalate",
    "respond[].continue": "also try the rules after this one",
    "page": "severity -> receivers; `default` for severities not listed",
    "watch.app.status_label": "label of requests_total holding the status code",
    "respond[].window_limit.count": "runs allowed per window",
    "respond[].window_limit.per": "the window",
    "page.<severity>[].pagerduty.routing_key_env": "env var holding the integration's routing key",
    "page.<severity>[].pagerduty.url": "Events API endpoint",
    "page.<severity>[].slack.webhook_url_env": "env var holding the incoming webhook URL",
    "page.<severity>[].webhook.url": "the URL the incident is POSTed to (no secret in it)",
    "page.<severity>[].webhook.url_env": "env var holding the URL, when it carries a secret",
    "page.<severity>[].webhook.token_env": "env var holding a bearer token sent with it",
    "maintenance": "windows in which automatic actions are paged instead",
    "maintenance[].weekly.days": "days the window starts on",
    "rails.rate_limit.count": "actions allowed per window",
    "rails.rate_limit.per": "the window",
    "maintenance[].name": "the window's name",
    "maintenance[].start": "a one-off window's start (ISO 8601)",
    "maintenance[].end": "a one-off window's end (ISO 8601)",
    "maintenance[].timezone": "IANA time zone of weekly times",
    "rails.dry_run": "record every automatic action without running it",
    "rails.max_concurrent": "actions running at once, at most",
    "rails.rate_limit": "automatic actions across all rules, at most",
}

# What an action parameter means, where its model carries no description.
PARAM_NOTES: dict[str, str] = {
    "argv": "the program and its arguments, run without a shell",
    "timeout": "the action fails after this long",
    "env": "names of env vars passed to the program",
    "label_patterns": "label -> regex its value must match before it fills an argument",
    "cwd": "working directory of the program",
    "url": "the URL called",
    "method": "HTTP method",
    "headers": "headers sent as written",
    "json": "JSON body sent",
    "expect_status": "status codes counted as success",
    "redis": "name of a watch.redis target",
    "queue": "queue name, or {{ labels.queue }}",
    "limit": "jobs handled at most in one run",
    "state": "the job state cleaned",
    "older_than": "only what is older than this",
    "n": "pool processes added or removed",
    "broker": "name of the watch.redis target used as the Celery broker",
    "confirm": "must be true: this drops data",
    "batch": "keys unlinked per round trip",
    "max_keys": "stop after this many keys",
    "postgres": "name of a watch.postgres target",
    "longer_than": "only sessions or queries running longer than this",
    "database": "only queries in this database",
    "include_superuser": "also end superusers' queries",
    "statement_timeout": "statement_timeout of the action's own SQL",
    "lock_timeout": "lock_timeout of the action's own SQL",
    "table": "the table, optionally schema-qualified",
    "root": "directory the action works under; nothing outside it is touched",
    "glob": "file name pattern under root",
    "mode": "delete the files or gzip them",
    "severity": "page the receivers of this severity (default: the alert's)",
    "message": "text added to the page",
}

HEADER = """\
# Runbook file reference

Generated from the schema by `python -m runbook.docs > docs/runbook-reference.md`; a test fails
when this file and the schema disagree. Unknown keys are errors.

## Units

| written as | meaning | examples |
|---|---|---|
| duration | Prometheus duration, units largest first, each once (`y w d h m s ms`); a bare \
number is seconds | `500ms`, `4s`, `5m`, `1h30m`, `30d` |
| ratio | a fraction 0..1, or a percentage | `0.7`, `70%`, `99.9%` |
| size | bytes; `kB MB GB TB` are powers of 1000, `KiB MiB GiB TiB` powers of 1024 | \
`3.4GB` = 3 400 000 000, `2.8GiB` = 3 006 477 107, `512MiB` |
| env var name | the name of an environment variable holding a secret; secrets are never \
written inline | `PAGERDUTY_ROUTING_KEY` |

An alert's thresholds are written in its signal's unit (see Signals): ratio signals take ratios,
seconds signals durations, bytes signals sizes, count signals plain numbers. Tiers are
`{severities}`, least severe first; for a signal alarming `above`, each tier's threshold must be
higher than the one before, for `below` lower. An alert is named CamelCase(key) + `High` (or `Low`
for `below`): `queue_depth` -> `QueueDepthHigh`, `cache_hit_rate` -> `CacheHitRateLow`; an SLO's
burn-rate alerts are CamelCase(name) + `ErrorBudgetBurn`.
"""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _validators(metadata: list[Any]) -> str | None:
    for item in metadata:
        if isinstance(item, BeforeValidator | AfterValidator) and item.func in _NAMED_TYPES:
            return _NAMED_TYPES[item.func]
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _model_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def describe(tp: Any, metadata: list[Any] | None = None) -> str:
    """A type as a reader of the runbook file sees it."""
    named = _validators(metadata or [])
    if named:
        return named
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        if any(isinstance(m, Discriminator) for m in args[1:]):
            return "action"
        return describe(args[0], list(args[1:]))
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = " or ".join(describe(a) for a in members)
        return f"{text} or null" if len(members) < len(args) and len(members) > 1 else text
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {describe(args[0])}"
    if origin is dict:
        return f"mapping of {describe(args[0])} to {describe(args[1])}"
    if _is_model(tp):
        return "mapping (" + ", ".join(_model_keys(tp)) + ")" \
            if len(tp.model_fields) <= 3 else "mapping"
    if tp in _SCALARS:
        return _SCALARS[tp]
    return getattr(tp, "__name__", str(tp))


def _value(value: Any, kind: str) -> str:
    if kind == "duration" and isinstance(value, int | float) and not isinstance(value, bool):
        if value and value % 86400 == 0:
            return f"{int(value // 86400)}d"
        return format_duration(value)
    if isinstance(value, BaseModel):
        parts = []
        for name, field in type(value).model_fields.items():
            item = getattr(value, name)
            if field.is_required() or item != field.get_default(call_default_factory=True):
                kind = describe(field.annotation, list(field.metadata))
                parts.append(f"{field.alias or name}: {_value(item, kind)}")
        return "{" + ", ".join(parts) + "}"
    return json.dumps(value)


def default_of(field: FieldInfo, kind: str) -> str:
    """The default as written in a runbook, or `required`."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        factory: Any = field.default_factory
        value = factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return f"`{_value(value, kind)}`"


def _nested_model(tp: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds (directly, optionally, in a list or as mapping values)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _nested_model(args[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return _nested_model(members[0]) if len(members) == 1 else None
    if origin is list and args:
        inner = _nested_model(args[0])
        return (inner[0], "[]" + inner[1]) if inner else None
    if origin is dict and len(args) == 2:
        inner = _nested_model(args[1])
        return (inner[0], ".<name>" + inner[1]) if inner else None
    if _is_model(tp):
        return tp, ""
    return None


def _union_models(tp: Any) -> list[type[BaseModel]]:
    """Models among the members of a union that also allows plain values (a tier's threshold)."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return []
    members = [a for a in typing.get_args(tp) if a is not type(None)]
    models = [m for m in members if _is_model(m)]
    return models if len(members) > 1 else []


def key_rows(model: type[BaseModel], prefix: str = "",
             notes: dict[str, str] | None = None) -> Iterator[tuple[str, str, str, str]]:
    """(key path, type, default, description) for every key under a model, depth first."""
    notes = NOTES if notes is None else notes
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        kind = describe(field.annotation, list(field.metadata))
        nested = _nested_model(field.annotation)
        description = field.description or notes.get(key, "")
        if nested and not description:
            description = (nested[0].__doc__ or "").strip().splitlines()[0]
        if kind == "list of action":
            description = (description + "; " if description else "") + \
                "each a mapping with one key naming the action (see Actions)"
        yield key, kind, default_of(field, kind), description
        if nested:
            suffix = nested[1].replace("<name>", _PLACEHOLDERS.get(key, "<name>"))
            yield from key_rows(nested[0], f"{key}{suffix}.", notes)
        for member in _union_models(field.annotation):
            yield from key_rows(member, f"{key}.", notes)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    out = [HEADER.format(severities="`, `".join(SEVERITIES))]
    out += ["## Keys", ""]
    rows = [(f"`{k}`", t, d, desc) for k, t, d, desc in key_rows(Runbook)]
    out += _table(("key", "type", "default", "description"), rows)
    out += ["", "`page` is keyed by severity (" + ", ".join(f"`{s}`" for s in SEVERITIES)
            + ", or `default`); each value is one receiver or a list of them.", ""]

    out += ["## Actions", "",
            "A step in `respond[].do` or `respond[].escalate` is a mapping with one key, the "
            "action's name, holding its parameters. `exec` also takes its argv as a plain list: "
            "`exec: [kubectl, rollout, restart, deployment/api]`. A label value fills one whole "
            "argument, written `{{ labels.NAME }}`.", ""]
    for name, params in ACTIONS.items():
        doc = (params.__doc__ or "").strip().splitlines()[0]
        out += [f"### `{name}`", "", doc, ""]
        param_rows = [(f"`{k}`", t, d, desc)
                      for k, t, d, desc in key_rows(params, notes=PARAM_NOTES)]
        if param_rows:
            out += _table(("parameter", "type", "default", "description"), param_rows)
        else:
            out += ["No parameters."]
        out += [""]

    out += ["## Signals", "",
            "An alert's key names its signal unless it sets `signal:` (or `expr:` and `unit:` "
            "for a PromQL expression of its own).", ""]
    signal_rows = [
        (f"`{s.name}`", s.unit.value, "below" if s.below else "above", s.source.value,
         ", ".join(f"`{label}`" for label in s.selectable) or "-", s.help)
        for s in SIGNALS.values()
    ]
    out += _table(("signal", "unit", "alarms when", "measured from", "select by", "meaning"),
                  signal_rows)
    return "\n".join(out) + "\n"


def main() -> int:
    """Print the reference (redirect it into docs/runbook-reference.md)."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
