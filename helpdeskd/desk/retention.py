"""Keep personal data no longer than ``[retention]`` says, in small batches, once per fleet.

What goes, and when (each in days; a ticket under legal hold keeps everything):

- ``raw_mail``: a raw mail's bytes (and its spool file), after its ticket closed; mail that
  made no ticket (bounces, robots, spam), after it arrived. Quarantined mail waits for
  ``quarantine``.
- ``quarantine``: a quarantine entry and its raw bytes, after it was resolved.
- ``closed_ticket``: a closed ticket's message bodies, attachments, raw mail and sent-mail
  copies; the ticket itself, its messages' headers and its events stay (a ``retention`` event
  says what went).
- ``sent_mail``: the outbox's copy of mail once it was sent (or given up on).
- ``events``: a closed ticket's events, after it closed; other events after they happened.
  The record of an erasure or of a retention step is kept.
- ``processed_mail``: done over IMAP by helpdeskd.imap.erase.

:func:`report` and :func:`enforce` read the same rows in the same way, so what the report says
is due is what a pass removes. Each batch is one transaction; on PostgreSQL it first takes a
transaction-level advisory lock, so with several daemons one of them does the work and the
others skip it. On SQLite the erasing connection overwrites what it frees
(``secure_delete``) and the write-ahead log is emptied after a pass; old copies that earlier
updates left in the file go at the next ``VACUUM`` (docs/admin.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config, RetentionConfig
from helpdeskd.desk import privacy
from helpdeskd.mail.parse import parse_message
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import (
    Event,
    Message,
    Outbox,
    PendingDeletion,
    PrivacyState,
    Quarantine,
    RawMessage,
    Ticket,
)
from helpdeskd.triage.received import ticket_ref

log = structlog.get_logger(__name__)

# In the order a batch takes them: a closed ticket last, as its purge takes in the rest.
CATEGORIES = ("raw_mail", "quarantine", "sent_mail", "events", "closed_ticket")
# Each category (processed_mail: helpdeskd.imap.erase) with its [retention] key and what it is.
RULES = {
    "raw_mail": ("raw_mail_days", "raw mail, after its ticket closed (no ticket: after arrival)"),
    "quarantine": ("quarantine_days", "quarantined mail, after it was resolved"),
    "closed_ticket": ("closed_ticket_days", "a closed ticket's bodies and attachments"),
    "sent_mail": ("sent_mail_days", "copies of sent mail in the outbox"),
    "events": ("event_days", "events (a ticket's: after it closed)"),
    "processed_mail": ("processed_mail_days", "mail in the processed folders, after arrival"),
}
KEPT_EVENTS = ("erasure", "retention")  # the record of what was removed, which holds no data
LOCK = "retention"  # the advisory lock (lock_key) each batch of a pass takes
LAST_PASS = "retention_pass"  # privacy_state: when a pass last found nothing left to do
PASS_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class Due:
    """One thing retention removes, and when: a row, or a ticket's bodies or events."""

    category: str
    # The row's id: raw_messages, quarantine, tickets (closed_ticket), outbox; for events, the
    # ticket's id (its events, COUNT of them) or, with no ticket, the event's.
    id: int
    ticket: str | None  # its ticket's ref
    due_at: datetime
    held: bool = False  # under legal hold: kept
    count: int = 1  # events of a ticket: how many

    def as_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "id": self.id,
            "ticket": self.ticket,
            "due_at": self.due_at.isoformat().replace("+00:00", "Z"),
            "held": self.held,
            "count": self.count,
        }


def days_of(retention: RetentionConfig, category: str) -> int | None:
    """The days CATEGORY is kept under RETENTION; None: for ever."""
    days: int | None = getattr(retention, RULES[category][0])
    return days


_HELD = ~privacy.not_held()


@dataclass(frozen=True)
class _Scan:
    """One look for what is due: the category's rule, up to when, how many, held or not."""

    config: Config
    category: str
    keep: timedelta
    cutoff: datetime  # rows older than this are due
    limit: int | None
    held: bool  # with the rows under hold (the report shows them)

    def ref(self, ticket_id: int | None) -> str | None:
        return ticket_ref(self.config, ticket_id) if ticket_id is not None else None

    def due(
        self,
        row_id: int,
        ticket_id: int | None,
        since: datetime | None,
        held: object = False,
        count: int = 1,
    ) -> Due:
        assert since is not None  # the queries ask for rows where it is set
        return Due(self.category, row_id, self.ref(ticket_id), since + self.keep, bool(held), count)


