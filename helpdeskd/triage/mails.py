"""The mail a plan sends, as data, and how each is composed once its ticket has a number (no I/O).

A plan names its mails (:class:`Ack`, :class:`Notification`, :class:`Note`, :class:`RuleCopy`)
with their Message-IDs already chosen, so that the plan's events can name them; :func:`compose`
renders and composes one for the ticket as the plan leaves it. Both shapes of the ingest writer
call it, through a :class:`Composer`, so the mail is the same whichever shape wrote the plan.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from helpdeskd.config.settings import Config
from helpdeskd.mail.build import build_message
from helpdeskd.mail.compose import Composed, Envelope, Parent, compose_mail, customer_envelope
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import ReplyToken, issue_day, reply_address
from helpdeskd.triage.loops import automatic_headers
from helpdeskd.triage.received import ticket_ref
from helpdeskd.triage.threading import tag_subject

_LINKLIKE = re.compile(
    r"\S*(?:://|www\.|@)\S*|\S*[\w-]\.[a-z]{2,}\S*|[<>\[\]{}\\|`\"]", re.IGNORECASE
)


def plain_cut(text: str, limit: int) -> str:
    """TEXT without anything a mail client could make a link of, in at most LIMIT characters."""
    words = " ".join(_LINKLIKE.sub(" ", text).split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "…"


def human_size(size: int) -> str:
    """Return SIZE in bytes as people write it: 25 MB, 50 kB."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:.3g} MB"
    return f"{size / 1000:.3g} kB"


@dataclass(frozen=True)
class TicketCard:
    """The ticket columns a mail about it shows; ``id`` None until a new ticket is written."""

    id: int | None
    subject: str
    state: str
    priority: str
    queue: str | None
    channel: str
    external_ref: str | None
    assignee: str | None  # the assignee's address


@dataclass(frozen=True)
class Said:
    """The received mail a notification passes on: what its writer said, and how to thread."""

    message_id: str
    from_addr: str
    from_name: str | None
    kind: str
    text: str
    attachments: tuple[Mapping[str, Any], ...]
    references: tuple[str, ...]
    in_reply_to: str | None
    thread_index: str | None

    @property
    def parent(self) -> Parent:
        return Parent(self.message_id, self.references, self.in_reply_to, self.thread_index)


@dataclass(frozen=True)
class Ack:
    """The automatic answer TEMPLATE to the requester of a new ticket (or an oversize mail)."""

    message_id: str
    template: str
    requester: tuple[str, str]  # name, address
    parent: Parent
    unverified: bool = False  # the sender's domain did not pass: no link, a plain cut only


@dataclass(frozen=True)
class Notification:
    """An agent told of a customer's mail, with their own reply address for the ticket."""

    message_id: str
    agent_id: int
    agent_email: str
    agent_name: str
    said: Said
    requester: tuple[str, str]
    message_count: int


@dataclass(frozen=True)
class Note:
    """A short note from the desk to an agent (or a plain address): alerts, receipts, refusals."""

    message_id: str
    to: str
    subject: str
    text: str
    agent_id: int | None = None  # an agent gets a reply address for the ticket
    parent: Parent | None = None
    about_ticket: bool = True
    confirms: str | None = None  # a confirmation request: its reply address confirms this code


@dataclass(frozen=True)
class RuleCopy:
    """A rule's copy of a received mail to an address that is not an agent (no reply token)."""

    message_id: str
    to: str
    said: Said


@dataclass(frozen=True)
class FloodAlert:
    """An agent told that SENDER floods the ticket: automatic mail to them is paused."""

    message_id: str
    agent_id: int
    agent_email: str
    sender: str
    limit: int
    minutes: int


@dataclass(frozen=True)
class Reply:
    """An agent's answer to the customer: the extracted text, with the agent's attachments.

    On a Heroku ticket it goes to the desk's reply address, its subject intact, From our
    registered agent address and with no differing Reply-To.
    """

    message_id: str
    text: str
    agent_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...] = ()
    parent: Parent | None = None
    attachments: tuple[tuple[str, str, bytes], ...] = ()
    to_desk: bool = False


