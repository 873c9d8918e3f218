"""A token's stored state and the protocol of the stores that keep it.

The state holds the refresh token and what ``oauth status`` shows; never an access token (it is
kept in memory by the process that got it). It is kept in the token file
(helpdeskd.oauth.tokenfile) or, on PostgreSQL, in the ``oauth_tokens`` table
(helpdeskd.oauth.database). A store hands the state out under an exclusive lock, so a refresh
reads the latest refresh token and writes the rotated one before anyone else may read it.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

_TIMES = ("obtained_at", "last_refresh", "expires_at", "refresh_expires_at", "last_error_at")


@dataclass(frozen=True)
class TokenState:
    """What is stored of one token; the times are aware, in UTC."""

    provider: str
    refresh_token: str | None = None  # None: not logged in yet, or client_credentials
    account: str | None = None
    obtained_at: datetime | None = None  # when `oauth login` got the refresh token
    last_refresh: datetime | None = None  # the last access token obtained
    expires_at: datetime | None = None  # that access token's expiry, for status only
    refresh_expires_at: datetime | None = None  # when the refresh token is known to expire
    last_error: str | None = None
    last_error_at: datetime | None = None

    def __repr__(self) -> str:
        shown = "***" if self.refresh_token else None
        return f"TokenState(provider={self.provider!r}, refresh_token={shown!r}, ...)"

    def replace(self, **changes: Any) -> TokenState:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Return the state as the token file's JSON object."""
        return {
            "refresh_token": self.refresh_token,
            "account": self.account,
            "provider": self.provider,
            "obtained_at": iso(self.obtained_at),
            "last_refresh": iso(self.last_refresh),
            "expires_at": iso(self.expires_at),
            "refresh_expires_at": iso(self.refresh_expires_at),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
        }

    @classmethod
    def from_json(cls, data: Any) -> TokenState:
        """Read the token file's JSON object; raise ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("provider"), str):
            raise ValueError("not a helpdeskd token file")
        values: dict[str, Any] = {"provider": data["provider"]}
        for name in ("refresh_token", "account", "last_error"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
            values[name] = value or None
        for name in _TIMES:
            values[name] = parse_time(data.get(name), name)
        return cls(**values)


def parse_time(value: Any, name: str = "time") -> datetime | None:
    """Read an ISO 8601 time (None stays None); a time without offset is UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a time")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    """Return MOMENT as ISO 8601 in UTC (``2026-12-05T17:40:41+00:00``), or None."""
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


class LockedState(Protocol):
    """The state read under a store's lock; :meth:`save` writes it before the lock is let go."""

    state: TokenState | None

    async def save(self, state: TokenState) -> None: ...


class TokenStore(Protocol):
    """Where one token's state lives: the token file, or a row of ``oauth_tokens``."""

    where: str  # for messages: the file's path, or "the database (<path>)"

    def locked(self) -> AbstractAsyncContextManager[LockedState]:
        """Hold the token's exclusive lock; yield its latest state."""
        ...

    async def read(self) -> TokenState | None:
        """Return the state as it is now, without the lock (for status)."""
        ...
