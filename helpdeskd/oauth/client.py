"""The token endpoint requests, made with Authlib's AsyncOAuth2Client (over httpx2).

One :class:`TokenClient` per configured client: the refresh and client_credentials grants, the
device authorization request and its polling (RFC 8628), and the authorization code with PKCE
(RFC 7636). Every failure becomes an :class:`~helpdeskd.oauth.errors.OAuthError` whose code
is the server's OAuth error, ``unreachable`` or ``server_error``; no token or secret ever
reaches a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError as AuthlibError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2 import OAuth2Error

from helpdeskd.config.settings import OAuthConfig
from helpdeskd.oauth.errors import OAuthError
from helpdeskd.oauth.providers import authorize_params, refresh_sends_scope, token_auth_method

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TIMEOUT = 30.0  # seconds for one request to the token endpoint
DEFAULT_LIFETIME = 3600  # an access token's life when the response does not say
_MAX_DESCRIPTION = 200


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response: the access token is kept in memory only."""

    access_token: str
    expires_in: int  # seconds
    refresh_token: str | None
    raw: dict[str, Any]  # the whole response (refresh_token_expires_in, id_token, …)

    def __repr__(self) -> str:
        shown = "***" if self.refresh_token else None
        return f"TokenResponse(expires_in={self.expires_in}, refresh_token={shown})"


