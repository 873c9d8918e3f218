"""Credentials: the access tokens of the mailboxes and ``[smtp]``, refreshed ahead of expiry.

One :class:`Credential` per token_file: a mailbox and ``[smtp]`` that share one share the
object, and so its access token and its refreshes. A refresh takes the store's exclusive lock,
reads the latest refresh token there (another process may have rotated it), asks for a new
access token, writes the rotated refresh token, lets the lock go, and only then hands the new
access token out. Refreshes happen ahead of expiry (five minutes, or a third of the token's
life if that is less), never because a login failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import Config, OAuthConfig
from helpdeskd.oauth.client import TIMEOUT, TokenClient, TokenResponse
from helpdeskd.oauth.database import DatabaseTokens
from helpdeskd.oauth.errors import OAuthError, login_command
from helpdeskd.oauth.providers import refresh_expires_at, refresh_expiry_due
from helpdeskd.oauth.state import TokenState, TokenStore, iso
from helpdeskd.oauth.tokenfile import TokenFile
from helpdeskd.store.db import SessionMaker

log = structlog.get_logger(__name__)

MAX_MARGIN = timedelta(minutes=5)  # refresh at most this long before the access token expires


@dataclass(frozen=True)
class CredentialStatus:
    """What ``oauth status``, ``status`` and the health checks show of one token."""

    name: str  # the mailbox's name, or "smtp"
    provider: str
    account: str | None
    expires_at: datetime | None  # the access token's expiry
    last_refresh: datetime | None
    last_error: str | None
    last_error_at: datetime | None = None
    refresh_expires_at: datetime | None = None  # when the refresh token is known to expire
    logged_in: bool = False  # a refresh token is stored (always true for client_credentials)

    def as_json(self) -> dict[str, Any]:
        """Return the object of ``oauth status --json``: exactly these six keys."""
        return {
            "name": self.name,
            "provider": self.provider,
            "account": self.account,
            "expires_at": iso(self.expires_at),
            "last_refresh": iso(self.last_refresh),
            "last_error": self.last_error,
        }


def status_of(
    name: str, oauth: OAuthConfig, account: str, state: TokenState | None
) -> CredentialStatus:
    """Return the status of NAME's token from its stored STATE (None: nothing stored yet)."""
    if state is None:
        return CredentialStatus(
            name,
            oauth.provider,
            account,
            None,
            None,
            None,
            logged_in=oauth.grant == "client_credentials",
        )
    return CredentialStatus(
        name=name,
        provider=state.provider,
        account=state.account or account,
        expires_at=state.expires_at,
        last_refresh=state.last_refresh,
        last_error=state.last_error,
        last_error_at=state.last_error_at,
        refresh_expires_at=state.refresh_expires_at,
        logged_in=oauth.grant == "client_credentials" or state.refresh_token is not None,
    )


def refresh_margin(lifetime: timedelta) -> timedelta:
    """Return how long before expiry a token of LIFETIME is refreshed."""
    return min(MAX_MARGIN, lifetime / 3)


