"""``helpdeskd oauth login NAME``: get the first refresh token, and store it.

Microsoft and generic providers use the device code (RFC 8628): the command prints a URL and a
code, the admin signs in anywhere, the command polls until the sign-in is approved. Google (whose
device flow refuses mail scopes), and any provider with ``--browser``, use the authorization code
with PKCE (RFC 7636) on a loopback redirect (RFC 8252): the command listens on 127.0.0.1 and a
free port, prints the URL to open in a browser on the same machine, and takes the code the
browser brings back. The refresh token goes to the token file under its lock (and, on
PostgreSQL, to the database too), so a daemon that is running picks it up at its next refresh.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import Config, OAuthConfig
from helpdeskd.errors import UserError
from helpdeskd.oauth.client import (
    DevicePending,
    TokenClient,
    TokenResponse,
    new_state,
    new_verifier,
)
from helpdeskd.oauth.credential import oauth_users, token_store, uses_database
from helpdeskd.oauth.errors import OAuthError, login_command
from helpdeskd.oauth.providers import login_flow, refresh_expires_at
from helpdeskd.oauth.state import TokenState, TokenStore
from helpdeskd.oauth.tokenfile import TokenFile
from helpdeskd.store.db import SessionMaker

Say = Callable[[str], None]  # prints one line for the admin, at once
BROWSER_TIMEOUT = 600.0  # seconds the loopback listener waits for the browser


@dataclass(frozen=True)
class LoginResult:
    name: str
    account: str | None
    stored_in: tuple[str, ...]  # where the refresh token was written
    state: TokenState


def target(config: Config, name: str) -> tuple[OAuthConfig, str]:
    """Return the OAuth table and SASL user of NAME (a mailbox's name, or ``smtp``)."""
    for user, oauth, account in oauth_users(config):
        if user == name:
            return oauth, account
    if name == "smtp":
        raise UserError('[smtp] does not use OAuth 2.0 (set auth = "oauth2" and [smtp.oauth])')
    if any(mailbox.name == name for mailbox in config.mailboxes):
        raise UserError(
            f'mailbox {name} does not use OAuth 2.0 (set auth = "oauth2" and [mailbox.oauth])'
        )
    names = [user for user, _, _ in oauth_users(config)]
    known = f"; OAuth is set up for: {', '.join(names)}" if names else ""
    raise UserError(f"no mailbox named {name!r}{known}")


async def login(
    config: Config,
    name: str,
    *,
    sessions: SessionMaker | None,
    say: Say,
    browser: bool = False,
    clock: Clock = system_clock,
    browser_timeout: float = BROWSER_TIMEOUT,
) -> LoginResult:
    """Log NAME in and store its refresh token; SAY tells the admin what to do.

    SESSIONS (PostgreSQL only) stores the token in the database too. BROWSER asks for the
    authorization-code flow where the device flow is the default.
    """
    oauth, account = target(config, name)
    client = TokenClient(oauth)
    if oauth.grant == "client_credentials":
        response = await client.client_credentials()
    elif login_flow(oauth, browser=browser) == "device":
        response = await _device_login(client, name, account, say)
    else:
        response = await _browser_login(client, account, say, browser_timeout)
    if oauth.grant == "refresh_token" and response.refresh_token is None:
        scope = " (add offline_access to scope)" if oauth.provider != "google" else ""
        raise OAuthError(
            f"{name}: the provider gave an access token but no refresh token{scope}",
            code="no_refresh_token",
        )
    now = clock().replace(microsecond=0)  # the token file keeps whole seconds
    signed_in = account_of(response.raw)  # who signed in, if the provider says
    state = TokenState(
        provider=oauth.provider,
        refresh_token=response.refresh_token if oauth.grant == "refresh_token" else None,
        account=signed_in or account,
        obtained_at=now,
        last_refresh=now,
        expires_at=now + timedelta(seconds=response.expires_in),
        refresh_expires_at=(
            refresh_expires_at(oauth, response.raw, now) if oauth.grant == "refresh_token" else None
        ),
    )
    stores: list[TokenStore] = [TokenFile(oauth.token_file)]
    if sessions is not None and uses_database(config):
        stores.append(token_store(config, oauth, sessions))
    for store in stores:
        async with store.locked() as locked:
            await locked.save(state)
    where = tuple(store.where for store in stores)
    if oauth.grant == "client_credentials":
        say(f"{name}: grant = client_credentials needs no login; the client got a token")
    else:
        who = f" as {signed_in}" if signed_in else ""
        say(f"{name}: signed in{who}; the refresh token is in {' and '.join(where)}")
    return LoginResult(name, state.account, where, state)


async def _device_login(client: TokenClient, name: str, account: str, say: Say) -> TokenResponse:
    device = await client.device_authorization()
    minutes = max(1, round(device.expires_in / 60))
    say(
        f"To sign in as {account}, open {device.verification_uri} "
        f"and enter the code {device.user_code}"
    )
    say(f"Waiting for the sign-in (the code expires in {minutes} minutes)…")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + device.expires_in
    interval = device.interval
    while True:
        # RFC 8628 3.5: wait the interval before each request; slow_down adds 5 seconds.
        await asyncio.sleep(interval)
        if loop.time() > deadline:
            raise OAuthError(
                f"{name}: the code expired before the sign-in was approved",
                code="expired_token",
                fix=login_command(name),
            )
        try:
            return await client.poll_device(device.device_code)
        except DevicePending as pending:
            if pending.slow_down:
                interval += 5
        except OAuthError as exc:
            if exc.code == "access_denied":
                raise OAuthError(f"{name}: the sign-in was declined", code=exc.code) from None
            if exc.code == "expired_token":
                raise OAuthError(
                    f"{name}: the code expired before the sign-in was approved",
                    code=exc.code,
                    fix=login_command(name),
                ) from None
            raise


async def _browser_login(
    client: TokenClient, account: str, say: Say, timeout: float
) -> TokenResponse:
    verifier, state = new_verifier(), new_state()
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[str] = loop.create_future()

    async def redirected(request: web.Request) -> web.Response:
        query = request.query
        if query.get("state") != state:
            return web.Response(status=400, text="helpdeskd: this is not the sign-in it waits for")
        if arrived.done():
            return web.Response(text="helpdeskd: already signed in; you can close this page")
        if "error" in query:
            error = query["error"]
            detail = query.get("error_description", "")
            arrived.set_exception(
                OAuthError(
                    f"the sign-in was refused ({error}{': ' + detail if detail else ''})",
                    code=error,
                )
            )
            return web.Response(text=f"helpdeskd: the sign-in was refused ({error})")
        code = query.get("code")
        if not code:
            return web.Response(status=400, text="helpdeskd: the redirect carries no code")
        arrived.set_result(code)
        return web.Response(text="helpdeskd: signed in; you can close this page")

    app = web.Application()
    app.router.add_get("/", redirected)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = _port(runner)
        redirect_uri = f"http://127.0.0.1:{port}/"
        url = client.authorization_url(redirect_uri, verifier, state)
        say(f"Open this URL in a browser on this machine and sign in as {account}:")
        say(url)
        say(
            f"(Waiting on {redirect_uri} for the browser to come back. On a server without "
            f"a browser: ssh -L {port}:127.0.0.1:{port} to it first, then open the URL.)"
        )
        try:
            code = await asyncio.wait_for(arrived, timeout)
        except TimeoutError:
            raise OAuthError("the browser did not come back in time", code="timeout") from None
    finally:
        await runner.cleanup()
    return await client.exchange_code(code, redirect_uri, verifier)


def _port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise OAuthError("could not listen on 127.0.0.1 for the browser", code="listen")


def account_of(token: dict[str, Any]) -> str | None:
    """Return who signed in, from the response's OpenID id_token (shown only, not trusted)."""
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or id_token.count(".") != 2:
        return None
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    for key in ("email", "preferred_username", "upn"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return value
    return None
