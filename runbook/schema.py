"""The runbook file's schema: what to watch, when to alarm, how to respond, whom to page."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from runbook.actions import ACTIONS, ExecParams
from runbook.model_base import Duration, EnvName, Ratio, Size, Strict
from runbook.units import parse_duration

# Severity names a tier may use, least severe first.
SEVERITIES = ("info", "low", "warning", "medium", "high", "critical")
NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
_URL_PASSWORD = re.compile(r"^[a-z+]+://[^/@:]*:([^/@]+)@")


def _no_inline_password(url: str) -> str:
    if _URL_PASSWORD.match(url):
        raise ValueError(
            "the URL has a password written inline; put the whole URL in an env var "
            "and name it with url_env"
        )
    return url


# ---------------------------------------------------------------- watch


class HostWatch(Strict):
    """Memory, CPU and disk of the host or container the exporter runs in."""

    mounts: list[str] = Field(default_factory=lambda: ["/"])
    memory_limit: Size | None = Field(
        default=None, description="override the detected (cgroup or host) memory limit"
    )


def _http_url(url: str) -> str:
    """The URL itself when aiohttp can request it: http or https, with a host (and a port, if
    any, that is a number from 1 to 65535)."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        ok = ok and parts.port != 0  # .port raises ValueError for a port no socket can have
    except ValueError:
        ok = False
    if not ok:
        hint = f" (write http://{url})" if "://" not in url else ""
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host (and a port "
                         f"from 1 to 65535, if any){hint}")
    return url


# A probe every MIN_PROBE_INTERVAL at most: a shorter interval (0s) floods the endpoint.
MIN_PROBE_INTERVAL = 1.0
DEFAULT_PROBE_TIMEOUT = 5.0


class HttpProbe(Strict):
    """A health endpoint probed on an interval."""

    name: str = Field(pattern=NAME)
    url: str
    interval: Duration = 15.0
    timeout: Duration = DEFAULT_PROBE_TIMEOUT
    expect_status: list[int] = Field(default_factory=lambda: [200])
    expect_json: dict[str, Any] | None = Field(
        default=None, description='fields the JSON body must hold, e.g. {"status": "healthy"}'
    )

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        # Probes run one after another: one must end before the next is due, so an unwritten
        # timeout is the interval when that is shorter than the default.
        if not isinstance(data, dict) or "timeout" in data or "interval" not in data:
            return data
        try:
            interval = parse_duration(data["interval"])
        except (ValueError, TypeError):
            return data  # reported by the interval's own validation
        if MIN_PROBE_INTERVAL <= interval < DEFAULT_PROBE_TIMEOUT:
            return {**data, "timeout": data["interval"]}
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _no_inline_password(_http_url(value))

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < MIN_PROBE_INTERVAL:
            raise ValueError(f"{value:g}s is shorter than {MIN_PROBE_INTERVAL:g}s: probing that "
                             "often floods the endpoint")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            raise ValueError(f"{value:g}s leaves a probe no time: give more than 0s")
        interval = info.data.get("interval")
        if interval is not None and value > interval:
            raise ValueError(f"{value:g}s is longer than the interval ({interval:g}s): a probe "
                             "must end before the next one is due")
        return value


class Queues(Strict):
    """Queues on one Redis, by library."""

    bullmq: list[str] = Field(default_factory=list)
    bullmq_prefix: str = "bull"
    celery: list[str] = Field(
        default_factory=list,
        description="Celery queue names (Redis lists); they have no queue_workers nor "
                    "queue_oldest_age: an alert on those watching only Celery queues is refused",
    )
    rq: list[str] = Field(default_factory=list)
    discover: bool = Field(default=False, description="also find queues the libraries register")


class RedisTarget(Strict):
    """A Redis (cache, broker) with the queues it holds."""

    name: str = Field(pattern=NAME)
    url: str | None = Field(default=None, description="redis:// or rediss:// without a password")
    url_env: EnvName | None = None
    queues: Queues = Field(default_factory=Queues)
    timeout: Duration = 2.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else _no_inline_password(value)

    @model_validator(mode="after")
    def _one_url(self) -> RedisTarget:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        return self


