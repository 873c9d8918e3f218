"""Customers from the add-on's records (``customers import F.csv``) and contact details.

An import takes what it can: every address is checked with email-validator (syntax only: no DNS,
no deliverability; a domain met before is not checked again, see _plain_parts), a bad row is
reported with its line and reason and left out, the good rows are stored, and rows that name one
address in different cases are merged into one customer. An address erased on request is left
out (``helpdeskd.desk.privacy.erased``); an existing contact keeps what the import does not own
(suppression, bounces, undeliverable).

An import streams: the file is read ``CHUNK`` rows at a time and memory does not grow with it.
Each chunk costs the same few statements whatever its size, none per row: the erased-address
check, one INSERT ... RETURNING into a temporary table of the addresses met so far (which gives
each address's first line, so that a repeat far down the file is still merged into its first
row), one SELECT counting the contacts that exist (created or updated), and one multi-row
``INSERT ... ON CONFLICT DO UPDATE`` (a second one only for repeats of earlier chunks). The
whole import is one transaction, the caller's: a file found broken half-way stores nothing.
"""

from __future__ import annotations

import csv
import functools
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk.notices import covers
from helpdeskd.desk.privacy import erased, postgres
from helpdeskd.errors import UserError
from helpdeskd.mail.parse import is_address
from helpdeskd.mail.tokens import ALL_CATEGORIES
from helpdeskd.store.models import Contact, OptOut, utcnow

COLUMNS = ("email", "name", "plan", "app", "addon_id", "status")
STATUSES = ("active", "deprovisioned")
# The columns' sizes (store.models.Contact): a longer value is a bad row, not a failed import.
LIMITS = {"email": 320, "name": 200, "plan": 100, "app": 200, "addon_id": 200}
# Rows per chunk. An upsert of a chunk binds 10 values a row: 5,000 is well under SQLite's
# (32,766 since 3.32) and PostgreSQL's (32,767) limits on parameters.
CHUNK = 500

# The addresses this import has met so far, with the line of the first row of each: private
# to the import's connection (PostgreSQL drops it at COMMIT or ROLLBACK; on SQLite a rollback
# undoes its creation, and import_csv drops it at the end).
_SEEN = Table(
    "helpdeskd_import_seen",
    MetaData(),
    Column("email", String(320), primary_key=True),
    Column("line", Integer, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)

Advance = Callable[[int], None]
ProblemSink = Callable[["RowProblem"], None]


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
    """A row of the file that was left out (bad) or, not LEFT_OUT, merged into an earlier one."""

    line: int
    text: str
    left_out: bool = True


@dataclass(frozen=True)
class ImportReport:
    """What an import did. The problems themselves are in BAD and MERGED unless import_csv
    handed them to its ``problems`` callback as they came (then only counted here)."""

    created: int
    updated: int
    bad_rows: int  # rows left out: bad, or an erased address
    merged_rows: int  # rows that repeat an earlier row's address
    bad: tuple[RowProblem, ...] = ()
    merged: tuple[RowProblem, ...] = ()

    @property
    def imported(self) -> int:
        return self.created + self.updated


# An address in its plain form: a local part of ASCII atext in dot-separated runs (RFC 5322
# dot-atom), one @-sign, an ASCII host name. email-validator splits it at that @-sign, takes
# such a local part as it is (RFC 2142 names like Info lower-cased, as we lower-case all) and
# judges the domain whatever the local part is; only the whole address's length joins them.
_PLAIN = re.compile(
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@([A-Za-z0-9.-]+)"
)
_EMAIL_MAX_LENGTH = 254  # email-validator's limit on the whole address, in UTF-8 bytes


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
    local, domain = _plain_parts(text) or _validated_parts(text)
    address = f"{local}@{domain}".lower()
    if len(address) > LIMITS["email"]:
        raise ValueError(f"longer than {LIMITS['email']} characters")
    if not is_address(address):  # what our own mail's headers can carry
        raise ValueError("not an address helpdeskd can write into a mail header")
    return address


def _validated_parts(text: str) -> tuple[str, str]:
    """The local part and domain of TEXT as email-validator gives them, the domain in the form
    it was written in; raise ValueError with email-validator's reason."""
    try:
        checked = validate_email(text, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    written_domain = text.rpartition("@")[2]
    return checked.local_part, checked.ascii_domain if written_domain.isascii() else checked.domain


def _plain_parts(text: str) -> tuple[str, str] | None:
    """What _validated_parts gives for TEXT, without validating it whole, where TEXT is a plain
    address (_PLAIN) on a good domain and clear of the length limit; else None.

    An import meets the same few domains over and over, and their checks (IDNA, per character)
    cost most of validate_email's time. Whatever this cannot vouch for (a quoted or
    internationalised part, a bad domain, a length near the limit) takes the whole validation,
    which gives the reason.
    """
    plain = _PLAIN.fullmatch(text)
    if plain is None:
        return None
    local, written_domain = plain.groups()
    domain = _checked_domain(written_domain)
    if domain is None or len(local) + 1 + domain.widest > _EMAIL_MAX_LENGTH:
        return None
    return local, domain.ascii


@dataclass(frozen=True)
class _Domain:
    """A domain email-validator accepts: its ASCII form, and the most UTF-8 bytes it takes in
    any of the forms of an address whose length email-validator checks (as written, Unicode,
    ASCII: an ``xn--`` label may be longer in Unicode)."""

    ascii: str
    widest: int


@functools.lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> _Domain | None:
    """DOMAIN as checked on a one-letter local part (which email-validator takes as it is);
    None if that address is refused, for whatever reason: the row's own validation says why."""
    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False, test_environment=True)
    except EmailNotValidError:
        return None
    forms = (domain, checked.domain, checked.ascii_domain)
    return _Domain(checked.ascii_domain, max(len(form.encode()) for form in forms))


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


def _open(path: Path) -> Any:
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


def read_rows(path: Path) -> Iterator[CustomerRow | RowProblem]:
    """Yield each row of PATH in file order, checked: a CustomerRow, or the RowProblem that
    leaves it out. Raise UserError when the file itself cannot be read (at once for its header,
    or where the damage is: the rows before it have been yielded)."""
    with _open(path) as handle:
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
                    yield RowProblem(line, "more cells than the header line has columns")
                    continue
                try:
                    yield parse_row(line, row)
                except ValueError as exc:
                    yield RowProblem(line, str(exc))
        except csv.Error as exc:
            # The csv reader's count: DictReader's own is that of the last row it returned.
            raise UserError(f"{path}: not CSV: {exc} (line {reader.reader.line_num})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text") from None


def count_rows(path: Path) -> int | None:
    """How many rows PATH has under its header, for a progress bar; None when that cannot be
    known cheaply (not a regular file, which cannot be read twice) or the file is broken (the
    import says how)."""
    if not path.is_file():
        return None
    try:
        with _open(path) as handle:
            records = sum(1 for record in csv.reader(handle) if record)
    except (UserError, OSError, csv.Error, UnicodeDecodeError):
        return None
    return max(records - 1, 0)


def _chunks(rows: Iterable[CustomerRow | RowProblem]) -> Iterator[list[CustomerRow | RowProblem]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, CHUNK)):
        yield chunk


