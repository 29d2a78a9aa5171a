"""Connection URLs of the runbook's watch targets, resolved for an action."""

from __future__ import annotations

from responder.actions.base import ActionContext
from runbook.schema import RedisTarget


class TargetError(LookupError):
    """The runbook names no such target, or its env var is unset."""


def redis_target(ctx: ActionContext, name: str) -> RedisTarget:
    """The watch.redis entry called `name`."""
    for target in ctx.runbook.runbook.watch.redis:
        if target.name == name:
            return target
    raise TargetError(f"no watch.redis target named {name!r}")


def redis_url(ctx: ActionContext, name: str) -> str:
    """The Redis URL of a watch.redis target (inline, or from the env var its url_env names)."""
    target = redis_target(ctx, name)
    if target.url is not None:
        return target.url
    assert target.url_env is not None  # the schema requires one of the two
    url = ctx.env.get(target.url_env)
    if not url:
        raise TargetError(f"watch.redis {name!r}: env var {target.url_env} is not set")
    return url


def postgres_dsn(ctx: ActionContext, name: str) -> str:
    """The DSN of a watch.postgres target, from the env var its dsn_env names."""
    for target in ctx.runbook.runbook.watch.postgres:
        if target.name == name:
            dsn = ctx.env.get(target.dsn_env)
            if not dsn:
                raise TargetError(f"watch.postgres {name!r}: env var {target.dsn_env} is not set")
            return dsn
    raise TargetError(f"no watch.postgres target named {name!r}")
