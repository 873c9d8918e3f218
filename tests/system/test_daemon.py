"""`helpdeskd run` as a real process: drains on SIGTERM, survives SIGKILL, speaks sd_notify."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpdeskd.daemon.supervisor import Supervisor
from tests.harness import ROOT, Desk, cli_json
from tests.mailgen import customer_mail


def start_daemon(config, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ, HELPDESKD_CONFIG=str(config.source), **(env or {}))
    # The child keeps its own copy of the descriptor; ours can close at once.
    with open(Path(config.source).parent / "daemon.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "helpdeskd", "run"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def daemon_log(config) -> str:
    return (Path(config.source).parent / "daemon.log").read_text(errors="replace")


def _customers(sink) -> dict:
    """Acknowledgements by customer (agents get notifications too)."""
    return {k: v for k, v in sink.by_recipient().items() if k.endswith("@example.org")}


@pytest.mark.slow
async def test_sigkill_mid_send_loses_nothing(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        await desk.ingest([customer_mail(n) for n in range(20)])
    smtp_sink.handler.delay = 0.15
    proc = start_daemon(config)
    try:
        smtp_sink.wait_for(5, timeout=30)
        proc.kill()
        proc.wait(10)
        smtp_sink.handler.delay = 0
        proc = start_daemon(config)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(_customers(smtp_sink)) == 20:
                rows = cli_json(config, "outbox", "list")
                if all(r["state"] == "sent" for r in rows):
                    break
            await asyncio.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(30)
    got = _customers(smtp_sink)
    assert set(got) == {f"customer{n}@example.org" for n in range(20)}, daemon_log(config)
    # A mail in flight at the kill (one per connection) may go out twice; no other.
    assert config.smtp is not None
    assert sum(len(v) - 1 for v in got.values()) <= config.smtp.connections
    assert all(r["state"] == "sent" for r in cli_json(config, "outbox", "list"))


async def test_sigterm_drains_and_exits_zero(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    proc = start_daemon(config)
    try:
        _wait_for_log(config, "daemon_started")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, daemon_log(config)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "daemon_stopped" in daemon_log(config)


def test_run_refuses_schema_not_at_head(make_config):
    config = make_config()
    from helpdeskd.store.db import downgrade

    downgrade(config.database.url, "base")
    proc = subprocess.run(
        [sys.executable, "-m", "helpdeskd", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, HELPDESKD_CONFIG=str(config.source)),
        timeout=60,
    )
    assert proc.returncode == 1
    assert "helpdeskd db upgrade" in proc.stderr


def _wait_for_log(config, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event in daemon_log(config):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event} in log:\n{daemon_log(config)}")


def test_sd_notify_ready_watchdog_reload_stopping(make_config, smtp_sink, tmp_path):
    config = make_config(smtp=smtp_sink)
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    proc = start_daemon(config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    received: list[str] = []

    def expect(field: str) -> None:
        while not any(field in m for m in received):
            received.append(sock.recv(4096).decode())

    try:
        expect("READY=1")
        expect("WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        expect("RELOADING=1")
        assert any("MONOTONIC_USEC=" in m for m in received)
        expect("configuration reloaded")
        proc.send_signal(signal.SIGTERM)
        expect("STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    # Start-up's objects, and again the reloaded ones, are left out of the collector's rounds
    # (helpdeskd.heap): tens of thousands of them, not none.
    events = [json.loads(line) for line in daemon_log(config).splitlines() if line.startswith("{")]
    settled = {e["event"]: e["settled_objects"] for e in events if "settled_objects" in e}
    assert settled.keys() == {"daemon_started", "config_reloaded"}
    assert min(settled.values()) > 10_000, settled


def test_sighup_with_broken_template_keeps_old_config(make_config, smtp_sink, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ack.txt.j2").write_text("Subject: hi {{ ticket.ref }}\n\nbody\n")
    config = make_config(smtp=smtp_sink, templates=templates)
    proc = start_daemon(config)
    try:
        _wait_for_log(config, "daemon_started")
        (templates / "ack.txt.j2").write_text("Subject: {% if %}\n\nbroken\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for_log(config, "reload_refused")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "ack.txt.j2" in daemon_log(config)


@pytest.mark.parametrize("crashes, expected", [(2, 0), (10, 1)])
async def test_supervisor_restarts_then_gives_up(crashes, expected):
    stop = asyncio.Event()
    supervisor = Supervisor(stop, max_crashes=3, window=60, backoff_base=0.01)
    calls = 0
    healthy = asyncio.Event()

    async def flaky(stop: asyncio.Event) -> None:
        nonlocal calls
        calls += 1
        if calls <= crashes:
            raise RuntimeError("boom")
        healthy.set()
        await stop.wait()

    supervisor.add("flaky", flaky)
    runner = asyncio.create_task(supervisor.run())
    # Given up, or restarted into a run that lasts (not a fixed wait: a busy machine restarts
    # slower).
    running = asyncio.create_task(healthy.wait())
    await asyncio.wait([runner, running], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    running.cancel()
    stop.set()
    assert await asyncio.wait_for(runner, 10) == expected
    assert calls == min(crashes, 4) + (1 if crashes <= 3 else 0)
