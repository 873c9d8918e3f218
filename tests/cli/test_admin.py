"""The admin commands: init writes a config that works at once; status reads well when idle."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail
from tests.outbox.test_sender import _queue


def _helpdeskd(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HELPDESKD_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "helpdeskd", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
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


@pytest.mark.parametrize("mode, warns", [(0o755, True), (0o750, False), (0o700, False)])
def test_init_into_an_existing_state_dir_leaves_it_and_warns_if_open(tmp_path, mode, warns):
    shared = tmp_path / "shared"  # made before: by systemd-tmpfiles (0750), or by hand
    shared.mkdir()
    shared.chmod(mode)
    target = tmp_path / "helpdeskd.toml"
    proc = _helpdeskd("init", "--config", str(target), "--state-dir", str(shared), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = (
        f"helpdeskd: warning: {shared} is open to every user (mode {mode:04o}): "
        f"run 'chmod 700 {shared}'\n"
    )
    assert proc.stderr == (warning if warns else "")
    assert stat.S_IMODE(shared.stat().st_mode) == mode  # not ours to change
    assert stat.S_IMODE((shared / "helpdeskd.db").stat().st_mode) == 0o600


def test_init_again_with_force_keeps_the_key_and_tightens_the_database(tmp_path):
    target = tmp_path / "helpdeskd.toml"
    assert _helpdeskd("init", "--config", str(target), cwd=tmp_path).returncode == 0
    key = (tmp_path / "secret.key").read_text()
    database = tmp_path / "state" / "helpdeskd.db"
    database.chmod(0o644)
    proc = _helpdeskd("init", "--config", str(target), "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "secret.key").read_text() == key  # tokens already out stay valid
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "url, reason",
    [
        ("postgresql://postgres@127.0.0.1:1/helpdeskd", "cannot reach the database: "),
        ("sqlite:///{tmp}/missing/helpdeskd.db", "cannot reach the database: the folder "),
    ],
)
def test_run_without_a_database_is_one_line(tmp_path, url, reason):
    target = tmp_path / "helpdeskd.toml"
    assert _helpdeskd("init", "--config", str(target), cwd=tmp_path).returncode == 0
    text = target.read_text()
    changed = re.sub(r'(?m)^url = "[^"]*"', f'url = "{url.format(tmp=tmp_path)}"', text)
    assert changed != text
    target.write_text(changed)
    proc = _helpdeskd("run", "--config", str(target), cwd=tmp_path, timeout=30)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"helpdeskd: {reason}"), proc.stderr


def test_run_whose_listen_address_is_taken_is_one_line(tmp_path):
    target = tmp_path / "helpdeskd.toml"
    assert _helpdeskd("init", "--config", str(target), cwd=tmp_path).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        target.write_text(target.read_text().replace("127.0.0.1:8025", f"127.0.0.1:{port}"))
        proc = _helpdeskd("run", "--config", str(target), cwd=tmp_path, timeout=30)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        f"helpdeskd: http.listen: cannot listen on 127.0.0.1:{port}: error while attempting to "
        f"bind on address ('127.0.0.1', {port}): address already in use"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


async def test_status_shows_the_daemons_who_polls_each_mailbox_and_stale_ones(
    make_config, tmp_path
):
    """Two daemons registered, one holding a lease, one stale; a mailbox never polled."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from helpdeskd.store.leases import acquire
    from helpdeskd.store.models import DaemonRecord
    from helpdeskd.store.registry import Identity, register

    config = make_config(
        mailboxes=[
            {
                "name": name,
                "host": "127.0.0.1",
                "port": 1,
                "security": "none",
                "username": "u",
                "password": "p",
            }
            for name in ("support", "sales")
        ]
    )
    polling = replace(Identity.here(tmp_path / "a"), host="host-a", pid=1)
    gone = replace(Identity.here(tmp_path / "b"), host="host-b", pid=1)
    async with Desk(config) as desk:
        await register(desk.sessions, polling)
        await register(desk.sessions, gone)
        assert await acquire(desk.sessions, "support", polling.id, seconds=60)
        async with desk.sessions() as session, session.begin():
            await session.execute(
                update(DaemonRecord)
                .where(DaemonRecord.id == gone.id)
                .values(stale_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    status = cli_json(config, "status")
    assert {"version", "oauth", "daemons", "mailboxes", "outbox_depth", "quarantined"} <= set(
        status
    )
    daemons = {d["host"]: d for d in status["daemons"]}
    assert daemons["host-a"]["stale"] is False and daemons["host-a"]["mailboxes"] == ["support"]
    assert daemons["host-b"]["stale"] is True and daemons["host-b"]["mailboxes"] == []
    assert {"id", "pid", "version", "started_at", "heartbeat_at"} <= set(daemons["host-a"])
    mailboxes = {m["name"]: m for m in status["mailboxes"]}
    assert list(mailboxes) == ["support", "sales"]  # the configured ones, in config order
    support = mailboxes["support"]["lease"]
    assert support["held"] and support["daemon"] == polling.id and support["host"] == "host-a"
    assert support["token"] == 1 and not support["stale"]
    assert mailboxes["sales"]["lease"]["held"] is False
    assert mailboxes["sales"]["last_poll_at"] is None
    text = cli(config, "status").stdout
    assert "None" not in text
    assert re.search(r"^daemon host-a pid 1 \(.+\): up since .+; polls support$", text, re.M)
    assert re.search(r"^daemon host-b pid 1 \(.+\): STALE, last heartbeat", text, re.M), text
    assert "mailbox support: polled by host-a pid 1; last poll never, last ok never" in text
    assert "mailbox sales: not polled now (no daemon holds its lease); last poll never" in text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ingest_tells_its_progress_on_stderr_and_answers_on_stdout(
    make_config, tmp_path, monkeypatch
):
    config = make_config()
    monkeypatch.setenv("HELPDESKD_PROGRESS_EVERY", "0")  # a plain line at every batch
    folder = tmp_path / "mail"
    folder.mkdir()
    for n in range(3):
        (folder / f"{n}.eml").write_bytes(customer_mail(n))
    proc = cli(config, "ingest", "--backfill", str(folder))
    assert proc.stdout.splitlines()[-1] == "new_ticket: 3"
    # Not a terminal: plain lines; no total, as an mbox is counted only by reading it.
    assert [re.sub(r", \d+/s", "", line) for line in proc.stderr.splitlines()[-2:]] == [
        "ingesting: 3",
        "ingesting: 3, done",
    ], proc.stderr
