"""`runbook demo` as a new user runs it: every step of the loop shown, everything stopped."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from tests.stack import RUNBOOK_BIN


def test_demo_shows_every_step(tmp_path: Path) -> None:
    result = subprocess.run([RUNBOOK_BIN, "demo"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    order = ["breach: 150 jobs", "pending:", "firing:", "webhook received:", "action started:",
             "action done: ok", "healed:", "resolved notification received:"]
    positions = [out.find(text) for text in order]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    assert '"processed":150' in out
    assert re.search(r"incident [0-9a-f]+: healed; breach to action started \d+\.\d\ds against "
                     r"the loop's own limit of 4\.8s", out), out
    assert "everything it started is stopped" in out
    temp = re.search(r"\((/tmp/runbook-demo-[^)]+)\)", out)
    assert temp is not None
    assert not Path(temp.group(1)).exists()


def test_demo_says_what_is_missing(tmp_path: Path) -> None:
    result = subprocess.run([RUNBOOK_BIN, "demo"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, check=False, env={"PATH": str(tmp_path)})
    assert result.returncode == 2
    for name in ("redis-server (apt-get install redis-server)", "prometheus (",
                 "prometheus-alertmanager (", "node ("):
        assert name in result.stderr


def test_sigterm_stops_everything_the_demo_started(tmp_path: Path) -> None:
    demo = subprocess.Popen([RUNBOOK_BIN, "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert demo.stdout is not None
    started = ""
    for line in demo.stdout:
        if line.startswith("started redis-server"):
            started = line
            break
    temp = re.search(r"\((/tmp/runbook-demo-[^)]+)\)", started)
    assert temp is not None, started
    demo.send_signal(signal.SIGTERM)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 143, err
    assert "stopped by SIGTERM" in err
    # Nothing runs from its temp dir any more, and the dir is gone.
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # ended meanwhile
            if temp.group(1) in command:
                left.append(command)
    assert left == []
    assert not Path(temp.group(1)).exists()
