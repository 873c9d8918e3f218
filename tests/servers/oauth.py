"""A real OAuth 2.0 authorization server for tests, built from Authlib's server parts.

:class:`AuthServer` serves a Flask app with Authlib's ``AuthorizationServer`` on 127.0.0.1 and a
free port, from a thread (werkzeug). It offers the grants a mail client meets at Microsoft 365 and
Google Workspace:

- ``authorization_code`` with PKCE (S256 only; required for the public client), redirecting to a
  loopback ``redirect_uri`` on any port (RFC 8252); :meth:`AuthServer.authorize` plays the
  user's browser;
- the device authorization grant (RFC 8628): :meth:`AuthServer.approve_device` and
  :meth:`AuthServer.deny_device` play the user;
- ``refresh_token`` with rotation: every refresh gives a new refresh token and the old one dies at
  once; presenting a rotated-out one again is counted in ``reused_refresh_tokens``;
- ``client_credentials`` for app clients (:meth:`AuthServer.app_client`), whose tokens stand for
  one mailbox account;
- introspection (RFC 7662) and revocation (RFC 7009).

Access tokens are opaque and live ``access_lifetime`` seconds. All state is kept in memory, on the
object, under one lock, so it survives :meth:`AuthServer.stop` and :meth:`AuthServer.start`
(which come back on the same port). Every response closes its connection (HTTP/1.0), so a
stopped server is really unreachable.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import itertools
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

HOST = "127.0.0.1"
DEFAULT_SCOPE = "mail"
CODE_LIFETIME = 600  # authorization codes, seconds


class AuthServerError(RuntimeError):
    """The test authorization server refused or failed something a test asked of it."""


# --- the model objects Authlib works with ----------------------------------------------------


@dataclass
class _Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret: str | None  # None: a public client (authenticates with client_id only)
    grant_types: frozenset[str]
    account: str | None = None  # client_credentials: whose mailbox its tokens open

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # the client must name its loopback redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or DEFAULT_SCOPE

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return is_loopback_redirect(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and hmac.compare_digest(self.secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class _Token(TokenMixin):  # type: ignore[misc]
    """One token response: an access token and, maybe, a refresh token."""

    access_token: str | None
    refresh_token: str | None
    client_id: str
    account: str
    scope: str
    family: int  # tokens from one authorization share it; revoking a refresh token ends them all
    issued_at: float
    expires_in: int
    refresh_expires_at: float | None = None
    access_revoked: bool = False
    refresh_revoked: bool = False
    rotated: bool = False  # the refresh token was exchanged for a new one

    def check_client(self, client: _Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def access_active(self, now: float) -> bool:
        return (
            self.access_token is not None
            and not self.access_revoked
            and now < self.issued_at + self.expires_in
        )

    def refresh_active(self, now: float) -> bool:
        return (
            self.refresh_token is not None
            and not self.refresh_revoked
            and not self.rotated
            and (self.refresh_expires_at is None or now < self.refresh_expires_at)
        )


@dataclass
class _TokenView(TokenMixin):  # type: ignore[misc]
    """A token as the introspection and revocation endpoints see it: one of its two strings."""

    token: _Token
    kind: str  # access_token | refresh_token

    def check_client(self, client: _Client) -> bool:
        return self.token.check_client(client)

    def get_scope(self) -> str:
        return self.token.scope

    def is_expired(self) -> bool:
        now = time.time()
        if self.kind == "access_token":
            return now >= self.token.issued_at + self.token.expires_in
        expires = self.token.refresh_expires_at
        return expires is not None and now >= expires

    def is_revoked(self) -> bool:
        if self.kind == "access_token":
            return self.token.access_revoked
        return self.token.refresh_revoked or self.token.rotated


@dataclass
class _AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    account: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class _DeviceState:
    credential: DeviceCredentialDict
    interval: int
    issued_at: float
    decision: tuple[str | None, bool] | None = None  # (account, approved)
    last_poll: float | None = None


def is_loopback_redirect(uri: str) -> bool:
    """Say whether URI is a loopback redirect (RFC 8252 7.3): http, a loopback host, any port."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme != "http" or parts.fragment or port is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normalize_user_code(user_code: str) -> str:
    return "".join(ch for ch in user_code.upper() if ch.isalnum())


