"""Export what the desk holds about one person (``helpdeskd contacts export EMAIL DIR``).

The folder holds ``contact.json`` (the contact and customer record, notice preferences and
opt-outs, the events they caused), one folder per ticket they are on (``ticket.json`` with its
messages and events, the raw ``.eml`` files they wrote and the mail sent to them, the
attachments) and ``manifest.json``, which names every other file with its size and SHA-256.

Only what is theirs goes in: of a ticket they share with others, the mail they wrote, the mail
that was addressed to them, and agents' public replies; never another customer's mail, nor an
agent's internal notes unless asked for (``--internal``). Files are written 0600 in a folder of
0700: the export is personal data too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd import __version__
from helpdeskd.config.settings import Config
from helpdeskd.desk import privacy
from helpdeskd.desk.customers import contact_detail
from helpdeskd.errors import UserError
from helpdeskd.store.models import (
    Contact,
    Event,
    Message,
    OptOut,
    Outbox,
    Participant,
    RawMessage,
    Ticket,
)
from helpdeskd.store.views import iso
from helpdeskd.triage.received import ticket_ref

_UNSAFE = re.compile(r"[^\w.+-]+")


def safe_name(name: str, fallback: str = "file") -> str:
    """NAME as a plain file name: no folders, no leading dots, nothing odd, at most 100 long."""
    cleaned = _UNSAFE.sub("_", Path(name.replace("\\", "/")).name).strip("._")[:100]
    return cleaned or fallback


@dataclass
class _Folder:
    """The export folder being written, and the manifest's entries so far."""

    root: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def write(self, relative: str, data: bytes, kind: str, **about: Any) -> None:
        path = self.root / relative
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.entries.append(
            {
                "path": relative,
                "kind": kind,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                **about,
            }
        )

    def json(self, relative: str, value: Any, kind: str) -> None:
        data = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"
        self.write(relative, data, kind)


def _prepare(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"{folder}: exists and is not a folder")
        if any(folder.iterdir()):
            raise UserError(f"{folder}: not empty; export into a new or empty folder")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create: {exc.strerror}") from None


