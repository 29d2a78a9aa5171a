"""The remediation actions a runbook can name, with their typed parameters.

This is the one table of action names: a runbook naming anything else fails at load.
The responder's `responder/actions/` modules implement each name.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from runbook.model_base import Duration, EnvName, Strict

PLACEHOLDER = re.compile(r"\{\{\s*labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# A label value filling an argument must be one plain token: no shell or path syntax.
DEFAULT_LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@=-]{0,252}$"
FILES_MIN_TIMEOUT = 1.0
FILES_MAX_TIMEOUT = 3600.0


def _class_end(pattern: str, start: int) -> int:
    """Where a `[...]` class opened just before `start` ends: the index of its `]`, or the end
    of the pattern. Read as Redis reads it (util.c stringmatchlen): an optional `^`, then `\\x`,
    `a-z` and single characters, so a `]` right after `[` or `[^` closes it (`[^]` is any char)."""
    i = start + 1 if pattern[start:start + 1] == "^" else start
    while i < len(pattern):
        rest = len(pattern) - i
        if pattern[i] == "\\" and rest >= 2:
            i += 2
        elif pattern[i] == "]":
            return i
        elif rest >= 3 and pattern[i + 1] == "-":
            i += 3
        else:
            i += 1
    return len(pattern)  # Redis closes an unclosed class at the end


def has_literal(pattern: str) -> bool:
    """Whether a Redis glob (SCAN MATCH) holds a character matched as itself outside `*`, `?`
    and `[...]`. Without one it matches every key, or every key of some length (`?*`, `*?*`,
    `[^]*`); with one, a key lacking that character never matches."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            i = _class_end(pattern, i + 1) + 1
        elif pattern[i] in "*?":
            i += 1
        else:
            return True  # a plain character, or `\\x` (x as itself; a lone `\\` is itself too)
    return False


def _check_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    return value


class ExecParams(Strict):
    """Run a program (argv from the runbook; label values fill whole arguments only; no shell)."""

    argv: list[str] = Field(min_length=1)
    timeout: Duration = 60.0
    env: list[str] = Field(default_factory=list, description="env vars passed through")
    label_patterns: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    @field_validator("label_patterns")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            _check_pattern(pattern)
        return value

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if PLACEHOLDER.search(value[0]):
            raise ValueError("the program (argv[0]) must be written in the runbook, not a label")
        return value


