"""Erase one person on request (``helpdeskd contacts erase EMAIL``), all or nothing.

Everything in the database happens in one transaction, so a crash leaves the person either
wholly erased or not at all:

- the raw mail they sent, and any other raw mail that mentions them (an agent's reply quoting
  them, a bounce of mail to them, a quarantined mail), loses its bytes; the bodies, subjects
  and attachments of their messages are emptied; other messages on their tickets (agents'
  replies, internal notes, notifications) and the outbox's copies of mail keep their text with
  the person taken out (:class:`helpdeskd.mail.scrub.Scrubber`);
- their address becomes a stable pseudonym (``erased-…@erased.invalid``) on the contact,
  tickets, participants, outbox recipients, events, thread references and automatic-reply log;
  their name, customer record and notice preferences go; ticket skeletons, states and agents'
  notes stay, tagged ``erased``, each with an ``erasure`` event;
- pending mail to them is cancelled (its recipient ``skipped``); their address is kept as a
  salted hash (helpdeskd.desk.privacy), so no notice or import mails them again;
- spool files, attachment blobs no other message refers to, and the copies in the mailboxes'
  processed folders are recorded for removal after the commit (helpdeskd.desk.privacy,
  helpdeskd.imap.erase).

A ticket under legal hold (tag ``hold``) is left whole, and the contact keeps its address and
name while any such ticket names them: housekeeping finishes the erasure when the holds are
lifted. A dry run does all of it and rolls back, so it reports exactly what would go.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Text, cast, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk import privacy
from helpdeskd.errors import UserError
from helpdeskd.mail.parse import parse_message
from helpdeskd.mail.scrub import ERASED, Scrubber, lines_of, scrub_mail
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import (
    AutoReplyLog,
    Contact,
    ErasedAddress,
    Event,
    Message,
    Notice,
    OptOut,
    Outbox,
    OutboxRecipient,
    Participant,
    PendingDeletion,
    Quarantine,
    RawMessage,
    ThreadRef,
    Ticket,
)
from helpdeskd.triage.lifecycle import edit_tags
from helpdeskd.triage.received import ticket_ref

log = structlog.get_logger(__name__)

SCAN_CHUNK = 200  # rows of raw or outbox bytes read at a time when looking for the address
CANCELLED = "erased on request"
SYNTHETIC = "@no-message-id.helpdeskd.invalid>"  # mail.parse's Message-ID for mail without one
RELAYS = ("agent_notification", "rule_notification")  # sent mail that carries the customer's text
# What a reply adds in front of a subject: "Re:", "Fwd:" and the like, and our [HD-1] tag.
_SUBJECT_NOISE = re.compile(r"^\s*(?:(?:re|fwd?|aw|sv|wg|tr)\s*:\s*|\[\w+-\d+\]\s*)+", re.I)


@dataclass
class Erasure:
    """What an erasure did (or, on a dry run, would do)."""

    pseudonym: str
    dry_run: bool
    contact: bool = False  # a contact had the address
    tickets: list[str] = field(default_factory=list)  # erased (their data went)
    held: list[str] = field(default_factory=list)  # under legal hold: left whole
    messages: int = 0  # their messages emptied
    scrubbed: int = 0  # other messages with them taken out
    raw: int = 0  # raw mails whose bytes went
    quarantine: int = 0
    outbox_cancelled: int = 0  # pending mail to them
    outbox_scrubbed: int = 0
    events: int = 0
    files: list[str] = field(default_factory=list)  # spool files to remove
    blobs: list[str] = field(default_factory=list)  # attachment blobs to remove
    imap: list[tuple[str, str]] = field(default_factory=list)  # (mailbox, Message-ID)
    pending: list[int] = field(default_factory=list)  # ids of its pending_deletions rows

    @property
    def found(self) -> bool:
        return bool(self.contact or self.tickets or self.held or self.raw or self.events)

    def as_json(self) -> dict[str, Any]:
        return {
            "pseudonym": self.pseudonym,
            "dry_run": self.dry_run,
            "contact": self.contact,
            "tickets": self.tickets,
            "held": self.held,
            "messages": self.messages,
            "scrubbed": self.scrubbed,
            "raw": self.raw,
            "quarantine": self.quarantine,
            "outbox_cancelled": self.outbox_cancelled,
            "outbox_scrubbed": self.outbox_scrubbed,
            "events": self.events,
            "files": len(self.files),
            "blobs": len(self.blobs),
            "imap": len(self.imap),
        }


def _refuse(config: Config, address: str) -> None:
    if "@" not in address or len(address) > 320:
        raise UserError(f"{address[:80]!r} is not an email address")
    if address in config.own_addresses() or config.agent(address) is not None:
        raise UserError(f"{address} is one of the desk's own addresses or an agent's")
    if address.endswith("@" + privacy.PSEUDONYM_DOMAIN):
        raise UserError(f"{address} is already a pseudonym")


async def erase(
    sessions: SessionMaker,
    config: Config,
    address: str,
    *,
    by: str,
    now: datetime,
    dry_run: bool = False,
) -> Erasure:
    """Erase the person with ADDRESS in one transaction (BY: who asked, for the event).

    After the commit, the files are removed and a SQLite file rebuilt; the processed folders'
    copies are left to helpdeskd.imap.erase (they are in ``pending_deletions``).
    """
    address = address.strip().lower()
    _refuse(config, address)
    async with sessions() as session, session.begin():
        # The salt on its own (it holds nothing personal): a dry run shows the real pseudonym.
        await privacy.salt(session, create=True)
    async with sessions() as session:
        transaction = await session.begin()
        try:
            await privacy.secure_delete(session)
            report = await erase_in(session, config, address, by=by, now=now, dry_run=dry_run)
            await privacy.plain_delete(session)
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
            return report
        await transaction.commit()
    log.info(
        "contact_erased",
        pseudonym=report.pseudonym,
        tickets=len(report.tickets),
        held=len(report.held),
        by=by,
    )
    if report.pending:
        await privacy.finish_deletions(sessions, config.service.state_dir, ids=report.pending)
    await privacy.compact_sqlite(config.database.url)
    return report


async def erase_in(
    session: AsyncSession,
    config: Config,
    address: str,
    *,
    by: str,
    now: datetime,
    dry_run: bool = False,
) -> Erasure:
    """Erase ADDRESS within SESSION's transaction; see the module docstring."""
    key = await privacy.salt(session, create=True)
    assert key is not None
    digest = privacy.digest(key, address)
    alias = privacy.pseudonym(digest)
    report = await _Eraser(session, config, address, alias, by, now, dry_run).run()
    stored = await session.get(ErasedAddress, digest)
    held_contact = report.held_contact
    if stored is None:
        session.add(
            ErasedAddress(
                digest=digest, pseudonym=alias, erased_at=now, held_contact_id=held_contact
            )
        )
    else:
        stored.erased_at, stored.held_contact_id = now, held_contact
    return report.erasure


