"""OAuth 2.0 end to end: the daemon against a real authorization server, Dovecot and SMTP.

Access tokens live 15 seconds, so two minutes of mail take the daemon through many refreshes
and rotated refresh tokens; a restart in between must go on with the rotated refresh token in
the token file; a revoked grant is told to the agents once while the other mailbox goes on.
The tokens are got the way an admin gets them: ``helpdeskd oauth login`` with the device code,
approved at the server by the test.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.settings import Config
from helpdeskd.store.db import upgrade
from tests.conftest import config_factory
from tests.harness import ROOT, cli, cli_json
from tests.mailgen import customer_mail
from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD, SUPPORT_USER
from tests.servers.oauth import AuthServer
from tests.servers.smtp import SmtpSink, free_port
from tests.system.test_daemon import daemon_log, start_daemon

pytestmark = pytest.mark.slow

SALES_USER, SALES_PASSWORD = "sales@acme.test", "sales-secret"
LIFETIME = 15  # seconds an access token lives
PHASE = 60.0  # seconds of mail before, and again after, the restart: two minutes in all
MAIL_EVERY = 6.0
CODE = re.compile(r"enter the code (\S+)")


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def oauth_table(server: AuthServer, token_file: Path) -> dict[str, Any]:
    return {
        "provider": "generic",
        "client_id": AuthServer.PUBLIC_CLIENT_ID,
        "token_url": server.token_url,
        "device_authorization_url": server.device_authorization_url,
        "scope": "mail",
        "token_file": str(token_file),
    }


def device_login(config: Config, server: AuthServer, name: str, account: str) -> str:
    """Run ``helpdeskd oauth login NAME`` as an admin would and approve its code as ACCOUNT."""
    with subprocess.Popen(
        [sys.executable, "-m", "helpdeskd", "oauth", "login", name],
        cwd=ROOT,
        env={"HELPDESKD_CONFIG": str(config.source), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        try:
            first = proc.stdout.readline()
            found = CODE.search(first)
            assert found, first
            server.approve_device(found.group(1), account)
            rest = proc.stdout.read()
            assert proc.wait(60) == 0, first + rest
        finally:
            if proc.poll() is None:
                proc.kill()
    return first + rest


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def test_two_minutes_of_refreshes_a_restart_and_a_revoked_grant(
    tmp_path: Path, dovecot_factory: Callable[..., Dovecot]
) -> None:
    server = AuthServer(access_lifetime=LIFETIME)
    server.start()
    sink = SmtpSink(oauth=server)
    sink.start()
    try:
        dovecot = dovecot_factory(oauth=server)
        dovecot.add_user(SALES_USER, SALES_PASSWORD)
        run(tmp_path, server, dovecot, sink)
    finally:
        sink.stop()
        server.stop()


def run(tmp_path: Path, server: AuthServer, dovecot: Dovecot, sink: SmtpSink) -> None:
    url = f"sqlite:///{tmp_path / 'helpdeskd.db'}"
    upgrade(url)
    oauth_dir = tmp_path / "state" / "oauth"
    shared = oauth_table(server, oauth_dir / "support.json")  # IMAP and SMTP: one account
    port = free_port()

    def mailbox(name: str, user: str) -> dict[str, Any]:
        return {
            "name": name,
            "host": dovecot.host,
            "port": dovecot.port,
            "security": "none",
            "username": user,
            "auth": "oauth2",
            "processed_folder": "Processed",
            "idle_interval": 5,  # the token is looked at between IDLEs
            "oauth": oauth_table(server, oauth_dir / f"{name}.json")
            if name != "support"
            else shared,
        }

    config = config_factory(tmp_path, url)(
        smtp=sink,
        smtp_extra={"username": SUPPORT_USER, "auth": "oauth2", "oauth": shared},
        mailboxes=[mailbox("support", SUPPORT_USER), mailbox("sales", SALES_USER)],
        extra=f'[http]\nmetrics_listen = "127.0.0.1:{port}"\n',
    )

    # A new install passes check and says what to run; the admin runs it.
    checked = cli(config, "check").stdout
    assert "run helpdeskd oauth login support" in checked
    assert "run helpdeskd oauth login sales" in checked
    assert "oauth login smtp" not in checked  # the same token file as support
    device_login(config, server, "support", SUPPORT_USER)
    device_login(config, server, "sales", SALES_USER)
    assert "oauth login" not in cli(config, "check").stdout
    assert (oauth_dir / "support.json").stat().st_mode & 0o777 == 0o600

    sent = 0

    def send(user: str, password: str) -> None:
        nonlocal sent
        dovecot.append(user, password, customer_mail(sent, subject=f"Question {sent} for {user}"))
        sent += 1

    def acks() -> dict[str, list[Any]]:
        return {k: v for k, v in sink.by_recipient().items() if k.endswith("@example.org")}

    def alerts() -> list[Any]:
        return [
            d
            for d in sink.by_recipient().get("alice@acme.test", [])
            if d.message["Subject"].startswith("Mailbox sales cannot log in")
        ]

    def mail_for(seconds: float, *users: tuple[str, str]) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for user, password in users:
                send(user, password)
            time.sleep(MAIL_EVERY)

    def all_acknowledged() -> None:
        wait_for(lambda: len(acks()) == sent, f"acknowledgements: {daemon_log(config)[-3000:]}")

    support = (SUPPORT_USER, SUPPORT_PASSWORD)
    sales = (SALES_USER, SALES_PASSWORD)
    proc = start_daemon(config)
    try:
        mail_for(PHASE, support, sales)
        all_acknowledged()
        refreshes_before_restart = server.refreshes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, daemon_log(config)
        proc = start_daemon(config)  # must go on with the rotated refresh tokens on disk
        mail_for(PHASE / 2, support, sales)
        all_acknowledged()
        assert server.refreshes > refreshes_before_restart
        assert "invalid_grant" not in daemon_log(config)
        status, report = healthz(port)
        assert status == 200, report
        assert {e["name"]: e["ok"] for e in report["oauth"]} == {
            "support": True,
            "sales": True,
            "smtp": True,
        }

        # The sales grant is revoked: the agents hear it once, with the command to run,
        # while support goes on receiving and sending for the rest of the two minutes.
        server.revoke_account(SALES_USER)
        mail_for(PHASE / 2, support)
        all_acknowledged()
        [alert] = wait_for(alerts, "the agents told of the revoked grant")
        assert "helpdeskd oauth login sales" in alert.message["Subject"]
        assert "helpdeskd oauth login sales" in alert.message.get_content()

        status, report = healthz(port)
        assert status == 503
        by_name = {e["name"]: e for e in report["oauth"]}
        assert not by_name["sales"]["ok"]
        assert "refresh token was refused" in (by_name["sales"]["last_error"] or "")
        assert by_name["support"]["ok"] and by_name["smtp"]["ok"]
        text = metrics(port)
        assert 'helpdeskd_oauth_ok{name="sales"} 0.0' in text
        assert 'helpdeskd_oauth_ok{name="support"} 1.0' in text
        shown = {s["name"]: s for s in cli_json(config, "oauth", "status")}
        assert shown["sales"]["last_error"] and shown["support"]["last_error"] is None
        assert len(alerts()) == 1  # the failing mailbox kept retrying all along: one mail
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    # Every mail became a ticket; every customer got one acknowledgement; every mail left as
    # the support account; no rotated-out refresh token was ever spent.
    tickets = cli_json(config, "tickets", "list")
    assert len(tickets) == sent
    assert all(len(v) == 1 for v in acks().values())
    assert {d.account for d in sink.deliveries} == {SUPPORT_USER}
    assert server.reused_refresh_tokens == 0
    assert server.refreshes >= 2 * PHASE / LIFETIME  # both tokens, refreshed ahead all along