# --- Authlib's server, grants and endpoints, tied to the AuthServer's state ------------------


class _Server(AuthorizationServer):  # type: ignore[misc]
    owner: AuthServer


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
    server: _Server

    def save_authorization_code(self, code: str, req: Any) -> None:
        payload = req.payload.data
        owner = self.server.owner
        owner._codes[code] = _AuthorizationCode(
            code=code,
            client_id=req.client.client_id,
            redirect_uri=req.payload.redirect_uri,
            scope=req.scope,
            account=req.user,
            code_challenge=payload.get("code_challenge"),
            code_challenge_method=payload.get("code_challenge_method"),
            expires_at=time.time() + CODE_LIFETIME,
        )

    def query_authorization_code(self, code: str, client: _Client) -> _AuthorizationCode | None:
        item = self.server.owner._codes.get(code)
        if item is None or item.client_id != client.client_id or item.expires_at < time.time():
            return None
        return item

    def delete_authorization_code(self, authorization_code: _AuthorizationCode) -> None:
        self.server.owner._codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: _AuthorizationCode) -> str:
        return authorization_code.account


class _S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only; a public client must use it."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        super().validate_code_challenge(grant, redirect_uri)
        data = grant.request.payload.data
        if data.get("code_challenge") is None:
            if grant.request.client.secret is None:
                raise InvalidRequestError("A public client must send a PKCE 'code_challenge'.")
            return
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
    server: _Server

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
        return self.server.owner.rotate

    def authenticate_refresh_token(self, refresh_token: str) -> _Token | None:
        owner = self.server.owner
        token = owner._by_refresh.get(refresh_token)
        if token is None:
            return None
        if token.rotated:
            owner.reused_refresh_tokens += 1
            return None
        return token if token.refresh_active(time.time()) else None

    def authenticate_user(self, refresh_token: _Token) -> str:
        return refresh_token.account

    def revoke_old_credential(self, refresh_token: _Token) -> None:
        if self.server.owner.rotate:
            refresh_token.rotated = True

    def create_token_response(self) -> tuple[int, dict[str, Any], Any]:
        result: tuple[int, dict[str, Any], Any] = super().create_token_response()
        self.server.owner.refreshes += 1
        return result


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")


class _DeviceCodeGrant(DeviceCodeGrant):  # type: ignore[misc]
    server: _Server

    def query_device_credential(self, device_code: str) -> DeviceCredentialDict | None:
        owner = self.server.owner
        if device_code in owner._used_device_codes:
            raise InvalidGrantError("This device code was used already.")
        state = owner._devices.get(device_code)
        return None if state is None else state.credential

    def query_user_grant(self, user_code: str) -> tuple[str | None, bool] | None:
        owner = self.server.owner
        state = owner._device_by_user_code(user_code)
        return None if state is None else state.decision

    def validate_device_credential(self, credential: DeviceCredentialDict) -> str:
        owner = self.server.owner
        owner.device_polls += 1
        state = owner._devices[credential["device_code"]]
        now = time.monotonic()
        if state.last_poll is not None and now - state.last_poll < state.interval * 0.8:
            owner.device_fast_polls += 1
        state.last_poll = now
        user: str = super().validate_device_credential(credential)
        return user

    def should_slow_down(self, credential: DeviceCredentialDict) -> bool:
        owner = self.server.owner
        if owner.device_slow_down <= 0:
            return False
        owner.device_slow_down -= 1
        owner._devices[credential["device_code"]].interval += 5  # RFC 8628 3.5
        return True

    def create_token_response(self) -> tuple[int, dict[str, Any], Any]:
        result: tuple[int, dict[str, Any], Any] = super().create_token_response()
        # a device code gives tokens once
        device_code = self.request.credential["device_code"]
        self.server.owner._devices.pop(device_code, None)
        self.server.owner._used_device_codes.add(device_code)
        return result


class _DeviceAuthorizationEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
    server: _Server

    @property
    def EXPIRES_IN(self) -> int:
        return self.server.owner.device_lifetime

    @property
    def INTERVAL(self) -> int:
        return self.server.owner.device_interval

    def get_verification_uri(self) -> str:
        return self.server.owner.base_url + "/device"

    def save_device_credential(
        self, client_id: str, scope: str | None, data: dict[str, Any]
    ) -> None:
        owner = self.server.owner
        credential = DeviceCredentialDict(
            client_id=client_id,
            scope=scope,
            device_code=data["device_code"],
            user_code=data["user_code"],
            expires_at=time.time() + data["expires_in"],
        )
        owner._devices[data["device_code"]] = _DeviceState(
            credential, interval=data["interval"], issued_at=time.time()
        )