class Credential:
    """One token: its access token in memory, its refresh token in its store."""

    def __init__(
        self,
        name: str,
        oauth: OAuthConfig,
        account: str,
        store: TokenStore,
        *,
        clock: Clock = system_clock,
        client: TokenClient | None = None,
    ) -> None:
        self.name = name  # its first user: a mailbox's name, or "smtp"
        self.users = [name]  # every mailbox (and "smtp") that uses it
        self.oauth = oauth
        self.account = account  # the configured username: the SASL user
        self.store = store
        self._clock = clock
        self._client = client or TokenClient(oauth)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at: datetime | None = None  # when to get a new one
        self._expires_at: datetime | None = None
        self._status = status_of(name, oauth, account, None)
        self._log = log.bind(oauth=name, provider=oauth.provider)

    def __repr__(self) -> str:
        return f"Credential({self.name!r}, {self.oauth.provider!r}, {str(self.oauth.token_file)!r})"

    async def access_token(self) -> str:
        """Return a valid access token: the cached one, or a new one ahead of its expiry.

        Raise :class:`OAuthError` when none can be had (``.code`` and ``.fix`` say why and
        what to run); the error is recorded in the store for ``oauth status``.
        """
        async with self._lock:
            if (
                self._token is not None
                and self._refresh_at is not None
                and self._clock() < self._refresh_at
            ):
                return self._token
            # A caller cancelled mid-refresh (a stopping watcher) must not cut the refresh
            # between the provider's answer and the write of the rotated refresh token: the
            # old one is dead by then. The refresh runs on, under the store's lock.
            renewal = asyncio.ensure_future(self._renew())
            renewal.add_done_callback(_retrieve)
            return await asyncio.shield(renewal)

    def invalidate(self) -> None:
        """Forget the cached access token: the next :meth:`access_token` gets a new one.

        For a server that refused a token that should still be valid (revoked at the
        provider); a refresh that then fails says why in words a person can act on.
        """
        self._token = None
        self._refresh_at = None
        self._expires_at = None

    def status(self) -> CredentialStatus:
        """Return the in-memory view: what this process last read, wrote or was refused."""
        return self._status

    async def load(self) -> CredentialStatus:
        """Read the stored state (without the lock) into the in-memory view; return it."""
        self._remember(await self.store.read())
        return self._status

    # --- refreshing ---------------------------------------------------------------------------

    async def _renew(self) -> str:
        error: OAuthError | None = None
        response: TokenResponse | None = None
        async with self.store.locked() as locked:
            asked_at = self._clock()
            state = locked.state
            if self.oauth.grant == "client_credentials":
                state = state or TokenState(provider=self.oauth.provider, account=self.account)
                try:
                    response = await self._client.client_credentials()
                except OAuthError as exc:
                    error = self._explain(exc)
            elif state is None or state.refresh_token is None:
                error = OAuthError(
                    f"{self._label()}: not logged in yet (no refresh token in {self.store.where})",
                    code="login_required",
                    fix=login_command(self.name),
                )
            else:
                try:
                    response = await self._client.refresh(state.refresh_token)
                except OAuthError as exc:
                    error = self._explain(exc)
            if state is not None:
                if response is not None:
                    state = self._refreshed(state, response, asked_at)
                else:
                    assert error is not None
                    state = state.replace(last_error=str(error), last_error_at=asked_at)
                # The rotated refresh token is written before the lock goes and before the
                # access token is used: the old one is dead already.
                await locked.save(state)
            self._remember(state)
            if state is None and error is not None:  # nothing stored to record it in
                self._status = replace(self._status, last_error=str(error), last_error_at=asked_at)
        if error is not None:
            self._log.warning("oauth_refresh_failed", code=error.code, error=str(error))
            if error.temporary and self._token is not None and self._still_valid():
                # Refreshing ahead pays off: the token in hand lasts until the provider is back.
                return self._token
            raise error
        assert response is not None
        lifetime = timedelta(seconds=response.expires_in)
        self._token = response.access_token
        self._expires_at = asked_at + lifetime  # counted from the request: errs early
        self._refresh_at = self._expires_at - refresh_margin(lifetime)
        self._log.info(
            "oauth_token_refreshed",
            grant=self.oauth.grant,
            expires_in=response.expires_in,
            rotated=response.refresh_token is not None,
        )
        return self._token

    def _still_valid(self) -> bool:
        return self._expires_at is not None and self._clock() < self._expires_at

    def _refreshed(self, state: TokenState, response: TokenResponse, now: datetime) -> TokenState:
        return state.replace(
            provider=self.oauth.provider,
            refresh_token=response.refresh_token or state.refresh_token,
            account=state.account or self.account,
            last_refresh=now,
            expires_at=now + timedelta(seconds=response.expires_in),
            refresh_expires_at=(
                refresh_expires_at(self.oauth, response.raw, now) or state.refresh_expires_at
                if self.oauth.grant == "refresh_token"
                else None
            ),
            last_error=None,
            last_error_at=None,
        )

    def _remember(self, state: TokenState | None) -> None:
        self._status = status_of(self.name, self.oauth, self.account, state)

    def _label(self) -> str:
        return "smtp" if self.name == "smtp" else f"mailbox {self.name}"

    def _explain(self, exc: OAuthError) -> OAuthError:
        """Return EXC as a one-line error that says whose token it is and what to do."""
        code = exc.code
        if code == "invalid_grant":
            return OAuthError(
                f"{self._label()}: the refresh token was refused ({exc}); it was revoked, "
                "expired or the account's password changed",
                code=code,
                fix=login_command(self.name),
            )
        if code in ("invalid_client", "unauthorized_client"):
            return OAuthError(
                f"{self._label()}: the client was refused ({exc}); check client_id and the "
                "client secret in the config and at the provider",
                code=code,
            )
        return OAuthError(f"{self._label()}: {exc}", code=code, fix=exc.fix)


