"""Compose one outgoing mail: its final Message-ID, thread headers and ticket message (no I/O).

Every mail helpdeskd sends (acknowledgements, agent notifications, agent replies, receipts,
alerts, notices) is composed by :func:`compose_mail`; :mod:`helpdeskd.outbox.queue` stores it, or
the ingest writer stores many at once, so each is in the outbox with its final Message-ID and,
when it belongs to a ticket, stored as an outbound message that later replies can thread on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from helpdeskd.config.settings import ServiceConfig
from helpdeskd.mail.build import OutgoingMail, new_message_id, thread_headers
from helpdeskd.mail.thread_index import thread_index_child
from helpdeskd.mail.tokens import ReplyToken, reply_address


class _Threaded(Protocol):
    @property
    def message_id(self) -> str: ...
    @property
    def references(self) -> Sequence[str] | None: ...
    @property
    def in_reply_to(self) -> str | None: ...
    @property
    def thread_index(self) -> str | None: ...


@dataclass(frozen=True)
class Parent:
    """The mail being answered, for In-Reply-To and References."""

    message_id: str
    references: tuple[str, ...] = ()
    in_reply_to: str | None = None
    thread_index: str | None = None  # the Outlook conversation root (base64), if any

    @classmethod
    def of(cls, message: _Threaded) -> Parent:
        """The parent for answering MESSAGE (a stored ticket message)."""
        return cls(
            message.message_id,
            tuple(message.references or ()),
            message.in_reply_to,
            message.thread_index,
        )


@dataclass(frozen=True)
class Envelope:
    from_addr: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    reply_to: str | None = None
    envelope_from: str | None = None  # the SMTP MAIL FROM; the From address when None


def customer_envelope(
    service: ServiceConfig,
    ref: str,
    to: tuple[str, ...],
    *,
    from_name: str | None = None,
    cc: tuple[str, ...] = (),
) -> Envelope:
    """From the support address, Reply-To the ticket's signed token address: how every mail
    to a customer about ticket REF is addressed, so that the answer finds the ticket."""
    return Envelope(
        from_addr=service.support_address,
        from_name=from_name or f"{service.name} support",
        to=to,
        cc=cc,
        reply_to=reply_address(service.support_address, service.secret_keys, ReplyToken(ref)),
    )


@dataclass(frozen=True)
class Composed:
    """One outgoing mail, ready to build and store: its outbox row and ticket message fields."""

    mail: OutgoingMail
    kind: str
    envelope_from: str
    recipients: tuple[str, ...]
    ticket_id: int | None
    expires_at: datetime | None
    message: dict[str, Any]  # the outbound ticket Message's columns, all but outbox_id

    @property
    def message_id(self) -> str:
        return self.mail.message_id


def compose_mail(
    *,
    domain: str,
    kind: str,
    envelope: Envelope,
    subject: str,
    text: str,
    html: str | None = None,
    parent: Parent | None = None,
    ticket_id: int | None = None,
    internal: bool = False,
    extra_headers: Mapping[str, str] | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    expires_at: datetime | None = None,
    now: datetime | None = None,
    message_id: str | None = None,
) -> Composed:
    """Give the mail its final Message-ID, thread headers and Outlook Thread-Index (no I/O)."""
    in_reply_to, references = (
        thread_headers(parent.message_id, parent.references, parent.in_reply_to)
        if parent is not None
        else (None, [])
    )
    message_id = message_id or new_message_id(domain)
    headers = dict(extra_headers or {})
    root = parent.thread_index if parent is not None else None
    now = now or datetime.now(UTC)
    child = thread_index_child(root, now) if root else None
    if child:
        headers["Thread-Index"] = child
    mail = OutgoingMail(
        from_addr=envelope.from_addr,
        from_name=envelope.from_name,
        to=envelope.to,
        cc=envelope.cc,
        subject=subject,
        text=text,
        html=html,
        message_id=message_id,
        date=now,
        reply_to=envelope.reply_to,
        in_reply_to=in_reply_to,
        references=tuple(references),
        extra_headers=headers,
        attachments=tuple(attachments),
    )
    message = {
        "ticket_id": ticket_id,
        "direction": "out",
        "kind": kind,
        "message_id": message_id,
        "in_reply_to": in_reply_to,
        "references": list(references),
        "thread_index": root if child else None,
        "from_addr": envelope.from_addr,
        "from_name": envelope.from_name,
        "to": list(envelope.to),
        "cc": list(envelope.cc),
        "subject": subject,
        "text": text,
        "full_text": text,
        "attachments": [
            {"name": name, "type": ctype, "size": len(data)} for name, ctype, data in attachments
        ],
        "internal": internal,
    }
    return Composed(
        mail=mail,
        kind=kind,
        envelope_from=envelope.envelope_from or envelope.from_addr,
        recipients=(*envelope.to, *envelope.cc),
        ticket_id=ticket_id,
        expires_at=expires_at,
        message=message,
    )
