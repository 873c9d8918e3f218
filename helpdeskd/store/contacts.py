"""Find or create contacts and put them on tickets or take them off, race-free across daemons.

Creating a contact and adding a participant are INSERT … ON CONFLICT DO NOTHING against the
unique constraint (a contact's address; a ticket's contact), then a read: the daemon that lost
the race finds the winner's row instead of failing its whole batch on an IntegrityError.
Rows are stamped with the caller's moment (``now``), or else by the columns' defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.store.models import Agent, Contact, Participant

NAME_LENGTH = 200  # Contact.name's column


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return pg_insert if dialect == "postgresql" else sqlite_insert


def _stamp(now: datetime | None) -> dict[str, datetime]:
    """The created_at of a row inserted at NOW; none (the column's default) without NOW."""
    return {} if now is None else {"created_at": now}


async def ensure_contact(
    session: AsyncSession, email: str, name: str | None, *, now: datetime | None = None
) -> Contact:
    """Return the contact for EMAIL (lower-cased), creating it at NOW if missing.

    NAME, when given, becomes the contact's name if it has none yet.
    """
    email = email.lower()
    name = name[:NAME_LENGTH] if name else None
    contact = await session.scalar(select(Contact).where(Contact.email == email))
    if contact is None:
        await session.execute(
            _insert(session)(Contact)
            .values(email=email, name=name, undeliverable=False, bounce_count=0, **_stamp(now))
            .on_conflict_do_nothing(index_elements=["email"])
        )
        contact = await session.scalar(select(Contact).where(Contact.email == email))
        assert contact is not None  # inserted, or there already
    if name and not contact.name:
        contact.name = name
    return contact


async def add_participant(
    session: AsyncSession,
    ticket_id: int,
    contact_id: int,
    role: str,
    *,
    now: datetime | None = None,
) -> bool:
    """Put contact CONTACT_ID on ticket TICKET_ID in ROLE (requester | cc) at NOW unless already
    on it in any role; return whether it was added."""
    added = await session.scalar(
        _insert(session)(Participant)
        .values(ticket_id=ticket_id, contact_id=contact_id, role=role, **_stamp(now))
        .on_conflict_do_nothing(index_elements=["ticket_id", "contact_id"])
        .returning(Participant.id)
    )
    return added is not None


async def remove_participant(session: AsyncSession, ticket_id: int, email: str, role: str) -> bool:
    """Take the contact with address EMAIL off ticket TICKET_ID if it is on it in ROLE; return
    whether it was."""
    contact_id = await session.scalar(select(Contact.id).where(Contact.email == email.lower()))
    if contact_id is None:
        return False
    removed = await session.execute(
        delete(Participant)
        .where(
            Participant.ticket_id == ticket_id,
            Participant.contact_id == contact_id,
            Participant.role == role,
        )
        .returning(Participant.id)
    )
    return removed.first() is not None


async def plan_of(session: AsyncSession, email: str) -> str | None:
    """The customer plan of the contact with address EMAIL (from ``customers import``)."""
    return await session.scalar(select(Contact.plan).where(Contact.email == email.lower()))


async def ensure_agents(session: AsyncSession, config: Config) -> None:
    """Give every configured agent a row (the daemon syncs them at start; ``ingest`` may not)."""
    known = set(await session.scalars(select(Agent.email)))
    missing = [a for a in config.agents if a.email not in known]
    for configured in missing:
        session.add(Agent(email=configured.email, name=configured.name, active=True))
    if missing:
        await session.flush()
