"""Read-side queries: tickets, outbox, quarantine and status as plain dicts for the CLI's JSON."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.store.leases import database_now, lease_rows
from helpdeskd.store.models import (
    Agent,
    Contact,
    Event,
    MailboxState,
    Message,
    Outbox,
    Quarantine,
    RawMessage,
    Ticket,
)
from helpdeskd.store.registry import daemon_rows
from helpdeskd.triage.received import ref_to_id, ticket_ref


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


async def ticket_rows(
    session: AsyncSession, config: Config, *, state: str | None = None, ticket_id: int | None = None
) -> list[dict[str, Any]]:
    counts = (
        select(Message.ticket_id, func.count(Message.id).label("n"))
        .where(Message.internal.is_(False))  # the conversation, not agents' notifications
        .group_by(Message.ticket_id)
        .subquery()
    )
    query = (
        select(Ticket, Contact.email, Agent.email, counts.c.n)
        .join(Contact, Contact.id == Ticket.requester_id)
        .outerjoin(Agent, Agent.id == Ticket.assignee_id)
        .outerjoin(counts, counts.c.ticket_id == Ticket.id)
        .order_by(Ticket.id)
    )
    if state:
        query = query.where(Ticket.state == state)
    if ticket_id is not None:
        query = query.where(Ticket.id == ticket_id)
    rows = []
    for ticket, requester, assignee, count in await session.execute(query):
        rows.append(
            {
                "ref": ticket_ref(config, ticket.id),
                "subject": ticket.subject,
                "state": ticket.state,
                "priority": ticket.priority,
                "queue": ticket.queue,
                "assignee": assignee,
                "requester": requester,
                "channel": ticket.channel,
                "external_ref": ticket.external_ref,
                "tags": list(ticket.tags or []),
                "created_at": iso(ticket.created_at),
                "updated_at": iso(ticket.updated_at),
                "message_count": count or 0,
            }
        )
    return rows


async def ticket_detail(session: AsyncSession, config: Config, ref: str) -> dict[str, Any] | None:
    ticket_id = ref_to_id(config, ref)
    if ticket_id is None:
        return None
    rows = await ticket_rows(session, config, ticket_id=ticket_id)
    if not rows:
        return None
    detail = rows[0]
    messages = await session.scalars(
        select(Message).where(Message.ticket_id == ticket_id).order_by(Message.id)
    )
    detail["messages"] = [
        {
            "direction": m.direction,
            "kind": m.kind,
            "message_id": m.message_id,
            "from": m.from_addr,
            "to": list(m.to or []),
            "cc": list(m.cc or []),
            "subject": m.subject,
            "text": m.text,
            "full_text": m.full_text,
            "attachments": [
                {"name": a["name"], "type": a["type"], "size": a["size"]}
                for a in (m.attachments or [])
            ],
            "internal": m.internal,
            "created_at": iso(m.created_at),
        }
        for m in messages
    ]
    events = await session.scalars(
        select(Event).where(Event.ticket_id == ticket_id).order_by(Event.id)
    )
    detail["events"] = [
        {"type": e.type, "actor": e.actor, "detail": e.detail, "created_at": iso(e.created_at)}
        for e in events
    ]
    return detail


async def outbox_rows(session: AsyncSession, config: Config) -> list[dict[str, Any]]:
    rows = await session.scalars(select(Outbox).order_by(Outbox.id))
    return [
        {
            "id": row.id,
            "kind": row.kind,
            "ticket": ticket_ref(config, row.ticket_id) if row.ticket_id else None,
            "message_id": row.message_id,
            "state": row.state,
            "attempts": row.attempts,
            "next_attempt_at": iso(row.next_attempt_at) if row.state == "pending" else None,
            "last_error": row.last_error,
            "created_at": iso(row.created_at),
            "sent_at": iso(row.sent_at),
            "recipients": [
                {
                    "address": r.address,
                    "state": r.state,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                }
                for r in row.recipients
            ],
        }
        for row in rows
    ]


async def quarantine_rows(session: AsyncSession) -> list[dict[str, Any]]:
    query = (
        select(Quarantine, RawMessage)
        .join(RawMessage, RawMessage.id == Quarantine.raw_id)
        .where(Quarantine.resolved_at.is_(None))
        .order_by(Quarantine.id)
    )
    return [
        {
            "id": q.id,
            "source": q.source,
            "uid": raw.uid,
            "message_id": raw.message_id,
            "size": raw.size,
            "error": q.error,
            "retries": q.retries,
            "created_at": iso(q.created_at),
        }
        for q, raw in await session.execute(query)
    ]


async def quarantine_detail(session: AsyncSession, quarantine_id: int) -> dict[str, Any] | None:
    entry = await session.get(Quarantine, quarantine_id)
    if entry is None:
        return None
    raw = await session.get_one(RawMessage, entry.raw_id)
    return {
        "id": entry.id,
        "source": entry.source,
        "uid": raw.uid,
        "message_id": raw.message_id,
        "size": raw.size,
        "error": entry.error,
        "traceback": entry.traceback,
        "retries": entry.retries,
        "resolved_at": iso(entry.resolved_at),
        "created_at": iso(entry.created_at),
        "raw": raw.data.decode("utf-8", "replace") if raw.data is not None else None,
    }


async def status_rows(session: AsyncSession, mailboxes: Sequence[str] = ()) -> dict[str, Any]:
    """What ``helpdeskd status`` shows: the daemons (stale ones too), each mailbox (MAILBOXES,
    the configured ones, and any polled before) with its lease, last poll and error, the outbox
    and the quarantine. Ages and staleness count to the database's time now."""
    now = await database_now(session)
    states = {m.name: m for m in await session.scalars(select(MailboxState))}
    held = await lease_rows(session, now)
    daemons = await daemon_rows(session, now)
    known = {d["id"]: d for d in daemons}
    depth = await session.scalar(select(func.count(Outbox.id)).where(Outbox.state == "pending"))
    oldest = await session.scalar(
        select(func.min(Outbox.created_at)).where(Outbox.state == "pending")
    )
    quarantined = await session.scalar(
        select(func.count(Quarantine.id)).where(Quarantine.resolved_at.is_(None))
    )
    rows = []
    for name in [*mailboxes, *sorted(set(states) - set(mailboxes))]:
        m = states.get(name)
        rows.append(
            {
                "name": name,
                "uidvalidity": m.uidvalidity if m else None,
                "last_uid": m.last_uid if m else None,
                "last_poll_at": iso(m.last_poll_at) if m else None,
                "last_ok_at": iso(m.last_ok_at) if m else None,
                "last_error": m.last_error if m else None,
                "last_error_at": iso(m.last_error_at) if m else None,
                "lease": _lease(held.get(name), known),
            }
        )
    return {
        "checked_at": iso(now),
        "daemons": daemons,
        "mailboxes": rows,
        "outbox_depth": depth or 0,
        "outbox_oldest": iso(oldest) if oldest else None,
        "quarantined": quarantined or 0,
    }


def _lease(lease: dict[str, Any] | None, daemons: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A mailbox's lease for status: who polls it (``daemon``, its ``host`` and ``pid``) and
    until when, or ``held`` false when nobody does."""
    if lease is None:
        return {
            "held": False,
            "daemon": None,
            "host": None,
            "pid": None,
            "stale": False,
            "token": 0,
            "expires_at": None,
        }
    holder = daemons.get(lease["holder"] or "")
    return {
        "held": lease["held"],
        "daemon": lease["holder"],
        "host": holder["host"] if holder else None,
        "pid": holder["pid"] if holder else None,
        # held, by a daemon whose heartbeat is overdue or that is not registered
        "stale": lease["held"] and (holder is None or holder["stale"]),
        "token": lease["token"],
        "expires_at": iso(lease["expires_at"]),
    }