@dataclass(frozen=True)
class DeviceAuthorization:
    """The answer to a device authorization request (RFC 8628 section 3.2)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int


class DevicePending(Exception):
    """The user has not approved the device login yet; SLOW_DOWN: poll less often."""

    def __init__(self, slow_down: bool) -> None:
        super().__init__("authorization_pending" if not slow_down else "slow_down")
        self.slow_down = slow_down


class TokenClient:
    """Requests to the token endpoint of one configured client."""

    def __init__(self, oauth: OAuthConfig, *, timeout: float = TIMEOUT) -> None:
        self.oauth = oauth
        self.timeout = timeout

    def _client(self, **kwargs: Any) -> AsyncOAuth2Client:
        secret = self.oauth.client_secret
        return AsyncOAuth2Client(
            client_id=self.oauth.client_id,
            client_secret=None if secret is None else secret.reveal(),
            token_endpoint_auth_method=token_auth_method(self.oauth),
            timeout=self.timeout,
            follow_redirects=False,
            **kwargs,
        )

    # --- the daemon's grants ----------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> TokenResponse:
        """Exchange REFRESH_TOKEN for a new access token (and, mostly, a new refresh token)."""
        scope = self.oauth.scope if refresh_sends_scope(self.oauth) else None
        async with self._errors("refresh"), self._client(scope=scope) as client:
            raw = await client.refresh_token(self.oauth.token_url, refresh_token=refresh_token)
        return _response(raw)

    async def client_credentials(self) -> TokenResponse:
        """Get an access token for the client itself (app-only access; no refresh token)."""
        async with (
            self._errors("client_credentials"),
            self._client(scope=self.oauth.scope or None) as client,
        ):
            raw = await client.fetch_token(self.oauth.token_url, grant_type="client_credentials")
        return _response(raw)

    # --- device code (RFC 8628) -------------------------------------------------------------

    async def device_authorization(self) -> DeviceAuthorization:
        """Ask for a device code and the user code to show."""
        url = self.oauth.device_authorization_url
        if url is None:
            raise OAuthError("this provider has no device_authorization_url", code="config")
        form = {"scope": self.oauth.scope} if self.oauth.scope else {}
        async with self._errors("device authorization"), self._client() as client:
            response = await client.post(
                url,
                data=form,
                headers={"Accept": "application/json"},
                auth=client.client_auth(client.token_endpoint_auth_method),
            )
            data = _json(response)
        try:
            return DeviceAuthorization(
                device_code=str(data["device_code"]),
                user_code=str(data["user_code"]),
                # RFC 8628 says verification_uri; some servers still say verification_url.
                verification_uri=str(data.get("verification_uri") or data["verification_url"]),
                verification_uri_complete=data.get("verification_uri_complete"),
                expires_in=int(data.get("expires_in", 900)),
                interval=max(1, int(data.get("interval", 5))),
            )
        except (KeyError, TypeError, ValueError):
            raise OAuthError(
                "the device authorization response lacks device_code, user_code or "
                "verification_uri",
                code="server_error",
            ) from None

    async def poll_device(self, device_code: str) -> TokenResponse:
        """Ask once whether the user approved; raise DevicePending while they have not."""
        try:
            async with self._errors("device login"), self._client() as client:
                raw = await client.fetch_token(
                    self.oauth.token_url, grant_type=DEVICE_CODE_GRANT, device_code=device_code
                )
        except OAuthError as exc:
            if exc.code in ("authorization_pending", "slow_down"):
                raise DevicePending(exc.code == "slow_down") from None
            raise
        return _response(raw)

    # --- authorization code with PKCE (RFC 7636) --------------------------------------------

    def authorization_url(self, redirect_uri: str, verifier: str, state: str) -> str:
        """Return the URL the user opens to sign in and consent (S256 code challenge)."""
        if self.oauth.authorization_url is None:
            raise OAuthError("this provider has no authorization_url", code="config")
        client = self._client(
            scope=self.oauth.scope or None,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        )
        url, _ = client.create_authorization_url(
            self.oauth.authorization_url,
            state=state,
            code_verifier=verifier,
            **authorize_params(self.oauth),
        )
        return str(url)

    async def exchange_code(self, code: str, redirect_uri: str, verifier: str) -> TokenResponse:
        """Exchange the authorization CODE (with the PKCE VERIFIER) for tokens."""
        async with self._errors("sign-in"), self._client(redirect_uri=redirect_uri) as client:
            raw = await client.fetch_token(
                self.oauth.token_url,
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
            )
        return _response(raw)

    # --- errors -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        """Turn what Authlib and httpx2 raise into OAuthError, naming WHAT was asked."""
        host = _host(self.oauth.token_url)
        try:
            yield
        except (AuthlibError, OAuth2Error) as exc:
            code = str(getattr(exc, "error", None) or "oauth_error")
            description = _describe(getattr(exc, "description", None))
            detail = f"{code}: {description}" if description else code
            raise OAuthError(f"{what} refused by {host} ({detail})", code=code) from None
        except httpx2.HTTPStatusError as exc:
            raise OAuthError(
                f"{what}: {host} answered HTTP {exc.response.status_code}", code="server_error"
            ) from None
        except httpx2.TransportError as exc:
            reason = _describe(str(exc)) or type(exc).__name__
            raise OAuthError(f"{what}: {host} unreachable ({reason})", code="unreachable") from None
        except ValueError as exc:  # not a JSON object, or not a token response
            raise OAuthError(
                f"{what}: {host}: {_describe(str(exc))}", code="server_error"
            ) from None


def new_verifier() -> str:
    """Return a fresh PKCE code verifier (RFC 7636: 43 to 128 unreserved characters)."""
    return str(generate_token(64))


def new_state() -> str:
    """Return a fresh ``state`` for an authorization request (CSRF protection)."""
    return str(generate_token(32))


def _response(raw: Any) -> TokenResponse:
    if not isinstance(raw, dict):
        raise OAuthError("the token response is not a JSON object", code="server_error")
    token = raw.get("access_token")
    if not isinstance(token, str) or not token:
        raise OAuthError("the token response holds no access_token", code="server_error")
    token_type = str(raw.get("token_type", "Bearer"))
    if token_type.lower() != "bearer":
        raise OAuthError(
            f"the token response gives a {token_type!r} token, not Bearer", code="server_error"
        )
    try:
        expires_in = int(raw.get("expires_in") or DEFAULT_LIFETIME)
    except (TypeError, ValueError):
        expires_in = DEFAULT_LIFETIME
    refresh = raw.get("refresh_token")
    return TokenResponse(
        access_token=token,
        expires_in=max(1, expires_in),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        raw=dict(raw),
    )


def _json(response: httpx2.Response) -> dict[str, Any]:
    """Return RESPONSE's JSON object, raising an OAuth error response as Authlib would."""
    if response.status_code >= 500:
        response.raise_for_status()
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        response.raise_for_status()
        raise ValueError(f"the answer is not a JSON object (HTTP {response.status_code})")
    if "error" in data:
        raise AuthlibError(error=data["error"], description=data.get("error_description"))
    return data


def _describe(text: object) -> str:
    """Return the first line of TEXT, printable and short (Microsoft adds trace ids below)."""
    if not text:
        return ""
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in first).split())
    return line if len(line) <= _MAX_DESCRIPTION else line[: _MAX_DESCRIPTION - 1] + "…"


def _host(url: str) -> str:
    try:
        return httpx2.URL(url).host or url
    except Exception:
        return url
