"""The ``oauth`` commands: ``login NAME`` gets a mailbox's (or ``smtp``'s) first refresh token;
``status`` shows each token as the daemon last left it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from helpdeskd.cli.command import Subcommands, add_command, print_json
from helpdeskd.clock import system_clock
from helpdeskd.config.settings import Config
from helpdeskd.oauth import login_command, refresh_expiry_due
from helpdeskd.oauth.state import iso
from helpdeskd.store.db import SessionMaker, open_database

if TYPE_CHECKING:
    from helpdeskd.oauth.credential import CredentialStatus


def _say(line: str) -> None:
    print(line, flush=True)  # the admin acts on it while the command waits


def _with_sessions(config: Config, body: Callable[[SessionMaker | None], Awaitable[int]]) -> int:
    """Run BODY(sessions): the database's sessions on PostgreSQL, where the tokens live too;
    None on SQLite, whose daemon keeps them in the token files only."""
    from helpdeskd.oauth.credential import uses_database

    async def main() -> int:
        if not uses_database(config):
            return await body(None)
        async with open_database(config.database.url) as sessions:
            return await body(sessions)

    return asyncio.run(main())


def cmd_oauth_login(args: argparse.Namespace, config: Config) -> int:
    # Authlib and the listener are loaded here, not above: other commands need not pay for them.
    from helpdeskd.oauth.login import login

    async def body(sessions: SessionMaker | None) -> int:
        await login(
            config, args.name, sessions=sessions, say=_say, browser=args.browser, clock=system_clock
        )
        return 0

    return _with_sessions(config, body)


def cmd_oauth_status(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.oauth.credential import read_statuses

    async def body(sessions: SessionMaker | None) -> int:
        statuses = await read_statuses(config, sessions)
        if args.json:
            print_json([status.as_json() for status in statuses])
            return 0
        if not statuses:
            print('no mailbox and no [smtp] uses OAuth 2.0 (auth = "oauth2")')
        for status in statuses:
            print(_line(status))
        return 0

    return _with_sessions(config, body)


def _line(status: CredentialStatus) -> str:
    head = f"{status.name} ({status.provider}, {status.account or 'account unknown'}):"
    if not status.logged_in:
        return f"{head} not logged in; run '{login_command(status.name)}'"
    parts = [
        f"access token expires {iso(status.expires_at) or 'unknown'}",
        f"last refresh {iso(status.last_refresh) or 'never'}",
    ]
    if status.last_error:
        parts.append(f"last error at {iso(status.last_error_at)}: {status.last_error}")
    if refresh_expiry_due(status.refresh_expires_at, system_clock()):
        parts.append(
            f"the refresh token expires {iso(status.refresh_expires_at)}: "
            f"run '{login_command(status.name)}' before then"
        )
    return f"{head} " + "; ".join(parts)


def add_oauth(sub: Subcommands) -> None:
    oauth = sub.add_parser("oauth", help="OAuth 2.0 for a mailbox (by name) or smtp")
    osub = oauth.add_subparsers(dest="oauth", required=True)
    p = add_command(
        osub,
        "login",
        help="sign in and store the refresh token (device code; PKCE in a browser for Google)",
    )
    p.add_argument("name", help="a mailbox's name, or smtp")
    p.add_argument(
        "--browser",
        action="store_true",
        help="sign in through a browser on this machine (PKCE) instead of a device code",
    )
    p.set_defaults(func=cmd_oauth_login)
    p = add_command(osub, "status", help="each token: account, expiry, last refresh and error")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_oauth_status)
