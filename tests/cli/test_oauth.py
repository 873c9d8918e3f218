"""``helpdeskd oauth login`` and ``oauth status`` as an admin runs them: the device code printed
at once and approved at the test authorization server, while a daemon refreshes the same token."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

from helpdeskd.cli.oauth import _line
from helpdeskd.clock import system_clock
from helpdeskd.config.load import load_config
from helpdeskd.config.settings import Config
from helpdeskd.oauth.credential import Credentials, CredentialStatus, read_statuses
from helpdeskd.oauth.state import TokenState
from helpdeskd.oauth.tokenfile import TokenFile
from tests.harness import ROOT, cli, cli_json
from tests.servers.oauth import AuthServer

ACCOUNT = "support@acme.test"
CODE_LINE = re.compile(r"^To sign in as \S+, open (\S+) and enter the code (\S+)$")
STATUS_KEYS = ["name", "provider", "account", "expires_at", "last_refresh", "last_error"]


def write_config(tmp_path: Path, server: AuthServer) -> Config:
    """Write a helpdeskd.toml whose mailbox and [smtp] share one token file of SERVER's."""
    (tmp_path / "secret.key").write_text("k1 test-secret-key-0123456789abcdef\n")
    (tmp_path / "oauth-secret").write_text(AuthServer.CLIENT_SECRET + "\n")
    oauth = f"""\
provider = "generic"
client_id = "{AuthServer.CLIENT_ID}"
client_secret_file = "oauth-secret"
token_file = "oauth/support.json"
token_url = "{server.token_url}"
device_authorization_url = "{server.device_authorization_url}"
scope = "mail"
"""
    path = tmp_path / "helpdeskd.toml"
    path.write_text(
        f"""\
[service]
name = "Acme"
support_address = "{ACCOUNT}"
public_url = "https://support.acme.test"
secret_key_file = "secret.key"

[database]
url = "sqlite:///{tmp_path / "helpdeskd.db"}"

[[mailbox]]
name = "support"
host = "127.0.0.1"
security = "none"
username = "{ACCOUNT}"
auth = "oauth2"

[mailbox.oauth]
{oauth}
[smtp]
host = "127.0.0.1"
security = "none"
username = "{ACCOUNT}"
auth = "oauth2"

[smtp.oauth]
{oauth}"""
    )
    return load_config(path)


