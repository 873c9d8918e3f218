"""Mailbox leases: one daemon polls each mailbox; when it dies, another takes the mailbox over.

A lease is a row of ``mailbox_leases`` keyed by the mailbox's name itself (names cannot
collide): its holder (a daemon's id from :mod:`helpdeskd.store.registry`), an expiry and a
fencing token. Its holder renews it every few seconds; anyone may take a lease that expired,
and every acquisition adds one to the token. The row is never deleted, so a token is never
used twice for a mailbox.

A holder that lost its lease without noticing (its renewals stopped reaching the database, its
process paused) can do no harm: :func:`fence` runs in the transaction of every batch it stores
and finds the lease no longer its own, so the batch is rolled back and :class:`LeaseLost` makes
the IMAP watcher give the mailbox up before it moves anything. A taker's token change and a
holder's batch serialise on the row: the batch commits before the takeover, or not at all.

Each call is one short transaction and keeps no session state, so leases work through
PgBouncer's transaction pooling (session-level advisory locks do not). Times are the database's
own clock on PostgreSQL (``clock_timestamp()``: hosts whose clocks differ still agree) and the
daemon's on SQLite, which serves one host. On SQLite each call's transaction takes this
process's turn to write as it begins, as every writer's does (:class:`helpdeskd.store.db._Turn`):
a renewal left to wait in SQLite's busy handler lost every race for the lock to the ingest's
batches and the sender's records, which hand it to each other through a backlog, and the lease
ran out.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.errors import HelpdeskError
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import Base, MailboxLease, UTCDateTime

LEASE_SECONDS = 10.0
"""How long a lease lasts unless renewed: a dead holder's mailboxes are taken over within this
and one acquisition attempt (:func:`acquire_every`)."""

_LEASES = Base.metadata.tables[MailboxLease.__tablename__]


class LeaseLost(HelpdeskError):
    """This daemon no longer holds the mailbox's lease: store nothing more, move nothing."""


@dataclass(frozen=True)
class Lease:
    """A lease held: MAILBOX polled by HOLDER (a daemon's id) under fencing TOKEN."""

    mailbox: str
    holder: str
    token: int


def renew_every(seconds: float) -> float:
    """Seconds between renewals of a lease that lasts SECONDS: four chances before it ends."""
    return seconds / 5


def acquire_every(seconds: float) -> float:
    """Seconds between attempts to take a mailbox whose lease lasts SECONDS."""
    return seconds / 5


def dialect_of(session: AsyncSession) -> str:
    bind = session.get_bind()
    return bind.dialect.name


def sql_now(dialect: str, plus: float = 0.0) -> ColumnElement[datetime]:
    """The time now, plus PLUS seconds, as SQL: the server's clock on PostgreSQL."""
    if dialect == "postgresql":
        now: ColumnElement[datetime] = func.clock_timestamp(type_=UTCDateTime())
        if plus:
            return now + literal(timedelta(seconds=plus), Interval())
        return now
    return literal(datetime.now(UTC) + timedelta(seconds=plus), UTCDateTime())


async def database_now(session: AsyncSession) -> datetime:
    """The time now by the database's clock (PostgreSQL) or this host's (SQLite)."""
    if dialect_of(session) == "postgresql":
        value = await session.scalar(select(func.clock_timestamp()))
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    return datetime.now(UTC)


def legacy_lock_key(mailbox: str) -> int:
    """The advisory lock key by which the release before leases kept one poller per mailbox.

    Remove with the release after this one: until then a daemon of the previous release may
    still run during a rolling upgrade, and a mailbox it polls is left to it.
    """
    return zlib.crc32(f"helpdeskd-mailbox:{mailbox}".encode())


# Held by a daemon of the previous release: a session-level advisory lock on the mailbox's
# key (high 32 bits in classid, low in objid). This release never takes one, so any is theirs.
_LEGACY_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = 0 AND objid = CAST(:k AS oid) AND objsubid = 1)"
)


async def _legacy_free(session: AsyncSession, mailbox: str) -> bool:
    """On PostgreSQL, whether no daemon of the previous release polls MAILBOX (it holds the
    mailbox's advisory lock while it does)."""
    if dialect_of(session) != "postgresql":
        return True
    held = await session.scalar(_LEGACY_HELD, {"k": legacy_lock_key(mailbox)})
    return not held


