"""docs/runbook-reference.md is generated from the schema and cannot drift from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runbook import docs
from runbook.actions import ACTIONS
from runbook.schema import Runbook
from runbook.signals import SIGNALS

ROOT = Path(__file__).parents[1]
REFERENCE = ROOT / "docs" / "runbook-reference.md"


def test_reference_matches_the_schema() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == docs.render(), (
        "docs/runbook-reference.md is stale: run "
        "`.venv/bin/python -m runbook.docs > docs/runbook-reference.md`")


def test_module_prints_the_reference() -> None:
    result = subprocess.run([sys.executable, "-m", "runbook.docs"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=True)
    assert result.stdout == docs.render()


def test_every_key_action_and_signal_is_documented() -> None:
    text = docs.render()
    paths = [row[0] for row in docs.key_rows(Runbook)]
    for top in Runbook.model_fields:
        assert f"| `{top}` |" in text
    for expected in ("watch.http[].expect_json", "watch.redis[].queues.celery",
                     "alerts.<key>.critical.for", "respond[].verify_after",
                     "respond[].continue", "page.<severity>[].pagerduty.routing_key_env",
                     "maintenance[].weekly.days", "rails.rate_limit.per"):
        assert expected in paths
        assert f"| `{expected}` |" in text
    for name, params in ACTIONS.items():
        section = text.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        for key, field in params.model_fields.items():
            assert f"| `{field.alias or key}` |" in section, (name, key)
    for name in SIGNALS:
        assert f"| `{name}` |" in text


def test_notes_name_only_existing_keys() -> None:
    paths = {row[0] for row in docs.key_rows(Runbook)}
    assert set(docs.NOTES) <= paths, set(docs.NOTES) - paths
    params = {name for model in ACTIONS.values() for name in model.model_fields}
    params |= {f.alias for model in ACTIONS.values() for f in model.model_fields.values()
               if f.alias}
    assert set(docs.PARAM_NOTES) <= params, set(docs.PARAM_NOTES) - params


def test_defaults_are_written_as_a_runbook_writes_them() -> None:
    rows = {row[0]: row for row in docs.key_rows(Runbook)}
    assert rows["slos[].window"][1:3] == ("duration", "`30d`")
    assert rows["respond[].cooldown"][1:3] == ("duration", "`10m`")
    assert rows["watch.host.memory_limit"][1:3] == ("size", "`null`")
    assert rows["slos[].objective"][1:3] == ("ratio", "required")
    assert rows["rails.rate_limit"][2] == "`{count: 20, per: 1m}`"
    assert rows["respond[].mode"][1] == "one of `auto`, `approve`, `page`"
    assert rows["page.<severity>[].slack.webhook_url_env"][1] == "env var name"
