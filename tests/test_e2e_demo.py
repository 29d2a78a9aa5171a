"""`runbook demo` as a new user runs it: every step of the loop shown, everything stopped."""

from __future__ import annotations

import re
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
