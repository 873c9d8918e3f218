"""A token's state in PostgreSQL's ``oauth_tokens``, shared by the daemons of one service.

The row is keyed by the token_file's path. It is seeded from the token file when it is
missing, or when the file holds a newer login (``oauth login`` on a machine whose database was
not reachable, say). The lock is a transaction-level advisory lock on the key, held from the
read to the commit of the rotated refresh token. The refresh token is encrypted with AES-GCM
under a key derived (HKDF-SHA256) from the service's first secret key; the key's id is stored
with it, so a token written under an older key is still read after a key rotation.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.secrets import Secret
from helpdeskd.oauth.errors import OAuthError
from helpdeskd.oauth.state import TokenState
from helpdeskd.oauth.tokenfile import TokenFile
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import OAuthToken, utcnow

_INFO = b"helpdeskd oauth_tokens refresh_token v1"
SecretKeys = tuple[tuple[str, Secret], ...]


class TokenCipher:
    """Encrypt refresh tokens under the first secret key; decrypt under any of them."""

    def __init__(self, keys: SecretKeys) -> None:
        self._keys = keys
        self._derived: dict[str, AESGCM] = {}

    def _aead(self, key_id: str) -> AESGCM:
        if key_id not in self._derived:
            secret = dict(self._keys).get(key_id)
            if secret is None:
                raise KeyError(key_id)
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
            self._derived[key_id] = AESGCM(hkdf.derive(secret.reveal().encode()))
        return self._derived[key_id]

    def encrypt(self, token: str, row: str) -> str:
        """Return TOKEN encrypted for the row keyed ROW (bound to it: no copying between rows)."""
        key_id = self._keys[0][0]
        nonce = os.urandom(12)
        sealed = self._aead(key_id).encrypt(nonce, token.encode(), row.encode())
        return f"{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, value: str, row: str) -> str:
        """Return the token in VALUE; raise ValueError when no secret key opens it."""
        key_id, _, blob = value.partition(":")
        try:
            raw = base64.urlsafe_b64decode(blob.encode())
            return self._aead(key_id).decrypt(raw[:12], raw[12:], row.encode()).decode()
        except (KeyError, InvalidTag, ValueError):
            raise ValueError(f"no secret key (id {key_id!r}) opens it") from None


def lock_key(row: str) -> int:
    """Return the advisory lock key (a signed 64-bit integer) for the row keyed ROW."""
    digest = hashlib.sha256(f"helpdeskd-oauth:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class DatabaseTokens:
    """The ``oauth_tokens`` row of one token_file, seeded from that file."""

    def __init__(self, sessions: SessionMaker, file: TokenFile, keys: SecretKeys) -> None:
        self.sessions = sessions
        self.file = file
        self.key = str(file.path)
        self.where = f"the database (row {self.key})"
        self._cipher = TokenCipher(keys)

    async def read(self) -> TokenState | None:
        """Return the row's state, else the token file's (which seeds the row on first use)."""
        async with self.sessions() as session:
            row = await session.get(OAuthToken, self.key)
            stored = None if row is None else self._state(row)
        return self._newer(stored, await self.file.read())

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[LockedRow]:
        """Hold the row's advisory lock in a transaction; yield its (maybe seeded) state.

        What is saved is committed when the block ends, before the lock is let go.
        """
        async with self.sessions() as session, session.begin():
            await session.execute(select(func.pg_advisory_xact_lock(lock_key(self.key))))
            row = await session.get(OAuthToken, self.key, populate_existing=True)
            stored = None if row is None else self._state(row)
            state = self._newer(stored, await self.file.read())
            yield LockedRow(self, session, row, state)

    def _newer(self, stored: TokenState | None, seed: TokenState | None) -> TokenState | None:
        """Return the row's state unless the token file holds a newer login."""
        if seed is None or seed.refresh_token is None:
            return stored
        if stored is None or _later(seed.obtained_at, stored.obtained_at):
            return seed
        return stored

    def _state(self, row: OAuthToken) -> TokenState:
        refresh_token = None
        if row.refresh_token:
            try:
                refresh_token = self._cipher.decrypt(row.refresh_token, self.key)
            except ValueError as exc:
                raise OAuthError(
                    f"cannot decrypt the refresh token stored for {self.key}: {exc} "
                    "(was the service's secret key replaced?)",
                    code="token_store",
                ) from None
        return TokenState(
            provider=row.provider,
            refresh_token=refresh_token,
            account=row.account,
            obtained_at=row.obtained_at,
            last_refresh=row.last_refresh,
            expires_at=row.expires_at,
            refresh_expires_at=row.refresh_expires_at,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
        )

    def _fill(self, row: OAuthToken, state: TokenState) -> None:
        row.provider = state.provider
        row.account = state.account
        row.refresh_token = (
            None
            if state.refresh_token is None
            else self._cipher.encrypt(state.refresh_token, self.key)
        )
        row.obtained_at = state.obtained_at
        row.last_refresh = state.last_refresh
        row.expires_at = state.expires_at
        row.refresh_expires_at = state.refresh_expires_at
        row.last_error = state.last_error
        row.last_error_at = state.last_error_at
        row.updated_at = utcnow()


class LockedRow:
    """The row's state, read under the advisory lock; saved rows commit with the transaction."""

    def __init__(
        self,
        store: DatabaseTokens,
        session: AsyncSession,
        row: OAuthToken | None,
        state: TokenState | None,
    ) -> None:
        self._store = store
        self._session = session
        self._row = row
        self.state = state

    async def save(self, state: TokenState) -> None:
        if self._row is None:
            self._row = OAuthToken(token_file=self._store.key)
            self._session.add(self._row)
        self._store._fill(self._row, state)
        await self._session.flush()
        self.state = state


def _later(first: datetime | None, second: datetime | None) -> bool:
    return first is not None and (second is None or first > second)