async def export_contact(
    session: AsyncSession,
    config: Config,
    address: str,
    folder: Path,
    *,
    now: datetime,
    internal: bool = False,
) -> dict[str, Any]:
    """Write everything stored about ADDRESS into FOLDER (new or empty); return the manifest."""
    address = address.strip().lower()
    contact = await session.scalar(select(Contact).where(Contact.email == address))
    if contact is None:
        if await privacy.erased(session, [address]):
            raise UserError(f"{address} was erased on request: the desk holds nothing of it")
        raise UserError(f"no contact {address}")
    _prepare(folder)
    out = _Folder(folder)
    detail = await contact_detail(session, config, address)
    assert detail is not None
    optouts = [
        {"category": o.category, "via": o.via, "created_at": iso(o.created_at)}
        for o in await session.scalars(
            select(OptOut).where(OptOut.contact_id == contact.id).order_by(OptOut.id)
        )
    ]
    events = await session.scalars(
        select(Event)
        .where(Event.ticket_id.is_(None), func.lower(Event.actor) == address)
        .order_by(Event.id)
    )
    out.json(
        "contact.json",
        {
            **detail,
            "created_at": iso(contact.created_at),
            "bounce_count": contact.bounce_count,
            "bounce_score": contact.bounce_score,
            "last_bounce_on": (
                contact.last_bounce_on.isoformat() if contact.last_bounce_on else None
            ),
            "bounce_reason": contact.bounce_reason,
            "opt_outs": optouts,
            "events": [_event(e) for e in events],
        },
        "contact",
    )
    tickets = await _tickets(session, contact.id)
    for ticket in tickets:
        await _ticket(session, config, out, ticket, contact, internal)
    manifest = {
        "format": "helpdeskd-export-1",
        "helpdeskd": __version__,
        "email": address,
        "exported_at": iso(now),
        "tickets": [ticket_ref(config, t.id) for t in tickets],
        "files": out.entries,
    }
    data = json.dumps(manifest, ensure_ascii=False, indent=2).encode() + b"\n"
    fd = os.open(folder / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return manifest


async def _tickets(session: AsyncSession, contact_id: int) -> list[Ticket]:
    on = select(Participant.ticket_id).where(Participant.contact_id == contact_id)
    query = (
        select(Ticket)
        .where(or_(Ticket.requester_id == contact_id, Ticket.id.in_(on)))
        .order_by(Ticket.id)
    )
    return list(await session.scalars(query))


def _event(event: Event) -> dict[str, Any]:
    return {
        "type": event.type,
        "actor": event.actor,
        "detail": event.detail,
        "created_at": iso(event.created_at),
    }


def _addressed(message: Message, address: str) -> bool:
    return any(str(a).lower() == address for a in [*(message.to or []), *(message.cc or [])])


async def _ticket(
    session: AsyncSession,
    config: Config,
    out: _Folder,
    ticket: Ticket,
    contact: Contact,
    internal: bool,
) -> None:
    """Write one ticket's folder: what of it is the person's."""
    address = contact.email
    ref = ticket_ref(config, ticket.id)
    base = f"tickets/{ref}"
    theirs = ticket.requester_id == contact.id
    messages: list[dict[str, Any]] = []
    for message in await session.scalars(
        select(Message).where(Message.ticket_id == ticket.id).order_by(Message.id)
    ):
        wrote = message.direction == "in" and message.from_addr.lower() == address
        sent_to = message.direction == "out" and _addressed(message, address)
        public_reply = message.direction == "out" and not message.internal and theirs
        copied = message.direction == "in" and _addressed(message, address)
        note = internal and message.internal and message.kind == "note" and theirs
        if not (wrote or sent_to or public_reply or copied or note):
            continue
        number = len(messages) + 1
        files: list[str] = []
        if wrote and message.raw_id is not None:
            raw = await session.get(RawMessage, message.raw_id)
            data = _raw_bytes(raw) if raw is not None else None
            if data is not None:
                name = f"{base}/mail/{number:04d}-received.eml"
                out.write(name, data, "received_mail", ticket=ref, message_id=message.message_id)
                files.append(name)
        if message.outbox_id is not None and (sent_to or public_reply):
            data = await session.scalar(select(Outbox.data).where(Outbox.id == message.outbox_id))
            if data:
                name = f"{base}/mail/{number:04d}-sent.eml"
                out.write(name, data, "sent_mail", ticket=ref, message_id=message.message_id)
                files.append(name)
        attachments: list[dict[str, Any]] = []
        for index, attachment in enumerate(message.attachments or [], 1):
            sha = str(attachment.get("sha256", ""))
            blob = privacy.blob_path(config.service.state_dir, sha) if sha else None
            entry = {k: attachment.get(k) for k in ("name", "type", "size", "sha256")}
            if blob is not None and blob.is_file():
                stem = safe_name(str(attachment.get("name") or ""), "attachment")
                name = f"{base}/attachments/{number:04d}-{index}-{stem}"
                out.write(name, blob.read_bytes(), "attachment", ticket=ref, sha256_name=sha)
                entry["file"] = name
            attachments.append(entry)
        messages.append(
            {
                "direction": message.direction,
                "kind": message.kind,
                "message_id": message.message_id,
                "from": message.from_addr,
                "from_name": message.from_name,
                "to": list(message.to or []),
                "cc": list(message.cc or []),
                "subject": message.subject,
                "text": message.text,
                "full_text": message.full_text,
                "internal": message.internal,
                "attachments": attachments,
                "files": files,
                "created_at": iso(message.created_at),
            }
        )
    events = await session.scalars(
        select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id)
    )
    out.json(
        f"{base}/ticket.json",
        {
            "ref": ref,
            "role": "requester" if theirs else "cc",
            "subject": ticket.subject if theirs else None,
            "state": ticket.state,
            "priority": ticket.priority,
            "channel": ticket.channel,
            "external_ref": ticket.external_ref,
            "tags": list(ticket.tags or []),
            "created_at": iso(ticket.created_at),
            "updated_at": iso(ticket.updated_at),
            "solved_at": iso(ticket.solved_at),
            "closed_at": iso(ticket.closed_at),
            "messages": messages,
            "events": [_event(e) for e in events if theirs or e.actor.lower() == address],
        },
        "ticket",
    )


def _raw_bytes(raw: RawMessage) -> bytes | None:
    if raw.data is not None:
        return raw.data
    if raw.path:
        try:
            return Path(raw.path).read_bytes()
        except OSError:
            return None
    return None
