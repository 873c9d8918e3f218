"""What differs between providers: login flow, client authentication, authorization parameters,
scope on refresh, and when a refresh token expires (and when to warn of it)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import OAuthConfig, oauth_endpoints
from helpdeskd.oauth.providers import (
    REFRESH_WARNING,
    authorize_params,
    login_flow,
    refresh_expires_at,
    refresh_expiry_due,
    refresh_sends_scope,
    token_auth_method,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def oauth(provider: str, **changes: object) -> OAuthConfig:
    grant = str(changes.get("grant", "refresh_token"))
    ends = oauth_endpoints(
        provider, tenant="organizations" if provider == "microsoft" else None, grant=grant
    )
    config = OAuthConfig(
        provider=provider,
        client_id="c",
        client_secret=None,
        grant=grant,
        token_file=Path("/t.json"),
        mechanism="xoauth2",
        token_url=ends.token_url or "https://id.example/token",
        device_authorization_url=ends.device_authorization_url,
        authorization_url=ends.authorization_url,
        scope=ends.scope,
        tenant="organizations" if provider == "microsoft" else None,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def test_endpoints_per_provider() -> None:
    ms = oauth_endpoints("microsoft", tenant="acme.example", grant="refresh_token")
    assert ms.token_url == "https://login.microsoftonline.com/acme.example/oauth2/v2.0/token"
    assert ms.device_authorization_url and ms.device_authorization_url.endswith("/devicecode")
    app = oauth_endpoints("microsoft", tenant=None, grant="client_credentials")
    assert app.scope == "https://outlook.office365.com/.default"
    assert "/organizations/" in (app.token_url or "")
    google = oauth_endpoints("google", tenant=None, grant="refresh_token")
    assert google.device_authorization_url is None and google.scope == "https://mail.google.com/"
    generic = oauth_endpoints("generic", tenant=None, grant="refresh_token")
    assert generic.token_url is None and generic.scope == ""


def test_login_flow() -> None:
    assert login_flow(oauth("microsoft")) == "device"
    assert login_flow(oauth("microsoft"), browser=True) == "browser"
    assert login_flow(oauth("microsoft", client_secret=Secret("s"))) == "browser"
    assert login_flow(oauth("google")) == "browser"
    assert login_flow(oauth("generic")) == "browser"  # no device_authorization_url given
    assert login_flow(oauth("generic", device_authorization_url="https://x/d")) == "device"


def test_client_authentication() -> None:
    secret = Secret("s")
    assert token_auth_method(oauth("microsoft")) == "none"
    assert token_auth_method(oauth("microsoft", client_secret=secret)) == "client_secret_post"
    assert token_auth_method(oauth("google", client_secret=secret)) == "client_secret_post"
    assert token_auth_method(oauth("generic", client_secret=secret)) == "client_secret_basic"


def test_authorization_and_refresh_parameters() -> None:
    assert authorize_params(oauth("google")) == {"access_type": "offline", "prompt": "consent"}
    assert authorize_params(oauth("microsoft")) == {}
    assert not refresh_sends_scope(oauth("google"))
    assert refresh_sends_scope(oauth("microsoft"))
    assert not refresh_sends_scope(oauth("generic"))  # no scope configured
    assert refresh_sends_scope(oauth("generic", scope="mail"))


@pytest.mark.parametrize(
    ("provider", "response", "expected"),
    [
        ("generic", {}, None),
        ("google", {}, None),
        ("microsoft", {}, NOW + timedelta(days=90)),  # 90 days of inactivity
        ("google", {"refresh_token_expires_in": 604799}, NOW + timedelta(seconds=604799)),
        ("microsoft", {"refresh_token_expires_in": "86400"}, NOW + timedelta(days=1)),
        ("generic", {"refresh_token_expires_in": "soon"}, None),
        ("generic", {"refresh_token_expires_in": True}, None),
    ],
)
def test_refresh_expires_at(
    provider: str, response: dict[str, object], expected: datetime | None
) -> None:
    assert refresh_expires_at(oauth(provider), response, NOW) == expected


def test_refresh_expiry_warning() -> None:
    assert timedelta(days=7) == REFRESH_WARNING
    assert not refresh_expiry_due(None, NOW)
    assert not refresh_expiry_due(NOW + timedelta(days=7, seconds=1), NOW)
    assert refresh_expiry_due(NOW + timedelta(days=7), NOW)
    assert refresh_expiry_due(NOW - timedelta(days=1), NOW)  # already expired
