"""The daemon's HTTP side over a real socket: /healthz and /metrics."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import cli, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import free_port
from tests.system.test_daemon import daemon_log, start_daemon


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError:
        return 0, b""  # not listening yet


def wait_until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def _config(make_config, smtp_sink, dovecot, password: str):
    port = free_port()
    mailbox = {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": "support@acme.test",
        "password": password,
        "processed_folder": "Processed",
    }
    config = make_config(smtp=smtp_sink, mailboxes=[mailbox])
    source = Path(config.source)
    source.write_text(source.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    return config, f"http://127.0.0.1:{port}"


def test_healthz_and_metrics(make_config, smtp_sink, dovecot):
    config, base = _config(make_config, smtp_sink, dovecot, "secret")
    dovecot.append("support@acme.test", "secret", customer_mail(1))
    proc = start_daemon(config)
    try:
        wait_until(lambda: len(cli_json(config, "tickets", "list")) == 1)
        status, body = wait_until(lambda: (r := get(base + "/healthz"))[0] == 200 and r)
        report = json.loads(body)
        assert report["status"] == "ok" and report["event_loop"]["alive"]
        assert report["mailboxes"][0]["name"] == "support" and report["mailboxes"][0]["ok"]
        status, body = get(base + "/metrics")
        text = body.decode()
        assert status == 200
        assert 'helpdeskd_messages_ingested_total{outcome="new_ticket"} 1.0' in text
        assert 'helpdeskd_tickets{state="new"} 1.0' in text
        assert "helpdeskd_outbox_depth" in text and "helpdeskd_mailbox_poll_lag_seconds" in text
    finally:
        proc.terminate()
        proc.wait(30)
    assert "http_listening" in daemon_log(config)


def test_healthz_reports_a_failing_mailbox(make_config, smtp_sink, dovecot):
    config, base = _config(make_config, smtp_sink, dovecot, "wrong")
    proc = start_daemon(config)
    try:
        status, body = wait_until(lambda: (r := get(base + "/healthz"))[0] and r)
        assert status == 503
        report = json.loads(body)
        assert report["status"] == "degraded" and not report["mailboxes"][0]["ok"]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL readers never wait
def test_reads_answer_while_a_writer_holds_the_database(make_config, smtp_sink, dovecot):
    """/healthz, /metrics and the CLI's listings read a snapshot: a long write elsewhere (a
    notice queued to thousands, a batch being stored) holds SQLite's write lock, not them."""
    config, base = _config(make_config, smtp_sink, dovecot, "secret")
    dovecot.append("support@acme.test", "secret", customer_mail(1))
    proc = start_daemon(config)
    try:
        wait_until(lambda: len(cli_json(config, "tickets", "list")) == 1)
        wait_until(lambda: get(base + "/healthz")[0] == 200)
        writer = sqlite3.connect(config.database.url.removeprefix("sqlite:///"), timeout=1)
        writer.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            assert get(base + "/healthz")[0] == 200
            assert get(base + "/metrics")[0] == 200
            assert len(cli_json(config, "tickets", "list")) == 1
            assert cli_json(config, "status")["mailboxes"][0]["name"] == "support"
            assert cli(config, "outbox", "list").returncode == 0
            # Each waited for nobody: the writer's lock would hold them for the busy timeout.
            assert time.monotonic() - started < 15
        finally:
            writer.rollback()
            writer.close()
    finally:
        proc.terminate()
        proc.wait(30)
