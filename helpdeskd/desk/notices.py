"""Notices to customers: what one is, whom it reaches, their unsubscribe links and opt-outs.

Critical categories (maintenance, incident, overage, tos) reach every active customer but the
hard-bounced and the erased (helpdeskd.desk.privacy); optional ones (feature_update, survey)
skip whoever opted out or complained, and must carry a working unsubscribe link — a notice
whose rendered body lacks it is refused before anything is queued. An opt-out of
ALL_CATEGORIES covers every optional category, present and future. Suppression is checked again
when each mail is sent (recheck). A customer whose address no mail can carry (bad data from
before imports were checked) is a failed recipient with the reason: the others still get the
notice. Here are the audience (read a chunk at a time), who in it is suppressed and why, the
checked Plan and the NoticeReport; rendering and queueing the mail is helpdeskd.desk.noticequeue's.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from sqlalchemy import ColumnElement, Row, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk.noticemail import Kind, unsubscribe_links
from helpdeskd.desk.privacy import erased
from helpdeskd.errors import UserError
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import ALL_CATEGORIES
from helpdeskd.store.models import Base, Contact, Event, Notice, OptOut, Outbox, OutboxRecipient
from helpdeskd.store.valuelist import one_of, values

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
    return unsubscribe_links(config, contact_id, category)[0]


def unsubscribe_mailto(config: Config, contact_id: int, category: str) -> str:
    return unsubscribe_links(config, contact_id, category)[1]


def covers(opted: Collection[str], category: str) -> bool:
    """Whether a contact's opt-outs OPTED (category names, or ALL_CATEGORIES for every optional
    one) keep optional notices of CATEGORY from them."""
    return category in opted or ALL_CATEGORIES in opted


def opt_out_reason(opted: Collection[str], category: str) -> str:
    """Why opt-outs OPTED (which cover CATEGORY) skip a notice of CATEGORY."""
    return f"opted out of {category}" if category in opted else "opted out of all optional notices"


_CONTACTS = Base.metadata.tables[Contact.__tablename__]


def _audience_clauses(audience: Audience) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [_CONTACTS.c.status.is_not(None)]
    for key, value in audience.filters:
        clauses.append(_CONTACTS.c[key] == (value.lower() if key == "email" else value))
    return clauses


async def audience_size(session: AsyncSession, audience: Audience) -> int:
    """How many customers AUDIENCE names, suppressed ones included."""
    query = select(func.count()).select_from(_CONTACTS).where(*_audience_clauses(audience))
    return int(await session.scalar(query) or 0)


async def recipients(
    session: AsyncSession, audience: Audience, size: int
) -> AsyncGenerator[Sequence[Row[Any]], None]:
    """The customers of AUDIENCE in order of id, SIZE at a time, as plain rows (every column of
    ``contacts``, no ORM objects); each chunk is read after the last one was used (keyset
    pagination: the next chunk starts after the last id seen, so it costs the same at the end of
    a large audience as at the start)."""
    clauses = _audience_clauses(audience)
    after = 0
    while True:
        rows = (
            await session.execute(
                select(_CONTACTS)
                .where(*clauses, _CONTACTS.c.id > after)
                .order_by(_CONTACTS.c.id)
                .limit(size)
            )
        ).all()
        if not rows:
            return
        yield rows
        after = rows[-1].id


_OPT_OUTS = Base.metadata.tables[OptOut.__tablename__]
# Built once, bound per call: both run for every chunk a notice is queued in and every batch of
# it that is sent, where building the statement cost more than running it.
_OPTED = select(_OPT_OUTS.c.contact_id, _OPT_OUTS.c.category).where(
    one_of(_OPT_OUTS.c.category, values("categories", "text")),
    one_of(_OPT_OUTS.c.contact_id, values("ids", "int")),
)


class Facts(NamedTuple):
    """What decides whether a contact gets a notice, besides their opt-outs and erasure.

    suppressed() reads these by position, so a row of these columns in this order will do:
    a SQLAlchemy row's attributes cost ten times its items."""

    id: int
    email: str
    undeliverable: bool
    status: str | None
    suppressed: bool

    @classmethod
    def of(cls, contact: Contact | Row[Any]) -> Facts:
        return cls(
            contact.id, contact.email, contact.undeliverable, contact.status, contact.suppressed
        )


