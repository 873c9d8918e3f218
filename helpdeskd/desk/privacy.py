"""What erasure, export and retention share: erased addresses, legal hold, deferred deletions.

- **Erased addresses** are kept only as a salted hash (HMAC-SHA256 under a random salt kept in
  the database, so that it outlives a rotation of the service's keys). Whoever could mail a
  person asks :func:`erased` first: a notice, a customers import. The pseudonym that replaces an
  erased address in the tickets comes from the same hash, so it is stable: erasing the same
  address again gives the same pseudonym.
- **Legal hold** is the tag ``hold`` on a ticket (``#hold`` or ``#tags +hold``): neither
  erasure nor retention touches such a ticket until the tag is gone.
- **Deferred deletions.** A file cannot take part in a transaction. What an erasure or a
  retention pass decides to remove outside the database is written to ``pending_deletions`` in
  the same transaction and removed after the commit; :func:`finish_deletions` removes what a
  crash left, and a second run removes nothing twice (removal is idempotent).
- **No trace in SQLite.** The transactions that erase set ``PRAGMA secure_delete``, so that
  what they free is overwritten with zeros; :func:`compact_sqlite` then rebuilds the file
  (``VACUUM``, which also drops old copies of rows that earlier updates left in free space)
  and empties the write-ahead log (``wal_checkpoint(TRUNCATE)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import ColumnElement, SQLColumnExpression, Text, cast, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import ErasedAddress, Message, PendingDeletion, PrivacyState, Ticket
from helpdeskd.store.valuelist import one_of, values

log = structlog.get_logger(__name__)

HOLD_TAG = "hold"
ERASED_TAG = "erased"
PSEUDONYM_DOMAIN = "erased.invalid"
SALT = "erasure_salt"
CHUNK = 500  # values per IN (...): well under any database's parameter limit


# --- erased addresses ----------------------------------------------------------------------


def postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


def insert_for(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING."""
    return pg_insert if postgres(session) else sqlite_insert


# Built once: erased() runs for every chunk of a notice queued and every batch of it sent.
_SALT = select(PrivacyState.value).where(PrivacyState.name == SALT)
_ERASED = select(ErasedAddress.digest).where(
    one_of(ErasedAddress.digest, values("digests", "text"))
)


async def salt(session: AsyncSession, *, create: bool = False) -> bytes | None:
    """The database's erasure salt; made at the first erasure (CREATE), else None before it."""
    connection = await session.connection()
    found = (await connection.execute(_SALT)).scalar()
    if found is None and create:
        await session.execute(
            insert_for(session)(PrivacyState)
            .values(name=SALT, value=secrets.token_hex(32))
            .on_conflict_do_nothing(index_elements=["name"])
        )
        found = (await connection.execute(_SALT)).scalar()
    return bytes.fromhex(found) if found is not None else None


