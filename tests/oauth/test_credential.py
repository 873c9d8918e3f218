"""Credentials against the real test authorization server: refreshed ahead of expiry, the rotated
refresh token written before the access token is used, one refresher at a time per token file,
and failures that say what to run."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from helpdeskd.oauth import OAuthError
from helpdeskd.oauth.credential import (
    Credential,
    Credentials,
    login_needed,
    read_statuses,
    refresh_margin,
    refresh_warnings,
)
from helpdeskd.oauth.state import TokenState
from helpdeskd.oauth.tokenfile import TokenFile
from tests.clocks import ManualClock
from tests.oauth.support import ACCOUNT, Holder, make_config, oauth_table
from tests.servers.oauth import AuthServer


def logged_in(server: AuthServer, path: Path) -> str:
    """Store a fresh refresh token for ACCOUNT in PATH, as `oauth login` would; return it."""
    refresh = server.issue_refresh_token(ACCOUNT)
    TokenFile(path).write_now(
        TokenState(provider="generic", refresh_token=refresh, account=ACCOUNT)
    )
    return refresh


def stored(path: Path) -> TokenState:
    state = TokenFile(path).read_now()
    assert state is not None
    return state


def test_margin() -> None:
    assert refresh_margin(timedelta(hours=1)) == timedelta(minutes=5)
    assert refresh_margin(timedelta(seconds=60)) == timedelta(seconds=20)


async def test_refreshed_ahead_of_expiry(auth_server: AuthServer, tmp_path: Path) -> None:
    auth_server.access_lifetime = 60
    path = tmp_path / "oauth" / "support.json"
    logged_in(auth_server, path)
    clock = ManualClock()
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    credential = Credentials(config, None, clock).for_mailbox("support")
    assert credential is not None

    first = await credential.access_token()
    assert await credential.access_token() == first  # cached
    clock.advance(seconds=39)  # a 60 s token is refreshed 20 s before it expires
    assert await credential.access_token() == first
    assert auth_server.refreshes == 1
    clock.advance(seconds=2)
    second = await credential.access_token()
    assert second != first and auth_server.refreshes == 2
    # ahead of expiry: the old token was still good when it was replaced
    assert auth_server.introspect(first)["active"]
    assert auth_server.introspect(second)["username"] == ACCOUNT

    status = credential.status()
    assert status.last_refresh == clock.now and status.last_error is None
    assert status.expires_at is not None and (status.expires_at - clock.now).total_seconds() == 60


async def test_the_rotated_token_is_stored_before_use_and_survives_a_restart(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "support.json"
    original = logged_in(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    credential = Credentials(config).for_mailbox("support")
    assert credential is not None
    await credential.access_token()
    rotated = stored(path).refresh_token
    assert rotated and rotated != original
    assert auth_server.introspect(rotated, "refresh_token")["active"]
    assert "access_token" not in json.loads(path.read_text())
    assert "at-" not in path.read_text()  # no access token on disk

    # a restart: a new process reads the rotated token and spends it, never the old one
    again = Credentials(config).for_mailbox("support")
    assert again is not None
    await again.access_token()
    assert auth_server.refreshes == 2 and auth_server.reused_refresh_tokens == 0


async def test_a_shared_token_file_is_one_credential(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "shared.json"
    logged_in(auth_server, path)
    table = oauth_table(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": table, "billing": table}, smtp=table)
    credentials = Credentials(config)
    support = credentials.for_mailbox("support")
    assert support is not None
    assert credentials.for_mailbox("billing") is support and credentials.for_smtp() is support
    assert credentials.all() == [support] and support.users == ["support", "billing", "smtp"]
    assert [name for name, _ in credentials.named()] == ["support", "billing", "smtp"]
    tokens = await asyncio.gather(*(c.access_token() for _, c in credentials.named()))
    assert len(set(tokens)) == 1 and auth_server.refreshes == 1
    assert [s.name for s in credentials.statuses()] == ["support", "billing", "smtp"]

    # a reload keeps the credential, and its token, when nothing changed
    reloaded = Credentials(config, previous=credentials)
    assert reloaded.for_mailbox("support") is support
    assert await support.access_token() == tokens[0]


async def test_two_processes_on_one_token_file_never_spend_a_rotated_token(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "support.json"
    logged_in(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    # two registries stand for two daemons (or a daemon and a command) on one machine
    one = Credentials(config).for_mailbox("support")
    two = Credentials(config).for_mailbox("support")
    assert one is not None and two is not None and one is not two

    async def keep_refreshing(credential: Credential) -> None:
        for _ in range(5):
            credential.invalidate()
            await credential.access_token()

    await asyncio.gather(keep_refreshing(one), keep_refreshing(two))
    assert auth_server.refreshes == 10
    assert auth_server.reused_refresh_tokens == 0
    latest = stored(path).refresh_token
    assert latest and auth_server.introspect(latest, "refresh_token")["active"]


async def test_invalid_grant_names_the_command(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    logged_in(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    credential = Credentials(config).for_mailbox("support")
    assert credential is not None
    await credential.access_token()
    auth_server.revoke_account(ACCOUNT)
    credential.invalidate()
    with pytest.raises(OAuthError) as caught:
        await credential.access_token()
    error = caught.value
    assert error.code == "invalid_grant" and not error.temporary
    assert error.fix == "helpdeskd oauth login support"
    assert str(error).startswith("mailbox support: the refresh token was refused")
    assert str(error).endswith("; run 'helpdeskd oauth login support'")
    assert "\n" not in str(error)
    # recorded where `oauth status` reads it, and in memory
    assert stored(path).last_error == str(error)
    assert credential.status().last_error == str(error)
    [status] = await read_statuses(config, None)
    assert status.last_error == str(error) and status.last_error_at is not None
    assert status.logged_in  # the (dead) refresh token is still there


async def test_no_login_yet(auth_server: AuthServer, tmp_path: Path) -> None:
    path = tmp_path / "oauth" / "support.json"
    table = oauth_table(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": table}, smtp=table)
    assert login_needed(config) == ["helpdeskd oauth login support"]  # one file, one login
    credential = Credentials(config).for_smtp()
    assert credential is not None
    with pytest.raises(OAuthError) as caught:
        await credential.access_token()
    assert caught.value.code == "login_required"
    assert caught.value.fix == "helpdeskd oauth login support"
    assert not path.exists()  # nothing to record yet
    assert auth_server.token_requests == []
    [support, smtp] = await read_statuses(config, None)
    assert not support.logged_in and smtp.name == "smtp" and smtp.account == ACCOUNT
    logged_in(auth_server, path)
    assert login_needed(config) == []


async def test_client_credentials(auth_server: AuthServer, tmp_path: Path) -> None:
    auth_server.app_client("app", "app-secret-0123", "shared@acme.test")
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
    assert login_needed(config) == []
    credential = Credentials(config).for_mailbox("support")
    assert credential is not None
    token = await credential.access_token()
    assert auth_server.introspect(token)["username"] == "shared@acme.test"
    state = stored(path)
    assert state.refresh_token is None and state.last_refresh is not None
    assert auth_server.token_requests == ["client_credentials"]
    [status] = await read_statuses(config, None)
    assert status.logged_in and status.last_refresh == state.last_refresh


async def test_an_unreachable_server_is_temporary_and_recorded(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "support.json"
    refresh = logged_in(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    credential = Credentials(config).for_mailbox("support")
    assert credential is not None
    auth_server.stop()
    with pytest.raises(OAuthError) as caught:
        await credential.access_token()
    assert caught.value.code == "unreachable" and caught.value.temporary
    assert caught.value.fix is None
    assert stored(path).refresh_token == refresh  # kept: it was never spent
    assert stored(path).last_error == str(caught.value)
    auth_server.start()
    await credential.access_token()
    assert stored(path).last_error is None and credential.status().last_error is None


async def test_a_token_in_hand_outlasts_a_provider_that_is_down(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "support.json"
    logged_in(auth_server, path)
    clock = ManualClock()
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    credential = Credentials(config, None, clock).for_mailbox("support")
    assert credential is not None
    token = await credential.access_token()
    auth_server.stop()
    clock.advance(minutes=56)  # due for a refresh, 4 minutes before it expires
    assert await credential.access_token() == token
    assert credential.status().last_error is not None  # but it is said
    clock.advance(minutes=5)  # expired now
    with pytest.raises(OAuthError) as caught:
        await credential.access_token()
    assert caught.value.code == "unreachable"


async def test_a_cancelled_caller_does_not_cut_a_refresh_short(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "support.json"
    original = logged_in(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    credential = Credentials(config).for_mailbox("support")
    assert credential is not None
    holder = Holder(TokenFile(path))  # the refresh waits for the lock
    caller = asyncio.create_task(credential.access_token())
    await asyncio.sleep(0.1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    holder.release()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while stored(path).refresh_token == original:  # the refresh went on, and was written
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert auth_server.refreshes == 1
    await credential.access_token()
    assert auth_server.reused_refresh_tokens == 0


async def test_keep_fresh_refreshes_what_is_due_and_names_refresh_tokens_about_to_end(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    # A provider that ends refresh tokens after three days whatever the client does (Google's
    # apps in Testing mode say so in refresh_token_expires_in)
    auth_server.access_lifetime = 60
    auth_server.refresh_lifetime = 3 * 24 * 3600
    ending, lasting = tmp_path / "oauth" / "ending.json", tmp_path / "oauth" / "lasting.json"
    logged_in(auth_server, ending)
    clock = ManualClock()
    config = make_config(
        tmp_path,
        mailboxes={
            "support": oauth_table(auth_server, ending),
            "sales": oauth_table(auth_server, lasting),  # not logged in: a failure, recorded
        },
    )
    credentials = Credentials(config, None, clock)
    expiring = await credentials.keep_fresh()
    assert [c.name for c in expiring] == ["support"]
    statuses = {s.name: s for s in credentials.statuses()}
    assert statuses["support"].expires_at is not None and statuses["support"].last_error is None
    assert "not logged in" in (statuses["sales"].last_error or "")
    refreshes = auth_server.refreshes
    clock.advance(seconds=30)  # not due yet: nothing asked of the server
    await credentials.keep_fresh()
    assert auth_server.refreshes == refreshes
    clock.advance(seconds=15)  # due (20 s before the 60 s token expires): refreshed
    await credentials.keep_fresh()
    assert auth_server.refreshes == refreshes + 1


async def test_a_refresh_token_without_a_known_end_is_not_warned_about(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "oauth" / "support.json"
    logged_in(auth_server, path)
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    assert await Credentials(config, None, ManualClock()).keep_fresh() == []


async def test_check_warns_of_a_refresh_token_the_provider_ends_within_a_week(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    auth_server.refresh_lifetime = 3 * 24 * 3600
    path = tmp_path / "oauth" / "support.json"
    logged_in(auth_server, path)
    clock = ManualClock()
    config = make_config(tmp_path, mailboxes={"support": oauth_table(auth_server, path)})
    assert refresh_warnings(config, clock()) == []  # nothing known of its end yet
    await Credentials(config, None, clock).keep_fresh()  # the refresh says: three days
    [warning] = refresh_warnings(config, clock())
    assert warning.startswith("support's refresh token expires ")
    assert warning.endswith("run helpdeskd oauth login support before then")
    assert refresh_warnings(config, clock() - timedelta(days=5)) == []  # 8 days ahead: quiet
