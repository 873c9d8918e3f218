"""What differs between providers, beyond the endpoints in helpdeskd.config.settings.

How a login is done (device code or a browser), how the client authenticates at the token
endpoint, what the authorization request must add, whether a refresh sends the scope, and how
long an unused refresh token lives.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from helpdeskd.config.settings import OAuthConfig, oauth_endpoints

__all__ = [
    "REFRESH_WARNING",
    "LoginFlow",
    "authorize_params",
    "login_flow",
    "oauth_endpoints",
    "refresh_expires_at",
    "refresh_expiry_due",
    "refresh_sends_scope",
    "token_auth_method",
]

LoginFlow = Literal["device", "browser"]

# Microsoft ends a refresh token that has not been used for 90 days; every refresh starts the
# 90 days again (the rotated token carries its own).
_INACTIVITY: dict[str, timedelta] = {"microsoft": timedelta(days=90)}

# Warn this long before a refresh token is known to expire.
REFRESH_WARNING = timedelta(days=7)


def login_flow(oauth: OAuthConfig, *, browser: bool = False) -> LoginFlow:
    """Return how ``oauth login`` gets the first token: a device code unless BROWSER is asked
    for or the provider has no device endpoint (Google: its device flow refuses mail scopes).

    Microsoft grants device codes to public clients only: a client with a secret signs in
    through the browser, and its refresh tokens then stay its own.
    """
    if browser or oauth.device_authorization_url is None:
        return "browser"
    if oauth.provider == "microsoft" and oauth.client_secret is not None:
        return "browser"
    return "device"


def token_auth_method(oauth: OAuthConfig) -> str:
    """Return how the client authenticates at the token endpoint (RFC 6749 section 2.3)."""
    if oauth.client_secret is None:
        return "none"  # a public client sends its client_id only
    # Microsoft and Google document the secret in the form; RFC 6749 makes Basic the default.
    return "client_secret_basic" if oauth.provider == "generic" else "client_secret_post"


def authorize_params(oauth: OAuthConfig) -> dict[str, str]:
    """Return what the provider's authorization request needs beyond RFC 6749 and PKCE."""
    if oauth.provider == "google":
        # No refresh token without offline access, and none on a second consent without prompt.
        return {"access_type": "offline", "prompt": "consent"}
    return {}


def refresh_sends_scope(oauth: OAuthConfig) -> bool:
    """Whether a refresh request repeats the scope (Google's refresh takes none)."""
    return oauth.provider != "google" and bool(oauth.scope)


def refresh_expires_at(oauth: OAuthConfig, token: dict[str, Any], now: datetime) -> datetime | None:
    """Return when the refresh token in TOKEN (a token response received at NOW) expires.

    ``refresh_token_expires_in`` in the response wins (Google's testing apps, Microsoft's
    single-page apps); else the provider's inactivity limit from NOW; else None (unknown).
    """
    seconds = token.get("refresh_token_expires_in")
    if isinstance(seconds, (int, float, str)) and not isinstance(seconds, bool):
        try:
            return now + timedelta(seconds=float(seconds))
        except (ValueError, OverflowError):
            pass
    inactivity = _INACTIVITY.get(oauth.provider)
    return now + inactivity if inactivity is not None else None


def refresh_expiry_due(refresh_expires_at: datetime | None, now: datetime) -> bool:
    """Whether to warn now that the refresh token expires at REFRESH_EXPIRES_AT (within
    :data:`REFRESH_WARNING`, or already past)."""
    return refresh_expires_at is not None and refresh_expires_at - now <= REFRESH_WARNING
