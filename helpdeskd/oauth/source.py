"""TokenSource: what IMAP and SMTP take to get an access token before each login."""

from __future__ import annotations

from typing import Protocol


class TokenSource(Protocol):
    """Where IMAP and SMTP get an access token: a :class:`~helpdeskd.oauth.credential.Credential`,
    or a test's stand-in. It raises :class:`~helpdeskd.oauth.errors.OAuthError` when it has none."""

    async def access_token(self) -> str: ...
