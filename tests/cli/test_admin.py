"""The admin commands: init writes a config that works at once; status reads well when idle."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.harness import Desk, cli, cli_json
from tests.outbox.test_sender import _queue


def _helpdeskd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HELPDESKD_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "helpdeskd", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_init_takes_config_after_the_command(tmp_path):
    target = tmp_path / "etc" / "helpdeskd.toml"
    proc = _helpdeskd("init", "--config", str(target), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {target} and {tmp_path / 'etc' / 'secret.key'}")
    assert (tmp_path / "etc" / "state" / "helpdeskd.db").exists()
    assert not (tmp_path / "helpdeskd.toml").exists()
    status = _helpdeskd("status", "--config", str(target), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    again = _helpdeskd("--config", str(target), "init", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == f"helpdeskd: {target} exists; use --force to overwrite it\n"


def test_init_where_it_cannot_write_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    proc = _helpdeskd("init", "--config", str(blocker / "helpdeskd.toml"), cwd=tmp_path)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("helpdeskd: ") and "cannot write" in line


async def test_status_says_the_outbox_is_empty_rather_than_oldest_none(make_config):
    config = make_config()
    idle = cli(config, "status").stdout
    assert "outbox: empty\n" in idle and "None" not in idle
    assert cli_json(config, "status")["outbox_oldest"] is None
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
    busy = cli(config, "status").stdout
    assert re.search(r"^outbox: 1 pending \(oldest \d{4}-\d\d-\d\dT[\d:.]+Z\)$", busy, re.M), busy
    assert cli_json(config, "status")["outbox_depth"] == 1
