"""The tokens on PostgreSQL: encrypted in ``oauth_tokens``, seeded from the token file, and one
refresher at a time across daemons (an advisory lock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdeskd.config.secrets import Secret
from helpdeskd.oauth import OAuthError
from helpdeskd.oauth.credential import Credential, Credentials, read_statuses
from helpdeskd.oauth.database import DatabaseTokens, TokenCipher, lock_key
from helpdeskd.oauth.state import TokenState
from helpdeskd.oauth.tokenfile import TokenFile
from helpdeskd.store.db import SessionMaker, create_engine, sessionmaker
from helpdeskd.store.models import OAuthToken
from tests.oauth.support import ACCOUNT, make_config, oauth_table
from tests.servers.oauth import AuthServer

KEYS = (("k2", Secret("second-key-0123456789abcdef")), ("k1", Secret("first-key-0123456789abc")))


def test_cipher_round_trip_and_key_rotation() -> None:
    old = TokenCipher(KEYS[1:])
    sealed = old.encrypt("rt-secret", "/a.json")
    assert sealed.startswith("k1:") and "rt-secret" not in sealed
    assert old.encrypt("rt-secret", "/a.json") != sealed  # a fresh nonce each time
    rotated = TokenCipher(KEYS)  # k2 now signs; k1 still opens what it sealed
    assert rotated.decrypt(sealed, "/a.json") == "rt-secret"
    assert rotated.encrypt("x", "/a.json").startswith("k2:")
    with pytest.raises(ValueError, match="no secret key"):
        rotated.decrypt(sealed, "/b.json")  # bound to its row
    with pytest.raises(ValueError, match="no secret key"):
        TokenCipher(KEYS[:1]).decrypt(sealed, "/a.json")
    with pytest.raises(ValueError):
        rotated.decrypt("k1:!!!", "/a.json")


def test_lock_keys_are_64_bit_and_distinct() -> None:
    assert lock_key("/a.json") != lock_key("/b.json")
    assert -(2**63) <= lock_key("/a.json") < 2**63


@pytest.fixture
async def sessions(pg_url: str) -> AsyncIterator[SessionMaker]:
    engine = create_engine(pg_url)
    yield sessionmaker(engine)
    await engine.dispose()


async def _row(sessions: SessionMaker, key: str) -> OAuthToken | None:
    async with sessions() as session:
        return (
            await session.execute(select(OAuthToken).where(OAuthToken.token_file == key))
        ).scalar_one_or_none()


def _seed(server: AuthServer, path: Path, obtained_at: datetime) -> str:
    refresh = server.issue_refresh_token(ACCOUNT)
    TokenFile(path).write_now(
        TokenState(
            provider="generic", refresh_token=refresh, account=ACCOUNT, obtained_at=obtained_at
        )
    )
    return refresh


async def test_seeded_from_the_file_then_kept_encrypted(
    auth_server: AuthServer, tmp_path: Path, pg_url: str, sessions: SessionMaker
) -> None:
    path = tmp_path / "support.json"
    first = _seed(auth_server, path, datetime(2026, 12, 1, tzinfo=UTC))
    config = make_config(
        tmp_path, mailboxes={"support": oauth_table(auth_server, path)}, db_url=pg_url
    )
    credential = Credentials(config, sessions).for_mailbox("support")
    assert credential is not None and isinstance(credential.store, DatabaseTokens)
    await credential.access_token()

    row = await _row(sessions, str(path))
    assert row is not None and row.refresh_token is not None
    assert row.refresh_token.startswith("k1:") and "rt-" not in row.refresh_token
    state = await credential.store.read()
    assert state is not None and state.refresh_token != first
    assert auth_server.introspect(state.refresh_token or "", "refresh_token")["active"]
    assert TokenFile(path).read_now().refresh_token == first  # type: ignore[union-attr]
    # the stale file does not seed again: it holds no newer login
    credential.invalidate()
    await credential.access_token()
    assert auth_server.reused_refresh_tokens == 0

    # `oauth login` elsewhere wrote a newer file: it wins
    newer = _seed(auth_server, path, datetime(2026, 12, 2, tzinfo=UTC))
    credential.invalidate()
    await credential.access_token()
    assert auth_server.reused_refresh_tokens == 0
    assert not auth_server.introspect(newer, "refresh_token")["active"]  # spent, rotated
    [status] = await read_statuses(config, sessions)
    assert status.last_refresh is not None and status.account == ACCOUNT


async def test_daemons_sharing_the_database_take_turns(
    auth_server: AuthServer, tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "support.json"
    _seed(auth_server, path, datetime(2026, 12, 1, tzinfo=UTC))
    config = make_config(
        tmp_path, mailboxes={"support": oauth_table(auth_server, path)}, db_url=pg_url
    )
    engines = [create_engine(pg_url) for _ in range(2)]  # two daemons: two pools
    try:
        credentials = [
            Credentials(config, sessionmaker(engine)).for_mailbox("support") for engine in engines
        ]

        async def keep_refreshing(credential: Credential | None) -> None:
            assert credential is not None
            for _ in range(4):
                credential.invalidate()
                await credential.access_token()

        await asyncio.gather(*(keep_refreshing(c) for c in credentials))
    finally:
        for engine in engines:
            await engine.dispose()
    assert auth_server.refreshes == 8
    assert auth_server.reused_refresh_tokens == 0


async def test_a_replaced_secret_key_is_one_line(
    auth_server: AuthServer, tmp_path: Path, pg_url: str, sessions: SessionMaker
) -> None:
    path = tmp_path / "support.json"
    _seed(auth_server, path, datetime(2026, 12, 1, tzinfo=UTC))
    file = TokenFile(path)
    store = DatabaseTokens(sessions, file, KEYS[1:])
    async with store.locked() as locked:
        assert locked.state is not None
        await locked.save(locked.state.replace(last_refresh=datetime.now(UTC)))
    other = DatabaseTokens(sessions, file, KEYS[:1])
    with pytest.raises(OAuthError, match="secret key replaced") as caught:
        await other.read()
    assert caught.value.code == "token_store"


async def test_an_error_is_recorded_in_the_row(
    auth_server: AuthServer, tmp_path: Path, pg_url: str, sessions: SessionMaker
) -> None:
    path = tmp_path / "support.json"
    _seed(auth_server, path, datetime(2026, 12, 1, tzinfo=UTC) - timedelta(days=1))
    config = make_config(
        tmp_path, mailboxes={"support": oauth_table(auth_server, path)}, db_url=pg_url
    )
    credential = Credentials(config, sessions).for_mailbox("support")
    assert credential is not None
    auth_server.revoke_account(ACCOUNT)
    with pytest.raises(OAuthError) as caught:
        await credential.access_token()
    row = await _row(sessions, str(path))
    assert row is not None and row.last_error == str(caught.value)
    assert row.refresh_token is not None  # the seeded token, kept with the error
