"""The outbox table's side of sending: claim due rows in batches, put rows back, record results.

Claiming. :func:`claim` takes up to a batch of due rows in two steps: first the transactional
mail (anything that is not a notice), then the rest, each the longest due first. Rows of a big
notice due at once therefore never hold an acknowledgement back. The first step walks an index
of the pending transactional rows only (``ix_outbox_transactional_due``), so its cost does not
grow with a notice's size, and it finds every such row due, whenever it was committed: a batch
that stored its acknowledgements, due when it began, after a claim had run meanwhile is read
like any other. (A row under another daemon's lock at the time is taken by a later claim.)

- PostgreSQL serves several daemons: each step is one ``UPDATE … RETURNING`` over a
  ``SELECT … FOR UPDATE SKIP LOCKED`` that moves the rows' ``next_attempt_at`` to a lease, and
  commits. No other daemon claims a leased row; a daemon that dies leaves its rows to come due
  again when the lease ends (so at least once); one that stops cleanly puts back what it did not
  send (:func:`release`).
- SQLite serves one daemon: the steps read a snapshot and write nothing (they wait for no
  writer, not even a batch being stored), and the sender passes the rows it holds as EXCLUDE.

Recording. :func:`record` writes a batch of results in one transaction with one statement per
kind of outcome (an executemany), whatever the number of rows: recipients sent, failed,
deferred, skipped; rows expired; the rows attempted; the ``delivery_failed`` events. A row's
state is worked out in SQL from its recipients, so it is right even if ``outbox retry`` changed
a recipient meanwhile. Attempts are counted in SQL (``attempts + 1``): nothing is read first.
On PostgreSQL the common batch (recipients sent, their rows sent to all they were tried for)
is one statement, :func:`record_sent`: committed on its own, one round trip.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from helpdeskd.store.models import Base, Event, Notice, Outbox, OutboxRecipient
from helpdeskd.store.valuelist import none_of, one_of, values

_OUTBOX = Base.metadata.tables[Outbox.__tablename__]
_RECIPIENTS = Base.metadata.tables[OutboxRecipient.__tablename__]
_NOTICES = Base.metadata.tables[Notice.__tablename__]
_EVENTS = Base.metadata.tables[Event.__tablename__]
_TIME = _OUTBOX.c.next_attempt_at.type
_ERROR = _OUTBOX.c.last_error.type
_IDS = values("ids", "int")  # row or recipient ids, bound as one parameter


@dataclass(slots=True)
class Claimed:
    """A claimed row: its mail, and the recipients it still goes to (address -> recipient id)."""

    row_id: int
    kind: str
    message_id: str
    ticket_id: int | None
    notice_id: int | None
    critical: bool | None
    category: str | None  # a notice's (None: not a notice's)
    envelope_from: str
    data: bytes
    expires_at: datetime | None
    due: datetime  # next_attempt_at before the claim: where the row goes back to if put back
    attempts: int
    recipients: dict[str, int] = field(default_factory=dict)


# --- claiming ----------------------------------------------------------------------------


def _due(*, first: bool, lease: bool) -> Any:
    """The rows due at ``:now`` but ``:exclude``, longest due first, at most ``:limit``; FIRST:
    only transactional mail. Their id and size; with LEASE, leased until ``:lease`` and when
    they were due (SQLite's rows bring that along when they are loaded). Built once: a claim
    only binds its values."""
    columns: list[Any] = [_OUTBOX.c.id, func.length(_OUTBOX.c.data).label("size")]
    if lease:
        columns.append(_OUTBOX.c.next_attempt_at.label("due"))
    if first:
        # The terms of the index of the pending transactional rows, as its own are written
        # (models.TRANSACTIONAL_DUE). Expressions, so that no other index serves them (SQLite,
        # without statistics, took the notice_id index); no bound value, so that a plan made
        # for any value of a parameter (asyncpg prepares each statement once) can use it.
        which = [
            func.coalesce(_OUTBOX.c.state, literal_column("''")) == literal_column("'pending'"),
            func.coalesce(_OUTBOX.c.notice_id, literal_column("0")) == literal_column("0"),
        ]
    else:
        which = [_OUTBOX.c.state == "pending"]
    query = select(*columns).where(
        *which,
        _OUTBOX.c.next_attempt_at <= bindparam("now", type_=_TIME),
        none_of(_OUTBOX.c.id, values("exclude", "int")),
    )
    query = query.order_by(_OUTBOX.c.next_attempt_at, _OUTBOX.c.id).limit(bindparam("limit"))
    if not lease:
        return query
    picked = query.with_for_update(skip_locked=True).cte("picked")
    return (
        update(_OUTBOX)
        .where(_OUTBOX.c.id == picked.c.id)
        .values(next_attempt_at=bindparam("lease", type_=_TIME))
        .returning(_OUTBOX.c.id, picked.c.size, picked.c.due)
    )


_DUE = {
    (first, lease): _due(first=first, lease=lease)
    for first in (False, True)
    for lease in (False, True)
}


async def _step(
    session: AsyncSession,
    now: datetime,
    limit: int,
    *,
    first: bool,
    exclude: Collection[int],
    lease: datetime | None,
) -> list[tuple[int, int, datetime | None]]:
    """One step of a claim: (id, size, due or None) of up to LIMIT due rows, longest due
    first; FIRST: the first step's (transactional mail only)."""
    statement = _DUE[(first, lease is not None)]
    params = {"now": now, "exclude": list(exclude), "limit": limit}
    connection = await session.connection()
    if lease is None:
        found = (await connection.execute(statement, params)).all()
        return [(row_id, size or 0, None) for row_id, size in found]
    found = (await connection.execute(statement, {**params, "lease": lease})).all()
    rows = [(row_id, size or 0, due) for row_id, size, due in found]
    rows.sort(key=lambda r: (r[2], r[0]))  # RETURNING keeps no order
    return rows


async def claim(
    session: AsyncSession,
    now: datetime,
    *,
    limit: int,
    max_bytes: int,
    exclude: Collection[int] = (),
    lease: datetime | None = None,
    rest: bool = True,
) -> list[Claimed]:
    """Claim up to LIMIT rows due at NOW in SESSION's transaction, at most MAX_BYTES of mail
    (at least one row); with LEASE (PostgreSQL), leased until then. Without REST, only the
    first step: transactional mail."""
    first = await _step(session, now, limit, first=True, exclude=exclude, lease=lease)
    others: list[tuple[int, int, datetime | None]] = []
    if rest and len(first) < limit:
        taken = {row_id for row_id, _, _ in first}
        others = await _step(
            session, now, limit - len(first), first=False, exclude={*exclude, *taken}, lease=lease
        )
    chosen: dict[int, datetime | None] = {}
    extra: list[tuple[int, datetime]] = []
    total = 0
    for row_id, size, due in [*first, *others]:
        total += size
        if chosen and total > max_bytes:
            if due is not None:  # leased: give it back as it was
                extra.append((row_id, due))
        else:
            chosen[row_id] = due
    if extra:
        await release(session, extra)
    return await _load(session, chosen)


_LOAD = (
    select(
        _OUTBOX.c.id,
        _OUTBOX.c.kind,
        _OUTBOX.c.message_id,
        _OUTBOX.c.ticket_id,
        _OUTBOX.c.notice_id,
        _NOTICES.c.critical,
        _NOTICES.c.category,
        _OUTBOX.c.envelope_from,
        _OUTBOX.c.data,
        _OUTBOX.c.expires_at,
        _OUTBOX.c.attempts,
        _OUTBOX.c.next_attempt_at,
    )
    .select_from(_OUTBOX.outerjoin(_NOTICES, _NOTICES.c.id == _OUTBOX.c.notice_id))
    .where(one_of(_OUTBOX.c.id, _IDS))
)
_LOAD_RECIPIENTS = (
    select(_RECIPIENTS.c.outbox_id, _RECIPIENTS.c.address, _RECIPIENTS.c.id)
    .where(
        one_of(_RECIPIENTS.c.outbox_id, _IDS),
        _RECIPIENTS.c.state == "pending",
    )
    .order_by(_RECIPIENTS.c.id)
)


async def _load(session: AsyncSession, due: dict[int, datetime | None]) -> list[Claimed]:
    """The mail of the rows DUE names (id -> due, None: as the row says), in that order, with
    their pending recipients. (Two queries: joined, a row's mail would come once per
    recipient.)"""
    if not due:
        return []
    ids = list(due)
    connection = await session.connection()
    rows: dict[int, Claimed] = {}
    for (
        row_id,
        kind,
        message_id,
        ticket_id,
        notice_id,
        critical,
        category,
        sender,
        data,
        expires,
        tries,
        next_attempt_at,
    ) in (await connection.execute(_LOAD, {"ids": ids})).all():
        rows[row_id] = Claimed(
            row_id,
            kind,
            message_id,
            ticket_id,
            notice_id,
            critical,
            category,
            sender,
            bytes(data or b""),
            expires,
            due[row_id] or next_attempt_at,
            tries,
        )
    recipients = (await connection.execute(_LOAD_RECIPIENTS, {"ids": ids})).all()
    for outbox_id, address, rcpt_id in recipients:
        rows[outbox_id].recipients[address] = rcpt_id
    return [rows[i] for i in ids if i in rows]


def _pending_rows(ids: Any) -> Any:
    """The pending rows IDS (an IN over ids) selects, found by their primary key.

    SQLite without statistics walks the (state, next_attempt_at) index for ``state =
    'pending'`` and tests every pending row against the list: a record took 23 ms with 100,000
    notice rows queued. Comparing an expression of the state leaves it the primary key.
    """
    return and_(ids, func.coalesce(_OUTBOX.c.state, "") == "pending")


_RELEASE = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("oid"), _OUTBOX.c.state == "pending")
    .values(next_attempt_at=bindparam("at", type_=_TIME))
)