def _anonymous_or_client(endpoint: Any, req: Any) -> _Client | None:
    """Authenticate the endpoint's client, or let a resource server (Dovecot, the SMTP sink)
    that sends no client credentials in."""
    if "Authorization" not in req.headers and not req.payload.data.get("client_id"):
        req.client = None
        return None
    client: _Client = endpoint.server.authenticate_client(
        req, endpoint.CLIENT_AUTH_METHODS, endpoint.ENDPOINT_NAME
    )
    req.client = client
    return client


class _IntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662. Without token_type_hint=refresh_token only access tokens are looked up, so a
    resource server never takes a refresh token for an access token."""

    CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
    server: _Server

    def authenticate_endpoint_client(self, req: Any) -> _Client | None:
        return _anonymous_or_client(self, req)

    def query_token(self, token_string: str, token_type_hint: str | None) -> _TokenView | None:
        owner = self.server.owner
        owner.introspections += 1
        return owner._lookup(token_string, token_type_hint, refresh_needs_hint=True)

    def check_permission(self, token: _TokenView, client: _Client | None, req: Any) -> bool:
        return True

    def introspect_token(self, view: _TokenView) -> dict[str, Any]:
        token = view.token
        payload: dict[str, Any] = {
            "active": True,
            "username": token.account,
            "sub": token.account,
            "scope": token.scope,
            "client_id": token.client_id,
            "token_type": "Bearer" if view.kind == "access_token" else "refresh_token",
            "iat": int(token.issued_at),
        }
        if view.kind == "access_token":
            payload["exp"] = int(token.issued_at + token.expires_in)
        elif token.refresh_expires_at is not None:
            payload["exp"] = int(token.refresh_expires_at)
        return payload


class _RevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009. Revoking a refresh token also ends every access token of its authorization."""

    CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
    server: _Server

    def query_token(self, token_string: str, token_type_hint: str | None) -> _TokenView | None:
        return self.server.owner._lookup(token_string, token_type_hint, refresh_needs_hint=False)

    def revoke_token(self, view: _TokenView, req: Any) -> None:
        owner = self.server.owner
        if view.kind == "access_token":
            view.token.access_revoked = True
            return
        for token in owner._tokens:
            if token.family == view.token.family:
                token.access_revoked = token.refresh_revoked = True


class _QuietHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: stop() really stops

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


# --- the test-facing server -------------------------------------------------------------------