# Label names a query's column may not take, and why: the exposition would be refused, or
# the sample would be read as something it is not.
_RESERVED_LABELS = {
    "target": "the collector adds it (the watch entry's name)",
    "le": "Prometheus uses it for histogram buckets",
    "quantile": "Prometheus uses it for summary quantiles",
}


def _query_label(name: str) -> str:
    if not re.match(LABEL_NAME, name):
        raise ValueError(f"{name!r} is not a Prometheus label name (letters, digits and _, "
                         "not starting with a digit); rename the column with AS")
    if name.startswith("__"):
        raise ValueError(f"{name!r} is reserved: label names starting with __ are "
                         "Prometheus' own; rename the column with AS")
    if name in _RESERVED_LABELS:
        raise ValueError(f"{name!r} is reserved: {_RESERVED_LABELS[name]}; rename the column "
                         "with AS")
    return name


class CustomQuery(Strict):
    """A SQL query whose rows become a labelled gauge."""

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    sql: str
    help: str = ""
    value: str = Field(description="column holding the number")
    labels: list[Annotated[str, AfterValidator(_query_label)]] = Field(
        default_factory=list,
        description="columns that become labels: Prometheus label names, not `target`, "
                    "`le`, `quantile` nor starting with `__`",
    )

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"{name!r} is listed twice (a label is one column)")
            seen.add(name)
        return value


class PostgresTarget(Strict):
    """A PostgreSQL database."""

    name: str = Field(pattern=NAME)
    dsn_env: EnvName
    long_query: Duration = Field(default=300.0, description="a query running longer is long")
    timeout: Duration = 3.0
    top_statements: int = Field(default=10, ge=0, le=100)
    queries: list[CustomQuery] = Field(default_factory=list)


# `[:alpha:]` inside a set: Python's re reads the characters [ : a l p h, the regex module
# the exporter matches with reads a POSIX class. Refused, so a pattern means one thing.
_POSIX_CLASS = re.compile(r"(?<!\\)\[:\^?[A-Za-z]+:\]")


class LogWatch(Strict):
    """A log file whose matching lines are counted."""

    name: str = Field(pattern=NAME)
    path: str
    patterns: dict[str, str] = Field(
        description="pattern name -> regular expression (Python re syntax), searched for in "
        "each line. A search giving up after 0.1 s counts as no match and in "
        "runbook_log_match_timeouts_total; of a line over 1 MiB only its first MiB is searched")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        import regex  # the exporter's engine (see exporter.collectors.logs.compile_pattern)

        for name, pattern in value.items():
            if not re.match(LABEL_NAME, name):
                raise ValueError(f"{name!r} is not a valid pattern name (letters, digits, _)")
            try:
                re.compile(pattern)
                regex.compile(pattern, flags=regex.VERSION0)
            except (re.error, regex.error) as exc:
                raise ValueError(f"{name}: {pattern!r} is not a regular expression: {exc}") from exc
            if _POSIX_CLASS.search(pattern):
                raise ValueError(f"{name}: {pattern!r} has a POSIX class such as [:alpha:], "
                                 "which Python's re does not know; write a set ([a-zA-Z], "
                                 "\\d, \\w) instead")
        return value


