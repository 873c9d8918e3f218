"""A notice's mail for one recipient: rendered, with its unsubscribe links, and built.

The processes that render a large notice (helpdeskd.desk.noticequeue) import this module and
what it imports only: templates, tokens and the building of mail, no database layer (0.19 s
of imports, where the notice module with SQLAlchemy and the models takes 0.7 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from helpdeskd.config.settings import Config
from helpdeskd.errors import TemplateError, UserError
from helpdeskd.mail.build import OutgoingMail, build_message, new_message_id
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import ALL_CATEGORIES, UnsubscribeToken, sign_unsubscribe
from helpdeskd.triage.loops import automatic_headers


class Kind(NamedTuple):
    """What a notice's mail takes of its plan (helpdeskd.desk.notices.Plan)."""

    category: str
    critical: bool
    template: str  # the file, notices/NAME.txt.j2


class Addressee(Protocol):
    """What a notice's mail reads of a contact (a Contact, a row, a Recipient)."""

    @property
    def id(self) -> int: ...
    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def plan(self) -> str | None: ...
    @property
    def app(self) -> str | None: ...


def unsubscribe_links(config: Config, contact_id: int, category: str) -> tuple[str, str]:
    """The unsubscribe URL and mailto: address of CONTACT_ID for CATEGORY (one token signed)."""
    token = sign_unsubscribe(config.service.secret_keys, UnsubscribeToken(contact_id, category))
    return (
        f"{config.service.public_url}/unsubscribe/{token}",
        f"unsubscribe+{token}@{config.service.support_domain}",
    )


def preferences_url(config: Config, contact_id: int) -> str:
    token = sign_unsubscribe(
        config.service.secret_keys, UnsubscribeToken(contact_id, ALL_CATEGORIES)
    )
    return f"{config.service.public_url}/preferences/{token}"


class NoticeWriter:
    """Write a notice's mail for one recipient at a time; what is the same for every recipient
    (the service, the extra variables, the List-* and automatic headers) is worked out once."""

    def __init__(
        self,
        config: Config,
        renderer: Renderer,
        kind: Kind,
        *,
        send_at: datetime,
        extra: Mapping[str, Any],
    ) -> None:
        notices = config.notices
        assert notices is not None
        service = config.service
        self.config, self.renderer, self.kind, self.send_at = config, renderer, kind, send_at
        self.from_address = notices.from_address
        self.context = {
            **extra,
            "service": {
                "name": service.name,
                "support_address": service.support_address,
                "public_url": service.public_url,
            },
            "category": kind.category,
            "critical": kind.critical,
            "postal_address": notices.postal_address,
        }
        headers = dict(automatic_headers(service.support_address, "auto-generated"))
        list_id = f"{kind.category.replace('_', '-')}.notices.{service.support_domain}"
        headers["List-Id"] = f"{service.name} {kind.category} notices <{list_id}>"
        self.headers = headers

    def mail(self, contact: Addressee) -> Written:
        """Return (address, Message-ID, message, subject) of CONTACT's mail.

        Raises UserError for an optional notice whose text lacks the recipient's unsubscribe
        link, and TemplateError (naming the recipient) for a template that fails for them.
        """
        config, kind = self.config, self.kind
        service = config.service
        if kind.critical:
            url = mailto = ""
        else:
            url, mailto = unsubscribe_links(config, contact.id, kind.category)
        context = {
            **self.context,
            "recipient": {
                "email": contact.email,
                "name": contact.name or "",
                "plan": contact.plan,
                "app": contact.app,
            },
            "unsubscribe_url": url,
            "unsubscribe_mailto": mailto,
            "preferences_url": preferences_url(config, contact.id),
        }
        try:
            rendered = self.renderer.render(kind.template, context)
        except TemplateError as exc:
            raise TemplateError(f"{exc} (for {contact.email!r}); nothing was queued") from None
        if not kind.critical and url not in rendered.text:
            raise UserError(
                f"{kind.template}: an optional ({kind.category}) notice must contain the "
                "unsubscribe link {{ unsubscribe_url }} and instructions; nothing was queued"
            )
        headers = self.headers
        if not kind.critical:
            headers = {
                **headers,
                "List-Unsubscribe": f"<{url}>, <mailto:{mailto}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        message_id = new_message_id(service.support_domain)
        data = build_message(
            OutgoingMail(
                from_addr=self.from_address,
                from_name=service.name,
                to=(contact.email,),
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=message_id,
                date=self.send_at,
                reply_to=service.support_address,
                extra_headers=headers,
            )
        )
        return contact.email, message_id, data, rendered.subject


Written = tuple[str, str, bytes, str]  # a recipient's mail: (address, Message-ID, data, subject)


class Recipient(NamedTuple):
    """What a notice's mail reads of a contact: sent to a renderer process as it is."""

    id: int
    email: str
    name: str | None
    plan: str | None
    app: str | None


_worker_writer: NoticeWriter | None = None  # in a renderer process: the notice it writes


def start_renderer(
    config: Config,
    templates: Path | None,
    kind: Kind,
    send_at: datetime,
    extra: Mapping[str, Any],
) -> None:
    """In a renderer process: set up the notice's writer once (its templates loaded here)."""
    global _worker_writer
    _worker_writer = NoticeWriter(config, Renderer(templates), kind, send_at=send_at, extra=extra)


def render(recipients: list[Recipient]) -> list[Written]:
    """In a renderer process: the mail of RECIPIENTS (see NoticeWriter.mail)."""
    assert _worker_writer is not None
    return [_worker_writer.mail(recipient) for recipient in recipients]