Mail = Ack | Notification | Note | RuleCopy | FloodAlert | Reply


def compose(
    mail: Mail, ticket: TicketCard | None, config: Config, renderer: Renderer, now: datetime
) -> Composed:
    """Render and compose MAIL about TICKET (whose number is known by now)."""
    service = config.service
    ref = ticket_ref(config, ticket.id) if ticket is not None and ticket.id is not None else None
    ticket_id = ticket.id if ticket is not None else None
    common: dict[str, Any] = {"domain": service.support_domain, "message_id": mail.message_id}
    if isinstance(mail, Ack):
        assert ticket is not None and ref is not None
        subject, name, template = ticket.subject, mail.requester[0], mail.template
        if mail.unverified:
            # Backscatter: whoever forged this sender must not get our mail to carry their
            # words or a link to a stranger. A fixed template, and plain cuts of what they wrote.
            subject, name = plain_cut(subject, 60), plain_cut(name, 40)
            template = "ack_unverified.txt.j2"
        context = {
            "service": {"name": service.name, "support_address": service.support_address},
            "ticket": {"ref": ref, "subject": subject, "state": ticket.state},
            "requester": {"name": name, "email": mail.requester[1]},
            "limit": human_size(service.max_message_bytes),
        }
        rendered = renderer.render(template, context)
        return compose_mail(
            **common,
            kind="ack",
            envelope=customer_envelope(service, ref, (mail.requester[1],)),
            subject=tag_subject(rendered.subject, ref, service.ticket_prefix),
            text=rendered.text,
            html=None if mail.unverified else rendered.html,
            parent=mail.parent,
            ticket_id=ticket_id,
            extra_headers=automatic_headers(service.support_address, "auto-replied"),
            now=now,
        )
    if isinstance(mail, Notification):
        assert ticket is not None and ref is not None
        said = mail.said
        context = {
            "service": {"name": service.name, "support_address": service.support_address},
            "ticket": {
                "ref": ref,
                "subject": ticket.subject,
                "state": ticket.state,
                "priority": ticket.priority,
                "queue": ticket.queue,
                "assignee": ticket.assignee,
                "message_count": mail.message_count,
                "channel": ticket.channel,
                "external_ref": ticket.external_ref,
            },
            "requester": {"name": mail.requester[0], "email": mail.requester[1]},
            "message": {
                "text": said.text,
                "from": said.from_addr,
                "from_name": said.from_name or "",
                "kind": said.kind,
                "attachments": list(said.attachments),
            },
            "agent": {"name": mail.agent_name, "email": mail.agent_email},
        }
        rendered = renderer.render("agent_notification.txt.j2", context)
        return compose_mail(
            **common,
            kind="agent_notification",
            envelope=Envelope(
                from_addr=service.support_address,
                from_name=f"{said.from_name or said.from_addr} via {service.name}",
                to=(mail.agent_email,),
                reply_to=agent_reply_to(config, ref, mail.agent_id, now),
            ),
            subject=tag_subject(rendered.subject, ref, service.ticket_prefix),
            text=rendered.text,
            parent=said.parent,
            ticket_id=ticket_id,
            internal=True,
            extra_headers=automatic_headers(service.support_address, "auto-generated"),
            now=now,
        )
    if isinstance(mail, RuleCopy):
        assert ticket is not None and ref is not None
        said = mail.said
        footer = f"{ref} · {ticket.state} · {ticket.priority} priority"
        return compose_mail(
            **common,
            kind="rule_notification",
            envelope=Envelope(
                from_addr=service.support_address,
                from_name=f"{said.from_name or said.from_addr} via {service.name}",
                to=(mail.to,),
            ),
            subject=tag_subject(ticket.subject, ref, service.ticket_prefix),
            text=f"{said.text}\n\n-- \n{footer}\n",
            parent=said.parent,
            ticket_id=ticket_id,
            internal=True,
            extra_headers=automatic_headers(service.support_address, "auto-generated"),
            now=now,
        )
    if isinstance(mail, Reply):
        assert ticket is not None and ref is not None
        heroku = config.heroku
        if mail.to_desk and heroku is not None:
            envelope = Envelope(from_addr=heroku.agent_address, from_name=service.name, to=mail.to)
            subject = ticket.subject
        else:
            envelope = customer_envelope(
                service,
                ref,
                mail.to,
                from_name=f"{mail.agent_name} ({service.name})",
                cc=mail.cc,
            )
            subject = tag_subject(f"Re: {ticket.subject}", ref, service.ticket_prefix)
        return compose_mail(
            **common,
            kind="reply",
            envelope=envelope,
            subject=subject,
            text=mail.text,
            parent=mail.parent,
            ticket_id=ticket_id,
            attachments=mail.attachments,
            now=now,
        )
    if isinstance(mail, FloodAlert):
        assert ticket is not None and ref is not None
        mail = Note(
            mail.message_id,
            mail.agent_email,
            "Mail flood: " + ticket.subject,
            f"{mail.sender} sent more than {mail.limit} messages in {mail.minutes} minutes. "
            f"Automatic mail to them and per-message notifications for {ref} are paused "
            "until the flood ends; all their mail is stored.\n",
            agent_id=mail.agent_id,
        )
    about = ref if mail.about_ticket else None
    return compose_mail(
        **common,
        kind="agent_notice",
        envelope=Envelope(
            from_addr=service.support_address,
            from_name=f"{service.name} helpdesk",
            to=(mail.to,),
            reply_to=(
                agent_reply_to(config, about, mail.agent_id, now, confirms=mail.confirms)
                if about is not None and mail.agent_id is not None
                else None
            ),
        ),
        subject=tag_subject(mail.subject, about, service.ticket_prefix) if about else mail.subject,
        text=mail.text,
        parent=mail.parent,
        ticket_id=ticket_id if mail.about_ticket else None,
        internal=True,
        extra_headers=automatic_headers(service.support_address, "auto-generated"),
        now=now,
    )