async def _candidates(
    session: AsyncSession,
    config: Config,
    category: str,
    until: datetime,
    *,
    limit: int | None = None,
    held: bool = True,
) -> list[Due]:
    """What of CATEGORY is due by UNTIL, oldest first (LIMIT of them); HELD: with the rows
    under hold (the report shows them, marked), else without."""
    days = days_of(config.retention, category)
    if days is None:
        return []
    keep = timedelta(days=days)
    scan = _Scan(config, category, keep, until - keep, limit, held)
    return await _SCANS[category](session, scan)


async def _raw_due(session: AsyncSession, scan: _Scan) -> list[Due]:
    kept = or_(RawMessage.data.is_not(None), RawMessage.path.is_not(None))
    quarantined = select(Quarantine.id).where(Quarantine.raw_id == RawMessage.id).exists()
    on_ticket = (
        select(RawMessage.id, Ticket.id, Ticket.closed_at, _HELD)
        .join(Ticket, Ticket.id == RawMessage.ticket_id)
        .where(kept, Ticket.state == "closed", Ticket.closed_at <= scan.cutoff, ~quarantined)
    )
    if not scan.held:
        on_ticket = on_ticket.where(privacy.not_held())
    alone = select(RawMessage.id, RawMessage.received_at).where(
        kept, RawMessage.ticket_id.is_(None), RawMessage.received_at <= scan.cutoff, ~quarantined
    )
    found = [
        scan.due(raw_id, tid, closed_at, is_held)
        for raw_id, tid, closed_at, is_held in await session.execute(
            on_ticket.order_by(Ticket.closed_at, RawMessage.id).limit(scan.limit)
        )
    ]
    found += [
        scan.due(raw_id, None, received_at)
        for raw_id, received_at in await session.execute(
            alone.order_by(RawMessage.received_at, RawMessage.id).limit(scan.limit)
        )
    ]
    return found


async def _quarantine_due(session: AsyncSession, scan: _Scan) -> list[Due]:
    query = (
        select(Quarantine.id, Quarantine.resolved_at)
        .where(Quarantine.resolved_at.is_not(None), Quarantine.resolved_at <= scan.cutoff)
        .order_by(Quarantine.resolved_at, Quarantine.id)
        .limit(scan.limit)
    )
    return [scan.due(qid, None, resolved) for qid, resolved in await session.execute(query)]


async def _closed_due(session: AsyncSession, scan: _Scan) -> list[Due]:
    query = select(Ticket.id, Ticket.closed_at, _HELD).where(
        Ticket.state == "closed", Ticket.closed_at <= scan.cutoff, Ticket.purged_at.is_(None)
    )
    if not scan.held:
        query = query.where(privacy.not_held())
    rows = await session.execute(query.order_by(Ticket.closed_at, Ticket.id).limit(scan.limit))
    return [scan.due(tid, tid, closed_at, is_held) for tid, closed_at, is_held in rows]


async def _sent_due(session: AsyncSession, scan: _Scan) -> list[Due]:
    when = func.coalesce(Outbox.sent_at, Outbox.created_at)
    query = (
        select(Outbox.id, Outbox.ticket_id, when, _HELD)
        .outerjoin(Ticket, Ticket.id == Outbox.ticket_id)
        .where(Outbox.state != "pending", func.length(Outbox.data) > 0, when <= scan.cutoff)
    )
    if not scan.held:
        query = query.where(or_(Outbox.ticket_id.is_(None), privacy.not_held()))
    rows = await session.execute(query.order_by(when, Outbox.id).limit(scan.limit))
    return [scan.due(oid, tid, sent, is_held and tid) for oid, tid, sent, is_held in rows]


async def _events_due(session: AsyncSession, scan: _Scan) -> list[Due]:
    removable = Event.type.not_in(KEPT_EVENTS)
    closed = select(Ticket.id).where(Ticket.state == "closed", Ticket.closed_at <= scan.cutoff)
    counts = (
        select(Event.ticket_id, func.count(Event.id).label("n"))
        .where(removable, Event.ticket_id.in_(closed))
        .group_by(Event.ticket_id)
        .subquery()
    )
    per_ticket = select(Ticket.id, Ticket.closed_at, _HELD, counts.c.n).join(
        counts, counts.c.ticket_id == Ticket.id
    )
    if not scan.held:
        per_ticket = per_ticket.where(privacy.not_held())
    found = [
        scan.due(tid, tid, closed_at, is_held, count)
        for tid, closed_at, is_held, count in await session.execute(
            per_ticket.order_by(Ticket.closed_at, Ticket.id).limit(scan.limit)
        )
    ]
    alone = (
        select(Event.id, Event.created_at)
        .where(removable, Event.ticket_id.is_(None), Event.created_at <= scan.cutoff)
        .order_by(Event.created_at, Event.id)
        .limit(scan.limit)
    )
    found += [scan.due(eid, None, created) for eid, created in await session.execute(alone)]
    return found