@dataclass
class _Outcome:
    erasure: Erasure
    held_contact: int | None


class _Eraser:
    """One erasure's steps, in one transaction."""

    def __init__(
        self,
        session: AsyncSession,
        config: Config,
        address: str,
        alias: str,
        by: str,
        now: datetime,
        dry_run: bool,
    ) -> None:
        self.session = session
        self.config = config
        self.address = address
        self.alias = alias
        self.by = by
        self.now = now
        self.report = Erasure(alias, dry_run)
        self.postgres = privacy.postgres(session)
        self.scrubber = Scrubber.of(address, alias)
        self.theirs: set[int] = set()  # message ids of theirs
        self.blobs: set[str] = set()  # SHA-256 of attachments of theirs
        self.raw_ids: set[int] = set()
        self.bare: set[int] = set()  # raw mail no message row names: parsed for its blobs
        self.pending: list[PendingDeletion] = []  # files and blobs to remove after the commit
        self.mailboxes = {m.name for m in config.mailboxes}

    async def run(self) -> _Outcome:
        session = self.session
        contact = await session.scalar(
            self._locked(select(Contact).where(Contact.email == self.address))
        )
        self.report.contact = contact is not None
        tickets = await self._tickets(contact)
        held = [t for t in tickets if privacy.is_held(t.tags)]
        work = [t for t in tickets if not privacy.is_held(t.tags)]
        self.report.held = [ticket_ref(self.config, t.id) for t in held]
        self.report.tickets = [ticket_ref(self.config, t.id) for t in work]
        held_ids = {t.id for t in held}
        messages = await self._messages([t.id for t in work])
        requested = {t.id for t in work if contact is not None and t.requester_id == contact.id}
        self._learn(contact, work, messages, requested)
        their_ids = {m.message_id for m in messages if m.id in self.theirs}  # before scrubbing
        await self._erase_messages(messages)
        await self._scan_raw(held_ids, their_ids)
        await self._erase_quarantine()
        await self._erase_raw()
        await self._erase_outbox([t.id for t in work], held_ids)
        await self._erase_events([t.id for t in work], held_ids)
        await self._erase_small_rows(held_ids)
        await self._erase_blobs()
        for ticket in work:
            ticket.tags = edit_tags(ticket.tags or [], [privacy.ERASED_TAG])
            if ticket.id in requested:
                ticket.subject = ERASED
            else:
                ticket.subject = self.scrubber.text(ticket.subject)
            session.add(
                Event(
                    ticket_id=ticket.id,
                    type="erasure",
                    actor=self.by,
                    detail={"pseudonym": self.alias},
                    created_at=self.now,
                )
            )
        held_contact = await self._contact(contact, work, held_ids)
        session.add(
            Event(
                ticket_id=None,
                type="erasure",
                actor=self.by,
                detail={k: v for k, v in self.report.as_json().items() if k != "dry_run"},
                created_at=self.now,
            )
        )
        await session.flush()
        self.report.pending = [row.id for row in self.pending]
        return _Outcome(self.report, held_contact)

    def _locked(self, query: Any) -> Any:
        return query.with_for_update() if self.postgres else query

    # --- what is theirs ----------------------------------------------------------------------

    async def _tickets(self, contact: Contact | None) -> list[Ticket]:
        session = self.session
        ids: set[int] = set()
        if contact is not None:
            ids.update(
                await session.scalars(select(Ticket.id).where(Ticket.requester_id == contact.id))
            )
            ids.update(
                await session.scalars(
                    select(Participant.ticket_id).where(Participant.contact_id == contact.id)
                )
            )
        mention = [
            func.lower(Message.from_addr) == self.address,
            privacy.json_contains(Message.to, self.address),
            privacy.json_contains(Message.cc, self.address),
            func.lower(Message.subject).contains(self.address, autoescape=True),
            func.lower(Message.text).contains(self.address, autoescape=True),
            func.lower(Message.full_text).contains(self.address, autoescape=True),
        ]
        ids.update(await session.scalars(select(Message.ticket_id).where(or_(*mention))))
        found: list[Ticket] = []
        chosen = sorted(ids)
        for start in range(0, len(chosen), privacy.CHUNK):
            found.extend(
                await session.scalars(
                    self._locked(
                        select(Ticket).where(Ticket.id.in_(chosen[start : start + privacy.CHUNK]))
                    )
                )
            )
        return sorted(found, key=lambda t: t.id)

    async def _messages(self, ticket_ids: Sequence[int]) -> list[Message]:
        found: list[Message] = []
        for start in range(0, len(ticket_ids), privacy.CHUNK):
            found.extend(
                await self.session.scalars(
                    select(Message)
                    .where(Message.ticket_id.in_(ticket_ids[start : start + privacy.CHUNK]))
                    .order_by(Message.id)
                )
            )
        return found

    def _learn(
        self,
        contact: Contact | None,
        tickets: Sequence[Ticket],
        messages: Sequence[Message],
        requested: set[int],
    ) -> None:
        """Work out what of theirs to look for: names, lines and subjects they wrote."""
        names: set[str | None] = {contact.name if contact is not None else None}
        theirs_lines: set[str] = set()
        others_lines: set[str] = set()
        fragments: set[str] = set()
        for message in messages:
            if self._is_theirs(message, requested):
                self.theirs.add(message.id)
                names.add(message.from_name)
                theirs_lines |= lines_of(message.text) | lines_of(message.full_text)
                fragments.add(_SUBJECT_NOISE.sub("", message.subject or ""))
            elif message.direction == "in" or message.kind not in RELAYS:
                # Somebody else's own words stay (an agent's reply, another customer's mail,
                # the desk's own acknowledgement); mail that passed hers on does not count.
                others_lines |= lines_of(message.text)
        fragments.update(
            _SUBJECT_NOISE.sub("", t.subject or "") for t in tickets if t.id in requested
        )
        self.scrubber = Scrubber.of(
            self.address,
            self.alias,
            names=names,
            lines=theirs_lines - others_lines,
            fragments=fragments,
        )

    def _is_theirs(self, message: Message, requested: set[int]) -> bool:
        if message.direction != "in":
            return False
        if message.from_addr.lower() == self.address:
            return True
        # A Heroku-forwarded ticket: the desk's mail carries the requester's words.
        return message.kind == "heroku_forward" and message.ticket_id in requested

    # --- messages and raw mail ---------------------------------------------------------------

    async def _erase_messages(self, messages: Sequence[Message]) -> None:
        scrub = self.scrubber
        for message in messages:
            if message.id in self.theirs:
                self.blobs.update(a.get("sha256", "") for a in message.attachments or [])
                message.text = message.full_text = message.subject = ERASED
                message.from_addr, message.from_name = self.alias, None
                message.to = scrub.addresses(message.to or [])
                message.cc = scrub.addresses(message.cc or [])
                message.attachments = []
                message.digest = None
                self._scrub_ids(message)
                if message.raw_id is not None:
                    self.raw_ids.add(message.raw_id)
                self.report.messages += 1
        for message in messages:
            if message.id in self.theirs:
                continue
            self._scrub_ids(message)
            before = (
                message.text,
                message.full_text,
                message.subject,
                message.from_name,
                list(message.to or []),
                list(message.cc or []),
            )
            attachments = [
                a
                for a in message.attachments or []
                if a.get("sha256") not in self.blobs or not a.get("sha256")
            ]
            after = (
                scrub.text(message.text),
                scrub.text(message.full_text),
                scrub.text(message.subject),
                scrub.text(message.from_name) if message.from_name else message.from_name,
                scrub.addresses(message.to or []),
                scrub.addresses(message.cc or []),
            )
            attachments = [{**a, "name": scrub.text(str(a.get("name", "")))} for a in attachments]
            if after == before and attachments == list(message.attachments or []):
                continue
            (
                message.text,
                message.full_text,
                message.subject,
                message.from_name,
                message.to,
                message.cc,
            ) = after
            message.attachments = attachments
            if message.raw_id is not None:
                self.raw_ids.add(message.raw_id)  # its bytes hold what was scrubbed here
            self.report.scrubbed += 1

    def _scrub_ids(self, message: Message) -> None:
        """Take the address out of MESSAGE's Message-IDs (some clients build them from it);
        nothing else: a changed Message-ID would no longer thread."""
        only = self.scrubber.address_only
        message.message_id = only(message.message_id)
        if message.in_reply_to:
            message.in_reply_to = only(message.in_reply_to)
        message.references = [only(str(r)) for r in message.references or []]

    async def _scan_raw(self, held: set[int], message_ids: set[str]) -> None:
        """Find raw mail of theirs that no message row names: the same mail received twice,
        bounces, quarantined mail, robots' mail; by Message-ID or by their address in it."""
        session = self.session
        if message_ids:
            chosen = sorted(message_ids)
            for start in range(0, len(chosen), privacy.CHUNK):
                self.raw_ids.update(
                    await session.scalars(
                        select(RawMessage.id).where(
                            RawMessage.message_id.in_(chosen[start : start + privacy.CHUNK])
                        )
                    )
                )
        needle = self.address.encode("utf-8")
        has_message = select(Message.id).where(Message.raw_id == RawMessage.id).exists()
        query = (
            select(RawMessage.id, RawMessage.data, RawMessage.path, RawMessage.ticket_id)
            .where(
                ~has_message,
                or_(RawMessage.data.is_not(None), RawMessage.path.is_not(None)),
            )
            .order_by(RawMessage.id)
            .limit(SCAN_CHUNK)
        )
        last = 0
        while rows := (await session.execute(query.where(RawMessage.id > last))).all():
            for raw_id, data, path, ticket_id in rows:
                if ticket_id in held:
                    continue
                if (data is not None and needle in data.lower()) or (
                    path is not None and _file_holds(Path(path), needle)
                ):
                    self.raw_ids.add(raw_id)
                    self.bare.add(raw_id)
            last = rows[-1][0]
        if held and self.raw_ids:
            on_hold = set(
                await session.scalars(
                    select(RawMessage.id).where(
                        RawMessage.id.in_(sorted(self.raw_ids)), RawMessage.ticket_id.in_(held)
                    )
                )
            )
            self.raw_ids -= on_hold

    async def _erase_quarantine(self) -> None:
        session = self.session
        text_mentions = or_(
            func.lower(Quarantine.error).contains(self.address, autoescape=True),
            func.lower(Quarantine.traceback).contains(self.address, autoescape=True),
            func.lower(Quarantine.source).contains(self.address, autoescape=True),
        )
        entries = list(await session.scalars(select(Quarantine).where(text_mentions)))
        chosen = sorted(self.raw_ids)
        for start in range(0, len(chosen), privacy.CHUNK):
            entries.extend(
                await session.scalars(
                    select(Quarantine).where(
                        Quarantine.raw_id.in_(chosen[start : start + privacy.CHUNK])
                    )
                )
            )
        for entry in {e.id: e for e in entries}.values():
            self.raw_ids.add(entry.raw_id)
            await session.delete(entry)
            self.report.quarantine += 1

    async def _erase_raw(self) -> None:
        session = self.session
        chosen = sorted(self.raw_ids)
        for start in range(0, len(chosen), privacy.CHUNK):
            rows = await session.scalars(
                select(RawMessage).where(RawMessage.id.in_(chosen[start : start + privacy.CHUNK]))
            )
            for raw in rows:
                if raw.data is not None and raw.id in self.bare:
                    self.blobs.update(_attachment_digests(raw.data))
                if raw.path:
                    self.pending.append(privacy.queue_file(session, raw.path))
                    self.report.files.append(raw.path)
                if (
                    raw.message_id
                    and raw.source in self.mailboxes
                    and not raw.message_id.endswith(SYNTHETIC)
                ):
                    privacy.queue_imap(session, raw.source, raw.message_id)
                    self.report.imap.append((raw.source, raw.message_id))
                raw.data, raw.path, raw.sha256 = None, None, ""
                if raw.message_id:
                    raw.message_id = self.scrubber.address_only(raw.message_id)
                raw.reason = self.scrubber.text(raw.reason) if raw.reason else raw.reason
                self.report.raw += 1

    async def _erase_blobs(self) -> None:
        """Remove their attachments' blobs that no other message refers to any more."""
        session = self.session
        await session.flush()
        for sha in sorted(b for b in self.blobs if b):
            referenced = await session.scalar(
                select(Message.id)
                .where(func.coalesce(cast(Message.attachments, Text), "").contains(sha))
                .limit(1)
            )
            if referenced is None:
                self.pending.append(privacy.queue_blob(session, sha))
                self.report.blobs.append(sha)

    # --- outbox, events and the rest ---------------------------------------------------------

    async def _erase_outbox(self, ticket_ids: Sequence[int], held: set[int]) -> None:
        session = self.session
        ids: set[int] = set()
        for start in range(0, len(ticket_ids), privacy.CHUNK):
            ids.update(
                await session.scalars(
                    select(Outbox.id).where(
                        Outbox.ticket_id.in_(ticket_ids[start : start + privacy.CHUNK])
                    )
                )
            )
        ids.update(
            await session.scalars(
                select(OutboxRecipient.outbox_id).where(
                    func.lower(OutboxRecipient.address) == self.address
                )
            )
        )
        needle = self.address.encode("utf-8")
        query = (
            select(Outbox.id, Outbox.data)
            .where(Outbox.ticket_id.is_(None))
            .order_by(Outbox.id)
            .limit(SCAN_CHUNK)
        )
        last = 0
        while rows := (await session.execute(query.where(Outbox.id > last))).all():
            ids.update(row_id for row_id, data in rows if data and needle in data.lower())
            last = rows[-1][0]
        chosen = sorted(ids)
        blobs = frozenset(b for b in self.blobs if b)
        for start in range(0, len(chosen), privacy.CHUNK):
            rows_ = await session.scalars(
                self._locked(
                    select(Outbox).where(Outbox.id.in_(chosen[start : start + privacy.CHUNK]))
                )
            )
            for row in rows_:
                if row.ticket_id in held:
                    continue
                self._erase_outbox_row(row, blobs)

    def _erase_outbox_row(self, row: Outbox, blobs: frozenset[str]) -> None:
        for recipient in row.recipients:
            if recipient.address.lower() != self.address:
                continue
            if recipient.state == "pending":
                recipient.state, recipient.last_error = "skipped", CANCELLED
                self.report.outbox_cancelled += 1
            recipient.address = self.alias
        if row.state == "pending" and not any(r.state == "pending" for r in row.recipients):
            states = {r.state for r in row.recipients}
            row.state = "sent" if "sent" in states else "skipped"
        data = scrub_mail(row.data, self.scrubber, blobs)
        if data != row.data:
            row.data = data
            self.report.outbox_scrubbed += 1
        if row.last_error:
            row.last_error = self.scrubber.text(row.last_error)

    async def _erase_events(self, ticket_ids: Sequence[int], held: set[int]) -> None:
        session = self.session
        events: dict[int, Event] = {}
        for start in range(0, len(ticket_ids), privacy.CHUNK):
            for event in await session.scalars(
                select(Event).where(Event.ticket_id.in_(ticket_ids[start : start + privacy.CHUNK]))
            ):
                events[event.id] = event
        mentions = or_(
            func.lower(Event.actor) == self.address,
            privacy.json_contains(Event.detail, self.address),
        )
        for event in await session.scalars(select(Event).where(mentions)):
            if event.ticket_id not in held:
                events[event.id] = event
        for event in events.values():
            actor = self.alias if event.actor.lower() == self.address else event.actor
            detail = self.scrubber.value(event.detail or {})
            if (actor, detail) != (event.actor, event.detail):
                event.actor, event.detail = actor, detail
                self.report.events += 1

    async def _erase_small_rows(self, held: set[int]) -> None:
        session = self.session
        for ref in await session.scalars(
            select(ThreadRef).where(privacy.json_contains(ThreadRef.addresses, self.address))
        ):
            if ref.ticket_id not in held and ref.addresses is not None:
                ref.addresses = self.scrubber.addresses(ref.addresses)
        await session.execute(
            update(AutoReplyLog)
            .where(func.lower(AutoReplyLog.address) == self.address)
            .values(address=self.alias)
        )
        audience = func.lower(Notice.audience).contains(self.address, autoescape=True)
        for notice in await session.scalars(select(Notice).where(audience)):
            notice.audience = self.scrubber.text(notice.audience)

    async def _contact(
        self, contact: Contact | None, work: Sequence[Ticket], held: set[int]
    ) -> int | None:
        """Move the erased tickets to the pseudonym's contact and take the person's contact
        away; return its id when tickets under hold still name it (it stays until then)."""
        if contact is None:
            return None
        session = self.session
        await session.execute(
            privacy.insert_for(session)(Contact)
            .values(
                email=self.alias,
                name=None,
                undeliverable=True,
                bounce_count=0,
                bounce_score=0.0,
                last_bounce_on=None,
                last_bounce_weight=0.0,
                bounce_reason=None,
                suppressed=True,
                created_at=self.now,
            )
            .on_conflict_do_nothing(index_elements=["email"])
        )
        alias = await session.scalar(select(Contact).where(Contact.email == self.alias))
        assert alias is not None
        work_ids = [t.id for t in work]
        for ticket in work:
            if ticket.requester_id == contact.id:
                ticket.requester_id = alias.id
        on_alias = set(
            await session.scalars(
                select(Participant.ticket_id).where(Participant.contact_id == alias.id)
            )
        )
        for participant in await session.scalars(
            select(Participant).where(
                Participant.contact_id == contact.id, Participant.ticket_id.in_(work_ids)
            )
        ):
            if participant.ticket_id in on_alias:
                await session.delete(participant)
            else:
                participant.contact_id = alias.id
        await session.execute(delete(OptOut).where(OptOut.contact_id == contact.id))
        if held:
            # The held tickets still show who wrote; nothing else may reach the person.
            contact.plan = contact.app = contact.addon_id = contact.status = None
            contact.bounce_reason = None  # a server's words, often with the address in them
            contact.suppressed = True
            return contact.id
        await session.execute(
            update(ErasedAddress)
            .where(ErasedAddress.held_contact_id == contact.id)
            .values(held_contact_id=None)
        )
        await session.flush()
        await session.delete(contact)
        await session.flush()
        return None


