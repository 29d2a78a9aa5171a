"""The action table matches the registry of names; run_action isolates every failure."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import typing
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from responder.actions import ACTION_IMPLS, ActionMetrics, build_table, run_action, timeout_of
from responder.actions.base import ActionContext, Outcome, Status
from runbook.actions import ACTIONS, ExecParams, HttpParams, PageParams, PgTableParams, QueueRef
from tests.actions_support import book, context


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def test_table_has_exactly_the_registered_names() -> None:
    assert set(ACTION_IMPLS) == set(ACTIONS)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_each_implementation_takes_its_registered_model(name: str) -> None:
    fn = ACTION_IMPLS[name]
    hints = typing.get_type_hints(fn)
    assert hints["params"] is ACTIONS[name]
    assert hints["ctx"] is ActionContext
    assert hints["return"] is Outcome


async def _wrong_params(ctx: ActionContext, params: HttpParams) -> Outcome:
    raise AssertionError("never called")


async def _three_args(ctx: ActionContext, params: ExecParams, extra: int) -> Outcome:
    raise AssertionError("never called")


def _not_async(ctx: ActionContext, params: ExecParams) -> Outcome:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"exec": _wrong_params}, "params must be ExecParams"),
        ({"exec": _three_args}, "must take (ctx, params)"),
        ({"exec": _not_async}, "must be an async def"),
        ({"reboot_everything": ACTION_IMPLS["exec"]}, "not in runbook.actions"),
        ({"exec": ACTION_IMPLS["exec"]}, "actions without an implementation"),
    ],
)
def test_registration_checks_signatures(table: dict[str, typing.Any], message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_table(table)


def test_registration_refuses_a_name_twice() -> None:
    with pytest.raises(TypeError, match="implemented twice"):
        build_table(ACTION_IMPLS, {"exec": ACTION_IMPLS["exec"]})


async def test_unknown_action_is_a_failed_outcome(session: aiohttp.ClientSession) -> None:
    result = await run_action("reboot", ExecParams(argv=["true"]), context(session))
    assert result.status is Status.FAILED
    assert "unknown action 'reboot'" in result.output


async def test_wrong_params_type_is_a_failed_outcome(session: aiohttp.ClientSession) -> None:
    result = await run_action("exec", PageParams(), context(session))
    assert result.status is Status.FAILED
    assert "exec takes ExecParams, not PageParams" in result.output
    # Not even a model (the secrets of a params object are looked up before the run).
    raw: typing.Any = {"argv": ["true"], "env": ["PATH"]}
    result = await run_action("exec", raw, context(session))
    assert result.status is Status.FAILED
    assert "exec takes ExecParams, not dict" in result.output


async def test_unknown_target_is_a_failed_outcome(session: aiohttp.ClientSession) -> None:
    result = await run_action("bullmq_pause", QueueRef(redis="nope", queue="q"), context(session))
    assert result.status is Status.FAILED
    assert "no watch.redis target named 'nope'" in result.output


def test_timeouts() -> None:
    assert timeout_of(ExecParams(argv=["x"], timeout=3.0)) == 8.0
    assert timeout_of(QueueRef(redis="r", queue="q", timeout=7.0)) == 7.0
    assert timeout_of(PgTableParams(postgres="p", table="t", statement_timeout=20.0)) == 35.0
    assert timeout_of(PageParams()) == 60.0


async def test_one_failure_never_blocks_another(session: aiohttp.ClientSession) -> None:
    registry = CollectorRegistry()
    metrics = ActionMetrics(registry)
    ctx = context(session)
    results = await asyncio.gather(
        run_action("exec", ExecParams(argv=["sleep", "5"], timeout=0.5), ctx, metrics),
        run_action("exec", ExecParams(argv=["/no/such/program"]), ctx, metrics),
        run_action("bullmq_pause", QueueRef(redis="nope", queue="q"), ctx, metrics),
        run_action("exec", ExecParams(argv=["true"]), ctx, metrics),
    )
    assert [r.status for r in results] == [Status.TIMEOUT, Status.FAILED, Status.FAILED, Status.OK]
    assert [r.action for r in results] == ["exec", "exec", "bullmq_pause", "exec"]
    total = sum(
        registry.get_sample_value("runbook_action_runs_total", {"action": a, "status": s}) or 0
        for a in ("exec", "bullmq_pause") for s in ("ok", "failed", "timeout")
    )
    assert total == 4


async def test_secrets_are_scrubbed_from_outcomes(session: aiohttp.ClientSession) -> None:
    runbook = book("""
    service: shop
    watch:
      postgres:
        - {name: main, dsn_env: DATABASE_URL}
    """)
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql://app:hunter22@db:5432/shop"}
    ctx = context(session, runbook, env=env)
    result = await run_action("exec", ExecParams(argv=["env"], env=["DATABASE_URL"]), ctx)
    assert result.status is Status.OK
    assert "DATABASE_URL=<secret>" in result.output
    assert "hunter22" not in json.dumps(result.as_json())
    # A password alone (an error message quoting it) is scrubbed too.
    script = "import os, sys; sys.exit('auth failed for password hunter22')"
    failed = await run_action("exec", ExecParams(argv=[sys.executable, "-c", script]), ctx)
    assert "hunter22" not in failed.output
    assert "<secret>" in failed.output
