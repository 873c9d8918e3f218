"""The store's fast lane: a run of plain customer mail, written with one INSERT per table.

Most mail a support desk receives is a customer opening a ticket or writing on an open one.
For a run of such messages, :class:`FastLane` looks up what the decisions need with one query per
kind of fact (known Message-IDs, tickets and their participants, contacts, agents, recent
automatic answers and mail counts), decides each message with the processor's own pure functions
(classify, resolve_thread, reopen_action, the rules, the loop guards, the acknowledgement and
notification mails), keeps what the run adds in memory so that a later message sees an earlier
one, and writes every row at the end.

The first message that needs more — a bounce, an agent, a duplicate, a solved or merged ticket,
a flood, a rule that assigns, marks spam or notifies someone — ends the run; the processor stores
it on the per-message path, then starts a new run. The processor runs the lane inside a
SAVEPOINT: if the write fails (another daemon stored the same mail a moment ago), the savepoint
is rolled back and the run's messages take the per-message path. Nothing is half-written.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import case, func, insert, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.desk import routing
from helpdeskd.mail.build import OutgoingMail
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.mail.tokens import tokens_in, verify_reply
from helpdeskd.outbox.compose import Composed
from helpdeskd.rules.engine import evaluate
from helpdeskd.store.models import (
    Agent,
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
    columns,
    utcnow,
)
from helpdeskd.triage.classify import ClassifyContext, classify
from helpdeskd.triage.received import (
    Incoming,
    Outcome,
    inbound_message,
    ref_to_id,
    ticket_ref,
    with_fallback_sender,
)
from helpdeskd.triage.threading import (
    Candidates,
    TicketView,
    normalize_subject,
    reopen_action,
    resolve_thread,
    subject_refs,
    thread_index_root,
)

if TYPE_CHECKING:
    from helpdeskd.ingest.batch import Processor

log = structlog.get_logger(__name__)


BUILD_CHUNK = 16  # mails per build task: enough to pay for the trip to a worker


class _Merged:
    """A candidate ticket merged into another: the per-message path follows the merge."""


MERGED = _Merged()


@dataclass
class _Contact:
    row: dict[str, Any]
    orm: Contact | None

    def rename(self, name: str) -> None:
        self.row["name"] = name[:200]
        if self.orm is not None:
            self.orm.name = name[:200]


@dataclass
class _Ticket:
    """A ticket as the run knows it: its columns, and the ORM row when it was loaded."""

    row: dict[str, Any]
    orm: Ticket | None
    requester: _Contact
    participants: set[str] = field(default_factory=set)  # their addresses
    inbound: int = 0  # inbound messages, all time (for the notification)
    recent: int = 0  # inbound messages within the flood window

    @property
    def id(self) -> int:
        return int(self.row["id"])

    def set(self, name: str, value: Any) -> None:
        self.row[name] = value
        if self.orm is not None:
            setattr(self.orm, name, value)  # the ORM's listener stamps state_since


class FastLane:
    """One run: ``await FastLane(processor, session).run(entries)``, inside a SAVEPOINT."""

    def __init__(self, processor: Processor, session: AsyncSession) -> None:
        self.p = processor
        self.session = session
        self.config = processor.config
        self.now = utcnow()
        service = self.config.service
        self.flood_since = self.now - timedelta(minutes=service.flood_minutes)
        # what the database holds, then what the run adds
        self.messages: dict[str, int] = {}  # Message-ID -> ticket id, stored mail
        self.thread_refs: dict[str, int] = {}  # Message-ID -> ticket id, referred to
        self.thread_roots: dict[str, int] = {}  # Outlook conversation root -> latest ticket
        self.tickets: dict[int, _Ticket | _Merged] = {}
        self.contacts: dict[str, _Contact] = {}
        self.contacts_by_id: dict[int, _Contact] = {}
        self.agents: dict[str, Agent] = {}
        self.agents_by_id: dict[int, Agent] = {}
        self.recent_by_sender: Counter[str] = Counter()
        self.autoreplies: Counter[str] = Counter()
        self.top_ticket: int | None = None  # SQLite: the highest ticket id so far
        self.unbuilt: list[OutgoingMail] = []  # mails not yet sent to a worker to build
        self.building: list[asyncio.Future[list[bytes]]] = []
        # the rows to write, in the order the per-message path would write them
        self.rows: dict[str, list[dict[str, Any]]] = {
            name: []
            for name in (
                "contacts",
                "tickets",
                "raw",
                "participants",
                "messages",
                "thread_refs",
                "outbox",
                "recipients",
                "autoreplies",
                "events",
            )
        }

    # --- the run ---------------------------------------------------------------------------

    async def run(self, entries: Sequence[tuple[Incoming, ParsedMessage]]) -> list[Outcome]:
        """Store the longest leading run of ENTRIES this lane can; return its outcomes.

        The caller passes only entries :meth:`suits` accepts: each is classified once.
        """
        await self._look_up(entries)
        outcomes: list[Outcome] = []
        try:
            for item, parsed in entries:
                with structlog.contextvars.bound_contextvars(
                    message_id=parsed.message_id, source=item.source
                ):
                    outcome = await self._decide(item, parsed)
                if outcome is None:
                    break
                outcomes.append(outcome)
            if outcomes:
                await self._write()
        finally:
            for future in self.building:
                future.cancel()  # after a failure: the per-message path builds them again
        return outcomes

    @staticmethod
    def suits(item: Incoming, parsed: ParsedMessage, context: ClassifyContext) -> bool:
        """Whether the lane may take this message, as far as the message alone tells."""
        if item.oversize or item.raw is None:
            return False
        parsed = with_fallback_sender(parsed)
        return bool(parsed.sender) and classify(parsed, context).kind == "customer"

    # --- looking up ------------------------------------------------------------------------

    async def _look_up(self, entries: Sequence[tuple[Incoming, ParsedMessage]]) -> None:
        session, service = self.session, self.config.service
        ids: set[str] = set()
        roots: set[str] = set()
        ticket_ids: set[int] = set()
        emails: set[str] = set()
        for _, parsed in entries:
            ids.update([parsed.message_id, *parsed.in_reply_to, *parsed.references])
            root = thread_index_root(parsed.thread_index)
            if root:
                roots.add(root)
            for text in tokens_in(list(parsed.recipients), service.support_address):
                token = verify_reply(service.secret_keys, text)
                if token is not None:
                    ticket_ids.add(ref_to_id(self.config, token.ref) or 0)
            ticket_ids.update(
                ref_to_id(self.config, ref) or 0
                for ref in subject_refs(parsed.subject, service.ticket_prefix)
            )
            emails.update(a.lower() for a in (parsed.sender, *parsed.to, *parsed.cc) if a)
        for mid, tid in await session.execute(
            select(Message.message_id, Message.ticket_id).where(Message.message_id.in_(ids))
        ):
            self.messages[mid] = tid
        for mid, tid in await session.execute(
            select(ThreadRef.message_id, ThreadRef.ticket_id).where(ThreadRef.message_id.in_(ids))
        ):
            self.thread_refs[mid] = tid
        if roots:
            for root, tid in await session.execute(
                select(Message.thread_index, Message.ticket_id)
                .where(Message.thread_index.in_(roots))
                .order_by(Message.id)
            ):
                if root is not None:
                    self.thread_roots[root] = tid
        ticket_ids.update(self.messages.values(), self.thread_refs.values())
        ticket_ids.update(self.thread_roots.values())
        ticket_ids.discard(0)
        loaded = [ticket for ticket in await self._tickets(ticket_ids)]
        requester_ids = {ticket.requester_id for ticket in loaded}
        for contact in await session.scalars(
            select(Contact).where(or_(Contact.email.in_(emails), Contact.id.in_(requester_ids)))
        ):
            self._know_contact(_Contact(columns(contact), contact))
        await self._know_tickets(loaded)
        for agent in await session.scalars(select(Agent)):
            self.agents[agent.email] = agent
            self.agents_by_id[agent.id] = agent
        senders = [parsed.sender for _, parsed in entries if parsed.sender]
        inbound = select(Message.from_addr, func.count(Message.id)).where(
            Message.direction == "in",
            Message.created_at >= self.flood_since,
            Message.from_addr.in_(senders),
        )
        for sender, count in await session.execute(inbound.group_by(Message.from_addr)):
            self.recent_by_sender[sender] = count
        since = self.now - timedelta(hours=24)
        for address, count in await session.execute(
            select(AutoReplyLog.address, func.count(AutoReplyLog.id))
            .where(AutoReplyLog.address.in_(senders), AutoReplyLog.sent_at >= since)
            .group_by(AutoReplyLog.address)
        ):
            self.autoreplies[address] = count

    async def _tickets(self, ticket_ids: set[int]) -> list[Ticket]:
        if not ticket_ids:
            return []
        return list(await self.session.scalars(select(Ticket).where(Ticket.id.in_(ticket_ids))))

    async def _know_tickets(self, loaded: list[Ticket]) -> None:
        """Know LOADED tickets with their participants and mail counts (merged: not usable)."""
        for ticket in loaded:
            requester = self.contacts_by_id.get(ticket.requester_id)
            if ticket.merged_into_id is not None or requester is None:
                self.tickets[ticket.id] = MERGED
            else:
                self.tickets[ticket.id] = _Ticket(columns(ticket), ticket, requester)
        ticket_ids = [ticket.id for ticket in loaded]
        if not ticket_ids:
            return
        session = self.session
        for tid, email in await session.execute(
            select(Participant.ticket_id, Contact.email)
            .join(Contact, Participant.contact_id == Contact.id)
            .where(Participant.ticket_id.in_(ticket_ids))
        ):
            known = self.tickets.get(tid)
            if isinstance(known, _Ticket):
                known.participants.add(email)
        counts = await session.execute(
            select(
                Message.ticket_id,
                func.count(Message.id),
                func.sum(case((Message.created_at >= self.flood_since, 1), else_=0)),
            )
            .where(Message.direction == "in", Message.ticket_id.in_(ticket_ids))
            .group_by(Message.ticket_id)
        )
        for tid, total, recent in counts:
            known = self.tickets.get(tid)
            if isinstance(known, _Ticket):
                known.inbound, known.recent = int(total), int(recent or 0)

    def _know_contact(self, contact: _Contact) -> None:
        self.contacts[contact.row["email"]] = contact
        self.contacts_by_id[contact.row["id"]] = contact

    # --- deciding --------------------------------------------------------------------------

    def _view(self, ticket_id: int | None) -> TicketView | _Merged | None:
        known = self.tickets.get(ticket_id) if ticket_id is not None else None
        if known is None or isinstance(known, _Merged):
            return known
        return TicketView(
            id=known.id,
            ref=ticket_ref(self.config, known.id),
            state=known.row["state"],
            participants=frozenset(known.participants),
            closed_at=known.row["closed_at"],
        )

    def _candidates(self, parsed: ParsedMessage) -> Candidates | None:
        """The processor's threading candidates, from what the run knows; None: merged."""
        service = self.config.service
        found: dict[str, TicketView | _Merged | None] = {}
        for text in tokens_in(list(parsed.recipients), service.support_address):
            token = verify_reply(service.secret_keys, text)
            if token is not None:
                found["token"] = self._view(ref_to_id(self.config, token.ref))
                if found["token"] is not None:
                    break
        if found.get("token") is None:
            ids = [*parsed.in_reply_to, *reversed(parsed.references)]
            for mid in [*ids, parsed.message_id]:
                tid = self.messages.get(mid) if mid != parsed.message_id else None
                tid = tid if tid is not None else self.thread_refs.get(mid)
                if tid is not None:
                    found["reference"] = self._view(tid)
                    break
        root = thread_index_root(parsed.thread_index)
        continues = bool(root and parsed.thread_index and len(parsed.thread_index) > 32)
        if found.get("token") is None and found.get("reference") is None and continues:
            found["thread_index"] = self._view(self.thread_roots.get(root or ""))
        for ref in subject_refs(parsed.subject, service.ticket_prefix):
            found["subject"] = self._view(ref_to_id(self.config, ref))
            if found["subject"] is not None:
                break
        if any(isinstance(view, _Merged) for view in found.values()):
            return None
        views: dict[str, Any] = found
        return Candidates(
            by_token=views.get("token"),
            by_reference=views.get("reference"),
            by_thread_index=views.get("thread_index"),
            by_subject=views.get("subject"),
        )

    async def _decide(self, item: Incoming, parsed: ParsedMessage) -> Outcome | None:
        """Decide one message and add its rows; None when it needs the per-message path."""
        p, service = self.p, self.config.service
        parsed = with_fallback_sender(parsed)
        sender = parsed.sender
        if parsed.message_id in self.messages:
            return None  # a duplicate, or our own mail back: the per-message path says which
        candidates = self._candidates(parsed)
        if candidates is None:
            return None
        match = resolve_thread(sender, False, candidates)
        known = self.tickets.get(match.ticket.id) if match.ticket is not None else None
        ticket = known if isinstance(known, _Ticket) else None
        window = timedelta(days=service.reopen_window_days)
        if ticket is not None:
            action = reopen_action(ticket.row["state"], ticket.row["closed_at"], self.now, window)
            if action != "append":
                return None
        contact = self.contacts.get(sender)
        decision = evaluate(
            p.rules,
            routing.facts(
                parsed,
                mailbox=item.source,
                kind="customer",
                plan=contact.row["plan"] if contact is not None else None,
                ticket=ticket.row if ticket is not None else None,
            ),
        )
        actions = decision.actions
        if actions.assign is not None or actions.spam or set(actions.notify) - {"agents"}:
            return None
        heroku = self.config.heroku
        by_sender = self.recent_by_sender[sender] + 1
        if heroku is not None and sender in heroku.senders:
            by_sender = 0
        by_ticket = (ticket.recent if ticket is not None else 0) + 1
        if max(by_sender, by_ticket) > service.flood_messages:
            return None  # the per-message path tells the agents about the flood
        updates = routing.ticket_updates(ticket.row["tags"] if ticket else [], decision)
        queue = updates.get("queue", ticket.row["queue"] if ticket else None)
        assignee_id = ticket.row["assignee_id"] if ticket is not None else None
        agents = p.agents.agents_for(queue, self.agents_by_id.get(assignee_id or 0), self.agents)
        if agents is None:
            return None  # an agent without a row: the per-message path creates it

        # From here on the message is this run's.
        if decision.hits:
            log.info("rules_matched", rules=[hit.rule for hit in decision.hits])
        raw = self._raw(item, parsed)
        self.recent_by_sender[sender] += 1
        if ticket is None:
            auto = actions.auto_reply
            template = "ack.txt.j2" if auto in (None, "none") else f"{auto}.txt.j2"
            ticket, message = await self._new_ticket(parsed, raw, match.reason)
            if auto != "none":
                self._acknowledge(ticket, parsed, template)
            outcome, reason = "new_ticket", match.reason
        else:
            message = self._append(ticket, parsed, raw, match.reason, match.step, match.trusted)
            outcome, reason = "reply", match.reason
        for name, value in updates.items():
            ticket.set(name, value)
        for event in routing.rule_events(decision):
            self._event(ticket.id, **event)
        self._notify(ticket, message, agents)
        raw.update(outcome=outcome, reason=reason[:2000], ticket_id=ticket.id)
        return Outcome(
            item.source, parsed.message_id, outcome, ticket_ref(self.config, ticket.id), reason
        )

    # --- rows ------------------------------------------------------------------------------

    def _raw(self, item: Incoming, parsed: ParsedMessage) -> dict[str, Any]:
        raw = self.p.raw_fields(item, parsed.message_id)
        row = {"id": None, **raw, "outcome": None, "reason": None, "ticket_id": None}
        row["received_at"] = self.now
        self.rows["raw"].append(row)
        return row

    def _contact(self, email: str, name: str | None) -> _Contact:
        """The contact for EMAIL, added to the run when the database has none."""
        email = email.lower()
        contact = self.contacts.get(email)
        if contact is None:
            row = {
                "id": None,
                "email": email,
                "name": (name or None) and name[:200],
                "undeliverable": False,
                "bounce_count": 0,
                "suppressed": False,
                "plan": None,
                "created_at": self.now,
            }
            self.rows["contacts"].append(row)
            contact = _Contact(row, None)
            self.contacts[email] = contact
        elif name and not contact.row["name"]:
            contact.rename(name)
        return contact

    def _participant(self, ticket: _Ticket, contact: _Contact, role: str) -> bool:
        email = contact.row["email"]
        if email in ticket.participants:
            return False
        ticket.participants.add(email)
        self.rows["participants"].append(
            {"ticket": ticket.row, "contact": contact.row, "role": role, "created_at": self.now}
        )
        return True

    def _event(self, ticket_id: int | None, type: str, actor: str, detail: dict[str, Any]) -> None:
        self.rows["events"].append(
            {
                "ticket_id": ticket_id,
                "type": type,
                "actor": actor,
                "detail": detail,
                "created_at": self.now,
            }
        )

    def _message(self, row: dict[str, Any]) -> dict[str, Any]:
        row.setdefault("raw_id", None)
        row.setdefault("outbox_id", None)
        row["created_at"] = self.now
        self.rows["messages"].append(row)
        self.messages[row["message_id"]] = row["ticket_id"]
        if row["thread_index"]:
            self.thread_roots[row["thread_index"]] = row["ticket_id"]
        return row

    def _inbound(
        self, ticket: _Ticket, parsed: ParsedMessage, raw: dict[str, Any]
    ) -> dict[str, Any]:
        ticket.inbound += 1
        ticket.recent += 1
        message = {"ticket_id": ticket.id, "raw": raw, **inbound_message(parsed, "customer", False)}
        return self._message(message)

    async def _new_ticket(
        self, parsed: ParsedMessage, raw: dict[str, Any], reason: str
    ) -> tuple[_Ticket, dict[str, Any]]:
        requester = self._contact(parsed.sender, parsed.sender_name)
        subject = normalize_subject(parsed.subject, self.config.service.ticket_prefix)
        row = {
            "id": await self._ticket_id(),
            "subject": subject or "(no subject)",
            "state": "new",
            "state_since": self.now,
            "priority": "normal",
            "queue": None,
            "assignee_id": None,
            "requester_id": None,  # the contact's id, known once it is written
            "channel": "email",
            "external_ref": None,
            "tags": [],
            "parent_id": None,
            "merged_into_id": None,
            "created_at": self.now,
            "updated_at": self.now,
            "solved_at": None,
            "closed_at": None,
            "first_response_at": None,
        }
        self.rows["tickets"].append(row)
        ticket = _Ticket(row, None, requester)
        self.tickets[ticket.id] = ticket
        self._participant(ticket, requester, "requester")
        for address in parsed.cc + parsed.to:
            if self.p.joinable(address) and address != requester.row["email"]:
                self._participant(ticket, self._contact(address, None), "cc")
        message = self._inbound(ticket, parsed, raw)
        for mid in dict.fromkeys([*parsed.in_reply_to, *parsed.references]):
            if mid not in self.messages and mid not in self.thread_refs:
                self.thread_refs[mid] = ticket.id
                self.rows["thread_refs"].append(
                    {"message_id": mid, "ticket_id": ticket.id, "created_at": self.now}
                )
        detail = {"message_id": parsed.message_id, "thread": reason}
        self._event(ticket.id, "ticket_created", parsed.sender, detail)
        return ticket, message

    def _append(
        self,
        ticket: _Ticket,
        parsed: ParsedMessage,
        raw: dict[str, Any],
        reason: str,
        step: str,
        trusted: bool,
    ) -> dict[str, Any]:
        sender = parsed.sender
        message = self._inbound(ticket, parsed, raw)
        detail = {"message_id": parsed.message_id, "thread": reason, "step": step}
        self._event(ticket.id, "message_received", sender, detail)
        if trusted:
            for address in parsed.cc + parsed.to:
                if self.p.joinable(address):
                    contact = self._contact(address, None)
                    if self._participant(ticket, contact, "cc"):
                        self._event(ticket.id, "participant_added", sender, {"email": address})
        if ticket.row["state"] == "pending":
            ticket.set("state", "open")
            ticket.row["state_since"] = self.now
            self._event(ticket.id, "state_changed", sender, {"from": "pending", "to": "open"})
        if trusted and ticket.row["channel"] == "email":
            self._participant(ticket, self._contact(sender, parsed.sender_name), "cc")
        ticket.set("updated_at", self.now)
        return message

    def _acknowledge(self, ticket: _Ticket, parsed: ParsedMessage, template: str) -> None:
        p = self.p
        requester = ticket.requester
        email = requester.row["email"]
        reason = p.ack_forbidden(
            parsed, requester.row["undeliverable"], requester.row["suppressed"]
        )
        if reason is None and self.autoreplies[email] >= self.config.service.autoreply_limit:
            reason = p.autoreply_limit_reason
        if reason is not None:
            self._event(ticket.id, "ack_suppressed", "system", {"reason": reason})
            log.info("ack_suppressed", reason=reason)
            return
        mail = p.ack_mail(ticket.row, (requester.row["name"] or "", email), parsed, template)
        self._queue(mail)
        self.autoreplies[email] += 1
        self.rows["autoreplies"].append(
            {"address": email, "ticket_id": ticket.id, "kind": "ack", "sent_at": self.now}
        )
        self._event(ticket.id, "ack_queued", "system", {"message_id": mail.message_id})

    def _notify(self, ticket: _Ticket, message: dict[str, Any], agents: Sequence[Agent]) -> None:
        if self.p.backfill or not agents:
            return
        requester = ticket.requester
        assignee = self.agents_by_id.get(ticket.row["assignee_id"] or 0)
        for mail in self.p.agents.notifications(
            ticket.row,
            message,
            requester=(requester.row["name"] or "", requester.row["email"]),
            message_count=ticket.inbound,
            assignee=assignee.email if assignee else None,
            agents=agents,
        ):
            self._queue(mail)
        detail = {"agents": [a.email for a in agents], "message_id": message["message_id"]}
        self._event(ticket.id, "agents_notified", "system", detail)

    def _queue(self, mail: Composed) -> None:
        row = {
            "id": None,
            "ticket_id": mail.ticket_id,
            "notice_id": None,
            "kind": mail.kind,
            "message_id": mail.message_id,
            "envelope_from": mail.envelope_from,
            "data": None,  # built in the parse pool's workers while the run goes on
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": self.now,
            "expires_at": mail.expires_at,
            "last_error": None,
            "created_at": self.now,
            "sent_at": None,
        }
        self.rows["outbox"].append(row)
        self.unbuilt.append(mail.mail)
        if len(self.unbuilt) >= BUILD_CHUNK:
            self._start_build()
        for address in dict.fromkeys(r.lower() for r in mail.recipients):
            self.rows["recipients"].append(
                {"outbox": row, "address": address, "state": "pending", "attempts": 0}
            )
        if mail.ticket_id is not None:
            self._message({**mail.message, "outbox": row})

    def _start_build(self) -> None:
        if self.unbuilt:
            self.building.append(self.p.parse_pool.start_build(self.unbuilt))
            self.unbuilt = []

    async def _built(self) -> list[bytes]:
        """The bytes of every mail the run queued, in order."""
        self._start_build()
        chunks = await asyncio.wait_for(
            asyncio.gather(*self.building), timeout=self.p.parse_pool.timeout
        )
        return [data for chunk in chunks for data in chunk]

    # --- writing ---------------------------------------------------------------------------

    async def _allocate(
        self, model: type[Contact | Ticket | RawMessage | Outbox], count: int
    ) -> list[int]:
        """Take COUNT ids for new rows of MODEL, so that other rows can refer to them."""
        session = self.session
        if not count:
            return []
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            sequence = func.pg_get_serial_sequence(model.__tablename__, "id")
            return list(
                await session.scalars(
                    select(func.nextval(sequence)).select_from(func.generate_series(1, count))
                )
            )
        # SQLite: the batch's BEGIN IMMEDIATE holds the write lock, so nobody else can take
        # these ids before the run is written.
        top = await session.scalar(select(func.max(model.id))) or 0
        return list(range(top + 1, top + 1 + count))

    async def _ticket_id(self) -> int:
        """The id of the next ticket: ticket numbers are seen by customers, so none is wasted."""
        if self.session.bind is not None and self.session.bind.dialect.name == "postgresql":
            return (await self._allocate(Ticket, 1))[0]
        if self.top_ticket is None:
            self.top_ticket = (await self._allocate(Ticket, 1))[0] - 1
        self.top_ticket += 1
        return self.top_ticket

    async def _write(self) -> None:
        session, rows = self.session, self.rows
        for row, data in zip(rows["outbox"], await self._built(), strict=True):
            row["data"] = data
        for allocated, name in ((Contact, "contacts"), (RawMessage, "raw"), (Outbox, "outbox")):
            ids = await self._allocate(allocated, len(rows[name]))
            for row, value in zip(rows[name], ids, strict=True):
                row["id"] = value
        for ticket in self.tickets.values():
            if isinstance(ticket, _Ticket) and ticket.orm is None:
                ticket.row["requester_id"] = ticket.requester.row["id"]
        for row in rows["participants"]:
            row["ticket_id"] = row.pop("ticket")["id"]
            row["contact_id"] = row.pop("contact")["id"]
        for row in rows["messages"]:
            raw, out = row.pop("raw", None), row.pop("outbox", None)
            if raw is not None:
                row["raw_id"] = raw["id"]
            if out is not None:
                row["outbox_id"] = out["id"]
        for row in rows["recipients"]:
            row["outbox_id"] = row.pop("outbox")["id"]
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
        await session.flush()  # changes to loaded tickets and contacts first
        for model, name in (
            (Contact, "contacts"),
            (Ticket, "tickets"),
            (RawMessage, "raw"),
            (Participant, "participants"),
            (Outbox, "outbox"),
            (OutboxRecipient, "recipients"),
            (Message, "messages"),
            (AutoReplyLog, "autoreplies"),
            (Event, "events"),
        ):
            if rows[name]:
                # Every row names all its columns, None meaning NULL: a Core executemany, one
                # statement per table (the ORM's bulk insert would cut it wherever the None
                # columns change, and adds bookkeeping per row that these rows do not need).
                table = Base.metadata.tables[model.__tablename__]
                await session.execute(insert(table), rows[name])
        if rows["thread_refs"]:
            await session.execute(
                dialect_insert(ThreadRef).on_conflict_do_nothing(index_elements=["message_id"]),
                rows["thread_refs"],
            )
        await session.flush()
