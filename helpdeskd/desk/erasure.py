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

This module finds what is theirs and keeps the transaction; helpdeskd.desk.scrubbing changes
each table's rows and counts what went in the :class:`Erasure` report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk import privacy
from helpdeskd.desk.scrubbing import Erasure, TableScrub, for_update
from helpdeskd.errors import UserError
from helpdeskd.mail.scrub import ERASED, Scrubber, lines_of
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import (
    Contact,
    ErasedAddress,
    Event,
    Message,
    OptOut,
    Participant,
    Ticket,
)
from helpdeskd.triage.lifecycle import edit_tags
from helpdeskd.triage.received import ticket_ref

log = structlog.get_logger(__name__)

RELAYS = ("agent_notification", "rule_notification")  # sent mail that carries the customer's text
# What a reply adds in front of a subject: "Re:", "Fwd:" and the like, and our [HD-1] tag.
_SUBJECT_NOISE = re.compile(r"^\s*(?:(?:re|fwd?|aw|sv|wg|tr)\s*:\s*|\[\w+-\d+\]\s*)+", re.I)


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
    """One erasure in one transaction: find what is theirs, then scrub each table with
    :class:`helpdeskd.desk.scrubbing.TableScrub`, tag the tickets and take the contact away."""

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
        rows = TableScrub(
            session,
            self.address,
            self.alias,
            self.scrubber,
            self.theirs,
            self.report,
            mailboxes=self.mailboxes,
            postgres=self.postgres,
        )
        await rows.erase_messages(messages)
        await rows.scan_raw(held_ids, their_ids)
        await rows.erase_quarantine()
        await rows.erase_raw()
        await rows.erase_outbox([t.id for t in work], held_ids)
        await rows.erase_events([t.id for t in work], held_ids)
        await rows.erase_small_rows(held_ids)
        await rows.erase_blobs()
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
        self.report.pending = [row.id for row in rows.pending]
        return _Outcome(self.report, held_contact)

    def _locked(self, query: Any) -> Any:
        return for_update(query, self.postgres)

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