# Facts' columns, in Facts' order: a row of it is read as Facts.
_BY_EMAIL = select(*(_CONTACTS.c[name] for name in Facts._fields)).where(
    one_of(_CONTACTS.c.email, values("emails", "text"))
)


async def suppressed(
    session: AsyncSession,
    contacts: Sequence[Facts] | Sequence[Row[int, str, bool, str | None, bool]],
    category: str,
    critical: bool,
) -> dict[int, str]:
    """Return, by contact id, why each suppressed contact (CONTACTS: Facts) must not get this
    notice."""
    reasons: dict[int, str] = {}
    opted: dict[int, set[str]] = {}
    connection = await session.connection()
    if not critical and contacts:
        rows = await connection.execute(
            _OPTED,
            {"categories": [category, ALL_CATEGORIES], "ids": [c[0] for c in contacts]},
        )
        for contact_id, name in rows:
            opted.setdefault(contact_id, set()).add(name)
    gone = await erased(session, [c[1] for c in contacts])
    for contact_id, email, undeliverable, status, complained in contacts:
        if email in gone:
            reasons[contact_id] = "erased on request"
        elif undeliverable:
            reasons[contact_id] = "suspended for bouncing"
        elif status == "deprovisioned":
            reasons[contact_id] = "deprovisioned"
        elif not critical and complained:
            reasons[contact_id] = "complained (ARF)"
        elif contact_id in opted:
            reasons[contact_id] = opt_out_reason(opted[contact_id], category)
    return reasons


@dataclass(frozen=True)
class NoticeReport:
    notice_id: int | None
    recipients: int
    queued: int
    skipped: dict[str, int]
    subject: str
    failed: int = 0  # whose address no mail can carry (see noticequeue.Chunk.unaddressable)


@dataclass(frozen=True)
class Plan:
    """What a notice is: checked before any recipient is read."""

    category: str
    critical: bool
    template: str  # the file, notices/NAME.txt.j2
    audience: Audience

    @property
    def kind(self) -> Kind:
        """What the notice's mail takes of the plan (sent as it is to a renderer process)."""
        return Kind(self.category, self.critical, self.template)


def plan_notice(
    config: Config, renderer: Renderer, *, category: str, template: str, audience: Audience
) -> Plan:
    """Check CATEGORY and TEMPLATE, raising UserError for an unknown one."""
    notices = config.notices
    critical = notices.critical(category) if notices else None
    if notices is None or critical is None:
        known = ", ".join(name for name, _ in notices.categories) if notices else "none"
        raise UserError(f"no notice category {category!r} (configured: {known})")
    name = f"notices/{template}.txt.j2"
    if not renderer.exists(name):
        raise UserError(f"no notice template {name}")
    return Plan(category, critical, name, audience)


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


async def recheck(
    session: AsyncSession, category: str, critical: bool, addresses: Sequence[str]
) -> dict[str, str]:
    """At send time: which of ADDRESSES, recipients of a notice of CATEGORY (CRITICAL or not)
    not sent to yet, must be skipped now, with the reason."""
    connection = await session.connection()
    # Facts as plain rows, not ORM objects: this runs for every batch of a notice.
    found = await connection.execute(_BY_EMAIL, {"emails": list(addresses)})
    contacts = found.all()
    reasons = await suppressed(session, contacts, category, critical)
    skip = {
        email: reasons[contact_id] for contact_id, email, *_ in contacts if contact_id in reasons
    }
    # Erased while the notice was being rendered: the contact is gone, the hash is not
    # (suppressed() looked up those whose contact is still there).
    known = {c[1] for c in contacts}
    gone = await erased(session, [a for a in addresses if a not in known])
    skip.update(dict.fromkeys(gone, "erased on request"))
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