_RENEW = (
    update(_OUTBOX)
    .where(_pending_rows(one_of(_OUTBOX.c.id, _IDS)))
    .values(next_attempt_at=bindparam("lease", type_=_TIME))
)


async def renew(session: AsyncSession, ids: Sequence[int], lease: datetime) -> None:
    """PostgreSQL: lease the pending rows IDS until LEASE, in SESSION's transaction."""
    connection = await session.connection()
    await connection.execute(_RENEW, {"ids": ids, "lease": lease})


async def release(session: AsyncSession, rows: Sequence[tuple[int, datetime]]) -> None:
    """Put ROWS (id, when to try) back untried, in SESSION's transaction: no attempt is
    charged."""
    if rows:
        await session.execute(_RELEASE, [{"oid": row_id, "at": at} for row_id, at in rows])


# --- recording ---------------------------------------------------------------------------


@dataclass
class Results:
    """A batch of results to record, one list per kind of outcome. The common ones (a
    recipient sent, a row done) are ids, written with one ``UPDATE … WHERE id IN (…)`` each;
    those that carry a reason or a time of their own are executemany parameters."""

    sent: list[int] = field(default_factory=list)  # recipient ids
    failed: list[dict[str, Any]] = field(default_factory=list)  # rid, e
    deferred: list[dict[str, Any]] = field(default_factory=list)  # rid, e, max
    skipped: list[dict[str, Any]] = field(default_factory=list)  # rid, e
    sent_rows: list[int] = field(default_factory=list)  # rows sent to all it was tried for
    done: list[int] = field(default_factory=list)  # other rows tried, nothing left pending
    settled: list[int] = field(default_factory=list)  # rows with nobody left, untried
    retry: list[dict[str, Any]] = field(default_factory=list)  # oid, e, next, t: to try again
    expired: list[int] = field(default_factory=list)  # rows
    released: list[dict[str, Any]] = field(default_factory=list)  # oid, at: put back untried
    events: list[dict[str, Any]] = field(default_factory=list)  # delivery_failed events

    def __len__(self) -> int:
        return (
            len(self.sent_rows)
            + len(self.done)
            + len(self.settled)
            + len(self.retry)
            + len(self.expired)
            + len(self.released)
        )

    def merge(self, other: Results) -> None:
        """Add OTHER's results to these."""
        for name in (
            "sent",
            "sent_rows",
            "failed",
            "deferred",
            "skipped",
            "done",
            "settled",
            "retry",
            "expired",
            "released",
            "events",
        ):
            getattr(self, name).extend(getattr(other, name))

    def sent_only(self) -> bool:
        """Whether these are all of the common kind: recipients sent, and their rows sent to
        all they were tried for (:func:`record_sent` writes them in one statement)."""
        return bool(self.sent_rows) and not (
            self.failed
            or self.deferred
            or self.skipped
            or self.done
            or self.settled
            or self.retry
            or self.expired
            or self.released
            or self.events
        )

    def row_ids(self) -> set[int]:
        return {
            *self.sent_rows,
            *self.done,
            *self.settled,
            *self.expired,
            *(r["oid"] for r in (*self.retry, *self.released)),
        }


