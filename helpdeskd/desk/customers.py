"""Customers from the add-on's records (``customers import F.csv``) and contact details."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.errors import UserError
from helpdeskd.store.models import Contact, OptOut

COLUMNS = ("email", "name", "plan", "app", "addon_id", "status")
STATUSES = ("active", "deprovisioned")


async def import_csv(session: AsyncSession, path: Path) -> tuple[int, int]:
    """Add or update customers from PATH; return (created, updated). All or nothing."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("email",) if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: the header line lacks the column {missing[0]!r}")
        unknown = [c for c in reader.fieldnames or [] if c not in COLUMNS]
        if unknown:
            raise UserError(f"{path}: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
        rows = []
        for number, row in enumerate(reader, 2):
            email = (row.get("email") or "").strip().lower()
            if "@" not in email or " " in email:
                raise UserError(f"{path}:{number}: {email!r} is not an email address")
            status = (row.get("status") or "active").strip().lower()
            if status not in STATUSES:
                raise UserError(f"{path}:{number}: status must be active or deprovisioned")
            rows.append((email, row, status))
    created = updated = 0
    for email, row, status in rows:
        contact = await session.scalar(select(Contact).where(Contact.email == email))
        if contact is None:
            contact = Contact(email=email, undeliverable=False, bounce_count=0, suppressed=False)
            session.add(contact)
            created += 1
        else:
            updated += 1
        contact.status = status
        for key in ("name", "plan", "app", "addon_id"):
            value = (row.get(key) or "").strip()
            if value or key != "name":
                setattr(contact, key, value or None)
    return created, updated


def _row(contact: Contact) -> dict[str, Any]:
    return {
        "email": contact.email,
        "name": contact.name,
        "status": contact.status,
        "plan": contact.plan,
        "app": contact.app,
        "addon_id": contact.addon_id,
        "undeliverable": contact.undeliverable,
        "suppressed": contact.suppressed,
    }


async def customer_rows(session: AsyncSession) -> list[dict[str, Any]]:
    query = select(Contact).where(Contact.status.is_not(None)).order_by(Contact.email)
    return [_row(c) for c in await session.scalars(query)]


async def contact_detail(
    session: AsyncSession, config: Config, email: str
) -> dict[str, Any] | None:
    contact = await session.scalar(select(Contact).where(Contact.email == email.lower()))
    if contact is None:
        return None
    opted = {
        o.category: o
        for o in await session.scalars(select(OptOut).where(OptOut.contact_id == contact.id))
    }
    preferences = {}
    for name, critical in config.notices.categories if config.notices else ():
        if critical:
            preferences[name] = "always (critical)"
        elif name in opted:
            preferences[name] = f"opted out ({opted[name].via}, {opted[name].created_at:%Y-%m-%d})"
        else:
            preferences[name] = "subscribed"
    return {**_row(contact), "preferences": preferences}
