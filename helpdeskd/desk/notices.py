"""Notices to customers: audience, suppression, per-recipient rendering, opt-out.

Critical categories (maintenance, incident, overage, tos) reach every active customer but the
hard-bounced and the erased (helpdeskd.desk.privacy); optional ones (feature_update, survey)
skip whoever opted out or complained, and must carry a working unsubscribe link — a notice
whose rendered body lacks it is refused before anything is queued. An opt-out of
ALL_CATEGORIES covers every optional category, present and future. Suppression is checked again
when each mail is sent. A customer whose address no mail can carry (bad data from before imports
were checked) is a failed recipient with the reason: the others still get the notice.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import Config
from helpdeskd.desk.privacy import erased
from helpdeskd.errors import UserError
from helpdeskd.mail.build import OutgoingMail, build_message, new_message_id
from helpdeskd.mail.parse import is_address
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import ALL_CATEGORIES, UnsubscribeToken, sign_unsubscribe
from helpdeskd.outbox import sender as outbox
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import Contact, Event, Notice, OptOut, Outbox, OutboxRecipient
from helpdeskd.triage.loops import automatic_headers

log = structlog.get_logger(__name__)

_FILTER = re.compile(r"^(plan|app|addon_id|email)=(.+)$")


@dataclass(frozen=True)
class Audience:
    """Which customers a notice goes to: all active ones, narrowed by plan, app or address."""

    filters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Audience:
        if not text or text.strip() == "all":
            return cls()
        filters = []
        for part in text.split(","):
            match = _FILTER.match(part.strip())
            if match is None:
                raise UserError(
                    f"--to: {part.strip()!r} is not 'all', plan=NAME, app=NAME, addon_id=ID "
                    "or email=ADDRESS (join several with commas)"
                )
            filters.append((match.group(1), match.group(2).strip()))
        return cls(tuple(filters))

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.filters) or "all"


def unsubscribe_url(config: Config, contact_id: int, category: str) -> str:
    token = sign_unsubscribe(config.service.secret_keys, UnsubscribeToken(contact_id, category))
    return f"{config.service.public_url}/unsubscribe/{token}"


def unsubscribe_mailto(config: Config, contact_id: int, category: str) -> str:
    token = sign_unsubscribe(config.service.secret_keys, UnsubscribeToken(contact_id, category))
    return f"unsubscribe+{token}@{config.service.support_domain}"


def preferences_url(config: Config, contact_id: int) -> str:
    token = sign_unsubscribe(
        config.service.secret_keys, UnsubscribeToken(contact_id, ALL_CATEGORIES)
    )
    return f"{config.service.public_url}/preferences/{token}"


def covers(opted: Collection[str], category: str) -> bool:
    """Whether a contact's opt-outs OPTED (category names, or ALL_CATEGORIES for every optional
    one) keep optional notices of CATEGORY from them."""
    return category in opted or ALL_CATEGORIES in opted


def opt_out_reason(opted: Collection[str], category: str) -> str:
    """Why opt-outs OPTED (which cover CATEGORY) skip a notice of CATEGORY."""
    return f"opted out of {category}" if category in opted else "opted out of all optional notices"


async def recipients(session: AsyncSession, audience: Audience) -> list[Contact]:
    query = select(Contact).where(Contact.status.is_not(None)).order_by(Contact.id)
    for key, value in audience.filters:
        column = getattr(Contact, key)
        query = query.where(column == (value.lower() if key == "email" else value))
    return list(await session.scalars(query))


async def suppressed(
    session: AsyncSession, contacts: Sequence[Contact], category: str, critical: bool
) -> dict[int, str]:
    """Return, by contact id, why each suppressed contact must not get this notice."""
    reasons: dict[int, str] = {}
    opted: dict[int, set[str]] = {}
    if not critical and contacts:
        rows = await session.execute(
            select(OptOut.contact_id, OptOut.category).where(
                OptOut.category.in_((category, ALL_CATEGORIES)),
                OptOut.contact_id.in_([c.id for c in contacts]),
            )
        )
        for contact_id, name in rows:
            opted.setdefault(contact_id, set()).add(name)
    gone = await erased(session, [c.email for c in contacts])
    for contact in contacts:
        if contact.email in gone:
            reasons[contact.id] = "erased on request"
        elif contact.undeliverable:
            reasons[contact.id] = "hard-bounced"
        elif contact.status == "deprovisioned":
            reasons[contact.id] = "deprovisioned"
        elif not critical and contact.suppressed:
            reasons[contact.id] = "complained (ARF)"
        elif contact.id in opted:
            reasons[contact.id] = opt_out_reason(opted[contact.id], category)
    return reasons


@dataclass(frozen=True)
class NoticeReport:
    notice_id: int | None
    recipients: int
    queued: int
    skipped: dict[str, int]
    subject: str
    failed: int = 0  # recipients whose address no mail can carry (see Rendered.unaddressable)


def _context(
    config: Config, contact: Contact, category: str, critical: bool, extra: Mapping[str, Any]
) -> dict[str, Any]:
    service = config.service
    notices = config.notices
    return {
        **extra,
        "service": {
            "name": service.name,
            "support_address": service.support_address,
            "public_url": service.public_url,
        },
        "category": category,
        "critical": critical,
        "recipient": {
            "email": contact.email,
            "name": contact.name or "",
            "plan": contact.plan,
            "app": contact.app,
        },
        "unsubscribe_url": "" if critical else unsubscribe_url(config, contact.id, category),
        "unsubscribe_mailto": "" if critical else unsubscribe_mailto(config, contact.id, category),
        "preferences_url": preferences_url(config, contact.id),
        "postal_address": notices.postal_address if notices else "",
    }


@dataclass(frozen=True)
class Plan:
    """Who a notice goes to: everything rendering needs, read in one short transaction."""

    category: str
    critical: bool
    template: str  # the file, notices/NAME.txt.j2
    contacts: tuple[Contact, ...]
    reasons: Mapping[int, str]  # suppressed contacts by id, with the reason


async def plan_notice(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    *,
    category: str,
    template: str,
    audience: Audience,
) -> Plan:
    notices = config.notices
    critical = notices.critical(category) if notices else None
    if notices is None or critical is None:
        known = ", ".join(name for name, _ in notices.categories) if notices else "none"
        raise UserError(f"no notice category {category!r} (configured: {known})")
    name = f"notices/{template}.txt.j2"
    if not renderer.exists(name):
        raise UserError(f"no notice template {name}")
    contacts = await recipients(session, audience)
    reasons = await suppressed(session, contacts, category, critical)
    return Plan(category, critical, name, tuple(contacts), reasons)


@dataclass(frozen=True)
class Rendered:
    mails: tuple[tuple[str, bytes, str], ...]  # (address, message, Message-ID)
    subject: str
    unaddressable: tuple[str, ...] = ()  # contacts' addresses no mail can be written to


def render_notice(
    config: Config,
    renderer: Renderer,
    plan: Plan,
    *,
    send_at: datetime,
    extra: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Rendered:
    """Render the notice for every recipient of PLAN (no database: no lock held meanwhile).

    Raises UserError for an optional notice whose text lacks the recipient's unsubscribe link.
    """
    notices = config.notices
    assert notices is not None
    service = config.service
    category, critical = plan.category, plan.critical
    mails: list[tuple[str, bytes, str]] = []
    unaddressable: list[str] = []
    subject = ""
    total = len(plan.contacts)
    for done, contact in enumerate(plan.contacts, 1):
        if progress is not None:
            progress(done, total)
        if contact.id in plan.reasons:
            continue
        if not is_address(contact.email):
            # Stored before imports were checked: one such contact must not stop the notice
            # (a critical one least of all) for everybody else.
            unaddressable.append(contact.email)
            continue
        context = _context(config, contact, category, critical, extra or {})
        rendered = renderer.render(plan.template, context)
        if not critical and context["unsubscribe_url"] not in rendered.text:
            raise UserError(
                f"{plan.template}: an optional ({category}) notice must contain the unsubscribe "
                "link {{ unsubscribe_url }} and instructions; nothing was queued"
            )
        subject = subject or rendered.subject
        headers = dict(automatic_headers(service.support_address, "auto-generated"))
        list_id = f"{category.replace('_', '-')}.notices.{service.support_domain}"
        headers["List-Id"] = f"{service.name} {category} notices <{list_id}>"
        if not critical:
            headers["List-Unsubscribe"] = (
                f"<{context['unsubscribe_url']}>, <mailto:{context['unsubscribe_mailto']}>"
            )
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message_id = new_message_id(service.support_domain)
        data = build_message(
            OutgoingMail(
                from_addr=notices.from_address,
                from_name=service.name,
                to=(contact.email,),
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                message_id=message_id,
                date=send_at,
                reply_to=service.support_address,
                extra_headers=headers,
            )
        )
        mails.append((contact.email, data, message_id))
    return Rendered(tuple(mails), subject, tuple(unaddressable))


def _would_queue(plan: Plan, rendered: Rendered) -> NoticeReport:
    """The report of a dry run: what would be queued, nothing stored."""
    return NoticeReport(
        None,
        len(plan.contacts),
        len(rendered.mails),
        _skipped(plan),
        rendered.subject,
        len(rendered.unaddressable),
    )


def _skipped(plan: Plan) -> dict[str, int]:
    skipped: dict[str, int] = {}
    for reason in plan.reasons.values():
        key = reason.split(" of ")[0]
        skipped[key] = skipped.get(key, 0) + 1
    return skipped


async def store_notice(
    session: AsyncSession,
    config: Config,
    plan: Plan,
    rendered: Rendered,
    *,
    audience: Audience,
    now: datetime,
    send_at: datetime,
    expires_at: datetime | None,
) -> NoticeReport:
    """Queue the rendered mails at NOW in SESSION's transaction, from SEND_AT on, spaced by
    the configured rate."""
    notices = config.notices
    assert notices is not None
    notice = Notice(
        category=plan.category,
        template=plan.template.removeprefix("notices/").removesuffix(".txt.j2"),
        audience=str(audience),
        critical=plan.critical,
        subject=rendered.subject,
        send_at=send_at,
        expires_at=expires_at,
        skipped=len(plan.reasons),
        created_at=now,
    )
    session.add(notice)
    await session.flush()
    for index, (address, data, message_id) in enumerate(rendered.mails):
        row = outbox.enqueue(
            session,
            kind="notice",
            message_id=message_id,
            envelope_from=notices.from_address,
            recipients=[address],
            data=data,
            expires_at=expires_at,
            # The configured rate spreads a large notice over time; the sender keeps order.
            not_before=send_at + timedelta(seconds=index / notices.rate),
        )
        row.notice_id = notice.id
    for address in rendered.unaddressable:
        row = outbox.enqueue_failed(
            session,
            kind="notice",
            message_id=new_message_id(config.service.support_domain),
            envelope_from=notices.from_address,
            address=address,
            reason=outbox.UNADDRESSABLE,
            now=now,
        )
        row.notice_id = notice.id
    session.add(
        Event(
            ticket_id=None,
            type="notice_queued",
            actor="cli",
            detail={
                "notice": notice.id,
                "category": plan.category,
                "queued": len(rendered.mails),
                "failed": len(rendered.unaddressable),
            },
            created_at=now,
        )
    )
    log.info(
        "notice_queued",
        notice=notice.id,
        category=plan.category,
        queued=len(rendered.mails),
        failed=len(rendered.unaddressable),
    )
    return NoticeReport(
        notice.id,
        len(plan.contacts),
        len(rendered.mails),
        _skipped(plan),
        rendered.subject,
        len(rendered.unaddressable),
    )


async def queue_notice(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    *,
    category: str,
    template: str,
    audience: Audience,
    now: datetime,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> NoticeReport:
    """Plan, render and queue a notice at NOW in SESSION's transaction, sent from SEND_AT
    (default NOW) on (see send_notice for a large one sent on its own: it keeps the database
    free while rendering)."""
    send_at = send_at or now
    plan = await plan_notice(
        session, config, renderer, category=category, template=template, audience=audience
    )
    rendered = render_notice(
        config, renderer, plan, send_at=send_at, extra=extra, progress=progress
    )
    if dry_run:
        return _would_queue(plan, rendered)
    return await store_notice(
        session,
        config,
        plan,
        rendered,
        audience=audience,
        now=now,
        send_at=send_at,
        expires_at=expires_at,
    )


async def send_notice(
    sessions: SessionMaker,
    config: Config,
    renderer: Renderer,
    *,
    category: str,
    template: str,
    audience: Audience,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    clock: Clock = system_clock,
) -> NoticeReport:
    """Like queue_notice, in three steps so that no transaction is open while rendering: a
    running daemon keeps storing mail while ten thousand notices are rendered."""
    now = clock()
    send_at = send_at or now
    async with sessions() as session, session.begin():
        plan = await plan_notice(
            session, config, renderer, category=category, template=template, audience=audience
        )
    rendered = await asyncio.to_thread(
        render_notice, config, renderer, plan, send_at=send_at, extra=extra, progress=progress
    )
    if dry_run:
        return _would_queue(plan, rendered)
    async with sessions() as session, session.begin():
        return await store_notice(
            session,
            config,
            plan,
            rendered,
            audience=audience,
            now=now,
            send_at=send_at,
            expires_at=expires_at,
        )


async def opt_out(
    session: AsyncSession,
    contact: Contact,
    category: str,
    via: str,
    *,
    now: datetime | None = None,
) -> bool:
    """Opt CONTACT out of CATEGORY (every optional one for ALL_CATEGORIES) at NOW; True if new.

    Without NOW the columns' defaults stamp the rows.
    """
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stamp = {} if now is None else {"created_at": now}
    result = await session.execute(
        insert(OptOut)
        .values(contact_id=contact.id, category=category, via=via, **stamp)
        .on_conflict_do_nothing(index_elements=["contact_id", "category"])
    )
    created = bool(getattr(result, "rowcount", 0))
    if created:
        session.add(
            Event(
                ticket_id=None,
                type="opted_out",
                actor=contact.email,
                detail={"category": category, "via": via},
                **stamp,
            )
        )
        log.info("opted_out", contact=contact.email, category=category, via=via)
    return created


async def opt_in(
    session: AsyncSession, contact: Contact, category: str, via: str, *, now: datetime
) -> bool:
    """Opt CONTACT back in to CATEGORY at NOW; True if it had opted out."""
    row = await session.scalar(
        select(OptOut).where(OptOut.contact_id == contact.id, OptOut.category == category)
    )
    if row is None:
        return False
    await session.delete(row)
    session.add(
        Event(
            ticket_id=None,
            type="opted_in",
            actor=contact.email,
            detail={"category": category, "via": via},
            created_at=now,
        )
    )
    return True


async def recheck(session: AsyncSession, row: Outbox) -> dict[str, str]:
    """At send time: the recipients of notice ROW who must be skipped now, with the reason."""
    if row.notice_id is None:
        return {}
    notice = await session.get(Notice, row.notice_id)
    if notice is None:
        return {}
    addresses = [r.address for r in row.recipients if r.state == "pending"]
    contacts = list(await session.scalars(select(Contact).where(Contact.email.in_(addresses))))
    reasons = await suppressed(session, contacts, notice.category, notice.critical)
    skip = {c.email: reasons[c.id] for c in contacts if c.id in reasons}
    # Erased while the notice was being rendered: the contact is gone, the hash is not.
    skip.update(dict.fromkeys(await erased(session, addresses), "erased on request"))
    return skip


async def notice_rows(session: AsyncSession, notice_id: int | None = None) -> list[dict[str, Any]]:
    """Notices with their delivery counts: queued, sent, failed, skipped and expired."""
    query = select(Notice).order_by(Notice.id)
    if notice_id is not None:
        query = query.where(Notice.id == notice_id)
    rows = []
    for notice in await session.scalars(query):
        counts = dict.fromkeys(("queued", "sent", "failed", "skipped", "expired"), 0)
        states = await session.execute(
            select(OutboxRecipient.state, func.count(OutboxRecipient.id))
            .join(Outbox, Outbox.id == OutboxRecipient.outbox_id)
            .where(Outbox.notice_id == notice.id)
            .group_by(OutboxRecipient.state)
        )
        for state, count in states:
            counts["queued" if state == "pending" else state] = count
        counts["skipped"] += notice.skipped
        rows.append(
            {
                "id": notice.id,
                "category": notice.category,
                "critical": notice.critical,
                "template": notice.template,
                "audience": notice.audience,
                "subject": notice.subject,
                "send_at": notice.send_at.isoformat(),
                "expires_at": notice.expires_at.isoformat() if notice.expires_at else None,
                "created_at": notice.created_at.isoformat(),
                **counts,
            }
        )
    return rows
