"""``oauth login`` in-process against the test authorization server: the device code (RFC 8628)
and the authorization code with PKCE on a loopback redirect, each driven by the test as the user."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import pytest

from helpdeskd.errors import UserError
from helpdeskd.oauth import OAuthError
from helpdeskd.oauth.credential import Credentials
from helpdeskd.oauth.login import account_of, login
from helpdeskd.oauth.tokenfile import TokenFile
from helpdeskd.store.db import create_engine, sessionmaker
from helpdeskd.store.models import OAuthToken
from tests.oauth.support import ACCOUNT, make_config, oauth_table, public_table
from tests.servers.oauth import AuthServer

CODE_LINE = re.compile(r"^To sign in as (\S+), open (\S+) and enter the code (\S+)$")


class Screen:
    """What the command says, line by line, with a way to wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def say(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        async def find() -> re.Match[str]:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), 20)


def stored_refresh(path: Path) -> str:
    state = TokenFile(path).read_now()
    assert state is not None and state.refresh_token is not None
    return state.refresh_token


async def test_device_login(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "oauth" / "support.json"
    config = make_config(tmp_path, mailboxes={"support": public_table(auth_server, path)})
    screen = Screen()
    task = asyncio.create_task(login(config, "support", sessions=None, say=screen.say))
    found = await screen.wait_for(CODE_LINE.pattern)
    assert found[1] == ACCOUNT and found[2] == auth_server.base_url + "/device"
    assert auth_server.pending_user_codes() == [found[3]]
    await asyncio.to_thread(auth_server.approve_device, found[3], ACCOUNT)
    result = await asyncio.wait_for(task, 20)

    refresh = stored_refresh(path)
    assert auth_server.introspect(refresh, "refresh_token")["username"] == ACCOUNT
    assert result.account == ACCOUNT and result.stored_in == (str(path),)
    assert screen.lines[1].startswith("Waiting for the sign-in (the code expires in 10 minutes)")
    assert screen.lines[-1] == f"support: signed in; the refresh token is in {path}"
    assert auth_server.device_fast_polls == 0
    state = TokenFile(path).read_now()
    assert state is not None and state.obtained_at == state.last_refresh
    assert state.obtained_at is not None and state.obtained_at.microsecond == 0


async def test_device_login_slows_down_when_asked(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    auth_server.device_slow_down = 1
    screen = Screen()
    task = asyncio.create_task(login(config, "support", sessions=None, say=screen.say))
    code = (await screen.wait_for(CODE_LINE.pattern))[3]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while auth_server.device_slow_down:  # the first poll got slow_down
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    auth_server.approve_device(code, ACCOUNT)
    await asyncio.wait_for(task, 30)
    assert auth_server.device_fast_polls == 0  # it waited the longer interval
    stored_refresh(path)


async def test_a_declined_device_login(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    screen = Screen()
    task = asyncio.create_task(login(config, "support", sessions=None, say=screen.say))
    auth_server.deny_device((await screen.wait_for(CODE_LINE.pattern))[3])
    with pytest.raises(OAuthError, match=r"^support: the sign-in was declined$"):
        await asyncio.wait_for(task, 20)
    assert not path.exists()


async def test_browser_login_with_pkce(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    table = public_table(auth_server, path, device_authorization_url=None)  # browser only
    config = make_config(tmp_path, mailboxes={"support": table})
    screen = Screen()
    task = asyncio.create_task(login(config, "support", sessions=None, say=screen.say))
    url = (await screen.wait_for(r"^(http://127\.0\.0\.1:\d+/authorize\?.*)$"))[1]
    assert "code_challenge_method=S256" in url and "code_challenge=" in url
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url
    redirect = await asyncio.to_thread(auth_server.authorize, url, ACCOUNT)
    assert redirect.startswith("http://127.0.0.1:") and "code=" in redirect
    await asyncio.wait_for(task, 20)
    assert auth_server.introspect(stored_refresh(path), "refresh_token")["username"] == ACCOUNT
    assert (
        screen.lines[0] == f"Open this URL in a browser on this machine and sign in as {ACCOUNT}:"
    )


async def test_browser_login_refused(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    screen = Screen()
    task = asyncio.create_task(
        login(config, "support", sessions=None, say=screen.say, browser=True)
    )
    url = (await screen.wait_for(r"^(http://127\.0\.0\.1:\d+/authorize\?.*)$"))[1]
    await asyncio.to_thread(auth_server.deny, url)
    with pytest.raises(OAuthError, match="access_denied") as caught:
        await asyncio.wait_for(task, 20)
    assert caught.value.code == "access_denied"


async def test_a_browser_that_never_comes_back(auth_server: AuthServer, tmp_path: Path) -> None:
    table = oauth_table(auth_server, tmp_path / "t.json")
    config = make_config(tmp_path, mailboxes={"support": table})
    with pytest.raises(OAuthError, match="did not come back"):
        await login(
            config,
            "support",
            sessions=None,
            say=lambda _: None,
            browser=True,
            browser_timeout=0.2,
        )


async def test_login_while_the_daemon_refreshes(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    table = oauth_table(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": table})
    screen = Screen()
    first = asyncio.create_task(login(config, "support", sessions=None, say=screen.say))
    auth_server.approve_device((await screen.wait_for(CODE_LINE.pattern))[3], ACCOUNT)
    await first
    credential = Credentials(config).for_mailbox("support")
    assert credential is not None
    done = asyncio.Event()

    async def daemon() -> int:
        count = 0
        while not done.is_set() or count < 3:
            credential.invalidate()
            await credential.access_token()
            count += 1
            await asyncio.sleep(0.05)
        return count

    refreshing = asyncio.create_task(daemon())
    again = Screen()
    second = asyncio.create_task(login(config, "support", sessions=None, say=again.say))
    auth_server.approve_device((await again.wait_for(CODE_LINE.pattern))[3], ACCOUNT)
    await asyncio.wait_for(second, 20)
    done.set()
    assert await asyncio.wait_for(refreshing, 20) >= 3
    credential.invalidate()
    await credential.access_token()  # the new login's token, rotated
    assert auth_server.reused_refresh_tokens == 0
    assert auth_server.introspect(stored_refresh(path), "refresh_token")["active"]


async def test_client_credentials_need_no_login(auth_server: AuthServer, tmp_path: Path) -> None:
    auth_server.app_client("app", "app-secret-0123", ACCOUNT)
    (tmp_path / "app-secret").write_text("app-secret-0123\n")
    path = tmp_path / "app.json"
    table = oauth_table(
        auth_server,
        path,
        client_id="app",
        client_secret_env=None,
        client_secret_file=str(tmp_path / "app-secret"),
        grant="client_credentials",
    )
    config = make_config(tmp_path, mailboxes={"support": table})
    screen = Screen()
    await login(config, "support", sessions=None, say=screen.say)
    assert "needs no login" in screen.lines[0]
    state = TokenFile(path).read_now()
    assert state is not None and state.refresh_token is None and state.last_refresh


async def test_names(auth_server: AuthServer, tmp_path: Path) -> None:
    config = make_config(
        tmp_path, mailboxes={"support": oauth_table(auth_server, tmp_path / "t.json")}
    )
    with pytest.raises(
        UserError, match=r"^no mailbox named 'sales'; OAuth is set up for: support$"
    ):
        await login(config, "sales", sessions=None, say=print)
    with pytest.raises(UserError, match=r"^\[smtp\] does not use OAuth 2\.0"):
        await login(config, "smtp", sessions=None, say=print)


async def test_login_on_postgresql_stores_in_the_database_too(
    auth_server: AuthServer, tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "support.json"
    config = make_config(
        tmp_path, mailboxes={"support": oauth_table(auth_server, path)}, db_url=pg_url
    )
    engine = create_engine(pg_url)
    try:
        sessions = sessionmaker(engine)
        screen = Screen()
        task = asyncio.create_task(login(config, "support", sessions=sessions, say=screen.say))
        auth_server.approve_device((await screen.wait_for(CODE_LINE.pattern))[3], ACCOUNT)
        result = await asyncio.wait_for(task, 20)
        assert result.stored_in == (str(path), f"the database (row {path})")
        async with sessions() as session:
            row = await session.get(OAuthToken, str(path))
        assert row is not None and row.refresh_token and row.refresh_token.startswith("k1:")
    finally:
        await engine.dispose()


def test_account_of_an_id_token() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"preferred_username": "a@x"}).encode())
    assert account_of({"id_token": f"h.{claims.decode().rstrip('=')}.s"}) == "a@x"
    assert account_of({"id_token": "not.a-jwt!.x"}) is None
    assert account_of({}) is None
