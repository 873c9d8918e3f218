"""The README's demo runs start to end: Dovecot, the daemon, sample mail, an agent's answer."""

from __future__ import annotations

import re
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
    sent = "{'ack': 3, 'agent_notification': 4, 'reply': 1, 'agent_notice': 1}"
    assert f"6 mails stored; mails sent by kind: {sent}" in proc.stdout
    assert "new_ticket" in proc.stdout and "status → solved; reply sent" in proc.stdout
    assert re.search(r"^HD-1 +solved ", proc.stdout, re.M)