class AuthServer:
    """A real OAuth 2.0 authorization server on 127.0.0.1 and a free port, in a thread."""

    CLIENT_ID = "helpdeskd"
    CLIENT_SECRET = "helpdeskd-secret"  # the confidential client
    PUBLIC_CLIENT_ID = "helpdeskd-public"  # the public client (device flow, PKCE)
    DEFAULT_SCOPE = DEFAULT_SCOPE

    def __init__(
        self,
        *,
        access_lifetime: int = 3600,
        rotate: bool = True,
        refresh_lifetime: int | None = None,
        device_lifetime: int = 600,
        device_interval: int = 1,
    ) -> None:
        """Prepare (not start) a server.

        ACCESS_LIFETIME is the life of an access token in seconds; ROTATE gives a new refresh token
        on every refresh and ends the old one at once (without it the refresh token stays, as at
        Google). REFRESH_LIFETIME ends refresh tokens that many seconds after they are issued.
        DEVICE_LIFETIME and DEVICE_INTERVAL are a device code's ``expires_in`` and ``interval``.
        All of them may be changed on a running server; new tokens and codes follow.
        """
        self.host = HOST
        self.port = _free_port()
        self.access_lifetime = access_lifetime
        self.rotate = rotate
        self.refresh_lifetime = refresh_lifetime
        self.device_lifetime = device_lifetime
        self.device_interval = device_interval
        self.device_slow_down = 0  # this many coming pending polls answer slow_down instead
        # counters for assertions
        self.refreshes = 0  # successful refresh_token grants
        self.reused_refresh_tokens = 0  # a rotated-out refresh token presented again
        self.introspections = 0
        self.device_polls = 0
        self.device_fast_polls = 0  # polls sooner than the interval asked for
        self.token_requests: list[str] = []  # grant_type of every token request, in order
        self._lock = threading.RLock()
        self._clients: dict[str, _Client] = {}
        self._tokens: list[_Token] = []
        self._by_access: dict[str, _Token] = {}
        self._by_refresh: dict[str, _Token] = {}
        self._codes: dict[str, _AuthorizationCode] = {}
        self._devices: dict[str, _DeviceState] = {}
        self._used_device_codes: set[str] = set()
        self._failures: list[tuple[int, dict[str, str]]] = []
        self._families = itertools.count(1)
        self._http: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        every_user_grant = frozenset(
            {"authorization_code", "refresh_token", DeviceCodeGrant.GRANT_TYPE}
        )
        self._clients[self.CLIENT_ID] = _Client(
            self.CLIENT_ID, self.CLIENT_SECRET, every_user_grant
        )
        self._clients[self.PUBLIC_CLIENT_ID] = _Client(
            self.PUBLIC_CLIENT_ID, None, every_user_grant
        )
        self.app = self._build_app()

    # --- URLs ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    @property
    def device_authorization_url(self) -> str:
        return self.base_url + "/device_authorization"

    @property
    def authorization_url(self) -> str:
        return self.base_url + "/authorize"

    @property
    def introspection_url(self) -> str:
        return self.base_url + "/introspect"

    @property
    def revocation_url(self) -> str:
        return self.base_url + "/revoke"

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> AuthServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._http is not None

    def start(self) -> None:
        """Serve on ``port`` (the same one after a stop); return once it accepts connections."""
        if self._http is not None:
            return
        http = make_server(
            self.host, self.port, self.app, threaded=True, request_handler=_QuietHandler
        )
        thread = threading.Thread(
            target=http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"oauth-server-{self.port}",
            daemon=True,
        )
        thread.start()
        self._http, self._thread = http, thread

    def stop(self) -> None:
        """Stop serving; the tokens and clients stay for a later :meth:`start`."""
        http, thread = self._http, self._thread
        self._http = self._thread = None
        if http is None:
            return
        http.shutdown()
        http.server_close()
        if thread is not None:
            thread.join(5)

    # --- clients and tokens for tests ---------------------------------------------------------

    def app_client(self, client_id: str, secret: str, account: str) -> None:
        """Add a client_credentials client whose tokens open ACCOUNT's mailbox."""
        with self._lock:
            self._clients[client_id] = _Client(
                client_id, secret, frozenset({"client_credentials"}), account=account
            )

    def issue_refresh_token(
        self, account: str, client_id: str = CLIENT_ID, scope: str = DEFAULT_SCOPE
    ) -> str:
        """Mint a refresh token for ACCOUNT, as if ACCOUNT had logged in through CLIENT_ID."""
        with self._lock:
            if client_id not in self._clients:
                raise AuthServerError(f"no client {client_id!r}")
            token = self._store(client_id, account, scope, access=False, refresh=True)
            assert token.refresh_token is not None
            return token.refresh_token

    def issue_access_token(
        self,
        account: str,
        client_id: str = CLIENT_ID,
        scope: str = DEFAULT_SCOPE,
        lifetime: int | None = None,
    ) -> str:
        """Mint an access token for ACCOUNT (LIFETIME seconds, default ``access_lifetime``)."""
        with self._lock:
            if client_id not in self._clients:
                raise AuthServerError(f"no client {client_id!r}")
            token = self._store(
                client_id, account, scope, access=True, refresh=False, lifetime=lifetime
            )
            assert token.access_token is not None
            return token.access_token

    def revoke_account(self, account: str) -> None:
        """End every access and refresh token of ACCOUNT now."""
        with self._lock:
            for token in self._tokens:
                if token.account == account:
                    token.access_revoked = token.refresh_revoked = True

    def fail_token_requests(
        self, count: int = 1, status: int = 503, error: str = "temporarily_unavailable"
    ) -> None:
        """Answer the next COUNT token requests with STATUS and ERROR (RFC 6749 5.2 shape)."""
        with self._lock:
            self._failures.extend([(status, {"error": error})] * count)

    def introspect(self, token: str, token_type_hint: str | None = None) -> dict[str, Any]:
        """Ask the introspection endpoint about TOKEN, as a resource server would."""
        form = {"token": token}
        if token_type_hint:
            form["token_type_hint"] = token_type_hint
        data = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(self.introspection_url, data, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    # --- the user's side: device codes and the browser ----------------------------------------

    def pending_user_codes(self) -> list[str]:
        """The user codes of device logins that wait for the user, oldest first."""
        now = time.time()
        with self._lock:
            states = sorted(self._devices.values(), key=lambda s: s.issued_at)
            return [
                s.credential["user_code"]
                for s in states
                if s.decision is None and s.credential["expires_at"] > now
            ]

    def approve_device(self, user_code: str, account: str) -> None:
        """Approve the device login USER_CODE as ACCOUNT."""
        self._decide_device(user_code, (account, True))

    def deny_device(self, user_code: str) -> None:
        """Deny the device login USER_CODE; its next poll gets access_denied."""
        self._decide_device(user_code, (None, False))

    def authorize(self, url: str, account: str) -> str:
        """Act as the user's browser: open the authorization URL, approve as ACCOUNT, follow the
        redirect to the loopback redirect_uri (GET it) and return that redirect URL."""
        return self._browse(url, account, approve=True)

    def deny(self, url: str) -> str:
        """Act as the user's browser and refuse: the loopback redirect gets access_denied."""
        return self._browse(url, "", approve=False)

    # --- internals ----------------------------------------------------------------------------

    def _browse(self, url: str, account: str, *, approve: bool) -> str:
        if not url.startswith(self.authorization_url + "?"):
            raise AuthServerError(f"not this server's authorization URL: {url}")
        status, location, body = _http_no_redirect(url)
        if status == 200:  # the consent page: submit it
            form = {"account": account, "decision": "approve" if approve else "deny"}
            status, location, body = _http_no_redirect(url, urllib.parse.urlencode(form).encode())
        if status != 302 or location is None:
            raise AuthServerError(f"the authorization request failed ({status}): {body}")
        try:  # the browser follows the redirect to the loopback listener
            with urllib.request.urlopen(location, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError:
            pass  # the listener answered; what it thought of the request is its own business
        return location

    def _decide_device(self, user_code: str, decision: tuple[str | None, bool]) -> None:
        with self._lock:
            state = self._device_by_user_code(user_code)
            if state is None:
                raise AuthServerError(f"no device login with user code {user_code!r}")
            if state.credential["expires_at"] <= time.time():
                raise AuthServerError(f"the device login {user_code!r} has expired")
            state.decision = decision

    def _device_by_user_code(self, user_code: str) -> _DeviceState | None:
        wanted = _normalize_user_code(user_code)
        for state in self._devices.values():
            if _normalize_user_code(state.credential["user_code"]) == wanted:
                return state
        return None

    def _store(
        self,
        client_id: str,
        account: str,
        scope: str,
        *,
        access: bool,
        refresh: bool,
        lifetime: int | None = None,
        family: int | None = None,
    ) -> _Token:
        token = _Token(
            access_token=_new_token("at") if access else None,
            refresh_token=_new_token("rt") if refresh else None,
            client_id=client_id,
            account=account,
            scope=scope,
            family=next(self._families) if family is None else family,
            issued_at=time.time(),
            expires_in=self.access_lifetime if lifetime is None else lifetime,
        )
        self._add(token)
        return token

    def _add(self, token: _Token) -> None:
        if token.refresh_token is not None and self.refresh_lifetime is not None:
            token.refresh_expires_at = token.issued_at + self.refresh_lifetime
        self._tokens.append(token)
        if token.access_token is not None:
            self._by_access[token.access_token] = token
        if token.refresh_token is not None:
            self._by_refresh[token.refresh_token] = token

    def _save_token(self, response: dict[str, Any], req: Any) -> None:
        """Authlib's save_token: keep what the token endpoint just issued (and, for a refresh
        token that expires, say when, as Google does: the response is the dict given here)."""
        if response.get("refresh_token") and self.refresh_lifetime is not None:
            response["refresh_token_expires_in"] = self.refresh_lifetime
        client: _Client = req.client
        account: str = req.user or client.account or ""
        family = None
        old = getattr(req, "refresh_token", None)
        if isinstance(old, _Token):
            family = old.family
        self._add(
            _Token(
                access_token=response["access_token"],
                refresh_token=response.get("refresh_token"),
                client_id=client.client_id,
                account=account,
                scope=response.get("scope", DEFAULT_SCOPE),
                family=next(self._families) if family is None else family,
                issued_at=time.time(),
                expires_in=int(response.get("expires_in", self.access_lifetime)),
            )
        )

    def _lookup(
        self, token_string: str, hint: str | None, *, refresh_needs_hint: bool
    ) -> _TokenView | None:
        if hint != "refresh_token" and token_string in self._by_access:
            return _TokenView(self._by_access[token_string], "access_token")
        if (hint == "refresh_token" or not refresh_needs_hint) and (
            token_string in self._by_refresh
        ):
            return _TokenView(self._by_refresh[token_string], "refresh_token")
        return None

    def _build_app(self) -> Flask:
        app = Flask(f"helpdeskd-test-oauth-{id(self)}")
        server = _Server(app, query_client=self._clients.get, save_token=self._save_token)
        server.owner = self
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda **_: _new_token("at"),
                lambda **_: _new_token("rt"),
                lambda client, grant_type: self.access_lifetime,
            ),
        )
        server.register_grant(_AuthorizationCodeGrant, [_S256Challenge(required=True)])
        server.register_grant(_RefreshTokenGrant)
        server.register_grant(_ClientCredentialsGrant)
        server.register_grant(_DeviceCodeGrant)
        server.register_endpoint(_DeviceAuthorizationEndpoint)
        server.register_endpoint(_IntrospectionEndpoint)
        server.register_endpoint(_RevocationEndpoint)
        locked = self._locked

        @app.post("/token")
        def token() -> Response:
            with self._lock:
                self.token_requests.append(request.form.get("grant_type", ""))
                if self._failures:
                    status, body = self._failures.pop(0)
                    return Response(json.dumps(body), status, mimetype="application/json")
                return server.create_token_response()  # type: ignore[no-any-return]

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Response:
            with self._lock:
                account = request.form.get("account") if request.method == "POST" else None
                try:
                    grant = server.get_consent_grant(end_user=account)
                except OAuth2Error as error:
                    return server.handle_error_response(request, error)  # type: ignore[no-any-return]
                if request.method == "GET":
                    return Response(_consent_page(grant.client.client_id, request.url))
                approved = request.form.get("decision") == "approve" and bool(account)
                return server.create_authorization_response(  # type: ignore[no-any-return]
                    grant=grant, grant_user=account if approved else None
                )

        app.add_url_rule(
            "/device_authorization",
            "device_authorization",
            locked(lambda: server.create_endpoint_response("device_authorization")),
            methods=["POST"],
        )
        app.add_url_rule(
            "/introspect",
            "introspect",
            locked(lambda: server.create_endpoint_response("introspection")),
            methods=["POST"],
        )
        app.add_url_rule(
            "/revoke",
            "revoke",
            locked(lambda: server.create_endpoint_response("revocation")),
            methods=["POST"],
        )

        @app.get("/device")
        def device() -> Response:
            return Response(
                "<!doctype html><title>Device login</title>"
                "<p>Enter the code shown by the device (a test approves it at the server).</p>"
            )

        return app

    def _locked(self, view: Callable[[], Response]) -> Callable[[], Response]:
        def locked_view() -> Response:
            with self._lock:
                return view()

        return locked_view


def _consent_page(client_id: str, url: str) -> str:
    return (
        "<!doctype html><title>Sign in</title>"
        f"<p>{html.escape(client_id)} asks to read and send your mail.</p>"
        f'<form method="post" action="{html.escape(url)}">'
        '<input name="account"> <button name="decision" value="approve">Allow</button>'
        ' <button name="decision" value="deny">Deny</button></form>'
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _http_no_redirect(url: str, data: bytes | None = None) -> tuple[int, str | None, str]:
    """GET (or POST DATA to) URL without following redirects: (status, Location, body)."""
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(url, data, timeout=10) as response:
            return response.status, response.headers.get("Location"), response.read().decode()
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        return error.code, error.headers.get("Location"), body


def _new_token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(30)}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port