class HttpParams(Strict):
    """Call an HTTP endpoint (pause/resume a queue, warm a cache, roll back)."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, EnvName] = Field(
        default_factory=dict, description="header name -> env var holding its value"
    )
    json_body: dict[str, object] | None = Field(default=None, alias="json")
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    timeout: Duration = 30.0
    label_patterns: dict[str, str] = Field(default_factory=dict)


class QueueRef(Strict):
    """A queue on a Redis target named under `watch.redis`."""

    redis: str = Field(description="name of a watch.redis target")
    queue: str = Field(description="queue name, or {{ labels.queue }}")
    timeout: Duration = 30.0


class BullmqCleanParams(QueueRef):
    """Remove BullMQ jobs in a state older than a grace period."""

    state: Literal["completed", "failed", "wait", "delayed", "paused", "prioritized"] = "completed"
    older_than: Duration = 3600.0
    limit: int = Field(default=1000, ge=1)


class BullmqRetryParams(QueueRef):
    """Move failed BullMQ jobs back to wait."""

    limit: int = Field(default=1000, ge=1)


class BullmqRemoveJobParams(QueueRef):
    """Remove one stuck BullMQ job by id."""

    job_id: str = Field(description="job id, or {{ labels.job_id }}")


class CeleryPoolParams(Strict):
    """Grow or shrink Celery worker pools through the control API."""

    broker: str = Field(description="name of a watch.redis target used as broker")
    n: int = Field(default=1, ge=1, le=64)
    destination: list[str] = Field(default_factory=list, description="worker names; all if empty")
    timeout: Duration = 10.0


class CeleryPurgeParams(Strict):
    """Purge a Celery queue (drops waiting tasks: use with care)."""

    broker: str
    queue: str
    confirm: bool = False

    @model_validator(mode="after")
    def _confirmed(self) -> CeleryPurgeParams:
        if not self.confirm:
            raise ValueError("celery_purge drops every waiting task: set confirm: true to allow it")
        return self


class RqRequeueParams(QueueRef):
    """Requeue failed RQ jobs."""

    limit: int = Field(default=1000, ge=1)


class RqCleanParams(QueueRef):
    """Clean RQ's finished, failed and deferred registries of expired entries, and fail
    abandoned started jobs as rq does (those with an on_failure callback are left to rq's
    workers, where the app's code lives)."""


class RedisDeletePatternParams(Strict):
    """Delete keys matching a pattern with SCAN + UNLINK in batches."""

    redis: str
    pattern: str = Field(min_length=1, description=(
        "key glob (SCAN MATCH); it must hold a character outside `*`, `?` and `[...]`"))
    batch: int = Field(default=500, ge=1, le=10000)
    max_keys: int = Field(default=1_000_000, ge=1)

    @field_validator("pattern")
    @classmethod
    def _not_everything(cls, value: str) -> str:
        # Not just "only `*`": `?*` or `[^]*` match every key as well.
        if not has_literal(value):
            raise ValueError(
                f"{value!r} has no character outside the wildcards `*`, `?` and `[...]`, so it "
                "matches every key (or every key of some length) and deletes everything: name "
                "a part of the keys, as in `cache:*`, or use redis_flushdb to empty the database")
        return value


class RedisFlushdbParams(Strict):
    """FLUSHDB on a Redis target: only with an explicit confirm."""

    redis: str
    confirm: bool = False

    @model_validator(mode="after")
    def _confirmed(self) -> RedisFlushdbParams:
        if not self.confirm:
            raise ValueError("redis_flushdb empties the database: set confirm: true to allow it")
        return self


class RedisMemoryPurgeParams(Strict):
    """MEMORY PURGE on a Redis target."""

    redis: str


class PgLongQueriesParams(Strict):
    """Cancel or terminate queries running longer than a threshold."""

    postgres: str = Field(description="name of a watch.postgres target")
    longer_than: Duration = 300.0
    database: str | None = None
    include_superuser: bool = False
    statement_timeout: Duration = 10.0
    lock_timeout: Duration = 5.0


class PgIdleInTransactionParams(Strict):
    """End sessions idle in a transaction longer than a threshold."""

    postgres: str
    longer_than: Duration = 300.0
    database: str | None = None
    include_superuser: bool = False
    statement_timeout: Duration = 10.0
    lock_timeout: Duration = 5.0


class PgTableParams(Strict):
    """VACUUM ANALYZE or REINDEX CONCURRENTLY one table."""

    postgres: str
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    statement_timeout: Duration = 600.0
    lock_timeout: Duration = 5.0


class FilesCleanParams(Strict):
    """Delete or gzip files older than N days under one root; no path escapes it."""

    root: str
    glob: str = "*.log"
    older_than: Duration = 7 * 86400.0
    mode: Literal["delete", "gzip"] = "delete"
    timeout: Duration = Field(default=60.0, description=(
        "stop after this long (between files, or between chunks of one) and report what was "
        "done; 1s to 1h"))

    @field_validator("timeout")
    @classmethod
    def _bounded(cls, value: float) -> float:
        # The work runs in one of a few threads shared by every blocking action: an unbounded
        # one would hold it for good.
        if not FILES_MIN_TIMEOUT <= value <= FILES_MAX_TIMEOUT:
            raise ValueError(f"timeout must be from 1s to 1h, not {value:g}s")
        return value


class PageParams(Strict):
    """Page the humans configured for a severity (or the alert's own severity)."""

    severity: str | None = None
    message: str | None = None


ACTIONS: dict[str, type[Strict]] = {
    "exec": ExecParams,
    "http": HttpParams,
    "bullmq_pause": QueueRef,
    "bullmq_resume": QueueRef,
    "bullmq_retry_failed": BullmqRetryParams,
    "bullmq_clean": BullmqCleanParams,
    "bullmq_remove_job": BullmqRemoveJobParams,
    "celery_pool_grow": CeleryPoolParams,
    "celery_pool_shrink": CeleryPoolParams,
    "celery_purge": CeleryPurgeParams,
    "rq_requeue_failed": RqRequeueParams,
    "rq_clean_registries": RqCleanParams,
    "redis_delete_pattern": RedisDeletePatternParams,
    "redis_flushdb": RedisFlushdbParams,
    "redis_memory_purge": RedisMemoryPurgeParams,
    "pg_cancel_long_queries": PgLongQueriesParams,
    "pg_terminate_long_queries": PgLongQueriesParams,
    "pg_terminate_idle_in_transaction": PgIdleInTransactionParams,
    "pg_vacuum_analyze": PgTableParams,
    "pg_reindex": PgTableParams,
    "files_clean": FilesCleanParams,
    "page": PageParams,
}
"""Action name -> its parameter model."""
