"""The registry of running daemons: who runs where, since when, and whether it still beats.

Each daemon adds a row when it starts (a new id every start), beats every few seconds, and
removes its row on a clean stop. A row whose heartbeat is three beats overdue is *stale*: its
daemon was killed, its host is gone, or it cannot reach the database. ``helpdeskd status``
shows it as such; a day later it is forgotten.

A daemon that starts where one ran before (the same machine and state directory) and finds
that one's process gone knows it is dead: it removes the row and takes its mailbox leases at
once instead of waiting for them to expire (a restart by systemd, a crash test).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd import __version__
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.leases import dialect_of, sql_now
from helpdeskd.store.models import Base, DaemonRecord, MailboxLease

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 5.0
STALE_BEATS = 3  # heartbeats missed before a daemon is shown as stale
FORGET_AFTER = timedelta(days=1)  # a stale daemon's row is removed this long after

_DAEMONS = Base.metadata.tables[DaemonRecord.__tablename__]


def machine() -> str:
    """This machine's boot and PID namespace: daemons that share it can see each other's
    processes (a container has a namespace of its own)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = socket.gethostname()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{boot}:{namespace}"[:100]


def pid_alive(pid: int) -> bool:
    """Whether a process PID exists on this machine (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Identity:
    """A daemon as the registry knows it."""

    id: str
    host: str
    pid: int
    version: str
    machine: str
    state_dir: str

    @classmethod
    def here(cls, state_dir: Path) -> Identity:
        """This process, a daemon using STATE_DIR."""
        return cls(
            id=uuid.uuid4().hex,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            version=__version__,
            machine=machine(),
            state_dir=str(Path(state_dir).resolve()),
        )


def _values(me: Identity, dialect: str, every: float) -> dict[str, Any]:
    now = sql_now(dialect)
    return {
        "id": me.id,
        "host": me.host,
        "pid": me.pid,
        "version": me.version,
        "machine": me.machine,
        "state_dir": me.state_dir,
        "started_at": now,
        "heartbeat_at": now,
        "stale_at": sql_now(dialect, every * STALE_BEATS),
    }


async def register(
    sessions: SessionMaker, me: Identity, *, every: float = HEARTBEAT_SECONDS
) -> list[str]:
    """Add ME, beating every EVERY seconds; remove and return the ids of the daemons that ran
    before on this machine with this state directory and whose process is gone."""
    async with sessions() as session, session.begin():
        dialect = dialect_of(session)
        before = await session.scalars(
            select(DaemonRecord).where(
                DaemonRecord.machine == me.machine, DaemonRecord.state_dir == me.state_dir
            )
        )
        # A predecessor with this very pid is gone too: the pid is ours now.
        gone = [r.id for r in before if r.pid == me.pid or not pid_alive(r.pid)]
        if gone:
            await session.execute(delete(_DAEMONS).where(_DAEMONS.c.id.in_(gone)))
        await session.execute(insert(_DAEMONS).values(**_values(me, dialect, every)))
    log.info("daemon_registered", daemon=me.id, host=me.host, pid=me.pid, replaced=gone)
    return gone


async def heartbeat(
    sessions: SessionMaker, me: Identity, *, every: float = HEARTBEAT_SECONDS
) -> None:
    """Record that ME is alive; add it again if its row was removed meanwhile (forgotten
    after a long outage); forget daemons stale for a day."""
    async with sessions() as session, session.begin():
        dialect = dialect_of(session)
        found = await session.scalar(
            update(_DAEMONS)
            .where(_DAEMONS.c.id == me.id)
            .values(heartbeat_at=sql_now(dialect), stale_at=sql_now(dialect, every * STALE_BEATS))
            .returning(_DAEMONS.c.id)
        )
        if found is None:
            values = _values(me, dialect, every)
            del values["started_at"]  # unknown now; the row says when it was registered again
            await session.execute(insert(_DAEMONS).values(started_at=sql_now(dialect), **values))
            log.warning("daemon_registered_again", daemon=me.id)
        forget = -FORGET_AFTER.total_seconds()
        await session.execute(
            delete(_DAEMONS).where(_DAEMONS.c.stale_at < sql_now(dialect, forget))
        )


async def deregister(sessions: SessionMaker, me: Identity) -> None:
    """Remove ME (a clean stop)."""
    async with sessions() as session, session.begin():
        await session.execute(delete(_DAEMONS).where(_DAEMONS.c.id == me.id))
    log.info("daemon_deregistered", daemon=me.id)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def daemon_rows(session: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    """The registered daemons as plain data, oldest first: ``stale`` when overdue at NOW, and
    ``mailboxes``, those whose lease each holds."""
    held: dict[str, list[str]] = {}
    leases = await session.execute(
        select(MailboxLease.holder, MailboxLease.mailbox)
        .where(MailboxLease.expires_at > now, MailboxLease.holder.is_not(None))
        .order_by(MailboxLease.mailbox)
    )
    for holder, mailbox in leases:
        held.setdefault(str(holder), []).append(mailbox)
    rows = await session.scalars(
        select(DaemonRecord).order_by(DaemonRecord.started_at, DaemonRecord.id)
    )
    return [
        {
            "id": row.id,
            "host": row.host,
            "pid": row.pid,
            "version": row.version,
            "started_at": _iso(row.started_at),
            "heartbeat_at": _iso(row.heartbeat_at),
            "seconds_since_heartbeat": round((now - row.heartbeat_at).total_seconds(), 1),
            "stale": row.stale_at <= now,
            "mailboxes": held.get(row.id, []),
        }
        for row in rows
    ]
