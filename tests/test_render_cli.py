"""`runbook render`: byte-stable output, committed files without drift, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runbook.commands import render as render_command
from runbook.loader import load_runbook
from runbook.render.output import Options, drift, render_all

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))


def main(argv: list[str]) -> int:
    """`runbook render ...` through the command module alone (not the other subcommands)."""
    assert argv[0] == "render"
    parser = argparse.ArgumentParser(prog="runbook render")
    render_command.configure(parser)
    return render_command.run(parser.parse_args(argv[1:]))


# The compose file runs examples/cinder-js.yml's exporter on 127.0.0.1:9817 (README, Rules).
COMMITTED_EXPORTER = "cinder-js=127.0.0.1:9817"


def test_committed_output_matches_a_fresh_render() -> None:
    files = render_all([load_runbook(p) for p in EXAMPLES],
                       Options(exporters=[COMMITTED_EXPORTER]))
    assert drift(files, ROOT) == [], \
        f"run: runbook render examples/*.yml --out . --exporter {COMMITTED_EXPORTER}"


def test_check_flag_passes_on_the_repository() -> None:
    assert main(["render", *map(str, EXAMPLES), "--out", str(ROOT), "--check",
                 "--exporter", COMMITTED_EXPORTER]) == 0


def test_render_is_a_subcommand() -> None:
    from runbook.cli import COMMANDS

    assert COMMANDS["render"] == "runbook.commands.render"


def test_render_is_byte_stable_and_check_finds_drift(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in EXAMPLES]
    assert main(["render", *files, "--out", str(tmp_path)]) == 0
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with_slos = sum(1 for p in EXAMPLES if load_runbook(p).runbook.slos)  # + <service>.slo_test.yml
    assert len(first) == 4 * len(EXAMPLES) + with_slos + 2
    assert capsys.readouterr().out.count("wrote ") == len(first)
    assert main(["render", *files, "--out", str(tmp_path)]) == 0
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first
    assert "wrote" not in capsys.readouterr().out  # nothing changed, nothing rewritten
    rules = tmp_path / "alert_rules" / "cinder-js.rules.yml"
    rules.write_text(rules.read_text().replace("> 0.7\n", "> 0.75\n", 1))
    assert main(["render", *files, "--out", str(tmp_path), "--check"]) == 1
    assert "cinder-js.rules.yml: differs from a fresh render" in capsys.readouterr().err


def test_time_scale_and_responder_url_options(tmp_path: Path) -> None:
    assert main(["render", str(EXAMPLES[0]), "--out", str(tmp_path), "--time-scale", "0.01",
                 "--responder-url", "http://127.0.0.1:19818/alerts",
                 "--exporter", "127.0.0.1:19817", "--alertmanager", "127.0.0.1:19093",
                 "--rules-dir", "/etc/prometheus/alert_rules/"]) == 0
    prom = (tmp_path / "deploy" / "prometheus.yml").read_text()
    assert f"- /etc/prometheus/alert_rules/{load_runbook(EXAMPLES[0]).service}.rules.yml" in prom
    assert "scrape_interval: 1s" in prom
    assert "127.0.0.1:19817" in prom
    assert "127.0.0.1:19818" in prom
    assert "127.0.0.1:19093" in prom
    am = (tmp_path / "deploy" / "alertmanager.yml").read_text()
    assert "url: http://127.0.0.1:19818/alerts" in am
    assert "group_wait: 1s" in am


@pytest.mark.parametrize(("args", "message"), [
    (["--time-scale", "0"], "--time-scale 0 must be above 0"),
    (["--time-scale", "2"], "at most 1"),
    (["--responder-url", "not a url"], "is not an http URL"),
])
def test_bad_options_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], message: str) -> None:
    assert main(["render", str(EXAMPLES[0]), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_invalid_runbook_lists_file_and_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("service: bad\nalerts:\n  queue_depht: {warning: 5, for: 1m}\n")
    assert main(["render", str(bad), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3: alerts.queue_depht" in err
    assert "did you mean queue_depth?" in err
    assert not (tmp_path / "out").exists()


def test_render_error_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(EXAMPLES[0]), str(EXAMPLES[0]), "--out", str(tmp_path)]) == 1
    assert "rendered twice" in capsys.readouterr().err
