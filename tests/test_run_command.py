"""`runbook run` as a subprocess: exporter and responder in one process, stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from pathlib import Path

from tests.stack import RUNBOOK_BIN, Stack, free_port, http_get, stack, wait_ready


def _start(s: Stack, *extra: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    eport, rport = free_port(), free_port()
    s.runbook("run", ["run", "--exporter-listen", f"127.0.0.1:{eport}", "--responder-listen",
                      f"127.0.0.1:{rport}", "--data-dir", str(s.dir / "data"), *extra],
              f"http://127.0.0.1:{rport}/health/ready", env=env)
    wait_ready(f"http://127.0.0.1:{eport}/health/ready", 10)
    return f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{rport}"


def test_defaults_serve_both_and_stop_on_sigterm() -> None:
    with stack() as s:
        exporter, responder = _start(s, env={"RUNBOOK_WEBHOOK_TOKEN": ""})
        status, body = http_get(f"{exporter}/metrics")
        assert status == 200
        assert b"runbook_host_memory_used_bytes" in body
        assert b'runbook_collector_up{collector="host",target="host"} 1.0' in body
        assert http_get(f"{exporter}/health")[0] == 200
        assert json.loads(http_get(f"{responder}/health")[1]) == {"status": "ok"}
        assert http_get(f"{responder}/metrics")[0] == 200

        token_file = s.dir / "data" / "webhook_token"
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # The generated token works and is needed; it is never printed.
        assert http_get(f"{responder}/incidents")[0] == 401
        assert http_get(f"{responder}/incidents", token=token)[0] == 200

        proc = s.procs[0]
        assert proc.process is not None
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(10) == 0
        log = proc.tail()
        assert token not in log
        assert str(token_file) in log
        assert "default_runbook.yml (built in)" in log
        assert "stopping" in log


def test_token_is_kept_across_restarts(tmp_path: Path) -> None:
    with stack() as s:
        data = s.dir / "data"
        data.mkdir()
        (data / "webhook_token").write_text("kept-token-value-0123456789abcdef\n")
        _, responder = _start(s, env={"RUNBOOK_WEBHOOK_TOKEN": ""})
        assert http_get(f"{responder}/incidents", token="kept-token-value-0123456789abcdef")[0] \
            == 200


def test_token_file_and_runbook(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-0123456789\n")
    book = tmp_path / "rb.yml"
    book.write_text("service: tiny\nalerts:\n  disk_usage: {warning: 80%, critical: 90%, "
                    "for: 5m}\n")
    with stack() as s:
        exporter, responder = _start(s, "--token-file", str(token_file), "--runbook", str(book))
        assert http_get(f"{responder}/incidents", token="from-a-file-0123456789")[0] == 200
        assert not (s.dir / "data" / "webhook_token").exists()
        assert b"runbook_host_disk_used_bytes" in http_get(f"{exporter}/metrics")[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNBOOK_BIN, "run", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd, check=False)


def test_broken_runbook_is_refused(tmp_path: Path) -> None:
    book = tmp_path / "rb.yml"
    book.write_text("service: tiny\nalerts:\n  disk_usage: {warning: 80%, for: soon}\n")
    result = _run("--runbook", str(book), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{book}:3" in result.stderr


def test_bad_listen_address(tmp_path: Path) -> None:
    result = _run("--exporter-listen", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "'nowhere' is not HOST:PORT" in result.stderr


def test_empty_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = _run("--token-file", str(empty), cwd=tmp_path)
    assert result.returncode == 2
    assert "is empty" in result.stderr


def test_port_taken(tmp_path: Path) -> None:
    with stack() as s:
        exporter, _ = _start(s, env={"RUNBOOK_WEBHOOK_TOKEN": "t" * 20})
        port = exporter.rsplit(":", 1)[1]
        result = _run("--exporter-listen", f"127.0.0.1:{port}", "--responder-listen",
                      f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"),
                      cwd=tmp_path)
        assert result.returncode == 2
        assert "address already in use" in result.stderr.lower()


def test_a_token_file_others_can_read_is_named_so(tmp_path: Path) -> None:
    with stack() as s:
        exporter, _ = _start(s, env={"RUNBOOK_WEBHOOK_TOKEN": "t" * 20})
        data = tmp_path / "d"
        data.mkdir()
        (data / "webhook_token").write_text("shared-token-0123456789\n")
        (data / "webhook_token").chmod(0o644)
        # The port is taken, so the command ends right after it has read the token.
        result = _run("--exporter-listen", exporter.removeprefix("http://"),
                      "--responder-listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data),
                      cwd=tmp_path)
    assert "(mode 0644: readable by others than its owner" in result.stderr
    assert "shared-token" not in result.stderr


def test_a_refused_configuration_writes_no_token(tmp_path: Path) -> None:
    book = tmp_path / "rb.yml"
    book.write_text("service: tiny\nwatch:\n  redis:\n    - {name: main, url_env: NO_SUCH_VAR}\n")
    result = _run("--runbook", str(book), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert result.returncode == 2
    assert "NO_SUCH_VAR" in result.stderr
    assert not (tmp_path / "d" / "webhook_token").exists()
