"""The store: turn received mail into raw, ticket, message, event and outbox rows.

One fetched batch is one transaction. Runs of plain customer mail go through the fast lane
(:mod:`helpdeskd.ingest.fastlane`: one SAVEPOINT and a few bulk INSERTs per run); every other
message gets its own SAVEPOINT, so one failing message goes to quarantine (raw bytes, error,
traceback) without taking its batch down.
"""

from __future__ import annotations

import asyncio
import hashlib
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk import routing
from helpdeskd.desk.agents import AgentDesk, forwarded_sender
from helpdeskd.desk.notices import opt_out
from helpdeskd.errors import UserError
from helpdeskd.ingest.fastlane import FastLane
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.mail.attachments import store as store_attachment
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import (
    tokens_in,
    verify_reply,
    verify_unsubscribe,
)
from helpdeskd.outbox.compose import (
    Composed,
    Parent,
    compose_mail,
    customer_envelope,
    store_mail,
)
from helpdeskd.rules.engine import Decision, RuleSet, evaluate
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.models import (
    AutoReplyLog,
    Contact,
    Event,
    MailboxState,
    Message,
    Participant,
    Quarantine,
    RawMessage,
    ThreadRef,
    Ticket,
    columns,
    utcnow,
)
from helpdeskd.store.spool import spool
from helpdeskd.triage.bounces import parse_bounce, parse_complaint
from helpdeskd.triage.classify import ClassifyContext, classify
from helpdeskd.triage.heroku import recognise
from helpdeskd.triage.loops import automatic_headers, may_autorespond
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
    ThreadMatch,
    TicketView,
    normalize_subject,
    reopen_action,
    resolve_thread,
    subject_refs,
    tag_subject,
    thread_index_root,
)

log = structlog.get_logger(__name__)

HEADER_READ = 256 * 1024  # bytes read from an oversize mail to find its header block
SOFT_BOUNCE_LIMIT = 3  # failed deliveries without a permanent status before we stop mailing


@dataclass(frozen=True)
class MailboxMark:
    """Mailbox progress written in the same transaction as the batch."""

    name: str
    uidvalidity: int
    last_uid: int


def _setter(decision: Decision, action: str) -> str:
    return next((a.rule for a in decision.applied if a.name == action), "?")


