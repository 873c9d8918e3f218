"""The store: turn received mail into raw, ticket, message, event and outbox rows.

One fetched batch is one transaction; each message gets its own SAVEPOINT, so one failing
message goes to quarantine (raw bytes, error, traceback) without taking its batch down. The
decisions are made by the pure modules (classify, threading, loops, render); this module only
looks things up and writes them down.
"""

from __future__ import annotations

import asyncio
import hashlib
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd import outbox
from helpdeskd.classify import ClassifyContext, classify
from helpdeskd.config import Config
from helpdeskd.db import SessionMaker
from helpdeskd.errors import UserError
from helpdeskd.loops import automatic_headers, may_autorespond
from helpdeskd.models import (
    AutoReplyLog,
    Contact,
    Event,
    MailboxState,
    Message,
    Participant,
    Quarantine,
    RawMessage,
    Ticket,
    utcnow,
)
from helpdeskd.outbound import OutgoingMail, build_message, new_message_id, thread_headers
from helpdeskd.parsepool import ParsePool
from helpdeskd.parsing import ParsedMessage
from helpdeskd.render import Renderer
from helpdeskd.threading import (
    Candidates,
    ThreadMatch,
    TicketView,
    normalize_subject,
    reopen_action,
    resolve_thread,
    subject_refs,
    tag_subject,
    thread_index_root,
)
from helpdeskd.tokens import ReplyToken, reply_address, tokens_in, verify_reply

log = structlog.get_logger(__name__)

OUTCOMES = (
    "new_ticket",
    "reply",
    "bounce",
    "report",
    "auto_reply",
    "unsubscribe",
    "spam",
    "ignored",
    "duplicate",
    "blocked",
    "quarantined",
)


@dataclass(frozen=True)
class Incoming:
    """One received mail: where it came from and its bytes (None when oversize)."""

    source: str
    uid: int
    raw: bytes | None
    size: int
    uidvalidity: int = 0