def _recipients(**values: Any) -> Any:
    """An executemany over recipients by id (``rid``), those still pending."""
    return (
        update(_RECIPIENTS)
        .where(_RECIPIENTS.c.id == bindparam("rid"), _RECIPIENTS.c.state == "pending")
        .values(**values)
    )


_FAILED = _recipients(
    state="failed", attempts=_RECIPIENTS.c.attempts + 1, last_error=bindparam("e")
)
_DEFERRED = _recipients(
    attempts=_RECIPIENTS.c.attempts + 1,
    last_error=bindparam("e"),
    state=case((_RECIPIENTS.c.attempts + 1 >= bindparam("max"), "failed"), else_="pending"),
)
_SKIPPED = _recipients(state="skipped", last_error=bindparam("e"))


def _any(state: str) -> Any:
    return exists().where(_RECIPIENTS.c.outbox_id == _OUTBOX.c.id, _RECIPIENTS.c.state == state)


def _row_state() -> dict[str, Any]:
    """A row's state and sent_at, from its recipients' states (in SQL: always right)."""
    return {
        "state": case(
            (_any("pending"), "pending"),
            (_any("sent"), "sent"),
            (_any("skipped"), "skipped"),
            else_="failed",
        ),
        "sent_at": case(
            (and_(~_any("pending"), _any("sent")), bindparam("now", type_=_TIME)),
            else_=_OUTBOX.c.sent_at,
        ),
    }