_SCANS = {
    "raw_mail": _raw_due,
    "quarantine": _quarantine_due,
    "closed_ticket": _closed_due,
    "sent_mail": _sent_due,
    "events": _events_due,
}


async def report(
    session: AsyncSession, config: Config, now: datetime, *, horizon: timedelta = timedelta(0)
) -> list[Due]:
    """Everything due by NOW + HORIZON, held rows included (marked), soonest first."""
    until = now + horizon
    found = []
    for category in CATEGORIES:
        found.extend(await _candidates(session, config, category, until))
    return sorted(found, key=lambda d: (d.due_at, d.category, d.id))


@dataclass
class Removed:
    """What a pass (or a batch) removed, by category."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    items: list[Due] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # pending_deletions rows it made
    queued: list[PendingDeletion] = field(default_factory=list)  # made by the open batch
    skipped: bool = False  # another daemon holds the retention lock
    files: int = 0  # spool files and attachment blobs removed after the commits

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def _lock(session: AsyncSession) -> bool:
    """On PostgreSQL, take the retention lock for this transaction unless another has it."""
    if not privacy.postgres(session):
        return True
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(lock_key(LOCK)))))


async def enforce_batch(
    session: AsyncSession, config: Config, now: datetime, removed: Removed
) -> int:
    """Remove at most a batch of each category due at NOW, in SESSION's transaction; return
    how many items went (0: nothing left, or another daemon is at it: see REMOVED.skipped)."""
    if not await _lock(session):
        removed.skipped = True
        return 0
    await privacy.secure_delete(session)
    limit = config.retention.batch
    done = 0
    for category in CATEGORIES:
        items = await _candidates(session, config, category, now, limit=limit, held=False)
        if not items:
            continue
        remover = _REMOVERS[category]
        await remover(session, config, items, now, removed)
        removed.counts[category] += len(items)
        removed.items.extend(items)
        done += len(items)
    await session.flush()
    removed.pending.extend(row.id for row in removed.queued)
    removed.queued.clear()
    await privacy.plain_delete(session)
    return done


async def enforce(
    sessions: SessionMaker, config: Config, now: datetime, *, max_batches: int | None = None
) -> Removed:
    """Remove everything due at NOW, batch by batch (at most MAX_BATCHES); then the files."""
    removed = Removed()
    batches = 0
    while max_batches is None or batches < max_batches:
        async with sessions() as session, session.begin():
            done = await enforce_batch(session, config, now, removed)
            if not done and not removed.skipped:
                await _mark_pass(session, now)
        batches += 1
        if not done:
            break
    if removed.pending:
        deleted = await privacy.finish_deletions(
            sessions, config.service.state_dir, ids=removed.pending
        )
        removed.files = deleted.files + deleted.blobs
    if removed.total:
        await privacy.compact_sqlite(config.database.url, vacuum=False)
        log.info("retention_enforced", **{k: v for k, v in removed.counts.items() if v})
    return removed


async def _mark_pass(session: AsyncSession, now: datetime) -> None:
    await _stamp(session, LAST_PASS, now)


def lock_key(name: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of the periodic job NAME."""
    return int.from_bytes(hashlib.sha256(f"helpdeskd:{name}".encode()).digest()[:8], signed=True)


async def claim_run(
    sessions: SessionMaker, name: str, every: timedelta, now: datetime, *, force: bool = False
) -> bool:
    """Take the turn to run job NAME at NOW if it last ran EVERY or longer ago (FORCE: anyway).

    One daemon of a fleet gets it: on PostgreSQL under a transaction-level advisory lock, on
    SQLite under the write lock every transaction takes.
    """
    async with sessions() as session, session.begin():
        if privacy.postgres(session):
            locked = await session.scalar(select(func.pg_try_advisory_xact_lock(lock_key(name))))
            if not locked:
                return False
        last = await session.scalar(
            select(PrivacyState.updated_at).where(PrivacyState.name == name)
        )
        if not force and last is not None and now - last < every:
            return False
        await _stamp(session, name, now)
        return True


async def _stamp(session: AsyncSession, name: str, now: datetime) -> None:
    stmt = privacy.insert_for(session)(PrivacyState).values(
        name=name, value=now.isoformat(), updated_at=now
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": now.isoformat(), "updated_at": now}
        )
    )