def human_size(size: int) -> str:
    """Return SIZE in bytes as people write it: 25 MB, 50 kB."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:.3g} MB"
    return f"{size / 1000:.3g} kB"


def _read_head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEADER_READ)


@dataclass(frozen=True)
class Prepared:
    """A batch made ready to store: each item, whether its UID was stored before, and its
    parse (a ParsedMessage, the exception parsing raised, or None: nothing to parse)."""

    items: list[Incoming]
    known: list[bool]
    results: list[ParsedMessage | BaseException | None]


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
        fast_lane: bool = True,
    ) -> None:
        self.config = config
        self.fast_lane = fast_lane
        self.lanes: Counter[str] = Counter()  # messages stored by lane; "failed": runs
        self.sessions = sessions
        self.renderer = renderer
        self.parse_pool = parse_pool
        self.backfill = backfill
        self.outbox_wakeup = outbox_wakeup
        self._lock = asyncio.Lock()
        self._flood_seen: dict[tuple[str, int], str | None] = {}
        self.agents = AgentDesk(config, renderer, backfill=backfill)
        self.rules = routing.load(config)
        self.classify_context = self.context_for(config)

    def reload(self, config: Config, renderer: Renderer, rules: RuleSet) -> None:
        """Take a validated new config, templates and rules; the next message uses them."""
        self.config, self.renderer, self.rules = config, renderer, rules
        self.agents = AgentDesk(config, renderer, backfill=self.backfill)
        self.classify_context = self.context_for(config)

    @staticmethod
    def context_for(config: Config) -> ClassifyContext:
        return ClassifyContext(
            support_address=config.service.support_address.lower(),
            own_addresses=config.own_addresses(),
            agent_addresses=frozenset(a.email for a in config.agents),
            blocked=config.service.blocked_senders,
            heroku=config.heroku,
        )

    # --- the batch ---------------------------------------------------------------------------

    async def process_batch(
        self, items: Sequence[Incoming], mark: MailboxMark | None = None
    ) -> list[Outcome]:
        """Store ITEMS in one transaction and return one outcome per item, in order."""
        return await self.store(await self.prepare(items), mark)

    async def prepare(self, items: Sequence[Incoming]) -> Prepared:
        """Do the work on ITEMS that needs no transaction: spool, dedupe by UID, parse.

        It holds no lock, so the IMAP watcher prepares a batch while the one before it is
        being stored (:meth:`store` looks up everything else inside its own transaction).
        """
        items = [self._spool_if_oversize(item) for item in items]
        if not items:
            return Prepared([], [], [])
        known = await self._known_raw(items)
        texts = [
            None if seen else await self._text(item)
            for item, seen in zip(items, known, strict=True)
        ]
        parsed = iter(await self.parse_pool.parse_many([t for t in texts if t is not None]))
        results = [None if text is None else next(parsed) for text in texts]
        await asyncio.to_thread(self._keep_attachments, results)
        return Prepared(items, known, results)

    async def store(self, prepared: Prepared, mark: MailboxMark | None = None) -> list[Outcome]:
        """Store PREPARED in one transaction and return one outcome per item, in order."""
        items, known, results = prepared.items, prepared.known, prepared.results
        if not items:
            return []
        async with self._lock:
            outcomes: list[Outcome] = []
            async with self.sessions() as session, session.begin():
                while len(outcomes) < len(items):
                    i = len(outcomes)
                    item, result = items[i], results[i]
                    if known[i]:
                        outcomes.append(
                            Outcome(item.source, None, "duplicate", None, "already received")
                        )
                        continue
                    run = []
                    for later, later_result, seen in zip(
                        items[i:], results[i:], known[i:], strict=True
                    ):
                        if seen or not isinstance(later_result, ParsedMessage):
                            break
                        if not FastLane.suits(later, later_result, self.classify_context):
                            break
                        run.append((later, later_result))
                    stored = await self._fast(session, run)
                    outcomes.extend(stored)
                    if not stored:
                        outcomes.append(await self._store_one(session, item, result))
                        self.lanes["message"] += 1
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

    async def _fast(
        self, session: AsyncSession, run: Sequence[tuple[Incoming, ParsedMessage]]
    ) -> list[Outcome]:
        """Store the leading plain customer mail of RUN in the fast lane, all or nothing."""
        if not self.fast_lane or not run:
            return []
        try:
            async with session.begin_nested():
                stored = await FastLane(self, session).run(run)
        except IntegrityError:
            # Another daemon stored one of these a moment ago: the per-message path sees it.
            log.info("fast_lane_conflict", messages=len(run))
            self.lanes["conflict"] += 1
            return []
        except Exception as exc:
            log.error("fast_lane_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self.lanes["failed"] += 1
            return []
        self.lanes["fast"] += len(stored)
        return stored

    def _keep_attachments(self, results: Sequence[object]) -> None:
        """Store every attachment's bytes content-addressed under the state folder."""
        folder = self.config.service.state_dir / "attachments"
        for result in results:
            if isinstance(result, ParsedMessage):
                for attachment in result.attachments:
                    if attachment.data:
                        store_attachment(folder, attachment.data)

    def _spool_if_oversize(self, item: Incoming) -> Incoming:
        """Move an oversize mail read from a file out of memory into the spool folder."""
        if item.raw is None or item.size <= self.config.service.max_message_bytes:
            return item
        path = spool(self.config.service.state_dir / "oversize", item.raw)
        return replace(item, raw=None, path=str(path))

    async def _text(self, item: Incoming) -> bytes | None:
        """What to parse of ITEM: its bytes, an oversize mail's header block, or None."""
        if item.raw is not None:
            return item.raw
        if item.path is None:
            return None
        # Only the header block of an oversize mail is read: enough for a ticket and a reply.
        head = await asyncio.to_thread(_read_head, item.path)
        end = min(
            (i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0), default=len(head)
        )
        return head[:end] + b"\r\n\r\n"

    async def _known_raw(self, items: Sequence[Incoming]) -> list[bool]:
        async with reading(self.sessions) as session:  # beside a batch's commit
            sources = {item.source for item in items}
            rows = await session.execute(
                select(RawMessage.source, RawMessage.uidvalidity, RawMessage.uid).where(
                    RawMessage.source.in_(sources),
                    RawMessage.uidvalidity.in_({item.uidvalidity for item in items}),
                    RawMessage.uid.in_([item.uid for item in items]),
                )
            )
            seen = {tuple(row) for row in rows}
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
            limit = self.config.service.max_message_bytes
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
        return RawMessage(**self.raw_fields(item, message_id))

    @staticmethod
    def raw_fields(item: Incoming, message_id: str | None) -> dict[str, Any]:
        """The columns of ITEM's raw_messages row that say what was received and where."""
        data = item.raw
        digest = hashlib.sha256(data).hexdigest() if data is not None else ""
        if data is None and item.path:
            digest = Path(item.path).stem  # spool files are named by their SHA-256
        return {
            "source": item.source,
            "uidvalidity": item.uidvalidity,
            "uid": item.uid,
            "sha256": digest,
            "size": item.size,
            "data": data,
            "path": item.path,
            "message_id": message_id,
        }

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
        self._flood_seen.clear()
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

        parsed = with_fallback_sender(parsed)
        kind = classify(parsed, self.classify_context)
        if kind.kind == "bounce":
            ticket, reason = await self._bounce(session, item.raw or b"")
            return done("bounce", ticket, f"{kind.reason}; {reason}")
        if kind.kind == "report":
            ticket, reason = await self._report(session, item.raw or b"")
            return done("report", ticket, f"{kind.reason}; {reason}")
        if kind.kind == "unsubscribe":
            return done("unsubscribe", None, await self._unsubscribe_by_mail(session, parsed))
        if kind.kind in ("spam", "ignored", "blocked"):
            return done(kind.kind, None, kind.reason)

        sender = parsed.sender
        if not sender:
            raise ValueError("no usable From address")
        if item.oversize:
            limit = self.config.service.max_message_bytes
            note = (
                f"[This message is {human_size(item.size)}, over the {human_size(limit)} "
                f"limit, and was not processed. Its bytes are kept at {item.path}.]"
            )
            parsed = replace(parsed, text=note, full_text=note, attachments=())
        if kind.kind == "heroku_forward":
            return await self._heroku(session, item, parsed, raw, done)
        is_agent = kind.kind == "agent_reply"
        match = resolve_thread(sender, is_agent, await self._candidates(session, parsed))
        ticket = await self._ticket(session, match.ticket) if match.ticket else None

        if kind.kind == "auto_reply":
            if ticket is None:
                return done("auto_reply", None, kind.reason)
            self._add_message(session, ticket, parsed, raw, kind="auto_reply", internal=False)
            self._event(session, ticket, "auto_reply_received", sender, {"reason": kind.reason})
            return done("auto_reply", ticket, f"{kind.reason}; kept on the ticket, not answered")
        if is_agent:
            return await self._agent_mail(session, parsed, raw, match, ticket, done)

        if ticket is not None:
            action = reopen_action(
                ticket.state,
                ticket.closed_at,
                utcnow(),
                timedelta(days=self.config.service.reopen_window_days),
            )
            if action == "follow_up":
                parent = ticket
                ticket, message = await self._new_ticket(session, parsed, raw, match, parent=parent)
                await self._notify(session, ticket, message)
                return done(
                    "new_ticket",
                    ticket,
                    f"follow-up to closed {ticket_ref(self.config, parent.id)}",
                )
            decision = await self._route(session, parsed, item, kind.kind, ticket)
            message = await self._append(
                session, ticket, parsed, raw, match, reopen=action == "reopen"
            )
            await self._carry_out(session, ticket, message, decision)
            if item.oversize:
                contact = await self.contact(session, parsed.sender, parsed.sender_name)
                await self._acknowledge(
                    session, ticket, contact, parsed, message, template="oversize.txt.j2"
                )
            await self._notify(session, ticket, message)
            return done("reply", ticket, match.reason)

        decision = await self._route(session, parsed, item, kind.kind, None)
        if decision.actions.spam:
            return done("spam", None, f"rule {_setter(decision, 'spam')} marked it as spam")
        auto = decision.actions.auto_reply
        template = "ack.txt.j2" if auto in (None, "none") else f"{auto}.txt.j2"
        if item.oversize:
            template = "oversize.txt.j2"
        ticket, message = await self._new_ticket(
            session, parsed, raw, match, template=template, ack=auto != "none" or item.oversize
        )
        await self._carry_out(session, ticket, message, decision)
        await self._notify(session, ticket, message)
        return done("new_ticket", ticket, match.reason)

    async def _route(
        self,
        session: AsyncSession,
        parsed: ParsedMessage,
        item: Incoming,
        kind: str,
        ticket: Ticket | None,
        channel: str = "email",
    ) -> Decision:
        """Evaluate the routing rules for this message (the ticket as it was before it)."""
        plan = await routing.plan_of(session, parsed.sender)
        facts = routing.facts(
            parsed,
            mailbox=item.source,
            kind=kind,
            plan=plan,
            ticket=columns(ticket) if ticket is not None else None,
            channel=channel,
        )
        decision = evaluate(self.rules, facts)
        if decision.hits:
            log.info("rules_matched", rules=[hit.rule for hit in decision.hits])
        return decision

    async def _carry_out(
        self, session: AsyncSession, ticket: Ticket, message: Message, decision: Decision
    ) -> None:
        """Apply DECISION to TICKET, and mail whoever a rule said to notify."""
        for target in await routing.apply(session, self.config, ticket, decision):
            if target != "agents":
                await self.agents.notify_address(session, ticket, message, target)

    async def _ticket_of_mail(
        self, session: AsyncSession, message_id: str | None, references: Sequence[str] = ()
    ) -> tuple[Ticket | None, Message | None]:
        """Find the ticket (and our stored message) that a returned mail was about."""
        ids = [i for i in [message_id, *reversed(references)] if i]
        if not ids:
            return None, None
        found = await session.scalars(select(Message).where(Message.message_id.in_(ids)))
        by_id = {m.message_id: m for m in found}
        for mid in ids:
            if mid in by_id:
                message = by_id[mid]
                return await session.get(Ticket, message.ticket_id), message
        return None, None

    async def _bounce(self, session: AsyncSession, raw: bytes) -> tuple[Ticket | None, str]:
        """Record a bounce: mark the contact, note it on the ticket, tell the agent who wrote."""
        report = parse_bounce(raw)
        if report is None:
            return None, "no recipient could be read"
        ticket, message = await self._ticket_of_mail(
            session, report.original_message_id, report.original_references
        )
        lines = []
        for rcpt in report.recipients:
            contact = await session.scalar(select(Contact).where(Contact.email == rcpt.address))
            if contact is not None and rcpt.action == "failed":
                contact.bounce_count += 1
                if rcpt.hard or contact.bounce_count >= SOFT_BOUNCE_LIMIT:
                    contact.undeliverable = True
            state = "hard" if rcpt.hard else rcpt.action
            lines.append(f"{rcpt.address} {state} {rcpt.status} {rcpt.diagnostic}".strip())
        summary = "; ".join(lines) or "no recipient listed"
        if ticket is not None:
            self._event(
                session,
                ticket,
                "bounce",
                "system",
                {"message_id": report.original_message_id, "recipients": lines},
            )
            if message is not None and message.kind == "reply":
                await self._tell_writer(session, ticket, message, summary)
        log.info("bounce_recorded", recipients=lines, ticket=ticket.id if ticket else None)
        return ticket, summary

    async def _tell_writer(
        self, session: AsyncSession, ticket: Ticket, message: Message, summary: str
    ) -> None:
        """Tell the agent whose reply MESSAGE bounced."""
        events = await session.scalars(
            select(Event).where(Event.ticket_id == ticket.id, Event.type == "reply_sent")
        )
        writer = next(
            (e.actor for e in events if (e.detail or {}).get("message_id") == message.message_id),
            None,
        )
        agent = await self.agents.agent(session, writer) if writer else None
        if agent is None:
            return
        await self.agents.tell(
            session,
            agent,
            ticket,
            "Undeliverable: " + ticket.subject,
            f"Your reply on {ticket_ref(self.config, ticket.id)} could not be delivered:\n"
            f"  {summary}\n",
            parent=Parent.of(message),
        )

    async def _report(self, session: AsyncSession, raw: bytes) -> tuple[Ticket | None, str]:
        """Record a report; an ARF complaint suppresses the complainant."""
        complaint = parse_complaint(raw)
        if complaint is None:
            return None, "recorded"
        ticket, _ = await self._ticket_of_mail(session, complaint.original_message_id)
        if complaint.complainant:
            contact = await self.contact(session, complaint.complainant, None)
            contact.suppressed = True
        if ticket is not None:
            self._event(
                session,
                ticket,
                "complaint",
                complaint.complainant or "unknown",
                {"feedback_type": complaint.feedback_type},
            )
        who = complaint.complainant or "an unnamed recipient"
        return ticket, f"{complaint.feedback_type} complaint from {who}; suppressed"

    async def _unsubscribe_by_mail(self, session: AsyncSession, parsed: ParsedMessage) -> str:
        """Opt out whoever a mail to ``unsubscribe+TOKEN@`` names (the mailto: link)."""
        domain = self.config.service.support_domain.lower()
        for address in parsed.recipients:
            local, _, a_domain = address.rpartition("@")
            base, _, text = local.partition("+")
            if a_domain != domain or base != "unsubscribe":
                continue
            token = verify_unsubscribe(self.config.service.secret_keys, text)
            if token is None:
                continue
            contact = await session.get(Contact, token.contact_id)
            if contact is None:
                continue
            new = await opt_out(session, contact, token.category, "mail")
            state = "opted out" if new else "already opted out"
            return f"{contact.email} {state} of {token.category}"
        return "no valid unsubscribe token: nothing changed"

    async def _agent_mail(
        self,
        session: AsyncSession,
        parsed: ParsedMessage,
        raw: RawMessage,
        match: ThreadMatch,
        ticket: Ticket | None,
        done: Callable[[str, Ticket | None, str], Outcome],
    ) -> Outcome:
        agent = await self.agents.agent(session, parsed.sender)
        assert agent is not None  # classify() said this is an agent's address
        if ticket is None:
            forwarded = forwarded_sender(parsed.full_text)
            if forwarded is not None and self.joinable(forwarded[1]):
                # An agent forwarding a customer's mail to support opens the customer's ticket.
                ticket, message = await self._new_ticket(
                    session,
                    parsed,
                    raw,
                    match,
                    ack=False,
                    requester_of=forwarded,
                    subject=normalize_subject(parsed.subject, self.config.service.ticket_prefix),
                )
                self._event(
                    session, ticket, "opened_from_forward", agent.email, {"customer": forwarded[1]}
                )
                await self.agents.notify(session, ticket, message, exclude=agent.id)
                return done("new_ticket", ticket, f"forwarded by {agent.email} for {forwarded[1]}")
            ticket, _ = await self._new_ticket(session, parsed, raw, match, ack=False)
            return done("new_ticket", ticket, f"{match.reason}; from an agent, no acknowledgement")
        message = self._add_message(session, ticket, parsed, raw, kind="agent_reply", internal=True)
        self._event(
            session,
            ticket,
            "message_received",
            agent.email,
            {"message_id": parsed.message_id, "thread": match.reason},
        )
        verdict = self.agents.authenticate(parsed, agent, ticket_ref(self.config, ticket.id))
        if not verdict.authenticated:
            await self.agents.hold(session, ticket, agent, message, verdict.reason, security=True)
            return done("reply", ticket, f"agent mail held as a draft: {verdict.reason}")
        reason = await self.agents.reply(session, ticket, agent, message, raw, parsed)
        return done("reply", ticket, reason)

    async def _heroku(
        self,
        session: AsyncSession,
        item: Incoming,
        parsed: ParsedMessage,
        raw: RawMessage,
        done: Callable[[str, Ticket | None, str], Outcome],
    ) -> Outcome:
        assert self.config.heroku is not None
        found = recognise(parsed, self.config.heroku)
        assert found is not None  # classify() recognised it
        ticket = await session.scalar(
            select(Ticket)
            .where(
                Ticket.channel == "heroku",
                Ticket.external_ref == found.ticket_number,
                Ticket.merged_into_id.is_(None),
            )
            .order_by(Ticket.id.desc())
            .limit(1)
        )
        match = ThreadMatch(None, "external_ref", f"Heroku ticket #{found.ticket_number}")
        if ticket is not None:
            reopen = ticket.state in ("solved", "closed")
            message = await self._append(
                session, ticket, parsed, raw, match, reopen=reopen, kind="heroku_update"
            )
            message.text = parsed.text
            await self._notify(session, ticket, message)
            return done("reply", ticket, match.reason)
        requester = (
            (found.requester_name or "", found.requester_email)
            if found.requester_email
            else (parsed.sender_name, parsed.sender)
        )
        # Nothing automatic ever goes to the desk: no acknowledgement.
        decision = await self._route(session, parsed, item, "heroku_forward", None, "heroku")
        ticket, message = await self._new_ticket(
            session,
            parsed,
            raw,
            match,
            ack=False,
            requester_of=requester,
            channel="heroku",
            external_ref=found.ticket_number,
            subject=found.subject,
            kind="heroku_forward",
        )
        await self._carry_out(session, ticket, message, decision)
        await self._notify(session, ticket, message)
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
        if by_token is None:
            found = await self._referenced_tickets(session, ids, parsed.message_id)
            for mid in [*ids, parsed.message_id]:
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

    async def _referenced_tickets(
        self, session: AsyncSession, ids: list[str], own_id: str
    ) -> dict[str, int]:
        """Map Message-IDs to tickets: stored mail, and IDs earlier mail referred to.

        OWN_ID is looked up among the referred-to IDs only: an original that arrives after
        replies to it joins their ticket.
        """
        found: dict[str, int] = {}
        if ids:
            rows = await session.execute(
                select(Message.message_id, Message.ticket_id).where(Message.message_id.in_(ids))
            )
            found.update({mid: tid for mid, tid in rows})
        missing = [mid for mid in [*ids, own_id] if mid not in found]
        if missing:
            rows = await session.execute(
                select(ThreadRef.message_id, ThreadRef.ticket_id).where(
                    ThreadRef.message_id.in_(missing)
                )
            )
            found.update({mid: tid for mid, tid in rows})
        return found

    async def _remember_references(
        self, session: AsyncSession, ticket: Ticket, parsed: ParsedMessage
    ) -> None:
        """Record the IDs PARSED refers to that we have not seen, for mail that comes later."""
        ids = list(dict.fromkeys([*parsed.in_reply_to, *parsed.references]))
        if not ids:
            return
        known = set(
            await session.scalars(select(Message.message_id).where(Message.message_id.in_(ids)))
        )
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        for mid in ids:
            if mid not in known:
                await session.execute(
                    insert(ThreadRef)
                    .values(message_id=mid, ticket_id=ticket.id, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["message_id"])
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

    def joinable(self, address: str) -> bool:
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
        requester_of: tuple[str, str] | None = None,
        channel: str = "email",
        external_ref: str | None = None,
        subject: str | None = None,
        kind: str = "customer",
        template: str = "ack.txt.j2",
    ) -> tuple[Ticket, Message]:
        name, email = requester_of or (parsed.sender_name, parsed.sender)
        requester = await self.contact(session, email, name)
        if subject is None:
            subject = normalize_subject(parsed.subject, self.config.service.ticket_prefix)
        now = utcnow()
        ticket = Ticket(
            subject=subject or "(no subject)",
            state="new",
            priority="normal",
            requester_id=requester.id,
            channel=channel,
            external_ref=external_ref,
            tags=[],
            parent_id=parent.id if parent else None,
            created_at=now,
            updated_at=now,
        )
        session.add(ticket)
        await session.flush()
        await self._add_participant(session, ticket, requester, "requester")
        if channel == "email" and requester_of is None:
            for address in parsed.cc + parsed.to:
                if self.joinable(address) and address != requester.email:
                    cc = await self.contact(session, address, None)
                    await self._add_participant(session, ticket, cc, "cc")
        message = self._add_message(session, ticket, parsed, raw, kind=kind, internal=False)
        await self._remember_references(session, ticket, parsed)
        detail: dict[str, object] = {"message_id": parsed.message_id, "thread": match.reason}
        if parent is not None:
            detail["follow_up_to"] = ticket_ref(self.config, parent.id)
        self._event(session, ticket, "ticket_created", parsed.sender, detail)
        await session.flush()
        if ack:
            await self._acknowledge(session, ticket, requester, parsed, message, template=template)
        return ticket, message

    async def _append(
        self,
        session: AsyncSession,
        ticket: Ticket,
        parsed: ParsedMessage,
        raw: RawMessage,
        match: ThreadMatch,
        *,
        reopen: bool,
        kind: str = "customer",
    ) -> Message:
        now = utcnow()
        message = self._add_message(session, ticket, parsed, raw, kind=kind, internal=False)
        self._event(
            session,
            ticket,
            "message_received",
            parsed.sender,
            {"message_id": parsed.message_id, "thread": match.reason, "step": match.step},
        )
        if match.trusted:
            for address in parsed.cc + parsed.to:
                if self.joinable(address):
                    contact = await self.contact(session, address, None)
                    if await self._add_participant(session, ticket, contact, "cc"):
                        self._event(
                            session, ticket, "participant_added", parsed.sender, {"email": address}
                        )
        if reopen:
            self._event(session, ticket, "reopened", parsed.sender, {"from": ticket.state})
            ticket.state, ticket.solved_at, ticket.closed_at = "open", None, None
        elif ticket.state == "pending":
            ticket.state = "open"
            self._event(
                session, ticket, "state_changed", parsed.sender, {"from": "pending", "to": "open"}
            )
        if match.trusted and ticket.channel == "email":
            sender = await self.contact(session, parsed.sender, parsed.sender_name)
            await self._add_participant(session, ticket, sender, "cc")
        ticket.updated_at = now
        return message

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
        message = Message(ticket_id=ticket.id, raw=raw, **inbound_message(parsed, kind, internal))
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
        *,
        template: str = "ack.txt.j2",
    ) -> None:
        """Queue the automatic answer TEMPLATE to REQUESTER, unless a loop rule forbids it."""
        reason = await self._ack_blocker(session, parsed, requester, ticket)
        if reason is not None:
            self._event(session, ticket, "ack_suppressed", "system", {"reason": reason})
            log.info("ack_suppressed", reason=reason)
            return
        mail = self.ack_mail(
            columns(ticket), (requester.name or "", requester.email), parsed, template
        )
        await store_mail(session, mail)
        session.add(AutoReplyLog(address=requester.email, ticket_id=ticket.id, kind="ack"))
        self._event(session, ticket, "ack_queued", "system", {"message_id": mail.message_id})

    def ack_mail(
        self,
        ticket: Mapping[str, Any],
        requester: tuple[str, str],
        parsed: ParsedMessage,
        template: str,
    ) -> Composed:
        """Compose the automatic answer TEMPLATE to REQUESTER (name, address) about TICKET."""
        service = self.config.service
        ref = ticket_ref(self.config, ticket["id"])
        context = {
            "service": {"name": service.name, "support_address": service.support_address},
            "ticket": {"ref": ref, "subject": ticket["subject"], "state": ticket["state"]},
            "requester": {"name": requester[0], "email": requester[1]},
            "limit": human_size(service.max_message_bytes),
        }
        rendered = self.renderer.render(template, context)
        return compose_mail(
            domain=service.support_domain,
            kind="ack",
            envelope=customer_envelope(service, ref, (requester[1],)),
            subject=tag_subject(rendered.subject, ref, service.ticket_prefix),
            text=rendered.text,
            html=rendered.html,
            parent=Parent(
                parsed.message_id,
                parsed.references,
                parsed.in_reply_to[0] if parsed.in_reply_to else None,
                thread_index_root(parsed.thread_index),
            ),
            ticket_id=ticket["id"],
            extra_headers=automatic_headers(service.support_address, "auto-replied"),
        )

    async def _ack_blocker(
        self, session: AsyncSession, parsed: ParsedMessage, requester: Contact, ticket: Ticket
    ) -> str | None:
        reason = self.ack_forbidden(parsed, requester.undeliverable, requester.suppressed)
        if reason is not None:
            return reason
        since = utcnow() - timedelta(hours=24)
        sent = await session.scalar(
            select(func.count(AutoReplyLog.id)).where(
                AutoReplyLog.address == requester.email, AutoReplyLog.sent_at >= since
            )
        )
        if (sent or 0) >= self.config.service.autoreply_limit:
            return self.autoreply_limit_reason
        flood = await self._flood(session, requester.email, ticket)
        if flood:
            return flood
        return None

    @property
    def autoreply_limit_reason(self) -> str:
        return f"autoreply_limit of {self.config.service.autoreply_limit} per 24 h reached"

    def ack_forbidden(
        self, parsed: ParsedMessage, undeliverable: bool, suppressed: bool
    ) -> str | None:
        """Why no automatic answer may go to PARSED's writer, whatever the counts say."""
        service = self.config.service
        if self.backfill:
            return "backfill sends nothing"
        if not service.ack:
            return "acknowledgements are off"
        if self.config.smtp is None:
            return "no [smtp] configured"
        if undeliverable:
            return "requester is undeliverable"
        if suppressed:
            return "requester complained (ARF): suppressed"
        verdict = may_autorespond(
            parsed,
            support_address=service.support_address,
            own_addresses=self.classify_context.own_addresses,
            authserv_id=service.authserv_id,
        )
        if not verdict.allowed:
            return verdict.reason
        return None

    async def _flood(self, session: AsyncSession, sender: str, ticket: Ticket) -> str | None:
        """Return why automatic mail stops for SENDER or TICKET (a flood); tell agents once.

        Asked twice per message (acknowledgement, notification): the answer is kept for it.
        """
        key = (sender, ticket.id)
        if key not in self._flood_seen:
            self._flood_seen[key] = await self._flood_check(session, sender, ticket)
        return self._flood_seen[key]

    async def _flood_check(self, session: AsyncSession, sender: str, ticket: Ticket) -> str | None:
        service = self.config.service
        since = utcnow() - timedelta(minutes=service.flood_minutes)
        inbound = select(func.count(Message.id)).where(
            Message.direction == "in", Message.created_at >= since
        )
        by_sender = await session.scalar(inbound.where(Message.from_addr == sender)) or 0
        heroku = self.config.heroku
        if heroku is not None and sender in heroku.senders:
            by_sender = 0  # the desk writes for all its customers: only a ticket can flood
        by_ticket = await session.scalar(inbound.where(Message.ticket_id == ticket.id)) or 0
        limit = service.flood_messages
        if by_sender <= limit and by_ticket <= limit:
            return None
        reason = (
            f"flood: more than {limit} messages in {service.flood_minutes} min "
            f"from {sender}"
            + ("" if by_sender > limit else f" on {ticket_ref(self.config, ticket.id)}")
        )
        told = await session.scalar(
            select(Event.id)
            .where(
                Event.type == "flood_detected",
                Event.created_at >= since,
                or_(Event.actor == sender, Event.ticket_id == ticket.id),
            )
            .limit(1)
        )
        if told is None:
            self._event(session, ticket, "flood_detected", sender, {"reason": reason})
            log.warning("flood_detected", sender=sender, ticket=ticket.id)
            ref = ticket_ref(self.config, ticket.id)
            await self.agents.tell_all(
                session,
                ticket,
                "Mail flood: " + ticket.subject,
                f"{sender} sent more than {limit} messages in {service.flood_minutes} minutes. "
                f"Automatic mail to them and per-message notifications for {ref} are paused "
                "until the flood ends; all their mail is stored.\n",
            )
        return reason

    async def _notify(self, session: AsyncSession, ticket: Ticket, message: Message) -> None:
        """Tell the agents about MESSAGE, unless a flood has paused notifications."""
        if await self._flood(session, message.from_addr, ticket) is None:
            await self.agents.notify(session, ticket, message)