async def acquire(
    sessions: SessionMaker,
    mailbox: str,
    holder: str,
    *,
    seconds: float = LEASE_SECONDS,
    replacing: Collection[str] = (),
) -> Lease | None:
    """Take MAILBOX's lease for HOLDER for SECONDS if it is free, expired, HOLDER's own, or
    held by one of REPLACING (daemons known to be dead); return it, or None if another daemon
    holds it."""
    async with sessions() as session, session.begin():
        dialect = dialect_of(session)
        if not await _legacy_free(session, mailbox):
            return None
        insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now, until = sql_now(dialect), sql_now(dialect, seconds)
        statement = insert(_LEASES).values(
            mailbox=mailbox,
            token=1,
            holder=holder,
            acquired_at=now,
            renewed_at=now,
            expires_at=until,
        )
        free = [_LEASES.c.expires_at <= now, _LEASES.c.holder.is_(None), _LEASES.c.holder == holder]
        if replacing:
            free.append(_LEASES.c.holder.in_(list(replacing)))
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[_LEASES.c.mailbox],
            set_={
                "token": _LEASES.c.token + 1,
                "holder": excluded.holder,
                "acquired_at": excluded.acquired_at,
                "renewed_at": excluded.renewed_at,
                "expires_at": excluded.expires_at,
            },
            where=or_(*free),
        ).returning(_LEASES.c.token)
        token = await session.scalar(statement)
    return Lease(mailbox, holder, int(token)) if token is not None else None


def _own(lease: Lease) -> list[ColumnElement[bool]]:
    return [
        _LEASES.c.mailbox == lease.mailbox,
        _LEASES.c.token == lease.token,
        _LEASES.c.holder == lease.holder,
    ]


async def renew(sessions: SessionMaker, lease: Lease, *, seconds: float = LEASE_SECONDS) -> bool:
    """Extend LEASE by SECONDS from now; False when it is no longer held (taken over, or left
    to a daemon of the previous release, in which case it is released too)."""
    async with sessions() as session, session.begin():
        dialect = dialect_of(session)
        if not await _legacy_free(session, lease.mailbox):
            await session.execute(
                update(_LEASES).where(*_own(lease)).values(holder=None, expires_at=sql_now(dialect))
            )
            return False
        found = await session.scalar(
            update(_LEASES)
            .where(*_own(lease))
            .values(renewed_at=sql_now(dialect), expires_at=sql_now(dialect, seconds))
            .returning(_LEASES.c.token)
        )
    return found is not None


async def fence(session: AsyncSession, lease: Lease) -> None:
    """In the transaction of a batch: raise LeaseLost unless LEASE is still held and unexpired.

    The row stays locked until that transaction ends, so a takeover waits for its commit.
    """
    found = await session.scalar(
        update(_LEASES)
        .where(*_own(lease), _LEASES.c.expires_at > sql_now(dialect_of(session)))
        .values(token=_LEASES.c.token)
        .returning(_LEASES.c.token)
    )
    if found is None:
        raise LeaseLost(
            f"mailbox {lease.mailbox}: this daemon's lease is gone (expired or taken over): "
            "the batch is not stored"
        )


async def release(sessions: SessionMaker, lease: Lease) -> None:
    """Give LEASE up (a clean stop): another daemon may take the mailbox at once."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(_LEASES)
            .where(*_own(lease))
            .values(holder=None, expires_at=sql_now(dialect_of(session)))
        )


async def lease_rows(session: AsyncSession, now: datetime) -> dict[str, dict[str, Any]]:
    """Each mailbox's lease as plain data, by mailbox name: ``held`` while unexpired at NOW."""
    rows = await session.scalars(select(MailboxLease).order_by(MailboxLease.mailbox))
    return {
        row.mailbox: {
            "holder": row.holder if row.expires_at > now else None,
            "token": row.token,
            "held": row.holder is not None and row.expires_at > now,
            "acquired_at": row.acquired_at,
            "expires_at": row.expires_at,
            "last_holder": row.holder,
        }
        for row in rows
    }