class FreshnessCheck(Strict):
    """Age of the last success of a cron job or heartbeat, from exactly one source."""

    name: str = Field(pattern=NAME)
    redis_key: str | None = Field(default=None, description="key holding a unix timestamp")
    redis: str | None = Field(default=None, description="watch.redis target for redis_key")
    sql: str | None = Field(default=None, description="query returning one timestamp")
    postgres: str | None = None
    file: str | None = Field(default=None, description="a file whose mtime is the last success")
    http_json: str | None = Field(default=None, description="URL returning JSON")
    field: str | None = Field(default=None, description="dotted path of the timestamp in it")

    @field_validator("http_json")
    @classmethod
    def _http_json(cls, value: str | None) -> str | None:
        return value if value is None else _http_url(value)

    @model_validator(mode="after")
    def _one_source(self) -> FreshnessCheck:
        sources = [s for s in (self.redis_key, self.sql, self.file, self.http_json) if s]
        if len(sources) != 1:
            raise ValueError("give exactly one of redis_key, sql, file, http_json")
        if self.redis_key and not self.redis:
            raise ValueError("redis_key needs redis: the watch.redis target to read it from")
        if self.sql and not self.postgres:
            raise ValueError("sql needs postgres: the watch.postgres target to run it on")
        if self.http_json and not self.field:
            raise ValueError("http_json needs field: the dotted path of the timestamp")
        return self


def _host_port(target: str) -> str:
    if not target or "/" in target or any(c.isspace() for c in target):
        raise ValueError(f"{target!r} is not HOST:PORT: a target is an address as Prometheus' "
                         "static_configs take it, without scheme or path (the path is "
                         "metrics_path)")
    return target


class AppMetrics(Strict):
    """The service's own Prometheus metrics, when it exports them."""

    job: str | None = Field(
        default=None, min_length=1,
        description="the scrape job of the service's metrics; every rule query of them matches "
        "it (default: the service name, with targets). Scraped by a prometheus-operator "
        "ServiceMonitor, the job is the Kubernetes Service's name: set it to that",
    )
    targets: list[Annotated[str, AfterValidator(_host_port)]] = Field(
        default_factory=list,
        description="HOST:PORT addresses serving the metrics; the rendered prometheus.yml "
        "scrapes them under job",
    )
    metrics_path: str = Field(default="/metrics", pattern=r"^/\S*$",
                              description="HTTP path of the metrics on each target")
    requests_total: str | None = Field(default=None, description="request counter metric")
    status_label: str = "status"
    error_status: str = Field(default="5..", description="regex of failed status values")
    latency_histogram: str | None = Field(
        default=None, description="latency histogram (base name, without _bucket)"
    )

    @model_validator(mode="after")
    def _scoped(self) -> AppMetrics:
        # Services commonly share metric names (http_requests_total): a query without a job
        # matcher sums every service's series in the Prometheus, and pages for another's errors.
        if self.job is None and not self.targets:
            raise ValueError(
                "give job (the scrape job your Prometheus already scrapes these metrics under) "
                "or targets (HOST:PORT for the rendered prometheus.yml to scrape, under a job "
                "named after the service): the rules select the metrics by that job, else they "
                "would read and fire on other services' series of the same names")
        return self


class Watch(Strict):
    """What the exporter watches."""

    host: HostWatch | None = Field(default_factory=HostWatch)
    http: list[HttpProbe] = Field(default_factory=list)
    redis: list[RedisTarget] = Field(default_factory=list)
    postgres: list[PostgresTarget] = Field(default_factory=list)
    logs: list[LogWatch] = Field(default_factory=list)
    freshness: list[FreshnessCheck] = Field(default_factory=list)
    app: AppMetrics | None = None
    exporter_job: str | None = Field(
        default=None, min_length=1,
        description="the scrape job of this runbook's exporter; every rule and dashboard "
        "query of runbook_* metrics matches it (default: runbook-<service>)",
    )


# ---------------------------------------------------------------- alerts


class TierSpec(Strict):
    """A tier written in full: its threshold and optionally its own `for`."""

    threshold: float | str
    for_: Duration | None = Field(default=None, alias="for")


TierValue = Union[float, str, TierSpec]  # noqa: UP007 - pydantic needs the Union at runtime