class Credentials:
    """The credentials of every mailbox with ``auth = "oauth2"`` and of ``[smtp]``.

    SESSIONS on PostgreSQL keep the tokens in the database (shared by the daemons); otherwise,
    and on SQLite, in the token files. PREVIOUS (the registry before a reload) hands over the
    credentials whose configuration did not change, with their cached access tokens.
    """

    def __init__(
        self,
        config: Config,
        sessions: SessionMaker | None = None,
        clock: Clock = system_clock,
        *,
        previous: Credentials | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._clock = clock
        self._timeout = timeout
        self._old = {} if previous is None else dict(previous._by_file)
        self._by_file: dict[Path, Credential] = {}
        self._mailboxes: dict[str, Credential] = {}
        self._smtp: Credential | None = None
        for mailbox in config.mailboxes:
            if mailbox.oauth is not None:
                self._mailboxes[mailbox.name] = self._add(
                    mailbox.name, mailbox.oauth, mailbox.username
                )
        smtp = config.smtp
        if smtp is not None and smtp.oauth is not None:
            self._smtp = self._add("smtp", smtp.oauth, smtp.username or "")
        self._old = {}

    def _add(self, name: str, oauth: OAuthConfig, account: str) -> Credential:
        found = self._by_file.get(oauth.token_file)
        if found is not None:
            found.users.append(name)
            return found
        old = self._old.get(oauth.token_file)
        if old is not None and old.oauth == oauth and old.name == name and old.account == account:
            old.users = [name]
            credential = old
        else:
            credential = Credential(
                name,
                oauth,
                account,
                token_store(self._config, oauth, self._sessions),
                clock=self._clock,
                client=TokenClient(oauth, timeout=self._timeout),
            )
        self._by_file[oauth.token_file] = credential
        return credential

    def for_mailbox(self, name: str) -> Credential | None:
        """Return the mailbox NAME's credential; None when it logs in with a password."""
        return self._mailboxes.get(name)

    def for_smtp(self) -> Credential | None:
        """Return ``[smtp]``'s credential; None when it logs in with a password (or is absent)."""
        return self._smtp

    def all(self) -> list[Credential]:
        """Return each credential once (shared token files once), in config order."""
        return list(self._by_file.values())

    def named(self) -> Iterator[tuple[str, Credential]]:
        """Yield (name, credential) per mailbox with OAuth, then ``smtp``: a shared one twice."""
        yield from self._mailboxes.items()
        if self._smtp is not None:
            yield "smtp", self._smtp

    def statuses(self) -> list[CredentialStatus]:
        """Return the in-memory status per mailbox with OAuth and ``smtp``, under that name."""
        result = []
        for name, credential in self.named():
            status = credential.status()
            result.append(
                CredentialStatus(
                    name=name,
                    provider=status.provider,
                    account=status.account,
                    expires_at=status.expires_at,
                    last_refresh=status.last_refresh,
                    last_error=status.last_error,
                    last_error_at=status.last_error_at,
                    refresh_expires_at=status.refresh_expires_at,
                    logged_in=status.logged_in,
                )
            )
        return result

    async def keep_fresh(self) -> list[Credential]:
        """Refresh every access token that is due, whether or not a login needs it now (a
        failure is recorded in its status); return the credentials whose refresh token the
        provider will end within :data:`REFRESH_WARNING`, whatever helpdeskd does."""
        expiring = []
        for credential in self.all():
            with contextlib.suppress(OAuthError):
                await credential.access_token()
            if refresh_expiry_due(credential.status().refresh_expires_at, self._clock()):
                expiring.append(credential)
        return expiring

    async def load(self) -> None:
        """Read every credential's stored state into its in-memory view (at start-up)."""
        for credential in self.all():
            await credential.load()


def _retrieve(task: asyncio.Future[str]) -> None:
    """Take the outcome of a refresh whose caller went away, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def uses_database(config: Config) -> bool:
    """Whether the tokens live in the database (PostgreSQL) rather than the token files."""
    return make_url(config.database.url).get_backend_name() in ("postgresql", "postgres")


def token_store(config: Config, oauth: OAuthConfig, sessions: SessionMaker | None) -> TokenStore:
    """Return where OAUTH's token lives: its row on PostgreSQL (with SESSIONS), else its file."""
    file = TokenFile(oauth.token_file)
    if sessions is not None and uses_database(config):
        return DatabaseTokens(sessions, file, config.service.secret_keys)
    return file


def oauth_users(config: Config) -> list[tuple[str, OAuthConfig, str]]:
    """Return (name, oauth table, username) per mailbox with OAuth, then ``smtp``."""
    users = [(m.name, m.oauth, m.username) for m in config.mailboxes if m.oauth is not None]
    if config.smtp is not None and config.smtp.oauth is not None:
        users.append(("smtp", config.smtp.oauth, config.smtp.username or ""))
    return users


async def read_statuses(config: Config, sessions: SessionMaker | None) -> list[CredentialStatus]:
    """Return what is stored of each token, per mailbox with OAuth and ``smtp``: the view of
    whoever refreshed last (the daemon), for ``oauth status``."""
    result = []
    for name, oauth, account in oauth_users(config):
        state = await token_store(config, oauth, sessions).read()
        result.append(status_of(name, oauth, account, state))
    return result


def login_needed(config: Config) -> list[str]:
    """Return the ``helpdeskd oauth login NAME`` commands still to run: one per token file that
    holds no refresh token yet (client_credentials needs none). Reads the token files only, so
    on PostgreSQL a login done on another machine (in the database only) is counted missing."""
    commands: list[str] = []
    seen: set[Path] = set()
    for name, oauth, _ in oauth_users(config):
        if oauth.grant != "refresh_token" or oauth.token_file in seen:
            continue
        seen.add(oauth.token_file)
        try:
            state = TokenFile(oauth.token_file).read_now()
        except OAuthError:
            state = None
        if state is None or state.refresh_token is None:
            commands.append(login_command(name))
    return commands


def refresh_warnings(config: Config, now: datetime) -> list[str]:
    """Return a line per token file whose refresh token the provider ends within
    :data:`REFRESH_WARNING` of NOW, with the command to run before then (for ``check``)."""
    lines: list[str] = []
    seen: set[Path] = set()
    for name, oauth, _ in oauth_users(config):
        if oauth.token_file in seen:
            continue
        seen.add(oauth.token_file)
        try:
            state = TokenFile(oauth.token_file).read_now()
        except OAuthError:
            continue
        if state is not None and refresh_expiry_due(state.refresh_expires_at, now):
            lines.append(
                f"{name}'s refresh token expires {iso(state.refresh_expires_at)}: "
                f"run {login_command(name)} before then"
            )
    return lines