_NOW = bindparam("now", type_=_TIME)


def _recipients_sent(ids: Any) -> Any:
    """The pending recipients IDS (a parameter of ids) sent at ``:now``."""
    return (
        update(_RECIPIENTS)
        .where(one_of(_RECIPIENTS.c.id, ids), _RECIPIENTS.c.state == "pending")
        .values(state="sent", attempts=_RECIPIENTS.c.attempts + 1, sent_at=_NOW)
    )


def _rows_sent(left_pending: Any) -> Any:
    """The pending rows ``:ids`` tried at ``:now``: sent, unless LEFT_PENDING (a recipient is
    still to go)."""
    return (
        update(_OUTBOX)
        .where(_pending_rows(one_of(_OUTBOX.c.id, _IDS)))
        .values(
            attempts=_OUTBOX.c.attempts + 1,
            next_attempt_at=_NOW,
            state=case((left_pending, "pending"), else_="sent"),
            sent_at=case((left_pending, _OUTBOX.c.sent_at), else_=_NOW),
        )
    )


# Built once, bound per record: the ids (one parameter), and the time.
_SENT = _recipients_sent(_IDS)
_EXPIRED_RECIPIENTS = (
    update(_RECIPIENTS)
    .where(one_of(_RECIPIENTS.c.outbox_id, _IDS), _RECIPIENTS.c.state == "pending")
    .values(state="expired")
)
_EXPIRED_ROWS = (
    update(_OUTBOX).where(_pending_rows(one_of(_OUTBOX.c.id, _IDS))).values(state="expired")
)
_SENT_ROWS = _rows_sent(_any("pending"))  # the common case: sent to all it was tried for
_DONE_ROWS = {
    tried: update(_OUTBOX)
    .where(_pending_rows(one_of(_OUTBOX.c.id, _IDS)))
    .values(attempts=_OUTBOX.c.attempts + tried, next_attempt_at=_NOW, **_row_state())
    for tried in (0, 1)
}


