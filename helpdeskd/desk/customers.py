"""Customers from the add-on's records (``customers import F.csv``) and contact details.

An import takes what it can: every address is checked with email-validator (syntax only: no DNS,
no deliverability), a bad row is reported with its line and reason and left out, the good rows
are stored, and rows that name one address in different cases are merged into one customer.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk.notices import covers
from helpdeskd.desk.privacy import erased
from helpdeskd.errors import UserError
from helpdeskd.mail.parse import is_address
from helpdeskd.mail.tokens import ALL_CATEGORIES
from helpdeskd.store.models import Contact, OptOut

COLUMNS = ("email", "name", "plan", "app", "addon_id", "status")
STATUSES = ("active", "deprovisioned")
# The columns' sizes (store.models.Contact): a longer value is a bad row, not a failed import.
LIMITS = {"email": 320, "name": 200, "plan": 100, "app": 200, "addon_id": 200}
_CHUNK = 500  # addresses per SELECT or upsert: well under any database's parameter limit


@dataclass(frozen=True)
class CustomerRow:
    """One customer as the file gives it: its address checked and lower-cased."""

    line: int  # the line of its first row
    email: str
    name: str | None
    plan: str | None
    app: str | None
    addon_id: str | None
    status: str | None  # None: not given (active)

    def merged(self, later: CustomerRow) -> CustomerRow:
        """This row with the cells LATER fills in: a later value wins, an empty cell does not."""
        return CustomerRow(
            self.line,
            self.email,
            later.name or self.name,
            later.plan or self.plan,
            later.app or self.app,
            later.addon_id or self.addon_id,
            later.status or self.status,
        )


@dataclass(frozen=True)
class RowProblem:
    """A row of the file that was left out (bad) or merged into an earlier one."""

    line: int
    text: str


@dataclass(frozen=True)
class ImportReport:
    created: int
    updated: int
    bad: tuple[RowProblem, ...]  # rows left out, with the reason
    merged: tuple[RowProblem, ...]  # rows that repeat an earlier row's address

    @property
    def imported(self) -> int:
        return self.created + self.updated


def customer_address(text: str) -> str:
    """Return TEXT as the address a customer is stored under; raise ValueError with the reason.

    The syntax is checked by email-validator without DNS. ``.test`` domains pass (they are the
    documented examples); other special-use names (``.invalid``, ``.localhost``) do not. The
    domain is kept in the form it was written in (ASCII or not), and the whole address is
    lower-cased, as every contact is.
    """
    text = text.strip()
    if not text:
        raise ValueError("no address")
    try:
        checked = validate_email(text, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    written_domain = text.rpartition("@")[2]
    domain = checked.ascii_domain if written_domain.isascii() else checked.domain
    address = f"{checked.local_part}@{domain}".lower()
    if len(address) > LIMITS["email"]:
        raise ValueError(f"longer than {LIMITS['email']} characters")
    if not is_address(address):  # what our own mail's headers can carry
        raise ValueError("not an address helpdeskd can write into a mail header")
    return address


def parse_row(line: int, row: dict[str, str | None]) -> CustomerRow:
    """Check ROW, from line LINE of the file; raise ValueError with the reason."""
    shown = (row.get("email") or "").strip()
    try:
        email = customer_address(shown)
    except ValueError as exc:
        raise ValueError(f"{shown[:80]!r} is not a valid address: {exc}") from None
    cells: dict[str, str | None] = {}
    for key in ("name", "plan", "app", "addon_id"):
        value = (row.get(key) or "").strip()
        if len(value) > LIMITS[key]:
            raise ValueError(f"{email}: {key} is longer than {LIMITS[key]} characters")
        cells[key] = value or None
    status = (row.get("status") or "").strip().lower() or None
    if status is not None and status not in STATUSES:
        raise ValueError(f"{email}: status must be active or deprovisioned, not {status[:40]!r}")
    return CustomerRow(line, email, status=status, **cells)


def read_customers(
    path: Path,
) -> tuple[list[CustomerRow], list[RowProblem], list[RowProblem]]:
    """Read PATH: the good rows (duplicates merged, first line kept), the bad ones and the
    merged ones. Raise UserError when the file itself cannot be read."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    found: dict[str, CustomerRow] = {}
    bad: list[RowProblem] = []
    merged: list[RowProblem] = []
    with handle:
        reader = csv.DictReader(handle)
        try:
            fields = reader.fieldnames or []
            if "email" not in fields:
                raise UserError(f"{path}: the header line lacks the column 'email'")
            unknown = [c for c in fields if c not in COLUMNS]
            if unknown:
                raise UserError(
                    f"{path}: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})"
                )
            for row in reader:
                line = reader.line_num  # where the row ends: a quoted cell may span lines
                if None in row:  # more cells than the header has columns
                    bad.append(RowProblem(line, "more cells than the header line has columns"))
                    continue
                try:
                    customer = parse_row(line, row)
                except ValueError as exc:
                    bad.append(RowProblem(line, str(exc)))
                    continue
                first = found.get(customer.email)
                if first is None:
                    found[customer.email] = customer
                else:
                    found[customer.email] = first.merged(customer)
                    merged.append(
                        RowProblem(
                            line,
                            f"{customer.email} repeats line {first.line} (addresses are not "
                            "case-sensitive): merged into one customer",
                        )
                    )
        except csv.Error as exc:
            raise UserError(f"{path}: not CSV: {exc}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None
    return list(found.values()), bad, merged


def _chunks(items: Sequence[CustomerRow]) -> Iterable[Sequence[CustomerRow]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def store_customers(session: AsyncSession, rows: Sequence[CustomerRow]) -> tuple[int, int]:
    """Add or update ROWS in SESSION's transaction; return (created, updated).

    One upsert per chunk of rows, race-free against a daemon adding the same address at the
    same moment (from a mail). An existing contact keeps its name when the row has none; its
    plan, app and add-on id become the row's (empty clears them), as a re-import should.
    """
    existing = 0
    for chunk in _chunks(rows):
        existing += (
            await session.scalar(
                select(func.count(Contact.id)).where(Contact.email.in_([r.email for r in chunk]))
            )
            or 0
        )
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(Contact)
    stmt = stmt.on_conflict_do_update(
        index_elements=["email"],
        set_={
            "name": func.coalesce(stmt.excluded.name, Contact.name),
            "plan": stmt.excluded.plan,
            "app": stmt.excluded.app,
            "addon_id": stmt.excluded.addon_id,
            "status": stmt.excluded.status,
        },
    )
    for chunk in _chunks(rows):
        await session.execute(
            stmt,
            [
                {
                    "email": r.email,
                    "name": r.name,
                    "plan": r.plan,
                    "app": r.app,
                    "addon_id": r.addon_id,
                    "status": r.status or "active",
                    "undeliverable": False,
                    "bounce_count": 0,
                    "suppressed": False,
                }
                for r in chunk
            ],
        )
    return len(rows) - existing, existing


async def import_csv(session: AsyncSession, path: Path) -> ImportReport:
    """Add or update the customers of PATH in SESSION's transaction, leaving out bad rows."""
    rows, bad, merged = read_customers(path)
    # An address erased on request is never a customer again: no notice may reach it.
    gone = await erased(session, [r.email for r in rows])
    bad += [
        RowProblem(r.line, "an address erased on request: not imported")
        for r in rows
        if r.email in gone
    ]
    rows = [r for r in rows if r.email not in gone]
    created, updated = await store_customers(session, rows)
    return ImportReport(created, updated, tuple(bad), tuple(merged))


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
        elif covers(opted, name):
            every = opted[ALL_CATEGORIES]
            preferences[name] = (
                f"opted out ({every.via}, {every.created_at:%Y-%m-%d}, all optional notices)"
            )
        else:
            preferences[name] = "subscribed"
    return {**_row(contact), "preferences": preferences}