@dataclass(frozen=True)
class Draft:
    """A mail of a plan and the ticket it is about, to compose once the ticket has its number."""

    mail: Mail
    ticket: TicketCard | None


@dataclass(frozen=True)
class Queued:
    """A composed mail as the outbox and the ticket keep it: its bytes and its rows' columns."""

    kind: str
    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]
    ticket_id: int | None
    expires_at: datetime | None
    message: dict[str, Any]  # the outbound ticket Message's columns, all but outbox_id
    data: bytes


@dataclass(frozen=True)
class Composer:
    """Compose drafts with one config and set of templates at one moment, and build their bytes.

    The ingest writer composes a run's mail in the daemon's process when it writes the run:
    measured on two cores, handing it to the parse workers cost more (pickling both ways, and
    the workers' time taken from parsing) than it saved.
    """

    config: Config
    renderer: Renderer
    now: datetime

    def __call__(self, drafts: Sequence[Draft]) -> list[Queued]:
        composed = [
            compose(draft.mail, draft.ticket, self.config, self.renderer, self.now)
            for draft in drafts
        ]
        built = [build_message(mail.mail) for mail in composed]
        return [
            Queued(
                mail.kind,
                mail.message_id,
                mail.envelope_from,
                mail.recipients,
                mail.ticket_id,
                mail.expires_at,
                mail.message,
                data,
            )
            for mail, data in zip(composed, built, strict=True)
        ]


def agent_reply_to(
    config: Config, ref: str, agent_id: int, now: datetime, *, confirms: str | None = None
) -> str:
    """Return the signed reply address that lets agent AGENT_ID answer on ticket REF.

    It carries the day of NOW, from which it expires (``agent_token_days``); with CONFIRMS, the
    code of a held reply, it is the address that confirms that reply.
    """
    service = config.service
    token = ReplyToken(ref, agent_id=agent_id, issued=issue_day(now), confirms=confirms)
    return reply_address(service.support_address, service.secret_keys, token)
