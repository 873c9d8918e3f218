"""The README's demo runs start to end: Dovecot, the daemon, sample mail, acknowledgements."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_demo_runs_through(dovecot_factory):  # the fixture only checks Dovecot is usable
    proc = subprocess.run(
        [sys.executable, "-m", "tests.demo", "--once", "--delay", "0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 mails stored, 3 acknowledgements and 4 agent notifications sent" in proc.stdout
    assert "new_ticket" in proc.stdout and "reply" in proc.stdout
