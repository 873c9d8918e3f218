"""The daemon's HTTP side over a real socket: /healthz and /metrics on their own listener, and
behind a bearer token on the public one."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from helpdeskd.config.secrets import Secret
from helpdeskd.errors import HelpdeskError
from helpdeskd.web.app import bearer_matches, behind_token, start_site, stop_sites
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
    """A config whose /healthz and /metrics are served on their own (private) listener; return
    it and that listener's base URL."""
    port, private = free_port(), free_port()
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
    source.write_text(
        source.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n'
        f'metrics_listen = "127.0.0.1:{private}"\n'
    )
    return config, f"http://127.0.0.1:{private}"


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
        # the lease: held, by this daemon, taken once; the daemon registered and live
        assert 'helpdeskd_mailbox_lease_held{mailbox="support"} 1.0' in text
        assert 'helpdeskd_mailbox_lease_mine{mailbox="support"} 1.0' in text
        assert 'helpdeskd_mailbox_lease_acquisitions_total{mailbox="support"} 1.0' in text
        assert 'helpdeskd_mailbox_lease_expiry_seconds{mailbox="support"}' in text
        assert 'helpdeskd_daemons{state="live"} 1.0' in text
        assert 'helpdeskd_daemons{state="stale"} 0.0' in text
        status = cli_json(config, "status")
        [daemon] = status["daemons"]
        assert daemon["pid"] == proc.pid and daemon["mailboxes"] == ["support"]
        assert status["mailboxes"][0]["lease"]["daemon"] == daemon["id"]
    finally:
        proc.terminate()
        proc.wait(30)
    assert "http_listening" in daemon_log(config)
    assert cli_json(config, "status")["daemons"] == []  # removed on a clean stop


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


@pytest.mark.parametrize(
    "header, matches",
    [
        ("Bearer s3cret-token-0123456789", True),
        ("bearer s3cret-token-0123456789", True),  # the scheme is case-insensitive
        ("  Bearer   s3cret-token-0123456789  ", True),
        ("Bearer s3cret-token-012345678", False),  # a prefix is not the token
        ("Bearer s3cret-token-0123456789x", False),
        ("Basic s3cret-token-0123456789", False),
        ("s3cret-token-0123456789", False),
        ("Bearer", False),
        ("", False),
        (None, False),
        ("Bearer s3cret-tökén", False),  # non-ASCII: compared as bytes, never raises
    ],
)
def test_bearer_matches(header, matches):
    assert bearer_matches(header, "s3cret-token-0123456789") is matches


async def _serve(routes) -> tuple[web.AppRunner, str]:
    port = free_port()
    runner = await start_site(f"127.0.0.1:{port}", routes, key="http.listen")
    return runner, f"http://127.0.0.1:{port}"


async def test_behind_token_looks_like_an_unknown_path_without_the_token():
    async def numbers(request: web.Request) -> web.Response:
        return web.Response(text="numbers")

    token = "s3cret-token-0123456789"
    routes = [web.get("/metrics", numbers)]
    with_token, site = await _serve(behind_token(routes, Secret(token)))
    without_token, other = await _serve(behind_token(routes, None))
    try:
        async with aiohttp.ClientSession() as http:

            async def fetch(url: str, **headers: str) -> tuple[int, str, str]:
                async with http.get(url, headers=headers) as response:
                    return response.status, response.content_type, await response.text()

            unknown = await fetch(site + "/nothing-here")
            assert unknown[0] == 404
            assert await fetch(site + "/metrics") == unknown
            assert await fetch(site + "/metrics", Authorization="Bearer nope") == unknown
            right = await fetch(site + "/metrics", Authorization=f"Bearer {token}")
            assert right == (200, "text/plain", "numbers")
            # No token configured: no header opens it.
            assert await fetch(other + "/metrics", Authorization=f"Bearer {token}") == unknown
    finally:
        await stop_sites([with_token, without_token])


async def test_a_listen_address_in_use_is_one_line_naming_the_key():
    runner, base = await _serve([])
    try:
        with pytest.raises(HelpdeskError) as caught:
            await start_site(base.removeprefix("http://"), [], key="http.metrics_listen")
        assert str(caught.value).startswith(f"http.metrics_listen: cannot listen on {base[7:]}")
    finally:
        await stop_sites([runner])