async def due_for_pass(session: AsyncSession, now: datetime) -> bool:
    """Whether the last complete pass is older than PASS_EVERY (or there was none)."""
    last = await session.scalar(
        select(PrivacyState.updated_at).where(PrivacyState.name == LAST_PASS)
    )
    return last is None or now - last >= PASS_EVERY


# --- removing ----------------------------------------------------------------------------------


async def _forget_raw(
    session: AsyncSession, raws: Sequence[RawMessage], removed: Removed, *, blobs: bool
) -> None:
    """Drop the bytes of RAWS; BLOBS: also the attachment blobs only they brought."""
    for raw in raws:
        if blobs and raw.data is not None:
            for sha in _attachments(raw.data):
                removed.queued.append(privacy.queue_blob(session, sha))
        if raw.path:
            removed.queued.append(privacy.queue_file(session, raw.path))
        raw.data, raw.path = None, None


def _attachments(data: bytes) -> set[str]:
    try:
        return {a.sha256 for a in parse_message(data).attachments}
    except Exception:  # mail that failed to parse stored no attachment either
        return set()


async def _remove_raw(
    session: AsyncSession, config: Config, items: Sequence[Due], now: datetime, removed: Removed
) -> None:
    raws = list(
        await session.scalars(select(RawMessage).where(RawMessage.id.in_([i.id for i in items])))
    )
    # Mail that made no ticket brought its attachments' blobs with it; a ticket's go with
    # its bodies (closed_ticket).
    await _forget_raw(session, [r for r in raws if r.ticket_id is None], removed, blobs=True)
    await _forget_raw(session, [r for r in raws if r.ticket_id is not None], removed, blobs=False)
    await session.flush()


async def _remove_quarantine(
    session: AsyncSession, config: Config, items: Sequence[Due], now: datetime, removed: Removed
) -> None:
    entries = list(
        await session.scalars(select(Quarantine).where(Quarantine.id.in_([i.id for i in items])))
    )
    raw_ids = [e.raw_id for e in entries]
    for entry in entries:
        await session.delete(entry)
    raws = await session.scalars(
        select(RawMessage).where(RawMessage.id.in_(raw_ids), RawMessage.ticket_id.is_(None))
    )
    await _forget_raw(session, list(raws), removed, blobs=True)
    await session.flush()


async def _remove_closed(
    session: AsyncSession, config: Config, items: Sequence[Due], now: datetime, removed: Removed
) -> None:
    ids = [i.id for i in items]
    shas: set[str] = set()
    for message in await session.scalars(select(Message).where(Message.ticket_id.in_(ids))):
        shas.update(str(a.get("sha256") or "") for a in message.attachments or [])
        message.text = message.full_text = ""
        message.attachments = []
    raws = await session.scalars(select(RawMessage).where(RawMessage.ticket_id.in_(ids)))
    await _forget_raw(session, list(raws), removed, blobs=False)
    await session.execute(
        update(Outbox).where(Outbox.ticket_id.in_(ids), Outbox.state != "pending").values(data=b"")
    )
    await session.execute(update(Ticket).where(Ticket.id.in_(ids)).values(purged_at=now))
    days = config.retention.closed_ticket_days
    for item in items:
        session.add(
            Event(
                ticket_id=item.id,
                type="retention",
                actor="retention",
                detail={"removed": "bodies and attachments", "closed_ticket_days": days},
                created_at=now,
            )
        )
    await session.flush()
    for sha in sorted(s for s in shas if s):
        removed.queued.append(privacy.queue_blob(session, sha))


async def _remove_sent(
    session: AsyncSession, config: Config, items: Sequence[Due], now: datetime, removed: Removed
) -> None:
    await session.execute(
        update(Outbox).where(Outbox.id.in_([i.id for i in items])).values(data=b"")
    )


async def _remove_events(
    session: AsyncSession, config: Config, items: Sequence[Due], now: datetime, removed: Removed
) -> None:
    tickets = [i.id for i in items if i.ticket is not None]
    singles = [i.id for i in items if i.ticket is None]
    removable = Event.type.not_in(KEPT_EVENTS)
    if tickets:
        await session.execute(delete(Event).where(Event.ticket_id.in_(tickets), removable))
    if singles:
        await session.execute(delete(Event).where(Event.id.in_(singles)))


_REMOVERS = {
    "raw_mail": _remove_raw,
    "quarantine": _remove_quarantine,
    "closed_ticket": _remove_closed,
    "sent_mail": _remove_sent,
    "events": _remove_events,
}
