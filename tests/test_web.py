"""The daemon's HTTP side over a real socket: /healthz and /metrics."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.harness import cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import free_port
from tests.test_daemon import daemon_log, start_daemon


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