class LoginCommand:
    """`helpdeskd oauth login NAME` running as a separate process; its lines as they come."""

    def __init__(self, config: Config, *args: str) -> None:
        env = dict(os.environ, HELPDESKD_CONFIG=str(config.source))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpdeskd", "oauth", "login", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._line = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._line:
                self.lines.append(line.rstrip("\n"))
                self._line.notify_all()

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        self.errors.extend(self.proc.stderr)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """Wait for a printed line matching PATTERN: printed (flushed) while the command waits."""
        with self._line:
            found: list[re.Match[str]] = []

            def seen() -> bool:
                found[:] = [m for line in self.lines if (m := pattern.search(line))]
                return bool(found) or self.proc.poll() is not None

            self._line.wait_for(seen, timeout)
        assert found, f"no line like {pattern.pattern} in {self.lines}"
        return found[0]

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for the command to end; return its exit status and what it wrote to stderr."""
        try:
            self.proc.wait(timeout)
        finally:
            self.kill()
        return self.proc.returncode, "".join(self.errors)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _is_iso_utc(value: object) -> bool:
    return (
        isinstance(value, str) and value.endswith("+00:00") and bool(datetime.fromisoformat(value))
    )


async def test_device_login_end_to_end_while_a_daemon_refreshes(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, auth_server)
    token_file = tmp_path / "oauth" / "support.json"
    # a daemon that already runs on an earlier login keeps refreshing throughout
    TokenFile(token_file).write_now(
        TokenState(
            provider="generic",
            refresh_token=auth_server.issue_refresh_token(ACCOUNT),
            account=ACCOUNT,
            obtained_at=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        )
    )
    credential = Credentials(config).for_smtp()
    assert credential is not None
    done = asyncio.Event()

    async def daemon() -> int:
        count = 0
        while not done.is_set() or count < 2:
            credential.invalidate()
            await credential.access_token()
            count += 1
            await asyncio.sleep(0.2)
        return count

    refreshing = asyncio.create_task(daemon())
    command = LoginCommand(config, "support")
    try:
        found = await asyncio.to_thread(command.wait_for, CODE_LINE)
        assert found[1] == auth_server.base_url + "/device"
        await asyncio.to_thread(auth_server.approve_device, found[2], ACCOUNT)
        status, err = await asyncio.to_thread(command.finish)
    finally:
        command.kill()
        done.set()
    assert status == 0, err
    assert await refreshing >= 2
    assert command.lines[-1] == f"support: signed in; the refresh token is in {token_file}"
    credential.invalidate()
    await credential.access_token()  # on the new login's token now
    assert auth_server.reused_refresh_tokens == 0
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"

    # what `oauth status --json` prints (its empty shape is run as a command below)
    after = [status.as_json() for status in await read_statuses(config, None)]
    assert [list(item) for item in after] == [STATUS_KEYS, STATUS_KEYS]
    for item in after:
        assert _is_iso_utc(item["expires_at"]) and _is_iso_utc(item["last_refresh"])
        assert item["last_error"] is None and item["account"] == ACCOUNT
    assert after[0] == {**after[1], "name": "support"}  # one shared token file


def test_a_failed_login_is_one_line(auth_server: AuthServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, auth_server)
    auth_server.stop()
    proc = cli(config, "oauth", "login", "smtp", check=False)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith("helpdeskd: device authorization: 127.0.0.1 unreachable")


def test_status_before_login_and_after_the_daemons_failure(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, auth_server)
    empty = {"provider": "generic", "account": ACCOUNT, "expires_at": None, "last_refresh": None}
    assert cli_json(config, "oauth", "status") == [
        {"name": "support", **empty, "last_error": None},
        {"name": "smtp", **empty, "last_error": None},
    ]
    TokenFile(tmp_path / "oauth" / "support.json").write_now(
        TokenState(
            provider="generic",
            refresh_token="rt-dead",
            account=ACCOUNT,
            last_refresh=datetime.fromisoformat("2026-12-01T10:00:00+00:00"),
            last_error="mailbox support: the refresh token was refused (invalid_grant)",
            last_error_at=datetime.fromisoformat("2026-12-01T11:00:00+00:00"),
        )
    )
    text = cli(config, "oauth", "status").stdout.splitlines()
    assert text[0].startswith(
        "support (generic, support@acme.test): access token expires unknown; "
        "last refresh 2026-12-01T10:00:00+00:00; last error at 2026-12-01T11:00:00+00:00: "
        "mailbox support: the refresh token was refused (invalid_grant)"
    )
    assert text[1].startswith("smtp (generic, support@acme.test): access token expires unknown")


def test_status_lines() -> None:
    now = system_clock()
    waiting = CredentialStatus("support", "microsoft", ACCOUNT, None, None, None)
    assert _line(waiting) == (
        f"support (microsoft, {ACCOUNT}): not logged in; run 'helpdeskd oauth login support'"
    )
    expiring = CredentialStatus(
        "smtp",
        "microsoft",
        None,
        now,
        now,
        None,
        refresh_expires_at=now + timedelta(days=3),
        logged_in=True,
    )
    line = _line(expiring)
    assert line.startswith("smtp (microsoft, account unknown): access token expires ")
    assert line.endswith(": run 'helpdeskd oauth login smtp' before then")
    assert "the refresh token expires" in line
    later = CredentialStatus(
        "smtp",
        "microsoft",
        None,
        now,
        now,
        None,
        refresh_expires_at=now + timedelta(days=30),
        logged_in=True,
    )
    assert "refresh token" not in _line(later)