class AlertSpec(Strict):
    """A signal with two or three tiers, each a threshold held for a duration."""

    signal: str | None = Field(default=None, description="catalog signal; default: the key")
    expr: str | None = Field(default=None, description="a PromQL expression instead of a signal")
    unit: Literal["ratio", "seconds", "count", "bytes"] | None = Field(
        default=None, description="unit of expr's thresholds (with expr only)"
    )
    alertname: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    below: bool | None = Field(default=None, description="alarm when the value falls below")
    for_: Duration | None = Field(default=None, alias="for")
    select: dict[str, str] = Field(default_factory=dict, description="narrow to label values")
    summary: str | None = None
    description: str | None = None
    info: TierValue | None = None
    low: TierValue | None = None
    warning: TierValue | None = None
    medium: TierValue | None = None
    high: TierValue | None = None
    critical: TierValue | None = None

    def tier_values(self) -> list[tuple[str, TierValue]]:
        """The tiers written, least severe first."""
        return [(s, getattr(self, s)) for s in SEVERITIES if getattr(self, s) is not None]


class SliSpec(Strict):
    """How good and total events are counted for an SLO."""

    kind: Literal["availability", "latency", "custom"] = "availability"
    latency: Duration | None = Field(default=None, description="latency kind: the good bound")
    errors: str | None = Field(default=None, description="custom kind: PromQL rate of bad events")
    total: str | None = Field(default=None, description="custom kind: PromQL rate of all events")

    @model_validator(mode="after")
    def _complete(self) -> SliSpec:
        if self.kind == "latency" and self.latency is None:
            raise ValueError("a latency SLI needs latency: the bound a good request is under")
        if self.kind == "custom" and not (self.errors and self.total):
            raise ValueError("a custom SLI needs both errors and total")
        return self


