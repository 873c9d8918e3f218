"""Gather what agents' replies read, for a run of mail at once: a helper of :mod:`.lookup`.

An agent's reply (or a confirmation of a held one) reads, of each ticket the run loaded, the
latest customer mail and the deliverable Cc participants; the held reply a confirmation address
names, and whether it was confirmed; the ticket a ``#merge`` names; and when its sender was last
told of held mail, with what was held since. :class:`KnownReplies` loads these with one query
per kind and learns what each plan adds (held mail told of or not, a held reply confirmed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.store.models import Contact, Event, Message, Participant, RawMessage, Ticket
from helpdeskd.triage.agent_reply import HeldReply, held_reply
from helpdeskd.triage.agentmail import SUMMARY_LINES, HeldMail, HeldNotices, attachments_of
from helpdeskd.triage.facts import (
    MAX_TICKET_ID,
    MergeTarget,
    Needs,
    ReplyContext,
    StoredMessage,
    TicketFacts,
)
from helpdeskd.triage.plan import Plan
from helpdeskd.triage.received import ticket_ref

HELD_LOOKBACK = timedelta(days=7)  # how far back an agent's untold held mail is summed up


def stored_message(message: Any) -> StoredMessage:
    """MESSAGE (a Message row, or a result row with its columns by name) as the decision reads
    it."""
    return StoredMessage(
        message.message_id,
        message.ticket_id,
        message.direction,
        message.kind,
        tuple(message.references or ()),
        message.in_reply_to,
        message.thread_index,
        message.from_addr,
        tuple(message.to or ()),
        tuple(message.cc or ()),
        message.digest,
    )


class KnownReplies:
    """What a run's agent replies read, then what the run adds."""

    def __init__(self, config: Config, now: datetime) -> None:
        self.config = config
        self.now = now
        self.replies: dict[int, ReplyContext] = {}  # ticket id -> what an agent's reply reads
        self.merge_targets: dict[int, MergeTarget] = {}
        self.held: dict[tuple[int, str], HeldReply] = {}  # (ticket, code) -> the held reply
        self.held_notices: dict[str, HeldNotices] = {}  # agent address -> notices of held mail

    async def load(
        self, session: AsyncSession, batch: Sequence[Needs], tickets: Mapping[int, TicketFacts]
    ) -> None:
        """Load what the agents' replies in BATCH read: each of TICKETS' latest customer mail and
        deliverable Cc participants, the held replies confirmations name, the tickets a
        ``#merge`` names, and the held mail their senders were (or were not) told of."""
        ids = list(tickets)
        parents: dict[int, StoredMessage] = {}
        if ids:
            latest = (
                select(func.max(Message.id))
                .where(
                    Message.ticket_id.in_(ids),
                    Message.direction == "in",
                    Message.internal.is_(False),
                )
                .group_by(Message.ticket_id)
            )
            for message in await session.scalars(select(Message).where(Message.id.in_(latest))):
                parents[message.ticket_id] = stored_message(message)
        ccs: dict[int, list[str]] = {tid: [] for tid in ids}
        if ids:
            for tid, email in await session.execute(
                select(Participant.ticket_id, Contact.email)
                .join(Contact, Participant.contact_id == Contact.id)
                .where(
                    Participant.ticket_id.in_(ids),
                    Participant.role == "cc",
                    Contact.undeliverable.is_(False),
                )
                .order_by(Participant.id)
            ):
                if email != tickets[tid].requester.email:
                    ccs[tid].append(email)
        await self._load_held(session, batch)
        targets = {n.merge_ticket for n in batch if n.merge_ticket is not None}
        targets.update(t for held in self.held.values() if (t := _merge_ticket(held)) is not None)
        if targets:
            for ticket in await session.scalars(select(Ticket).where(Ticket.id.in_(targets))):
                self.merge_targets[ticket.id] = MergeTarget(
                    ticket.id, ticket.requester_id, ticket.merged_into_id
                )
        for tid in ids:
            self.replies[tid] = ReplyContext(parents.get(tid), tuple(ccs[tid]))
        await self._load_held_notices(session, {n.parsed.sender for n in batch})

    async def _load_held(self, session: AsyncSession, batch: Sequence[Needs]) -> None:
        """The replies that confirmation addresses in BATCH name, and whether each was
        confirmed already (an agent's own only)."""
        wanted = {n.confirmation: n.parsed.sender for n in batch if n.confirmation is not None}
        if not wanted:
            return
        requested: dict[tuple[int, str], dict[str, Any]] = {}
        confirmed: set[tuple[int, str]] = set()
        for tid, type_, actor, detail in await session.execute(
            select(Event.ticket_id, Event.type, Event.actor, Event.detail).where(
                Event.ticket_id.in_({tid for tid, _ in wanted}),
                Event.type.in_(("confirmation_requested", "reply_confirmed")),
            )
        ):
            key = (tid, str((detail or {}).get("code")))
            if wanted.get(key) != actor:
                continue
            if type_ == "confirmation_requested":
                requested[key] = detail
            else:
                confirmed.add(key)
        raws: dict[str, bytes | None] = {}
        mids = [str(d.get("message_id")) for d in requested.values()]
        if mids:
            for mid, data in await session.execute(
                select(RawMessage.message_id, RawMessage.data).where(
                    RawMessage.message_id.in_(mids)
                )
            ):
                if mid is not None:
                    raws[mid] = data
        for key, detail in requested.items():
            found = held_reply(
                detail,
                confirmed=key in confirmed,
                attachments=attachments_of(raws.get(str(detail.get("message_id")))),
            )
            if found is not None:
                self.held[key] = found

    async def _load_held_notices(self, session: AsyncSession, agents: set[str]) -> None:
        """When AGENTS were last told of held mail, and what was held since without a notice."""
        since = self.now - HELD_LOOKBACK
        told = Event.detail["told"].as_boolean()
        last: dict[str, datetime] = {}
        for actor, at in await session.execute(
            select(Event.actor, func.max(Event.created_at))
            .where(
                Event.type == "security_event",
                Event.actor.in_(agents),
                Event.created_at >= since,
                or_(told.is_(None), told.is_(True)),  # events from before "told" were told
            )
            .group_by(Event.actor)
        ):
            last[actor] = at
        for agent in agents:
            after = last.get(agent, since)
            untold = (
                select(Event.ticket_id, Event.detail, Event.created_at)
                .where(
                    Event.type == "security_event",
                    Event.actor == agent,
                    Event.created_at > after,
                    told.is_(False),
                )
                .order_by(Event.created_at.desc(), Event.id.desc())
            )
            count = await session.scalar(select(func.count()).select_from(untold.subquery()))
            recent = [
                HeldMail(
                    at,
                    ticket_ref(self.config, tid) if tid is not None else "",
                    str((detail or {}).get("reason", "")),
                )
                for tid, detail, at in await session.execute(untold.limit(SUMMARY_LINES))
            ]
            self.held_notices[agent] = HeldNotices(
                last.get(agent), count or 0, tuple(reversed(recent))
            )

    def contexts(self, needs: Needs) -> dict[int, ReplyContext]:
        """What an agent's reply reads of each ticket; a confirmation reads the held reply's."""
        held = self.held.get(needs.confirmation) if needs.confirmation is not None else None
        target = _merge_ticket(held) if held is not None else needs.merge_ticket
        return {
            tid: replace(
                context,
                merge_target=self.merge_targets.get(target) if target is not None else None,
                held=held
                if needs.confirmation is not None and needs.confirmation[0] == tid
                else None,
            )
            for tid, context in self.replies.items()
        }

    def learn(self, plan: Plan, ticket_id: int | None) -> None:
        """Know the held mail PLAN told an agent of (or not), and the held reply it confirmed."""
        for event in plan.events:
            if event.type == "security_event" and "told" in event.detail:
                known = self.held_notices.get(event.actor, HeldNotices())
                if event.detail["told"]:
                    self.held_notices[event.actor] = HeldNotices(self.now)
                else:
                    ref = ticket_ref(self.config, ticket_id) if ticket_id else ""
                    held = HeldMail(self.now, ref, str(event.detail.get("reason", "")))
                    recent = (*known.recent, held)[-SUMMARY_LINES:]
                    self.held_notices[event.actor] = replace(
                        known, untold=known.untold + 1, recent=recent
                    )
            if event.type == "reply_confirmed" and ticket_id is not None:
                key = (event.on or ticket_id, str(event.detail.get("code")))
                if key in self.held:
                    self.held[key] = replace(self.held[key], confirmed=True)


def _merge_ticket(held: HeldReply | None) -> int | None:
    """The ticket a held reply's ``#merge`` names, if any."""
    merge = held.commands.get("merge") if held is not None else None
    number = merge.args[0].rpartition("-")[2] if merge is not None else ""
    return int(number) if number.isdigit() and int(number) <= MAX_TICKET_ID else None