def _keep_name(excluded: Any) -> dict[str, ColumnElement[Any]]:
    """A customer's first rows in the file: their cells are the customer's now. No name keeps
    the name known (from their mail, say); an empty plan, app or add-on id clears it."""
    return {
        "name": func.coalesce(excluded.name, Contact.name),
        "plan": excluded.plan,
        "app": excluded.app,
        "addon_id": excluded.addon_id,
        "status": excluded.status,
    }


def _fill_in(excluded: Any) -> dict[str, ColumnElement[Any]]:
    """Rows repeating an address that an earlier chunk stored: they fill in what they give,
    as CustomerRow.merged does within a chunk."""
    return {
        key: func.coalesce(getattr(excluded, key), getattr(Contact, key))
        for key in ("name", "plan", "app", "addon_id", "status")
    }


def _repeats(rows: list[CustomerRow], first_line: int) -> list[RowProblem]:
    return [
        RowProblem(
            row.line,
            f"{row.email} repeats line {first_line} (addresses are not case-sensitive): "
            "merged into one customer",
            left_out=False,
        )
        for row in rows
    ]


class _Import:
    """One import in SESSION's transaction, fed chunk by chunk."""

    def __init__(self, session: AsyncSession, problems: ProblemSink | None) -> None:
        self.session = session
        self.pg = postgres(session)
        self.insert: Any = pg_insert if self.pg else sqlite_insert
        self.problems = problems
        self.kept: list[RowProblem] = []  # when no callback takes them
        self.created = self.updated = self.bad_rows = self.merged_rows = 0
        self.now = utcnow()

    async def begin(self) -> None:
        connection = await self.session.connection()
        if self.pg:
            # A generic plan, made on the first chunks while the table was small, would scan
            # it for every chunk once it is large; a plan per statement keeps to the index.
            await connection.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        else:
            await connection.execute(text("DROP TABLE IF EXISTS temp.helpdeskd_import_seen"))
        await connection.run_sync(_SEEN.create)

    async def end(self) -> None:
        await (await self.session.connection()).run_sync(_SEEN.drop)

    async def chunk(self, items: list[CustomerRow | RowProblem]) -> None:
        """Store the good rows of ITEMS, merging repeats, and report the rest in line order."""
        problems = [item for item in items if isinstance(item, RowProblem)]
        by_address: dict[str, list[CustomerRow]] = {}
        for item in items:
            if isinstance(item, CustomerRow):
                by_address.setdefault(item.email, []).append(item)
        if by_address:
            # An address erased on request is never a customer again: no notice may reach it.
            gone = await erased(self.session, by_address)
            first_lines = await self._meet(by_address)
            new: list[CustomerRow] = []  # the customers this chunk is the first to give
            again: list[CustomerRow] = []  # those an earlier chunk gave: filled in
            for email, rows in by_address.items():
                customer = functools.reduce(CustomerRow.merged, rows)
                first_line = first_lines[email]
                if first_line == rows[0].line:
                    problems += _repeats(rows[1:], first_line)
                    if email in gone:
                        problems.append(
                            RowProblem(first_line, "an address erased on request: not imported")
                        )
                    else:
                        new.append(customer)
                else:
                    problems += _repeats(rows, first_line)
                    if email not in gone:
                        again.append(customer)
            if new:
                existing = await self._existing([row.email for row in new])
                self.created += len(new) - existing
                self.updated += existing
                await self._upsert(new, fill_in=False)
            if again:
                await self._upsert(again, fill_in=True)
        for problem in sorted(problems, key=lambda p: p.line):
            self._report(problem)

    async def _meet(self, by_address: dict[str, list[CustomerRow]]) -> dict[str, int]:
        """Record this chunk's addresses as met; return the first line of each in the file
        (of an earlier chunk if one had it, else of this one), in one statement."""
        stmt = self.insert(_SEEN)
        # Setting the line to itself on a conflict makes RETURNING give the row kept.
        stmt = stmt.on_conflict_do_update(index_elements=["email"], set_={"line": _SEEN.c.line})
        connection = await self.session.connection()
        result = await connection.execute(
            stmt.returning(_SEEN.c.email, _SEEN.c.line),
            [{"email": email, "line": rows[0].line} for email, rows in by_address.items()],
        )
        return {email: line for email, line in result}

    async def _existing(self, emails: list[str]) -> int:
        """How many of EMAILS are contacts already, in one SELECT. On PostgreSQL as IN (SELECT
        unnest(array)), which it looks up address by address in the index; with a list of
        literals it scans a table that has no statistics yet (as one this import fills) for
        every chunk."""
        if self.pg:
            among = Contact.email.in_(select(func.unnest(literal(emails, ARRAY(String)))))
        else:
            among = Contact.email.in_(emails)
        return await self.session.scalar(select(func.count()).where(among)) or 0

    async def _upsert(self, rows: list[CustomerRow], *, fill_in: bool) -> None:
        """Add or update ROWS in one multi-row INSERT ... ON CONFLICT DO UPDATE: race-free
        against a daemon adding the same address from a mail at the same moment. FILL_IN: the
        rows repeat customers an earlier chunk stored (an empty cell, status too, keeps)."""
        stmt = self.insert(Contact)
        update = _fill_in(stmt.excluded) if fill_in else _keep_name(stmt.excluded)
        stmt = stmt.on_conflict_do_update(index_elements=["email"], set_=update)
        # Given a list of rows and RETURNING, SQLAlchemy sends them as multi-row VALUES (up to
        # 1,000 rows a statement: "insertmanyvalues") compiled once; .values(rows) would be
        # compiled afresh for every chunk, and without RETURNING it would be an executemany.
        # Core, not the ORM: rows to an ORM insert would make it an ORM bulk insert.
        connection = await self.session.connection()
        await connection.execute(
            stmt.returning(Contact.id),
            [
                {
                    "email": r.email,
                    "name": r.name,
                    "plan": r.plan,
                    "app": r.app,
                    "addon_id": r.addon_id,
                    "status": r.status if fill_in else r.status or "active",
                    "undeliverable": False,
                    "bounce_count": 0,
                    "suppressed": False,
                    "created_at": self.now,
                }
                for r in rows
            ],
        )

    def _report(self, problem: RowProblem) -> None:
        if problem.left_out:
            self.bad_rows += 1
        else:
            self.merged_rows += 1
        if self.problems is not None:
            self.problems(problem)
        else:
            self.kept.append(problem)

    def report(self) -> ImportReport:
        return ImportReport(
            self.created,
            self.updated,
            self.bad_rows,
            self.merged_rows,
            tuple(p for p in self.kept if p.left_out),
            tuple(p for p in self.kept if not p.left_out),
        )


async def import_csv(
    session: AsyncSession,
    path: Path,
    *,
    problems: ProblemSink | None = None,
    advance: Advance | None = None,
) -> ImportReport:
    """Add or update the customers of PATH in SESSION's transaction, leaving out bad rows.

    Each bad or merged row goes to PROBLEMS as soon as its chunk is stored, in line order (or,
    without PROBLEMS, into the report: for small files). ADVANCE is told how many rows of the
    file each chunk took. Raise UserError if the file turns out to be unreadable; the caller's
    transaction then holds a part of the file and must roll back.
    """
    work = _Import(session, problems)
    await work.begin()
    for chunk in _chunks(read_rows(path)):
        await work.chunk(chunk)
        if advance is not None:
            advance(len(chunk))
    await work.end()
    return work.report()


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
