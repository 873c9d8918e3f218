"""Write plans: every row a run of plans adds, with one INSERT per table.

:class:`Writer` takes the plans of a run (or of one mail) in order, has their mail composed
(in this process: see helpdeskd.triage.mails.Composer), and writes contacts, tickets, raw
mail, participants, outbox rows, ticket messages, thread references, automatic-answer records and
events with a Core executemany per table, ids taken up front so that rows can refer to each
other. What no INSERT says — Cc taken off a ticket, a merge moving a ticket's mail, an opt-out by
mail — follows, on the written rows.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.desk.notices import opt_out
from helpdeskd.ingest.lookup import Known
from helpdeskd.store.contacts import add_participant, remove_participant
from helpdeskd.store.models import (
    AutoReplyLog,
    Base,
    Contact,
    Event,
    Message,
    Outbox,
    OutboxRecipient,
    Participant,
    RawMessage,
    ThreadRef,
    Ticket,
)
from helpdeskd.triage.facts import Needs, Policy
from helpdeskd.triage.mails import Composer, Draft, Queued, TicketCard
from helpdeskd.triage.plan import Plan
from helpdeskd.triage.received import Incoming, raw_fields

SLICE = 16
"""Mails decided or composed at a time, between two turns of the event loop's other tasks.

A batch's mails are decided and composed without a database round trip in between: 250 of
them held the loop for 100-200 ms, and the outbox sender, which shares it, sent and recorded
nothing meanwhile; through a backlog its acknowledgements fell behind. A slice takes a few
milliseconds; a turn costs a fraction of one."""


async def give_turn() -> None:
    """Let the event loop run what is ready (the sender's replies, its records) before going on."""
    await asyncio.sleep(0)


@dataclass
class _Outgoing:
    """A mail a plan sends: its outbox row and ticket message, filled in once it is composed."""

    row: dict[str, Any]
    message: dict[str, Any] | None = None  # None: not about a ticket (or not composed yet)


class Writer:
    """The rows of a run of plans, written at the end: ``add`` each plan, then ``write``."""

    def __init__(
        self,
        session: AsyncSession,
        policy: Policy,
        known: Known,
        *,
        top_ticket: int | None = None,
    ) -> None:
        self.session = session
        self.policy = policy
        self.known = known
        self.now = known.now
        self.postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
        self.top_ticket = top_ticket  # SQLite: the highest ticket id so far
        self.contacts: dict[str, dict[str, Any]] = {}  # new or changed, by address
        self.tickets: dict[int, dict[str, Any]] = {}  # new or changed, by id
        self.new_tickets: set[int] = set()
        self.rows: dict[str, list[dict[str, Any]]] = {
            name: [] for name in ("raw", "participants", "thread_refs", "autoreplies", "events")
        }
        self.existing_raw: list[dict[str, Any]] = []  # raw rows stored before (a retry)
        # Ticket messages in the order they are written: those of the mail a plan sends, when
        # it is about a ticket, follow the received mail's.
        self.messages: list[dict[str, Any] | _Outgoing] = []
        self.outgoing: list[_Outgoing] = []
        self.composer = Composer(policy.config, policy.renderer, self.now)
        self.drafts: list[Draft] = []  # the mail the plans send, composed when written
        self.removals: list[tuple[int, str]] = []  # (ticket id, address) off its Cc
        self.merges: list[tuple[int, int]] = []  # (ticket id, the ticket it goes into)
        self.opt_outs: list[tuple[int, str]] = []  # (contact id, category), by mail

    async def ticket_id(self) -> int:
        """The id of the next new ticket: ticket numbers are seen by customers, none is wasted."""
        if self.postgres:
            return (await self._allocate(Ticket, 1))[0]
        if self.top_ticket is None:
            self.top_ticket = (await self._allocate(Ticket, 1))[0] - 1
        self.top_ticket += 1
        return self.top_ticket

    # --- adding a plan -----------------------------------------------------------------------

    def add(
        self,
        item: Incoming,
        needs: Needs,
        plan: Plan,
        ticket_id: int | None,
        *,
        raw_id: int | None = None,
    ) -> None:
        """Add the rows of PLAN for ITEM, its ticket TICKET_ID (new or stored)."""
        raw = {
            "id": raw_id,
            **raw_fields(item, needs.parsed.message_id),
            "outcome": plan.outcome,
            "reason": plan.reason[:2000],
            "ticket_id": ticket_id,
            "received_at": self.now,
        }
        if raw_id is None:
            self.rows["raw"].append(raw)
        else:
            self.existing_raw.append(raw)
        for change in plan.contacts:
            self._contact(change.email, change.name, dict(change.changes))
        if plan.ticket is not None:
            assert ticket_id is not None
            self._ticket(plan, ticket_id)
        for email, role in plan.participants:
            self.rows["participants"].append(
                {"ticket_id": ticket_id, "email": email, "role": role, "created_at": self.now}
            )
        if plan.message is not None:
            self.messages.append(
                {**plan.message, "ticket_id": ticket_id, "raw": raw, "created_at": self.now}
            )
        for mid in plan.thread_refs:
            self.rows["thread_refs"].append(
                {
                    "message_id": mid,
                    "ticket_id": ticket_id,
                    "addresses": list(plan.referrers),
                    "created_at": self.now,
                }
            )
        self._mails(plan, ticket_id)
        if plan.autoreply_to is not None:
            self.rows["autoreplies"].append(
                {
                    "address": plan.autoreply_to,
                    "ticket_id": ticket_id,
                    "kind": "ack",
                    "sent_at": self.now,
                }
            )
        for event in plan.events:
            self.rows["events"].append(
                {
                    "ticket_id": None if event.ticketless else event.on or ticket_id,
                    "type": event.type,
                    "actor": event.actor,
                    "detail": dict(event.detail),
                    "created_at": self.now,
                }
            )
        if ticket_id is not None:
            self.removals.extend((ticket_id, email) for email in plan.removals)
            if plan.merge_into is not None:
                self.merges.append((ticket_id, plan.merge_into))
                self.tickets[ticket_id]["merged_into_id"] = plan.merge_into
        if plan.opt_out is not None:
            self.opt_outs.append(plan.opt_out)

    def _contact(self, email: str, name: str | None, changes: dict[str, Any]) -> None:
        row = self.contacts.get(email)
        if row is None:
            known = self.known.contacts.get(email)
            if known is not None and known.id is not None:
                row = {"id": known.id, "email": email, "_new": False, "_set": set()}
            else:
                row = {
                    "id": None,
                    "email": email,
                    "name": None,
                    "undeliverable": False,
                    "bounce_count": 0,
                    "bounce_score": 0.0,
                    "last_bounce_weight": 0.0,
                    "suppressed": False,
                    "plan": None,
                    "created_at": self.now,
                    "_new": True,
                    "_set": set(),
                }
            self.contacts[email] = row
        if name:  # the plan fills a missing name only
            row["name"] = name
            row["_set"].add("name")
        row.update(changes)
        row["_set"].update(changes)

    def _ticket(self, plan: Plan, ticket_id: int) -> None:
        ticket = plan.ticket
        assert ticket is not None
        row = self.tickets.get(ticket_id)
        if ticket.id is None and row is None:
            self.new_tickets.add(ticket_id)
            row = {
                "id": ticket_id,
                "subject": ticket.subject,
                "state": ticket.state,
                "state_since": self.now,
                "priority": ticket.priority,
                "queue": ticket.queue,
                "assignee_id": ticket.assignee_id,
                "requester_email": ticket.requester,
                "channel": ticket.channel,
                "external_ref": ticket.external_ref,
                "tags": list(ticket.tags),
                "parent_id": ticket.parent_id,
                "merged_into_id": None,
                "created_at": self.now,
                "updated_at": self.now,
                "solved_at": ticket.solved_at,
                "closed_at": ticket.closed_at,
                "first_response_at": None,
            }
            self.tickets[ticket_id] = row
            return
        if row is None:
            row = {"id": ticket_id}
            self.tickets[ticket_id] = row
        for name in ticket.changed:
            value = getattr(ticket, name)
            row[name] = list(value) if name == "tags" else value
        if "state" in ticket.changed:
            row["state_since"] = self.now

    def _mails(self, plan: Plan, ticket_id: int | None) -> None:
        if not plan.mails:
            return
        card = None
        if plan.ticket is not None and ticket_id is not None:
            ticket = plan.ticket
            assignee = next(
                (a.email for a in self.known.agents.values() if a.id == ticket.assignee_id), None
            )
            card = TicketCard(
                ticket_id,
                ticket.subject,
                ticket.state,
                ticket.priority,
                ticket.queue,
                ticket.channel,
                ticket.external_ref,
                assignee,
            )
        elif ticket_id is not None:
            stored = self.known.tickets.get(ticket_id)
            if stored is not None:
                card = TicketCard(
                    ticket_id,
                    stored.subject,
                    stored.state,
                    stored.priority,
                    stored.queue,
                    stored.channel,
                    stored.external_ref,
                    None,
                )
        for mail in plan.mails:
            outgoing = _Outgoing({"id": None})
            self.outgoing.append(outgoing)
            self.messages.append(outgoing)
            self.drafts.append(Draft(mail, card))

    def _outbox(self, composed: list[Queued]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The outbox rows of the composed mail, and their recipients' rows."""
        outbox: list[dict[str, Any]] = []
        recipients: list[dict[str, Any]] = []
        for outgoing, mail in zip(self.outgoing, composed, strict=True):
            row = outgoing.row
            row.update(
                ticket_id=mail.ticket_id,
                notice_id=None,
                kind=mail.kind,
                message_id=mail.message_id,
                envelope_from=mail.envelope_from,
                data=mail.data,
                state="pending",
                attempts=0,
                next_attempt_at=self.now,
                expires_at=mail.expires_at,
                last_error=None,
                created_at=self.now,
                sent_at=None,
            )
            outbox.append(row)
            for address in dict.fromkeys(r.lower() for r in mail.recipients):
                recipients.append(
                    {"outbox": row, "address": address, "state": "pending", "attempts": 0}
                )
            if mail.ticket_id is not None:
                outgoing.message = {
                    **mail.message,
                    "digest": None,
                    "raw_id": None,
                    "created_at": self.now,
                }
        return outbox, recipients

    # --- writing -----------------------------------------------------------------------------

    async def _allocate(self, model: type[Base], count: int) -> list[int]:
        """Take COUNT ids for new rows of MODEL, so that other rows can refer to them."""
        if not count:
            return []
        next_ids, top_id = _allocating(model.__tablename__)
        if self.postgres:
            return list(await self.session.scalars(next_ids, {"count": count}))
        # SQLite: the batch's BEGIN IMMEDIATE holds the write lock, so nobody else can take
        # these ids before the run is written.
        top = await self.session.scalar(top_id) or 0
        return list(range(top + 1, top + 1 + count))

    async def write(self) -> None:
        """Write every row the plans added."""
        session, rows = self.session, self.rows
        composed: list[Queued] = []
        for start in range(0, len(self.drafts), SLICE):
            if start:
                await give_turn()
            composed.extend(self.composer(self.drafts[start : start + SLICE]))
        outbox, recipients = self._outbox(composed)
        new_contacts = [r for r in self.contacts.values() if r["_new"]]
        for row, value in zip(
            new_contacts, await self._allocate(Contact, len(new_contacts)), strict=True
        ):
            row["id"] = value
        for allocated, table_rows in ((RawMessage, rows["raw"]), (Outbox, outbox)):
            for row, value in zip(
                table_rows, await self._allocate(allocated, len(table_rows)), strict=True
            ):
                row["id"] = value
        contact_ids = {email: row["id"] for email, row in self.contacts.items()}
        contact_ids.update(
            {
                e: c.id
                for e, c in self.known.contacts.items()
                if c.id is not None and e not in contact_ids
            }
        )
        inserts: dict[str, list[dict[str, Any]]] = {
            "contacts": [_columns(Contact, r) for r in new_contacts],
            "tickets": [],
        }
        ticket_updates = []
        for tid, row in self.tickets.items():
            if tid in self.new_tickets:
                row["requester_id"] = contact_ids[row.pop("requester_email")]
                inserts["tickets"].append(row)
            else:
                ticket_updates.append(row)
        participants = [
            {
                "ticket_id": r["ticket_id"],
                "contact_id": contact_ids[r["email"]],
                "role": r["role"],
                "created_at": r["created_at"],
            }
            for r in rows["participants"]
        ]
        messages = []
        for message in self.messages:
            if not isinstance(message, _Outgoing):  # received mail
                raw = message.pop("raw")
                messages.append({**message, "raw_id": raw["id"], "outbox_id": None})
            elif message.message is not None:  # mail we send about a ticket
                messages.append({**message.message, "outbox_id": message.row["id"]})
        for row in recipients:
            row["outbox_id"] = row.pop("outbox")["id"]
        await session.flush()  # changes the lookup made (agent rows) go first
        await _update_by_id(
            session,
            Contact,
            [
                {"id": row["id"], **{k: row[k] for k in row["_set"]}}
                for row in self.contacts.values()
                if row["_set"] and not row["_new"]
            ],
        )
        for model, table_rows in (
            (Contact, inserts["contacts"]),
            (Ticket, inserts["tickets"]),
            (RawMessage, rows["raw"]),
            (Participant, participants),
            (Outbox, outbox),
            (OutboxRecipient, recipients),
            (Message, messages),
            (AutoReplyLog, rows["autoreplies"]),
            (Event, rows["events"]),
        ):
            if table_rows:
                # Every row names all its columns, None meaning NULL: a Core executemany, one
                # statement per table (the ORM's bulk insert would cut it wherever the None
                # columns change, and adds bookkeeping per row that these rows do not need).
                await session.execute(insert(Base.metadata.tables[model.__tablename__]), table_rows)
        await _update_by_id(session, Ticket, ticket_updates)
        for row in self.existing_raw:
            values = {k: row[k] for k in ("message_id", "outcome", "reason", "ticket_id")}
            await session.execute(
                update(RawMessage).where(RawMessage.id == row["id"]).values(**values)
            )
        if rows["thread_refs"]:
            dialect_insert = pg_insert if self.postgres else sqlite_insert
            await session.execute(
                dialect_insert(ThreadRef).on_conflict_do_nothing(index_elements=["message_id"]),
                rows["thread_refs"],
            )
        for ticket_id, email in self.removals:
            await remove_participant(session, ticket_id, email, "cc")
        ours = [row["id"] for row in outbox]
        for ticket_id, target in self.merges:
            # The ticket's mail moves, the agent's reply included; what this plan sends about
            # the merged ticket stays with it.
            await session.execute(
                update(Message)
                .where(
                    Message.ticket_id == ticket_id,
                    or_(Message.outbox_id.is_(None), Message.outbox_id.not_in(ours)),
                )
                .values(ticket_id=target)
            )
            for contact_id in await session.scalars(
                select(Participant.contact_id).where(Participant.ticket_id == ticket_id)
            ):
                await add_participant(session, target, contact_id, "cc")
        for contact_id, category in self.opt_outs:
            contact = await session.get_one(Contact, contact_id)
            await opt_out(session, contact, category, "mail")


@functools.cache
def _allocating(table_name: str) -> tuple[Any, Any]:
    """The statements that take ids for TABLE_NAME's new rows: on PostgreSQL the next
    ``:count`` of its sequence, on SQLite its highest id. Built once per table: on PostgreSQL
    one runs for every new ticket, and building it cost more than running it."""
    table = Base.metadata.tables[table_name]
    sequence = func.pg_get_serial_sequence(table_name, "id")
    next_ids = select(func.nextval(sequence)).select_from(
        func.generate_series(1, bindparam("count", type_=Integer()))
    )
    return next_ids, select(func.max(table.c.id))


async def _update_by_id(
    session: AsyncSession, model: type[Base], rows: list[dict[str, Any]]
) -> None:
    """UPDATE MODEL's rows by id, one executemany for each set of columns the rows change."""
    table = Base.metadata.tables[model.__tablename__]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        columns = tuple(sorted(k for k in row if k != "id"))
        if columns:
            groups.setdefault(columns, []).append(
                {f"v_{k}": row[k] for k in row} | {"b_id": row["id"]}
            )
    for columns, params in groups.items():
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({name: bindparam(f"v_{name}") for name in columns})
        )
        await session.execute(statement, params)


def _columns(model: type[Base], row: dict[str, Any]) -> dict[str, Any]:
    names = Base.metadata.tables[model.__tablename__].columns.keys()
    return {name: row.get(name) for name in names}
