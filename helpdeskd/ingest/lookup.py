"""Gather the facts the plan reads: one query per kind of fact, for one mail or a run of them.

:class:`Known` loads, for every mail of a run at once, what the decisions will read — stored
Message-IDs and remembered references, candidate tickets (merges followed) with their
participants and mail counts, contacts, agents, recent automatic answers, flood alerts, what
bounces and unsubscribe tokens name — and builds each mail's
:class:`~helpdeskd.triage.facts.Facts` from that. After each decision it learns what the plan
adds, so a later mail of the run sees an earlier one exactly as it would see it in the database.
The per-mail shape is the same with a run of one, loaded afresh for every mail. What agents'
replies read (held replies, #merge targets, notices of held mail) is gathered and learnt by
:class:`~helpdeskd.ingest.replylookup.KnownReplies`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.ingest.replylookup import KnownReplies, stored_message
from helpdeskd.mail.tokens import BounceToken
from helpdeskd.store.models import (
    Agent,
    AutoReplyLog,
    Contact,
    Event,
    Message,
    OptOut,
    Outbox,
    OutboxRecipient,
    Participant,
    ThreadRef,
    Ticket,
)
from helpdeskd.triage.facts import (
    AgentFacts,
    ContactFacts,
    Facts,
    Needs,
    Policy,
    Returned,
    StoredMessage,
    TicketFacts,
)
from helpdeskd.triage.plan import Plan
from helpdeskd.triage.received import ticket_ref
from helpdeskd.vocab import OPEN_STATES

MERGE_DEPTH = 20  # merges followed from one ticket at the most


class Unknown(Exception):
    """The run cannot answer for this mail (a candidate ticket it has not loaded)."""


class Known:
    """What the database holds that a run's decisions read, then what the run adds."""

    def __init__(self, policy: Policy, now: datetime) -> None:
        self.policy = policy
        self.now = now
        service = policy.config.service
        self.flood_since = now - timedelta(minutes=service.flood_minutes)
        self.messages: dict[str, StoredMessage] = {}  # stored mail by Message-ID
        # Message-ID -> (ticket id, the addresses on the mail that referred to it), referred to
        self.thread_refs: dict[str, tuple[int, frozenset[str]]] = {}
        self.thread_roots: dict[str, int] = {}  # Outlook conversation root -> latest ticket
        self.tickets: dict[int, TicketFacts] = {}
        self.merged: dict[int, int] = {}  # merged ticket -> the ticket it was merged into
        self.by_external_ref: dict[str, int] = {}  # Heroku ticket number -> latest ticket
        self.contacts: dict[str, ContactFacts] = {}
        self.contacts_by_id: dict[int, ContactFacts] = {}
        self.opted_out: set[tuple[int, str]] = set()
        self.agents: dict[str, AgentFacts] = {}
        self.agent_load: dict[int, tuple[int, int]] = {}
        self.recent_by_sender: Counter[str] = Counter()
        self.autoreplies: Counter[str] = Counter()
        self.flood_told: set[str] = set()  # senders the agents were told about
        self.writers: dict[str, str] = {}  # Message-ID of a reply we sent -> its agent
        self.sent: dict[str, set[str]] = {}  # Message-ID of mail we sent -> its recipients
        # a verified VERP token -> the send it names (outbox row, Message-ID, ticket) and the
        # recipients it went to (see _load_verp)
        self.verp: dict[BounceToken, tuple[int, str, int | None, tuple[str, ...]]] = {}
        self.replies = KnownReplies(policy.config, now)  # what agents' replies read

    # --- loading ---------------------------------------------------------------------------

    async def load(self, session: AsyncSession, batch: Sequence[Needs]) -> None:
        """Load what the decisions about BATCH read."""
        ids: set[str] = set()
        roots: set[str] = set()
        ticket_ids: set[int] = set()
        emails: set[str] = set()
        numbers: set[str] = set()
        contact_ids: set[int] = set()
        for needs in batch:
            ids.update(needs.message_ids, needs.returned_ids)
            if needs.thread_root:
                roots.add(needs.thread_root)
            ticket_ids.update(needs.token_tickets, needs.subject_tickets)
            emails.update(needs.emails)
            if needs.heroku is not None:
                numbers.add(needs.heroku.ticket_number)
            if needs.unsubscribe is not None:
                contact_ids.add(needs.unsubscribe[0])
        verp = {n.verp for n in batch if n.verp is not None}
        if verp:
            await self._load_verp(session, verp)
            for _oid, sent_id, sent_ticket, recipients in self.verp.values():
                ids.add(sent_id)
                emails.update(recipients)
                if sent_ticket is not None:
                    ticket_ids.add(sent_ticket)
        ids.discard("")
        for message in await session.execute(
            select(
                Message.message_id,
                Message.ticket_id,
                Message.direction,
                Message.kind,
                Message.references,
                Message.in_reply_to,
                Message.thread_index,
                Message.from_addr,
                Message.to,
                Message.cc,
                Message.digest,
            ).where(Message.message_id.in_(ids))
        ):
            self.messages[message.message_id] = stored_message(message)
        for mid, tid, addresses in await session.execute(
            select(ThreadRef.message_id, ThreadRef.ticket_id, ThreadRef.addresses).where(
                ThreadRef.message_id.in_(ids)
            )
        ):
            self.thread_refs[mid] = (tid, frozenset(addresses or ()))
        if roots:
            for root, tid in await session.execute(
                select(Message.thread_index, Message.ticket_id)
                .where(Message.thread_index.in_(roots))
                .order_by(Message.id)
            ):
                if root is not None:
                    self.thread_roots[root] = tid
        if numbers:
            for number, tid in await session.execute(
                select(Ticket.external_ref, Ticket.id)
                .where(
                    Ticket.channel == "heroku",
                    Ticket.external_ref.in_(numbers),
                    Ticket.merged_into_id.is_(None),
                )
                .order_by(Ticket.id)
            ):
                if number is not None:
                    self.by_external_ref[number] = tid
        returned_ids = {mid for needs in batch for mid in needs.returned_ids}
        if returned_ids:
            for mid, address in await session.execute(
                select(Outbox.message_id, OutboxRecipient.address)
                .join(OutboxRecipient, OutboxRecipient.outbox_id == Outbox.id)
                .where(Outbox.message_id.in_(returned_ids))
            ):
                self.sent.setdefault(mid, set()).add(address.lower())
        returned = {m.message_id for m in self.messages.values() if m.direction == "out"}
        if returned:
            for actor, detail in await session.execute(
                select(Event.actor, Event.detail).where(
                    Event.type == "reply_sent",
                    Event.ticket_id.in_({self.messages[m].ticket_id for m in returned}),
                )
            ):
                mid = (detail or {}).get("message_id")
                if mid in returned:
                    self.writers.setdefault(mid, actor)
        ticket_ids.update(m.ticket_id for m in self.messages.values())
        ticket_ids.update(tid for tid, _ in self.thread_refs.values())
        ticket_ids.update(self.thread_roots.values())
        ticket_ids.update(self.by_external_ref.values())
        await self._load_tickets(session, ticket_ids, emails)
        if contact_ids:
            for contact in await session.scalars(
                select(Contact).where(Contact.id.in_(contact_ids))
            ):
                self._know_contact(_contact(contact))
            for contact_id, category in await session.execute(
                select(OptOut.contact_id, OptOut.category).where(OptOut.contact_id.in_(contact_ids))
            ):
                self.opted_out.add((contact_id, category))
        await self._load_agents(session)
        await self._load_counts(session, [n.parsed.sender for n in batch if n.parsed.sender])
        agent_mail = [n for n in batch if n.kind.kind == "agent_reply"]
        if agent_mail:
            await self.replies.load(session, agent_mail, self.tickets)

    async def _load_verp(self, session: AsyncSession, tokens: set[BounceToken]) -> None:
        """The sends that bounces' verified VERP tokens name: the outbox row, its Message-ID
        and ticket, and whom the copy that carried the token went to (a row the retention
        removed is not found: its bounce names no send).

        A token names one recipient, and only that recipient's copy carried it. The form of
        mail sent before return paths were per recipient names the row, and every recipient
        of the row received it: all of them (whether that says whose bounce it is, the
        decision says).
        """
        recipient_ids = {t.id for t in tokens if t.kind == "recipient"}
        if recipient_ids:
            for rid, oid, mid, tid, address in await session.execute(
                select(
                    OutboxRecipient.id,
                    Outbox.id,
                    Outbox.message_id,
                    Outbox.ticket_id,
                    OutboxRecipient.address,
                )
                .join(Outbox, Outbox.id == OutboxRecipient.outbox_id)
                .where(OutboxRecipient.id.in_(recipient_ids))
            ):
                self.verp[BounceToken("recipient", rid)] = (oid, mid, tid, (address.lower(),))
        outbox_ids = {t.id for t in tokens if t.kind == "outbox"}
        if outbox_ids:
            rows: dict[int, tuple[str, int | None, list[str]]] = {}
            for oid, mid, tid, address in await session.execute(
                select(Outbox.id, Outbox.message_id, Outbox.ticket_id, OutboxRecipient.address)
                .join(OutboxRecipient, OutboxRecipient.outbox_id == Outbox.id)
                .where(Outbox.id.in_(outbox_ids))
            ):
                rows.setdefault(oid, (mid, tid, []))[2].append(address.lower())
            for oid, (mid, tid, recipients) in rows.items():
                self.verp[BounceToken("outbox", oid)] = (oid, mid, tid, tuple(recipients))

    async def _load_tickets(
        self, session: AsyncSession, ticket_ids: set[int], emails: set[str]
    ) -> None:
        """Load TICKET_IDS (and what they were merged into), their requesters and EMAILS."""
        loaded: list[Ticket] = []
        wanted = set(ticket_ids) - {0}
        for _ in range(MERGE_DEPTH):
            wanted -= set(self.tickets) | set(self.merged) | {t.id for t in loaded}
            if not wanted:
                break
            found = list(await session.scalars(select(Ticket).where(Ticket.id.in_(wanted))))
            wanted = set()
            for ticket in found:
                if ticket.merged_into_id is not None:
                    self.merged[ticket.id] = ticket.merged_into_id
                    wanted.add(ticket.merged_into_id)
                else:
                    loaded.append(ticket)
        requester_ids = {ticket.requester_id for ticket in loaded}
        for contact in await session.scalars(
            select(Contact).where(or_(Contact.email.in_(emails), Contact.id.in_(requester_ids)))
        ):
            self._know_contact(_contact(contact))
        if not loaded:
            return
        ids = [ticket.id for ticket in loaded]
        participants: dict[int, set[str]] = {tid: set() for tid in ids}
        for tid, email in await session.execute(
            select(Participant.ticket_id, Contact.email)
            .join(Contact, Participant.contact_id == Contact.id)
            .where(Participant.ticket_id.in_(ids))
        ):
            participants[tid].add(email)
        counts: dict[int, tuple[int, int]] = {}
        for tid, total, recent in await session.execute(
            select(
                Message.ticket_id,
                func.count(Message.id),
                func.sum(case((Message.created_at >= self.flood_since, 1), else_=0)),
            )
            .where(Message.direction == "in", Message.ticket_id.in_(ids))
            .group_by(Message.ticket_id)
        ):
            counts[tid] = (int(total), int(recent or 0))
        told = set(
            await session.scalars(
                select(Event.ticket_id).where(
                    Event.type == "flood_detected",
                    Event.created_at >= self.flood_since,
                    Event.ticket_id.in_(ids),
                )
            )
        )
        for ticket in loaded:
            inbound, recent = counts.get(ticket.id, (0, 0))
            self.tickets[ticket.id] = TicketFacts(
                id=ticket.id,
                ref=ticket_ref(self.policy.config, ticket.id),
                state=ticket.state,
                participants=frozenset(participants[ticket.id]),
                closed_at=ticket.closed_at,
                subject=ticket.subject,
                priority=ticket.priority,
                queue=ticket.queue,
                assignee_id=ticket.assignee_id,
                requester=self.contacts_by_id[ticket.requester_id],
                channel=ticket.channel,
                external_ref=ticket.external_ref,
                tags=tuple(ticket.tags or ()),
                solved_at=ticket.solved_at,
                first_response_at=ticket.first_response_at,
                inbound=inbound,
                recent=recent,
                flood_told=ticket.id in told,
            )

    async def _load_agents(self, session: AsyncSession) -> None:
        """Know every agent row (the batch made one for each configured agent first)."""
        rows = {a.email: a for a in await session.scalars(select(Agent))}
        for agent in rows.values():
            self.agents[agent.email] = AgentFacts(agent.id, agent.email, agent.name, agent.active)
        if not self.policy.may_assign:
            return
        load: dict[int, list[int]] = {a.id: [0, 0] for a in rows.values()}
        for agent_id, count in await session.execute(
            select(Ticket.assignee_id, func.count(Ticket.id))
            .where(Ticket.assignee_id.in_(load), Ticket.state.in_(OPEN_STATES))
            .group_by(Ticket.assignee_id)
        ):
            if agent_id is not None:
                load[agent_id][0] = count
        for agent_id, top in await session.execute(
            select(Ticket.assignee_id, func.max(Ticket.id))
            .where(Ticket.assignee_id.in_(load))
            .group_by(Ticket.assignee_id)
        ):
            if agent_id is not None:
                load[agent_id][1] = top
        self.agent_load = {agent_id: (v[0], v[1]) for agent_id, v in load.items()}

    async def _load_counts(self, session: AsyncSession, senders: list[str]) -> None:
        """The senders' recent inbound mail, automatic answers and flood alerts."""
        if not senders:
            return
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
        self.flood_told.update(
            await session.scalars(
                select(Event.actor).where(
                    Event.type == "flood_detected",
                    Event.created_at >= self.flood_since,
                    Event.actor.in_(senders),
                )
            )
        )

    def _know_contact(self, contact: ContactFacts) -> None:
        self.contacts[contact.email] = contact
        if contact.id is not None:
            self.contacts_by_id[contact.id] = contact

    # --- the facts of one mail -------------------------------------------------------------

    def facts(self, needs: Needs) -> Facts:
        """The facts of the mail NEEDS describes; Unknown when the run has not loaded one."""
        parsed = needs.parsed
        own = parsed.message_id
        references = needs.references
        by_token = next(
            (t for tid in needs.token_tickets if (t := self._ticket(tid)) is not None), None
        )
        by_reference = by_thread_index = None
        referrers: frozenset[str] = frozenset()
        if by_token is None:
            for mid in [*references, own]:
                stored = self.messages.get(mid) if mid != own else None
                if stored is not None:
                    by_reference = self._ticket(stored.ticket_id, strict=True)
                    if stored.direction == "out":  # the recipients of our mail it answers
                        referrers = frozenset(a.lower() for a in (*stored.to, *stored.cc))
                    break
                remembered = self.thread_refs.get(mid)
                if remembered is not None:
                    by_reference = self._ticket(remembered[0], strict=True)
                    referrers = remembered[1]
                    break
            if by_reference is None and needs.thread_root:
                tid = self.thread_roots.get(needs.thread_root)
                by_thread_index = self._ticket(tid, strict=True) if tid is not None else None
        by_subject = next(
            (t for tid in needs.subject_tickets if (t := self._ticket(tid)) is not None), None
        )
        by_external_ref = None
        if needs.heroku is not None:
            tid = self.by_external_ref.get(needs.heroku.ticket_number)
            by_external_ref = self._ticket(tid, strict=True) if tid is not None else None
        sender = parsed.sender
        unsubscriber = opted_out = None
        if needs.unsubscribe is not None:
            contact_id, category = needs.unsubscribe
            unsubscriber = self.contacts_by_id.get(contact_id)
            opted_out = (contact_id, category) in self.opted_out
        return Facts(
            now=self.now,
            stored=self.messages.get(own),
            derived=self.messages.get(needs.derived_id),
            referrers=referrers,
            known_ids=frozenset(
                mid for mid in references if mid in self.messages or mid in self.thread_refs
            ),
            by_token=by_token,
            by_reference=by_reference,
            by_thread_index=by_thread_index,
            by_subject=by_subject,
            by_external_ref=by_external_ref,
            contacts={e: c for e in self._emails(needs) if (c := self.contacts.get(e)) is not None},
            unsubscriber=unsubscriber,
            opted_out=bool(opted_out),
            agents=self.agents,
            agent_load=self.agent_load,
            autoreplies=self.autoreplies[sender],
            recent_by_sender=self.recent_by_sender[sender],
            sender_flood_told=sender in self.flood_told,
            returned=self._returned(needs),
            replies=self.replies.contexts(needs) if needs.kind.kind == "agent_reply" else {},
            held_notices=self.replies.held_notices if needs.kind.kind == "agent_reply" else {},
        )

    def _ticket(self, ticket_id: int, strict: bool = False) -> TicketFacts | None:
        """The ticket TICKET_ID names, its merges followed; None when there is none."""
        for _ in range(MERGE_DEPTH):
            if ticket_id not in self.merged:
                break
            ticket_id = self.merged[ticket_id]
        ticket = self.tickets.get(ticket_id)
        if ticket is None and strict:
            raise Unknown(f"ticket {ticket_id} not loaded")
        return ticket

    def _emails(self, needs: Needs) -> frozenset[str]:
        """The addresses whose contacts the decision about NEEDS reads: the mail's, and the
        recipients of the send a bounce's VERP token names."""
        sent = self.verp.get(needs.verp) if needs.verp is not None else None
        return needs.emails | set(sent[3]) if sent is not None else needs.emails

    def _returned(self, needs: Needs) -> Returned:
        """What the bounce or complaint NEEDS describes is about: the send its verified VERP
        token names, with whom that copy went to (whatever the report says, it can be about
        nobody else), else the first of its Message-IDs that is mail we sent, with whom it
        went to."""
        sent = self.verp.get(needs.verp) if needs.verp is not None else None
        if sent is not None:
            oid, mid, tid, recipients = sent
            message = self.messages.get(mid)
            tid = message.ticket_id if message is not None else tid
            writer = self.writers.get(mid)
            configured = writer is not None and self.policy.config.agent(writer) is not None
            return Returned(
                self._ticket(tid) if tid is not None else None,
                message,
                self.agents.get(writer) if writer is not None and configured else None,
                frozenset(recipients),
                verp=oid,
            )
        for mid in needs.returned_ids:
            message = self.messages.get(mid)
            sent_to = frozenset(self.sent.get(mid, ()))
            if message is not None:
                writer = self.writers.get(mid)
                configured = writer is not None and self.policy.config.agent(writer) is not None
                return Returned(
                    self._ticket(message.ticket_id),
                    message,
                    self.agents.get(writer) if writer is not None and configured else None,
                    sent_to | {a.lower() for a in (*message.to, *message.cc)},
                )
            if sent_to:
                return Returned(sent_to=sent_to)
        return Returned()

    # --- learning from a plan --------------------------------------------------------------

    def learn(self, needs: Needs, plan: Plan, ticket_id: int | None) -> None:
        """Know what PLAN, written as ticket TICKET_ID, adds for the run's later mail."""
        parsed = needs.parsed
        for change in plan.contacts:
            known = self.contacts.get(change.email) or ContactFacts(change.email)
            name = change.name if change.name and not known.name else known.name
            self._know_contact(replace(known, name=name, **dict(change.changes)))
        message = plan.message
        if message is not None and ticket_id is not None:
            self.messages[message["message_id"]] = StoredMessage(
                message["message_id"],
                ticket_id,
                "in",
                message["kind"],
                tuple(message["references"]),
                message["in_reply_to"],
                message["thread_index"],
                message["from_addr"],
                tuple(message["to"]),
                tuple(message["cc"]),
                message["digest"],
            )
            if message["thread_index"]:
                self.thread_roots[message["thread_index"]] = ticket_id
            self.recent_by_sender[parsed.sender] += 1
        for mid in plan.thread_refs:
            if ticket_id is not None:
                self.thread_refs.setdefault(mid, (ticket_id, frozenset(plan.referrers)))
        if plan.autoreply_to is not None:
            self.autoreplies[plan.autoreply_to] += 1
        if any(event.type == "flood_detected" for event in plan.events):
            self.flood_told.add(parsed.sender)
        self.replies.learn(plan, ticket_id)
        if plan.ticket is not None and ticket_id is not None:
            self._learn_ticket(plan, ticket_id)

    def _learn_ticket(self, plan: Plan, ticket_id: int) -> None:
        row = plan.ticket
        assert row is not None
        before = self.tickets.get(ticket_id)
        requester = self.contacts[row.requester]
        added = {email for email, _ in plan.participants}
        inbound = 1 if plan.message is not None and plan.message["direction"] == "in" else 0
        self.tickets[ticket_id] = TicketFacts(
            id=ticket_id,
            ref=ticket_ref(self.policy.config, ticket_id),
            state=row.state,
            participants=(before.participants if before is not None else frozenset()) | added,
            closed_at=row.closed_at,
            subject=row.subject,
            priority=row.priority,
            queue=row.queue,
            assignee_id=row.assignee_id,
            requester=requester,
            channel=row.channel,
            external_ref=row.external_ref,
            tags=row.tags,
            solved_at=row.solved_at,
            inbound=(before.inbound if before is not None else 0) + inbound,
            recent=(before.recent if before is not None else 0) + inbound,
            flood_told=(before is not None and before.flood_told)
            or any(e.type == "flood_detected" for e in plan.events),
        )
        if row.assignee_id is not None and row.id is None and self.agent_load:
            open_, _ = self.agent_load.get(row.assignee_id, (0, 0))
            self.agent_load[row.assignee_id] = (open_ + 1, ticket_id)


def _contact(contact: Contact) -> ContactFacts:
    return ContactFacts(
        email=contact.email,
        name=contact.name,
        id=contact.id,
        undeliverable=contact.undeliverable,
        suppressed=contact.suppressed,
        bounce_count=contact.bounce_count,
        plan=contact.plan,
        bounce_score=contact.bounce_score,
        last_bounce_on=contact.last_bounce_on,
        last_bounce_weight=contact.last_bounce_weight,
        bounce_reason=contact.bounce_reason,
    )
