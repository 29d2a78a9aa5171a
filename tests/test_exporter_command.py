"""`runbook exporter`: serves, and refuses bad input with a clear message."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from exporter.command import DEFAULT_LISTEN, parse_listen
from runbook.cli import main
from tests.servers import free_port, wait_for_port


def test_listen_parsing() -> None:
    assert parse_listen(DEFAULT_LISTEN) == ("127.0.0.1", 9817)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    assert parse_listen(":9100") == ("0.0.0.0", 9100)
    for bad in ("localhost", "host:http", "host:70000", "host:0"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
            parse_listen(bad)


def test_bad_runbook_is_reported_with_file_and_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("service: svc\nwatch:\n  redis:\n    - {name: c}\n")
    assert main(["exporter", "--runbook", str(bad)]) == 1
    assert f"{bad}:4" in capsys.readouterr().err


def test_unknown_collector_and_missing_env(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exporter", "--collectors", "host,redsi"]) == 2
    assert "unknown collector 'redsi' (did you mean redis?)" in capsys.readouterr().err
    rb = tmp_path / "rb.yml"
    rb.write_text("service: svc\nwatch:\n  postgres:\n    - {name: db, dsn_env: NOPE_DSN_X}\n")
    assert main(["exporter", "--runbook", str(rb)]) == 2
    assert "env var NOPE_DSN_X is not set" in capsys.readouterr().err


def test_serves_metrics_until_stopped() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "runbook.cli", "exporter", "--listen",
                                f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_for_port(port, 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert 'runbook_collector_up{collector="host",target="host"} 1.0' in body
    finally:
        process.terminate()
        assert process.wait(15) == 0
        assert process.stderr is not None
        process.stderr.close()


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "runbook.cli", "exporter", "--listen",
                                 f"127.0.0.1:{port}"], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 2
    # One line (no traceback, no "serving" line before it), worded as `runbook run` words it.
    [line] = result.stderr.splitlines()
    assert line.startswith("runbook exporter: ")
    assert f"('127.0.0.1', {port}): address already in use" in line
