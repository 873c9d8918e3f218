"""Take one person out of each table's rows: the steps of an erasure, and what they did.

helpdeskd.desk.erasure finds what is theirs (tickets, messages, the lines and names they wrote)
and runs these steps in one transaction; each step counts what it changed in :class:`Erasure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Text, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.desk import privacy
from helpdeskd.mail.parse import parse_message
from helpdeskd.mail.scrub import ERASED, Scrubber, scrub_mail
from helpdeskd.store.models import (
    AutoReplyLog,
    Event,
    Message,
    Notice,
    Outbox,
    OutboxRecipient,
    PendingDeletion,
    Quarantine,
    RawMessage,
    ThreadRef,
)

SCAN_CHUNK = 200  # rows of raw or outbox bytes read at a time when looking for the address
CANCELLED = "erased on request"
SYNTHETIC = "@no-message-id.helpdeskd.invalid>"  # mail.parse's Message-ID for mail without one


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


def for_update(query: Any, postgres: bool) -> Any:
    """Lock QUERY's rows until the commit on PostgreSQL (SQLite has no row locks)."""
    return query.with_for_update() if postgres else query


class TableScrub:
    """One erasure's changes to each table, in the erasure's transaction.

    The steps run in this order: messages (which name the raw mail and blobs of theirs), raw
    mail found otherwise, quarantine, raw mail, outbox, events, the small tables, and last the
    blobs no other message refers to.
    """

    def __init__(
        self,
        session: AsyncSession,
        address: str,
        alias: str,
        scrubber: Scrubber,
        theirs: set[int],
        report: Erasure,
        *,
        mailboxes: set[str],
        postgres: bool,
    ) -> None:
        self.session = session
        self.address = address
        self.alias = alias
        self.scrubber = scrubber
        self.theirs = theirs  # message ids of theirs
        self.report = report
        self.mailboxes = mailboxes
        self.postgres = postgres
        self.blobs: set[str] = set()  # SHA-256 of attachments of theirs
        self.raw_ids: set[int] = set()
        self.bare: set[int] = set()  # raw mail no message row names: parsed for its blobs
        self.pending: list[PendingDeletion] = []  # files and blobs to remove after the commit

    # --- messages and raw mail ---------------------------------------------------------------

    async def erase_messages(self, messages: Sequence[Message]) -> None:
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

    async def scan_raw(self, held: set[int], message_ids: set[str]) -> None:
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

    async def erase_quarantine(self) -> None:
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

    async def erase_raw(self) -> None:
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

    async def erase_blobs(self) -> None:
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

    async def erase_outbox(self, ticket_ids: Sequence[int], held: set[int]) -> None:
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
                for_update(
                    select(Outbox).where(Outbox.id.in_(chosen[start : start + privacy.CHUNK])),
                    self.postgres,
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

    async def erase_events(self, ticket_ids: Sequence[int], held: set[int]) -> None:
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

    async def erase_small_rows(self, held: set[int]) -> None:
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
