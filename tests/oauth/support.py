"""Configs whose mailboxes and [smtp] get their tokens from the test AuthServer; another
holder of a token file's lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from helpdeskd.config.load import parse_config
from helpdeskd.config.settings import Config, OAuthConfig
from helpdeskd.oauth import OAuthError
from helpdeskd.oauth.tokenfile import TokenFile
from tests.servers.oauth import AuthServer

ACCOUNT = "support@acme.test"
SECRET_KEY = "k1 test-secret-key-0123456789abcdef"


def oauth_table(server: AuthServer, token_file: Path, **changes: Any) -> dict[str, Any]:
    """Return a ``[mailbox.oauth]`` table for SERVER's confidential client ("generic")."""
    table: dict[str, Any] = {
        "provider": "generic",
        "client_id": AuthServer.CLIENT_ID,
        "client_secret_env": "HELPDESKD_TEST_OAUTH_CLIENT_SECRET",
        "token_file": str(token_file),
        "token_url": server.token_url,
        "device_authorization_url": server.device_authorization_url,
        "authorization_url": server.authorization_url,
        "scope": AuthServer.DEFAULT_SCOPE,
    }
    table.update(changes)
    return {key: value for key, value in table.items() if value is not None}


def public_table(server: AuthServer, token_file: Path, **changes: Any) -> dict[str, Any]:
    """Return a ``[mailbox.oauth]`` table for SERVER's public client (no secret)."""
    return oauth_table(
        server,
        token_file,
        client_id=AuthServer.PUBLIC_CLIENT_ID,
        client_secret_env=None,
        **changes,
    )


def make_config(
    base: Path,
    *,
    mailboxes: dict[str, dict[str, Any]] | None = None,
    smtp: dict[str, Any] | None = None,
    db_url: str | None = None,
) -> Config:
    """Return a Config with a mailbox per MAILBOXES item (name: oauth table) and, with SMTP,
    an ``[smtp]`` on OAuth; the database is SQLite in BASE unless DB_URL says otherwise."""
    secret = base / "secret.key"
    if not secret.exists():
        secret.write_text(SECRET_KEY + "\n")
    data: dict[str, Any] = {
        "service": {
            "name": "Acme",
            "support_address": ACCOUNT,
            "public_url": "https://support.acme.test",
            "secret_key_file": str(secret),
            "state_dir": str(base / "state"),
        },
        "database": {"url": db_url or f"sqlite:///{base / 'helpdeskd.db'}"},
        "mailbox": [
            {
                "name": name,
                "host": "127.0.0.1",
                "security": "none",
                "username": ACCOUNT,
                "auth": "oauth2",
                "oauth": table,
            }
            for name, table in (mailboxes or {}).items()
        ],
    }
    if smtp is not None:
        data["smtp"] = {
            "host": "127.0.0.1",
            "security": "none",
            "username": ACCOUNT,
            "auth": "oauth2",
            "oauth": smtp,
        }
    return parse_config(data, base)


def first_oauth(config: Config) -> OAuthConfig:
    oauth = config.mailboxes[0].oauth
    assert oauth is not None
    return oauth


class Holder:
    """Another holder of the token file's lock (flock: a second open file conflicts, even in
    this process)."""

    def __init__(self, file: TokenFile) -> None:
        file.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(file.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        os.close(self.fd)


def unused_oauth(mechanism: str = "xoauth2") -> OAuthConfig:
    """An oauth table for IMAP and SMTP tests that hand out their own tokens (:class:`Tokens`):
    its endpoints are never asked."""
    return OAuthConfig(
        provider="generic",
        client_id="helpdeskd",
        client_secret=None,
        grant="refresh_token",
        token_file=Path("/nonexistent/token.json"),
        mechanism=mechanism,
        token_url="http://127.0.0.1:9/token",
        device_authorization_url=None,
        authorization_url=None,
        scope="mail",
    )


class Tokens:
    """A credential's stand-in for IMAP and SMTP tests: hands out the given access tokens in
    turn (the last one again and again), or raises the given error."""

    def __init__(self, *tokens: str, error: OAuthError | None = None) -> None:
        self.tokens = list(tokens)
        self.error = error

    async def access_token(self) -> str:
        if self.error is not None:
            raise self.error
        return self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
