"""Contacts and participants on SQLite and PostgreSQL, one daemon and two at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import func, select

from helpdeskd.store.contacts import add_participant, ensure_contact, remove_participant
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import Contact, Participant, Ticket


async def test_ensure_contact_creates_once_lower_cased(sessions: SessionMaker) -> None:
    async with sessions() as session, session.begin():
        first = await ensure_contact(session, "Ada@Example.ORG", None)
        again = await ensure_contact(session, "ada@example.org", "Ada Lovelace")
        assert (first.id, first.email) == (again.id, "ada@example.org")
        assert again.name == "Ada Lovelace"  # a missing name is filled in
        assert (first.undeliverable, first.bounce_count, first.suppressed) == (False, 0, False)
        kept = await ensure_contact(session, "ADA@example.org", "Someone Else")
        assert kept.name == "Ada Lovelace"  # a name is never overwritten
    async with sessions() as session:
        assert await session.scalar(select(func.count(Contact.id))) == 1


async def test_ensure_contact_cuts_a_long_name(sessions: SessionMaker) -> None:
    async with sessions() as session, session.begin():
        contact = await ensure_contact(session, "long@example.org", "x" * 500)
        assert contact.name == "x" * 200
        assert (await ensure_contact(session, "empty@example.org", "")).name is None


async def test_rows_carry_the_callers_moment_or_the_columns_default(
    sessions: SessionMaker,
) -> None:
    then = datetime(2030, 1, 1, tzinfo=UTC)
    ticket_id, _ = await _ticket(sessions)
    before = datetime.now(UTC)
    async with sessions() as session, session.begin():
        dated = await ensure_contact(session, "dated@example.org", None, now=then)
        plain = await ensure_contact(session, "plain@example.org", None)
        assert await add_participant(session, ticket_id, dated.id, "cc", now=then)
        assert await add_participant(session, ticket_id, plain.id, "cc")
    async with sessions() as session:
        assert (await session.get_one(Contact, dated.id)).created_at == then
        assert (await session.get_one(Contact, plain.id)).created_at >= before
        stamps = dict(
            (await session.execute(select(Participant.contact_id, Participant.created_at))).all()
        )
    assert stamps[dated.id] == then and stamps[plain.id] >= before


async def test_two_daemons_creating_one_contact_get_the_same_row(sessions: SessionMaker) -> None:
    """The second transaction waits for the first and then finds its row: no IntegrityError."""

    async def other() -> int:
        async with sessions() as session, session.begin():
            return (await ensure_contact(session, "race@example.org", None)).id

    async with sessions() as session, session.begin():
        mine = await ensure_contact(session, "Race@example.org", "Racer")
        await session.flush()
        theirs = asyncio.ensure_future(other())
        await asyncio.sleep(0.5)
        assert not theirs.done()  # held by our uncommitted row (PostgreSQL) or lock (SQLite)
    assert await asyncio.wait_for(theirs, 10) == mine.id
    async with sessions() as session:
        [row] = await session.scalars(select(Contact))
        assert (row.email, row.name) == ("race@example.org", "Racer")


async def _ticket(sessions: SessionMaker) -> tuple[int, int]:
    async with sessions() as session, session.begin():
        requester = await ensure_contact(session, "requester@example.org", None)
        ticket = Ticket(subject="help", requester_id=requester.id)
        session.add(ticket)
        await session.flush()
        return ticket.id, requester.id


async def test_add_participant_adds_a_contact_once(sessions: SessionMaker) -> None:
    ticket_id, requester_id = await _ticket(sessions)
    async with sessions() as session, session.begin():
        bob = await ensure_contact(session, "bob@example.org", None)
        assert await add_participant(session, ticket_id, requester_id, "requester")
        assert await add_participant(session, ticket_id, bob.id, "cc")
        assert not await add_participant(session, ticket_id, bob.id, "cc")
        assert not await add_participant(session, ticket_id, requester_id, "cc")  # any role
    async with sessions() as session:
        rows = await session.execute(
            select(Participant.contact_id, Participant.role).order_by(Participant.id)
        )
        assert rows.all() == [(requester_id, "requester"), (bob.id, "cc")]


async def test_two_daemons_adding_one_participant_add_it_once(sessions: SessionMaker) -> None:
    ticket_id, requester_id = await _ticket(sessions)

    async def other() -> bool:
        async with sessions() as session, session.begin():
            return await add_participant(session, ticket_id, requester_id, "cc")

    async with sessions() as session, session.begin():
        assert await add_participant(session, ticket_id, requester_id, "requester")
        theirs = asyncio.ensure_future(other())
        await asyncio.sleep(0.5)
        assert not theirs.done()
    assert await asyncio.wait_for(theirs, 10) is False
    async with sessions() as session:
        assert list(await session.scalars(select(Participant.role))) == ["requester"]


async def test_remove_participant_takes_off_only_that_role(sessions: SessionMaker) -> None:
    ticket_id, requester_id = await _ticket(sessions)
    async with sessions() as session, session.begin():
        bob = await ensure_contact(session, "bob@example.org", None)
        await add_participant(session, ticket_id, requester_id, "requester")
        await add_participant(session, ticket_id, bob.id, "cc")
        assert not await remove_participant(session, ticket_id, "requester@example.org", "cc")
        assert not await remove_participant(session, ticket_id, "nobody@example.org", "cc")
        assert await remove_participant(session, ticket_id, "Bob@Example.org", "cc")
        assert not await remove_participant(session, ticket_id, "bob@example.org", "cc")
    async with sessions() as session:
        assert list(await session.scalars(select(Participant.role))) == ["requester"]
        assert await session.scalar(select(func.count(Contact.id))) == 2  # contacts stay