def _file_holds(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    """Whether the file at PATH holds NEEDLE (in any case); False when it cannot be read."""
    try:
        with path.open("rb") as handle:
            tail = b""
            while block := handle.read(chunk):
                if needle in (tail + block).lower():
                    return True
                tail = block[-len(needle) :]
    except OSError:
        return False
    return False


def _attachment_digests(data: bytes) -> set[str]:
    """The SHA-256 of each attachment in raw mail DATA (stored as blobs when it was parsed)."""
    try:
        parsed = parse_message(data)
    except Exception:  # mail that failed to parse stored no attachment either
        return set()
    return {a.sha256 for a in parsed.attachments}


async def finish_held(sessions: SessionMaker, config: Config, now: datetime) -> list[str]:
    """Finish the erasures that tickets under legal hold kept back, now that no hold is left;
    return the pseudonyms of those finished."""
    async with sessions() as session:
        waiting = (
            await session.execute(
                select(ErasedAddress.pseudonym, Contact.id, Contact.email).join(
                    Contact, Contact.id == ErasedAddress.held_contact_id
                )
            )
        ).all()
        ready = []
        for alias, contact_id, address in waiting:
            on = select(Participant.ticket_id).where(Participant.contact_id == contact_id)
            still = await session.scalar(
                select(func.count(Ticket.id)).where(
                    or_(Ticket.requester_id == contact_id, Ticket.id.in_(on)),
                    ~privacy.not_held(),
                )
            )
            if not still:
                ready.append((alias, address))
    for alias, address in ready:
        await erase(sessions, config, address, by="housekeeping: legal hold lifted", now=now)
        log.info("held_erasure_finished", pseudonym=alias)
    return [alias for alias, _ in ready]
