"""The token endpoint requests (Authlib) against the real test authorization server."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.oauth.client import DevicePending, TokenClient
from helpdeskd.oauth.errors import OAuthError
from tests.oauth.support import ACCOUNT, first_oauth, make_config, oauth_table, public_table
from tests.servers.oauth import AuthServer


def client(server: AuthServer, tmp_path: Path, **changes: object) -> TokenClient:
    table = oauth_table(server, tmp_path / "t.json", **changes)
    return TokenClient(first_oauth(make_config(tmp_path, mailboxes={"support": table})))


async def test_refresh_rotates(auth_server: AuthServer, tmp_path: Path) -> None:
    old = auth_server.issue_refresh_token(ACCOUNT)
    response = await client(auth_server, tmp_path).refresh(old)
    assert response.refresh_token and response.refresh_token != old
    assert response.expires_in == 3600
    assert auth_server.introspect(response.access_token)["username"] == ACCOUNT
    assert auth_server.introspect(response.refresh_token, "refresh_token")["active"]
    assert not auth_server.introspect(old, "refresh_token")["active"]
    assert "rt-" not in repr(response) and "at-" not in repr(response)


async def test_refresh_of_a_public_client(auth_server: AuthServer, tmp_path: Path) -> None:
    old = auth_server.issue_refresh_token(ACCOUNT, client_id=AuthServer.PUBLIC_CLIENT_ID)
    table = public_table(auth_server, tmp_path / "t.json")
    token = TokenClient(first_oauth(make_config(tmp_path, mailboxes={"support": table})))
    response = await token.refresh(old)
    assert auth_server.introspect(response.access_token)["client_id"] == "helpdeskd-public"


async def test_invalid_grant(auth_server: AuthServer, tmp_path: Path) -> None:
    with pytest.raises(OAuthError) as caught:
        await client(auth_server, tmp_path).refresh("rt-never-issued")
    assert caught.value.code == "invalid_grant"
    assert str(caught.value).startswith("refresh refused by 127.0.0.1 (invalid_grant")
    assert "rt-never-issued" not in str(caught.value)


async def test_a_wrong_client_secret(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPDESKD_TEST_OAUTH_CLIENT_SECRET", "wrong-secret")
    token = client(auth_server, tmp_path)
    with pytest.raises(OAuthError) as caught:
        await token.refresh(auth_server.issue_refresh_token(ACCOUNT))
    assert caught.value.code == "invalid_client"
    assert "wrong-secret" not in str(caught.value)


async def test_client_credentials(auth_server: AuthServer, tmp_path: Path) -> None:
    auth_server.app_client("app", "app-secret-0123", ACCOUNT)
    token = (
        client(
            auth_server,
            tmp_path,
            client_id="app",
            client_secret_env=None,
            client_secret_file=str(tmp_path / "app-secret"),
            grant="client_credentials",
        )
        if (tmp_path / "app-secret").write_text("app-secret-0123\n")
        else None
    )
    assert token is not None
    response = await token.client_credentials()
    assert response.refresh_token is None
    assert auth_server.introspect(response.access_token)["username"] == ACCOUNT


async def test_server_errors_and_silence(auth_server: AuthServer, tmp_path: Path) -> None:
    token = client(auth_server, tmp_path)
    refresh = auth_server.issue_refresh_token(ACCOUNT)
    auth_server.fail_token_requests(1, status=503)
    with pytest.raises(OAuthError, match="answered HTTP 503") as caught:
        await token.refresh(refresh)
    assert caught.value.code == "server_error" and caught.value.temporary
    auth_server.fail_token_requests(1, status=400, error="temporarily_unavailable")
    with pytest.raises(OAuthError) as caught:
        await token.refresh(refresh)
    assert caught.value.code == "temporarily_unavailable" and caught.value.temporary
    auth_server.stop()
    with pytest.raises(OAuthError, match=r"127\.0\.0\.1 unreachable") as caught:
        await token.refresh(refresh)
    assert caught.value.code == "unreachable" and caught.value.temporary
    auth_server.start()
    assert (await token.refresh(refresh)).refresh_token  # the refresh token was never spent


async def test_device_code(auth_server: AuthServer, tmp_path: Path) -> None:
    token = client(auth_server, tmp_path)
    device = await token.device_authorization()
    assert device.verification_uri == auth_server.base_url + "/device"
    assert device.interval == 1 and device.expires_in == 600
    with pytest.raises(DevicePending):
        await token.poll_device(device.device_code)
    auth_server.approve_device(device.user_code, ACCOUNT)
    response = await token.poll_device(device.device_code)
    assert response.refresh_token is not None
    assert auth_server.introspect(response.access_token)["username"] == ACCOUNT