_RETRY = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("oid"), _OUTBOX.c.state == "pending")
    .values(
        attempts=_OUTBOX.c.attempts + 1,
        last_error=func.coalesce(bindparam("e", type_=_ERROR), _OUTBOX.c.last_error),
        next_attempt_at=bindparam("next", type_=_TIME),
        state=case(
            (_any("pending"), "pending"),
            (_any("sent"), "sent"),
            (_any("skipped"), "skipped"),
            else_="failed",
        ),
        sent_at=case(
            (and_(~_any("pending"), _any("sent")), bindparam("t", type_=_TIME)),
            else_=_OUTBOX.c.sent_at,
        ),
    )
)


# A recipient's delivery_failed event (ticket_id, rid, recipient, detail, created_at), written
# only while the recipient still has the address it names: an erasure that came between the
# send and the record (a result the journal kept over a restart) took the address out of the
# recipient, and must not find it back in an event.
_FAILED_EVENT = insert(_EVENTS).from_select(
    ["ticket_id", "type", "actor", "detail", "created_at"],
    select(
        bindparam("ticket_id", type_=_EVENTS.c.ticket_id.type),
        literal("delivery_failed"),
        literal("system"),
        bindparam("detail", type_=_EVENTS.c.detail.type),
        bindparam("created_at", type_=_TIME),
    ).where(
        exists().where(
            _RECIPIENTS.c.id == bindparam("rid"),
            _RECIPIENTS.c.address == bindparam("recipient", type_=_RECIPIENTS.c.address.type),
        )
    ),
)


# PostgreSQL: the common record, recipients sent and their rows sent to all they were tried for,
# in one statement. Its recipients' update is a CTE: the rows' update reads the table as it was
# before the statement (a CTE's changes are not seen), so a row stays pending when a recipient is
# left pending besides those it marks sent (one made pending again by `outbox retry`).
_RIDS = values("rids", "int")
_SENT_AT_ONCE = _rows_sent(_any("pending").where(none_of(_RECIPIENTS.c.id, _RIDS))).add_cte(
    _recipients_sent(_RIDS).returning(_RECIPIENTS.c.id).cte("sent")
)


async def record_sent(connection: AsyncConnection, results: Results, now: datetime) -> None:
    """PostgreSQL: write RESULTS, all of the common kind (:meth:`Results.sent_only`), known at
    NOW, in one statement; on a connection that commits each statement, in one round trip."""
    await connection.execute(
        _SENT_AT_ONCE, {"ids": results.sent_rows, "rids": results.sent, "now": now}
    )


async def record(connection: AsyncConnection, results: Results, now: datetime) -> None:
    """Write RESULTS, known at NOW, in CONNECTION's transaction (NOW is their sent_at)."""
    by_ids = (
        (_SENT, results.sent),
        (_EXPIRED_RECIPIENTS, results.expired),
        (_EXPIRED_ROWS, results.expired),
    )
    for statement, ids in by_ids:
        if ids:
            await connection.execute(statement, {"ids": ids, "now": now})
    for statement, params in (
        (_FAILED, results.failed),
        (_DEFERRED, results.deferred),
        (_SKIPPED, results.skipped),
    ):
        if params:
            await connection.execute(statement, params)
    for statement, ids in (
        (_SENT_ROWS, results.sent_rows),
        (_DONE_ROWS[1], results.done),
        (_DONE_ROWS[0], results.settled),
    ):
        if ids:
            await connection.execute(statement, {"ids": ids, "now": now})
    if results.retry:
        await connection.execute(_RETRY, results.retry)
    if results.released:
        await connection.execute(_RELEASE, results.released)
    if results.events:
        await connection.execute(_FAILED_EVENT, results.events)