def digest(key: bytes, address: str) -> str:
    """The salted hash an erased ADDRESS is kept as."""
    return hmac.new(key, address.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym(address_digest: str) -> str:
    """The stable address that stands for an erased person in the tickets."""
    return f"erased-{address_digest[:16]}@{PSEUDONYM_DOMAIN}"


async def erased(session: AsyncSession, addresses: Iterable[str]) -> set[str]:
    """Which of ADDRESSES (as given) were erased on request and must never be mailed again."""
    given = list(dict.fromkeys(addresses))
    key = await salt(session) if given else None
    if key is None:
        return set()
    by_digest: dict[str, list[str]] = {}
    for address in given:
        by_digest.setdefault(digest(key, address), []).append(address)
    found: set[str] = set()
    connection = await session.connection()
    for (row,) in await connection.execute(_ERASED, {"digests": list(by_digest)}):
        found.update(by_digest[row])
    return found


# --- legal hold ----------------------------------------------------------------------------


def is_held(tags: Iterable[str] | None) -> bool:
    return HOLD_TAG in (tags or ())


def not_held() -> ColumnElement[bool]:
    """SQL: the ticket is not under legal hold (tags are lower-case words, stored as JSON)."""
    tags = func.coalesce(cast(Ticket.tags, Text), "")
    return ~tags.contains(f'"{HOLD_TAG}"')


def json_contains(column: SQLColumnExpression[Any], value: str) -> ColumnElement[bool]:
    """SQL: the JSON COLUMN's text holds VALUE (lower-case ASCII, or as JSON escapes it)."""
    as_text = func.lower(func.coalesce(cast(column, Text), ""))
    escaped = json.dumps(value)[1:-1].lower()  # how the JSON columns store it
    clause = as_text.contains(value, autoescape=True)
    if escaped != value:
        clause = clause | as_text.contains(escaped, autoescape=True)
    return clause


# --- deferred deletions --------------------------------------------------------------------


def _pending(session: AsyncSession, row: PendingDeletion) -> PendingDeletion:
    session.add(row)
    return row


def queue_file(session: AsyncSession, path: str) -> PendingDeletion:
    """Remove the file at PATH once SESSION's transaction commits."""
    return _pending(session, PendingDeletion(kind="file", target=path, attempts=0))


def queue_blob(session: AsyncSession, sha256: str) -> PendingDeletion:
    """Remove the attachment blob SHA256 after the commit, if no message refers to it then."""
    return _pending(session, PendingDeletion(kind="blob", target=sha256, attempts=0))


def queue_imap(session: AsyncSession, mailbox: str, message_id: str) -> PendingDeletion:
    """Expunge the copy of MESSAGE_ID in MAILBOX's processed folder after the commit
    (helpdeskd.imap.erase does it)."""
    row = PendingDeletion(kind="imap", target=message_id, mailbox=mailbox, attempts=0)
    return _pending(session, row)


def blob_path(state_dir: Path, sha256: str) -> Path:
    """Where helpdeskd.mail.attachments keeps the blob SHA256."""
    return state_dir / "attachments" / sha256[:2] / sha256


def blob_referenced() -> ColumnElement[bool]:
    """SQL, correlated to PendingDeletion: some message still refers to its blob."""
    refers = select(Message.id).where(
        func.coalesce(cast(Message.attachments, Text), "").contains(PendingDeletion.target)
    )
    return refers.exists()


@dataclass
class Deletions:
    """What :func:`finish_deletions` removed, and what it could not."""

    files: int = 0
    blobs: int = 0
    kept: int = 0  # blobs a message refers to again
    failed: list[str] = field(default_factory=list)


async def finish_deletions(
    sessions: SessionMaker,
    state_dir: Path,
    *,
    ids: Sequence[int] | None = None,
    limit: int = 500,
) -> Deletions:
    """Remove the pending files and blobs (those of IDS only, when given); return the count.

    Each is removed, then its row deleted, in one transaction per batch: a crash in between
    leaves the row, and removing a file that is gone already is not an error. On PostgreSQL a
    row another daemon works on is skipped.
    """
    done = Deletions()
    while True:
        async with sessions() as session, session.begin():
            query = (
                select(PendingDeletion, blob_referenced())
                .where(PendingDeletion.kind.in_(("file", "blob")), PendingDeletion.attempts < 5)
                .order_by(PendingDeletion.id)
                .limit(limit)
            )
            if ids is not None:
                query = query.where(PendingDeletion.id.in_(list(ids)))
            if postgres(session):
                query = query.with_for_update(skip_locked=True, of=PendingDeletion)
            rows = (await session.execute(query)).all()
            for row, referenced in rows:
                if row.kind == "blob" and referenced:
                    done.kept += 1  # new mail brought the same file: it stays
                    await session.delete(row)
                    continue
                path = Path(row.target) if row.kind == "file" else blob_path(state_dir, row.target)
                try:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                except OSError as exc:
                    row.attempts += 1
                    row.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"[:500]
                    done.failed.append(str(path))
                    log.warning("deletion_failed", path=str(path), error=row.last_error)
                    continue
                if row.kind == "file":
                    done.files += 1
                else:
                    done.blobs += 1
                await session.delete(row)
        if len(rows) < limit or ids is not None:
            return done


async def files_pending(session: AsyncSession) -> bool:
    """Whether files or blobs wait to be removed (a cheap look before a write transaction)."""
    found = await session.scalar(
        select(PendingDeletion.id).where(PendingDeletion.kind.in_(("file", "blob"))).limit(1)
    )
    return found is not None


async def drop_pending(session: AsyncSession, ids: Iterable[int]) -> None:
    """Forget the pending deletions IDS (done, or nothing left to do)."""
    chosen = list(ids)
    for start in range(0, len(chosen), CHUNK):
        await session.execute(
            delete(PendingDeletion).where(PendingDeletion.id.in_(chosen[start : start + CHUNK]))
        )


# --- SQLite --------------------------------------------------------------------------------


async def secure_delete(session: AsyncSession) -> None:
    """On SQLite, have this transaction's connection overwrite what it frees with zeros."""
    if not postgres(session):
        await session.execute(text("PRAGMA secure_delete = ON"))


async def plain_delete(session: AsyncSession) -> None:
    """Undo :func:`secure_delete` on the connection (it goes back to the pool)."""
    if not postgres(session):
        await session.execute(text("PRAGMA secure_delete = OFF"))


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite database URL; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def _compact(path: Path, vacuum: bool) -> bool:
    connection = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout = 60000")
        if vacuum:
            connection.execute("VACUUM")
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy
    finally:
        connection.close()


async def compact_sqlite(url: str, *, vacuum: bool = True) -> bool | None:
    """Rebuild a SQLite database file (VACUUM) and empty its write-ahead log.

    Return whether the log could be emptied (a reader elsewhere can hold it: then the next
    checkpoint does it), or None on PostgreSQL.
    """
    path = sqlite_path(url)
    if path is None:
        return None
    emptied = await asyncio.to_thread(_compact, path, vacuum)
    log.info("sqlite_compacted", vacuum=vacuum, wal_emptied=emptied)
    return emptied