class Slo(Strict):
    """A service level objective, alerted on by multi-window burn rates."""

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    objective: Ratio
    window: Duration = 30 * 86400.0
    sli: SliSpec = Field(default_factory=SliSpec)

    @field_validator("objective")
    @classmethod
    def _below_one(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("an objective is between 0% and 100%, exclusive (e.g. 99.9%)")
        return value


# ---------------------------------------------------------------- respond


def _step_tag(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    return None


def _exec_shorthand(value: Any) -> Any:
    return {"argv": value} if isinstance(value, list) else value


def _make_step(name: str, params: type[Strict]) -> Any:
    field_type: Any = params
    if params is ExecParams:
        field_type = Annotated[ExecParams, BeforeValidator(_exec_shorthand)]
    default: Any = Field(default_factory=params) if _all_defaults(params) else ...
    fields: dict[str, Any] = {name: (field_type, default)}
    model = create_model(f"{name.title().replace('_', '')}Step", __base__=Strict, **fields)
    return Annotated[model, Tag(name)]


def _all_defaults(model: type[Strict]) -> bool:
    return all(not f.is_required() for f in model.model_fields.values())


if TYPE_CHECKING:
    ActionStep = BaseModel
else:
    # One step model per action name, told apart by the step's single key.
    ActionStep = Annotated[
        Union[tuple(_make_step(n, p) for n, p in ACTIONS.items())],  # noqa: UP007
        Discriminator(_step_tag),
    ]


def step_action(step: BaseModel) -> tuple[str, Strict]:
    """The action name and parameters of one `do` step."""
    name = next(iter(type(step).model_fields))
    params: Strict = getattr(step, name)
    return name, params


class RateLimit(Strict):
    """At most `count` events in each `per` window."""

    count: int = Field(ge=1)
    per: Duration


class RespondRule(Strict):
    """Which alerts (label matchers) get which response, within which rails."""

    name: str | None = None
    match: dict[str, str] = Field(default_factory=dict, description="label = value")
    matchers: list[str] = Field(
        default_factory=list, description='Alertmanager matchers: queue=~"a|b", severity!="info"'
    )
    external: bool = Field(default=False, description="matches alerts not defined in this runbook")
    mode: Literal["auto", "approve", "page"] = "page"
    dry_run: bool = False
    do: list[ActionStep] = Field(default_factory=list)
    cooldown: Duration = 600.0
    max_attempts: int = Field(default=1, ge=1, le=100)
    window_limit: RateLimit | None = Field(
        default=None, description="at most this many runs of this rule per window"
    )
    verify_after: Duration | None = None
    escalate: list[ActionStep] = Field(default_factory=list)
    continue_: bool = Field(default=False, alias="continue")

    @model_validator(mode="after")
    def _has_matchers(self) -> RespondRule:
        if not self.match and not self.matchers:
            raise ValueError("a rule needs match or matchers (an empty one would match everything)")
        if self.mode != "page" and not self.do:
            raise ValueError(f"mode {self.mode} needs at least one action in do")
        return self


# ---------------------------------------------------------------- page


PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning",
                      "warning": "warning", "low": "info", "info": "info"}
"""PagerDuty knows four severities; the runbook's six map onto them (both paging paths)."""


class PagerDuty(Strict):
    """PagerDuty Events API v2."""

    routing_key_env: EnvName
    url: str = "https://events.pagerduty.com/v2/enqueue"


class Slack(Strict):
    """A Slack incoming webhook."""

    webhook_url_env: EnvName


class Webhook(Strict):
    """A generic webhook receiving the incident as JSON."""

    url: str | None = None
    url_env: EnvName | None = None
    token_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_url(self) -> Webhook:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        return self


class Receiver(Strict):
    """One paging destination."""

    pagerduty: PagerDuty | None = None
    slack: Slack | None = None
    webhook: Webhook | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Receiver:
        if sum(x is not None for x in (self.pagerduty, self.slack, self.webhook)) != 1:
            raise ValueError("a receiver is exactly one of pagerduty, slack, webhook")
        return self


def _receivers(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


# ---------------------------------------------------------------- maintenance and rails


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class Weekly(Strict):
    """A weekly recurring window."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: str = Field(description="HH:MM")
    end: str = Field(description="HH:MM; before start means the next day")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day (use HH:MM, e.g. 02:00)")
        return value


class MaintenanceWindow(Strict):
    """A time when automatic actions turn into pages."""

    name: str
    start: datetime | None = None
    end: datetime | None = None
    weekly: Weekly | None = None
    timezone: str = "UTC"
    matchers: list[str] = Field(default_factory=list, description="only alerts matching these")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a known time zone (e.g. Europe/Berlin)") from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> MaintenanceWindow:
        once = self.start is not None or self.end is not None
        if once == (self.weekly is not None):
            raise ValueError("give either start and end, or weekly")
        if once:
            if self.start is None or self.end is None:
                raise ValueError("a one-off window needs both start and end")
            if self.zoned(self.end) <= self.zoned(self.start):
                raise ValueError("end must be after start")
        return self

    def zoned(self, moment: datetime) -> datetime:
        """A one-off bound as an instant: one written without an offset is in `timezone`."""
        return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(self.timezone))


class Rails(Strict):
    """Global safety rails for automatic actions."""

    dry_run: bool = False
    max_concurrent: int = Field(default=4, ge=1, le=256)
    rate_limit: RateLimit = Field(default_factory=lambda: RateLimit(count=20, per=60.0))


# ---------------------------------------------------------------- the runbook


class Runbook(Strict):
    """A whole runbook file."""

    service: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    runbook_url: str | None = Field(default=None, description="base URL of the human runbook")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="added to every alerting rule; not a label the rules set or keep: "
                    "alertname, severity, tier, service, signal, slo, target, queue, kind, "
                    "mount, pattern, job, instance, le, nor one starting with `__`",
    )
    watch: Watch = Field(default_factory=Watch)
    alerts: dict[str, AlertSpec] = Field(default_factory=dict)
    slos: list[Slo] = Field(default_factory=list)
    respond: list[RespondRule] = Field(default_factory=list)
    page: dict[str, list[Receiver]] = Field(default_factory=dict)
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)
    rails: Rails = Field(default_factory=Rails)

    @field_validator("page", mode="before")
    @classmethod
    def _single_receiver(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _receivers(v) for k, v in value.items()}
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(LABEL_NAME, name):
                raise ValueError(f"{name!r} is not a Prometheus label name")
        return value