@dataclass(frozen=True)
class Outcome:
    source: str
    message_id: str | None
    outcome: str
    ticket: str | None
    reason: str

    def as_json(self) -> dict[str, str | None]:
        return {
            "source": self.source,
            "message_id": self.message_id,
            "outcome": self.outcome,
            "ticket": self.ticket,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MailboxMark:
    """Mailbox progress written in the same transaction as the batch."""

    name: str
    uidvalidity: int
    last_uid: int


def ticket_ref(config: Config, ticket_id: int) -> str:
    return f"{config.service.ticket_prefix}-{ticket_id}"


def ref_to_id(config: Config, ref: str) -> int | None:
    prefix, _, number = ref.upper().rpartition("-")
    if prefix != config.service.ticket_prefix or not number.isdigit():
        return None
    return int(number)


class Processor:
    """Store batches of received mail; safe to call from several tasks (one writer at a time)."""

    def __init__(
        self,
        config: Config,
        sessions: SessionMaker,
        renderer: Renderer,
        parse_pool: ParsePool,
        *,
        backfill: bool = False,
        outbox_wakeup: asyncio.Event | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.renderer = renderer
        self.parse_pool = parse_pool
        self.backfill = backfill
        self.outbox_wakeup = outbox_wakeup
        self._lock = asyncio.Lock()
        self.classify_context = ClassifyContext(
            support_address=config.service.support_address.lower(),
            own_addresses=config.own_addresses(),
            agent_addresses=frozenset(a.email for a in config.agents),
        )

    # --- the batch ---------------------------------------------------------------------------

    async def process_batch(
        self, items: Sequence[Incoming], mark: MailboxMark | None = None
    ) -> list[Outcome]:
        """Store ITEMS in one transaction and return one outcome per item, in order."""
        if not items:
            return []
        async with self._lock:
            known = await self._known_raw(items)
            parsed = await asyncio.gather(
                *(self._parse(item) for item, seen in zip(items, known, strict=True) if not seen),
                return_exceptions=True,
            )
            parsed_iter = iter(parsed)
            outcomes: list[Outcome] = []
            async with self.sessions() as session, session.begin():
                for item, seen in zip(items, known, strict=True):
                    if seen:
                        outcomes.append(
                            Outcome(item.source, None, "duplicate", None, "already received")
                        )
                        continue
                    result = next(parsed_iter)
                    outcomes.append(await self._store_one(session, item, result))
                if mark is not None:
                    await self._mark_mailbox(session, mark)
            if self.outbox_wakeup is not None:
                self.outbox_wakeup.set()
            for outcome in outcomes:
                log.info(
                    "message_stored",
                    source=outcome.source,
                    message_id=outcome.message_id,
                    outcome=outcome.outcome,
                    ticket=outcome.ticket,
                    reason=outcome.reason,
                )
            return outcomes

    async def _parse(self, item: Incoming) -> ParsedMessage | None:
        if item.raw is None:
            return None
        return await self.parse_pool.parse(item.raw)

    async def _known_raw(self, items: Sequence[Incoming]) -> list[bool]:
        async with self.sessions() as session:
            sources = {item.source for item in items}
            rows = await session.execute(
                select(RawMessage.source, RawMessage.uidvalidity, RawMessage.uid).where(
                    RawMessage.source.in_(sources),
                    RawMessage.uid.in_([item.uid for item in items]),
                )
            )
            seen = {tuple(row) for row in rows}
            await session.rollback()
        return [(item.source, item.uidvalidity, item.uid) in seen for item in items]

    async def _store_one(
        self, session: AsyncSession, item: Incoming, result: ParsedMessage | BaseException | None
    ) -> Outcome:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            text = "".join(traceback.format_exception(result))
            return await self._quarantine(session, item, None, f"parse failed: {result}", text)
        if result is None:
            limit = self.config.mailboxes[0].max_message_bytes if self.config.mailboxes else 0
            return await self._quarantine(
                session, item, None, f"oversize message: {item.size} bytes (limit {limit})", ""
            )
        for attempt in (1, 2):
            try:
                async with session.begin_nested():
                    with structlog.contextvars.bound_contextvars(
                        message_id=result.message_id, source=item.source
                    ):
                        return await self._handle(session, item, result)
            except IntegrityError:
                # Another daemon stored the same mail (or contact) a moment ago; looking again
                # now finds it, and the message becomes a duplicate.
                if attempt == 2:
                    text = traceback.format_exc()
                    return await self._quarantine(
                        session, item, result.message_id, "integrity error twice", text
                    )
            except Exception as exc:
                text = traceback.format_exc()
                log.error("message_failed", error=str(exc), message_id=result.message_id)
                return await self._quarantine(
                    session, item, result.message_id, f"{type(exc).__name__}: {exc}", text
                )
        raise AssertionError("unreachable")

    async def _quarantine(
        self,
        session: AsyncSession,
        item: Incoming,
        message_id: str | None,
        error: str,
        text: str,
    ) -> Outcome:
        async with session.begin_nested():
            raw = self._raw_row(item, message_id)
            raw.outcome, raw.reason = "quarantined", error[:2000]
            session.add(raw)
            await session.flush()
            session.add(
                Quarantine(raw_id=raw.id, source=item.source, error=error[:2000], traceback=text)
            )
        log.warning("message_quarantined", source=item.source, error=error[:200])
        return Outcome(item.source, message_id, "quarantined", None, error[:300])

    def _raw_row(self, item: Incoming, message_id: str | None) -> RawMessage:
        data = item.raw
        return RawMessage(
            source=item.source,
            uidvalidity=item.uidvalidity,
            uid=item.uid,
            sha256=hashlib.sha256(data).hexdigest() if data is not None else "",
            size=item.size,
            data=data,
            message_id=message_id,
        )

    async def _mark_mailbox(self, session: AsyncSession, mark: MailboxMark) -> None:
        state = await session.get(MailboxState, mark.name)
        if state is None:
            state = MailboxState(name=mark.name, last_uid=0)
            session.add(state)
        if state.uidvalidity != mark.uidvalidity:
            state.uidvalidity, state.last_uid = mark.uidvalidity, 0
        state.last_uid = max(state.last_uid or 0, mark.last_uid)

    async def retry_quarantined(self, quarantine_id: int) -> Outcome:
        """Process a quarantined message again from its stored raw bytes."""
        async with self._lock:
            async with self.sessions() as session:
                entry = await session.get(Quarantine, quarantine_id)
                if entry is None or entry.resolved_at is not None:
                    raise UserError(f"no open quarantine entry {quarantine_id}")
                raw = await session.get_one(RawMessage, entry.raw_id)
                if raw.data is None:
                    raise UserError(
                        f"quarantine entry {quarantine_id} has no stored bytes ({raw.reason})"
                    )
                item = Incoming(raw.source, raw.uid, raw.data, raw.size, raw.uidvalidity)
                await session.rollback()
            parsed: ParsedMessage | Exception
            try:
                parsed = await self.parse_pool.parse(item.raw or b"")
            except Exception as exc:
                parsed = exc
            async with self.sessions() as session, session.begin():
                entry = await session.get_one(Quarantine, quarantine_id)
                raw = await session.get_one(RawMessage, entry.raw_id)
                entry.retries += 1
                message_id = raw.message_id
                try:
                    if isinstance(parsed, Exception):
                        raise parsed
                    async with session.begin_nested():
                        outcome = await self._handle(session, item, parsed, raw=raw)
                except Exception as exc:
                    # The savepoint's rollback expired what it touched: load the entry afresh.
                    entry = await session.get_one(Quarantine, quarantine_id, populate_existing=True)
                    entry.error = f"{type(exc).__name__}: {exc}"[:2000]
                    entry.traceback = "".join(traceback.format_exception(exc))
                    log.warning("quarantine_retry_failed", quarantine_id=quarantine_id)
                    return Outcome(item.source, message_id, "quarantined", None, entry.error)
                entry.resolved_at = utcnow()
            if self.outbox_wakeup is not None:
                self.outbox_wakeup.set()
            log.info("quarantine_released", quarantine_id=quarantine_id, outcome=outcome.outcome)
            return outcome

    # --- one message -------------------------------------------------------------------------

    async def _handle(
        self,
        session: AsyncSession,
        item: Incoming,
        parsed: ParsedMessage,
        raw: RawMessage | None = None,
    ) -> Outcome:
        if raw is None:
            raw = self._raw_row(item, parsed.message_id)
            session.add(raw)
        else:
            raw.message_id = parsed.message_id

        def done(outcome: str, ticket: Ticket | None, reason: str) -> Outcome:
            raw.outcome, raw.reason = outcome, reason[:2000]
            raw.ticket_id = ticket.id if ticket is not None else None
            ref = ticket_ref(self.config, ticket.id) if ticket is not None else None
            return Outcome(item.source, parsed.message_id, outcome, ref, reason)

        existing = await session.scalar(
            select(Message).where(Message.message_id == parsed.message_id)
        )
        if existing is not None:
            ticket = await session.get(Ticket, existing.ticket_id)
            if existing.direction == "out":
                return done("ignored", ticket, "our own outgoing mail came back")
            return done("duplicate", ticket, "Message-ID already stored")

        kind = classify(parsed, self.classify_context)
        if kind.kind in ("bounce", "report", "unsubscribe", "spam", "ignored", "blocked"):
            return done(kind.kind, None, kind.reason)

        sender = parsed.sender
        if not sender:
            raise ValueError("no usable From address")
        is_agent = kind.kind == "agent_reply"
        match = resolve_thread(sender, is_agent, await self._candidates(session, parsed))
        ticket = await self._ticket(session, match.ticket) if match.ticket else None

        if kind.kind == "auto_reply":
            if ticket is None:
                return done("auto_reply", None, kind.reason)
            self._add_message(session, ticket, parsed, raw, kind="auto_reply", internal=False)
            self._event(session, ticket, "auto_reply_received", sender, {"reason": kind.reason})
            return done("auto_reply", ticket, f"{kind.reason}; kept on the ticket, not answered")

        now = utcnow()
        if ticket is not None:
            action = reopen_action(
                ticket.state,
                ticket.closed_at,
                now,
                timedelta(days=self.config.service.reopen_window_days),
            )
            if action == "follow_up":
                parent = ticket
                ticket = await self._new_ticket(session, parsed, raw, match, parent=parent)
                return done(
                    "new_ticket",
                    ticket,
                    f"follow-up to closed {ticket_ref(self.config, parent.id)}",
                )
            await self._append(
                session, ticket, parsed, raw, match, is_agent, reopen=action == "reopen"
            )
            return done("reply", ticket, match.reason)

        if is_agent:
            # An agent writing to support without a thread opens a ticket as themselves; the
            # customer-forward case and authenticated replies are handled in agents.py.
            ticket = await self._new_ticket(session, parsed, raw, match, ack=False)
            return done("new_ticket", ticket, f"{match.reason}; from an agent, no acknowledgement")
        ticket = await self._new_ticket(session, parsed, raw, match)
        return done("new_ticket", ticket, match.reason)

    async def _candidates(self, session: AsyncSession, parsed: ParsedMessage) -> Candidates:
        by_token = by_reference = by_thread_index = by_subject = None
        service = self.config.service
        for text in tokens_in(list(parsed.recipients), service.support_address):
            token = verify_reply(service.secret_keys, text)
            if token is not None:
                by_token = await self._view_by_ref(session, token.ref)
                if by_token is not None:
                    break
        ids = list(parsed.in_reply_to) + list(reversed(parsed.references))
        if by_token is None and ids:
            rows = await session.execute(
                select(Message.message_id, Message.ticket_id).where(Message.message_id.in_(ids))
            )
            found = {mid: tid for mid, tid in rows}
            for mid in ids:
                if mid in found:
                    by_reference = await self._view(session, found[mid])
                    break
        root = thread_index_root(parsed.thread_index)
        # Only a reply continues a thread: a bare root (22 bytes, 32 in base64) starts one.
        continues = bool(root and parsed.thread_index and len(parsed.thread_index) > 32)
        if by_token is None and by_reference is None and continues:
            tid = await session.scalar(
                select(Message.ticket_id)
                .where(Message.thread_index == root)
                .order_by(Message.id.desc())
                .limit(1)
            )
            if tid is not None:
                by_thread_index = await self._view(session, tid)
        for ref in subject_refs(parsed.subject, service.ticket_prefix):
            by_subject = await self._view_by_ref(session, ref)
            if by_subject is not None:
                break
        return Candidates(
            by_token=by_token,
            by_reference=by_reference,
            by_thread_index=by_thread_index,
            by_subject=by_subject,
        )

    async def _view_by_ref(self, session: AsyncSession, ref: str) -> TicketView | None:
        ticket_id = ref_to_id(self.config, ref)
        return await self._view(session, ticket_id) if ticket_id is not None else None

    async def _view(self, session: AsyncSession, ticket_id: int) -> TicketView | None:
        ticket = await session.get(Ticket, ticket_id)
        seen: set[int] = set()
        while ticket is not None and ticket.merged_into_id is not None and ticket.id not in seen:
            seen.add(ticket.id)
            ticket = await session.get(Ticket, ticket.merged_into_id)
        if ticket is None:
            return None
        emails = await session.scalars(
            select(Contact.email)
            .join(Participant, Participant.contact_id == Contact.id)
            .where(Participant.ticket_id == ticket.id)
        )
        return TicketView(
            id=ticket.id,
            ref=ticket_ref(self.config, ticket.id),
            state=ticket.state,
            participants=frozenset(emails),
            closed_at=ticket.closed_at,
        )

    async def _ticket(self, session: AsyncSession, view: TicketView) -> Ticket:
        return await session.get_one(Ticket, view.id)

    async def contact(self, session: AsyncSession, email: str, name: str | None) -> Contact:
        """Return the contact for EMAIL, creating it race-free (two daemons, one customer)."""
        email = email.lower()
        contact = await session.scalar(select(Contact).where(Contact.email == email))
        if contact is not None:
            if name and not contact.name:
                contact.name = name[:200]
            return contact
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        await session.execute(
            insert(Contact)
            .values(
                email=email,
                name=(name or None) and name[:200],
                undeliverable=False,
                bounce_count=0,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["email"])
        )
        created = await session.scalar(select(Contact).where(Contact.email == email))
        assert created is not None
        return created

    async def _add_participant(
        self, session: AsyncSession, ticket: Ticket, contact: Contact, role: str
    ) -> bool:
        exists = await session.scalar(
            select(Participant.id).where(
                Participant.ticket_id == ticket.id, Participant.contact_id == contact.id
            )
        )
        if exists is not None:
            return False
        session.add(Participant(ticket_id=ticket.id, contact_id=contact.id, role=role))
        return True

    def _joinable(self, address: str) -> bool:
        """Whether ADDRESS may become a participant: not ours, not an agent, not a token."""
        ctx = self.classify_context
        domain = self.config.service.support_domain.lower()
        if address in ctx.own_addresses or address in ctx.agent_addresses:
            return False
        return not address.endswith("@" + domain)

    async def _new_ticket(
        self,
        session: AsyncSession,
        parsed: ParsedMessage,
        raw: RawMessage,
        match: ThreadMatch,
        *,
        parent: Ticket | None = None,
        ack: bool = True,
    ) -> Ticket:
        requester = await self.contact(session, parsed.sender, parsed.sender_name)
        subject = normalize_subject(parsed.subject, self.config.service.ticket_prefix)
        now = utcnow()
        ticket = Ticket(
            subject=subject or "(no subject)",
            state="new",
            priority="normal",
            requester_id=requester.id,
            channel="email",
            tags=[],
            parent_id=parent.id if parent else None,
            created_at=now,
            updated_at=now,
        )
        session.add(ticket)
        await session.flush()
        await self._add_participant(session, ticket, requester, "requester")
        for address in parsed.cc + parsed.to:
            if self._joinable(address) and address != requester.email:
                cc = await self.contact(session, address, None)
                await self._add_participant(session, ticket, cc, "cc")
        message = self._add_message(session, ticket, parsed, raw, kind="customer", internal=False)
        detail: dict[str, object] = {"message_id": parsed.message_id, "thread": match.reason}
        if parent is not None:
            detail["follow_up_to"] = ticket_ref(self.config, parent.id)
        self._event(session, ticket, "ticket_created", parsed.sender, detail)
        await session.flush()
        if ack:
            await self._acknowledge(session, ticket, requester, parsed, message)
        return ticket

    async def _append(
        self,
        session: AsyncSession,
        ticket: Ticket,
        parsed: ParsedMessage,
        raw: RawMessage,
        match: ThreadMatch,
        is_agent: bool,
        *,
        reopen: bool,
    ) -> None:
        now = utcnow()
        kind = "agent_reply" if is_agent else "customer"
        # Agent replies are taken only when authenticated (agents.py); until then a reply from
        # an agent address is kept as an internal draft and never sent.
        self._add_message(session, ticket, parsed, raw, kind=kind, internal=is_agent)
        self._event(
            session,
            ticket,
            "message_received",
            parsed.sender,
            {"message_id": parsed.message_id, "thread": match.reason, "step": match.step},
        )
        if match.trusted and not is_agent:
            for address in parsed.cc + parsed.to:
                if self._joinable(address):
                    contact = await self.contact(session, address, None)
                    if await self._add_participant(session, ticket, contact, "cc"):
                        self._event(
                            session, ticket, "participant_added", parsed.sender, {"email": address}
                        )
        if not is_agent:
            if reopen:
                self._event(session, ticket, "reopened", parsed.sender, {"from": ticket.state})
                ticket.state, ticket.solved_at, ticket.closed_at = "open", None, None
            elif ticket.state == "pending":
                ticket.state = "open"
                self._event(
                    session,
                    ticket,
                    "state_changed",
                    parsed.sender,
                    {"from": "pending", "to": "open"},
                )
            sender = await self.contact(session, parsed.sender, parsed.sender_name)
            if match.trusted:
                await self._add_participant(session, ticket, sender, "cc")
        ticket.updated_at = now

    def _add_message(
        self,
        session: AsyncSession,
        ticket: Ticket,
        parsed: ParsedMessage,
        raw: RawMessage,
        *,
        kind: str,
        internal: bool,
    ) -> Message:
        message = Message(
            ticket_id=ticket.id,
            direction="in",
            kind=kind,
            message_id=parsed.message_id,
            in_reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
            references=list(parsed.references),
            thread_index=thread_index_root(parsed.thread_index),
            from_addr=parsed.sender,
            from_name=parsed.sender_name or None,
            to=list(parsed.to),
            cc=list(parsed.cc),
            subject=parsed.subject,
            text=parsed.text,
            full_text=parsed.full_text,
            attachments=[
                {"name": a.name, "type": a.type, "size": a.size, "sha256": a.sha256}
                for a in parsed.attachments
            ],
            internal=internal,
            raw=raw,
        )
        session.add(message)
        return message

    def _event(
        self,
        session: AsyncSession,
        ticket: Ticket | None,
        type_: str,
        actor: str,
        detail: dict[str, object],
    ) -> None:
        session.add(
            Event(ticket_id=ticket.id if ticket else None, type=type_, actor=actor, detail=detail)
        )

    # --- acknowledgement ---------------------------------------------------------------------

    async def _acknowledge(
        self,
        session: AsyncSession,
        ticket: Ticket,
        requester: Contact,
        parsed: ParsedMessage,
        message: Message,
    ) -> None:
        service = self.config.service
        reason = await self._ack_blocker(session, parsed, requester)
        if reason is not None:
            self._event(session, ticket, "ack_suppressed", "system", {"reason": reason})
            log.info("ack_suppressed", reason=reason)
            return
        ref = ticket_ref(self.config, ticket.id)
        context = {
            "service": {"name": service.name, "support_address": service.support_address},
            "ticket": {"ref": ref, "subject": ticket.subject, "state": ticket.state},
            "requester": {"name": requester.name or "", "email": requester.email},
        }
        rendered = self.renderer.render("ack.txt.j2", context)
        in_reply_to, references = thread_headers(
            parsed.message_id,
            parsed.references,
            parsed.in_reply_to[0] if parsed.in_reply_to else None,
        )
        message_id = new_message_id(service.support_domain)
        now = utcnow()
        mail = OutgoingMail(
            from_addr=service.support_address,
            from_name=f"{service.name} support",
            to=(requester.email,),
            subject=tag_subject(rendered.subject, ref, service.ticket_prefix),
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            date=now,
            reply_to=reply_address(service.support_address, service.secret_keys, ReplyToken(ref)),
            in_reply_to=in_reply_to,
            references=tuple(references),
            extra_headers=automatic_headers(service.support_address, "auto-replied"),
        )
        row = outbox.enqueue(
            session,
            kind="ack",
            message_id=message_id,
            envelope_from=service.support_address,
            recipients=[requester.email],
            data=build_message(mail),
            ticket_id=ticket.id,
        )
        await session.flush()
        session.add(
            Message(
                ticket_id=ticket.id,
                direction="out",
                kind="ack",
                message_id=message_id,
                in_reply_to=in_reply_to,
                references=references,
                from_addr=service.support_address,
                from_name=mail.from_name,
                to=[requester.email],
                cc=[],
                subject=mail.subject,
                text=rendered.text,
                full_text=rendered.text,
                attachments=[],
                internal=False,
                outbox_id=row.id,
            )
        )
        session.add(AutoReplyLog(address=requester.email, ticket_id=ticket.id, kind="ack"))
        self._event(session, ticket, "ack_queued", "system", {"message_id": message_id})

    async def _ack_blocker(
        self, session: AsyncSession, parsed: ParsedMessage, requester: Contact
    ) -> str | None:
        service = self.config.service
        if self.backfill:
            return "backfill sends nothing"
        if not service.ack:
            return "acknowledgements are off"
        if self.config.smtp is None:
            return "no [smtp] configured"
        if requester.undeliverable:
            return "requester is undeliverable"
        verdict = may_autorespond(
            parsed,
            support_address=service.support_address,
            own_addresses=self.classify_context.own_addresses,
        )
        if not verdict.allowed:
            return verdict.reason
        since = utcnow() - timedelta(hours=24)
        sent = await session.scalar(
            select(func.count(AutoReplyLog.id)).where(
                AutoReplyLog.address == requester.email, AutoReplyLog.sent_at >= since
            )
        )
        if (sent or 0) >= service.autoreply_limit:
            return f"autoreply_limit of {service.autoreply_limit} per 24 h reached"
        window = utcnow() - timedelta(minutes=service.flood_minutes)
        recent = await session.scalar(
            select(func.count(Message.id)).where(
                Message.from_addr == requester.email,
                Message.direction == "in",
                Message.created_at >= window,
            )
        )
        if (recent or 0) > service.flood_messages:
            return (
                f"flood: more than {service.flood_messages} messages in {service.flood_minutes} min"
            )
        return None
