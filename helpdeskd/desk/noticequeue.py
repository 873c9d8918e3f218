"""Queue a notice at scale: its audience read in chunks, its mail rendered per recipient, its
rows inserted in bulk.

A notice to a hundred thousand customers is queued in memory that does not grow with them: the
audience is read CHUNK recipients at a time (keyset pagination by contact id), each chunk's
opt-outs and erasures looked up at once (helpdeskd.desk.notices.suppressed), its mail rendered,
and its rows inserted with one multi-row INSERT per table; across chunks only counts are kept
(Tally). Queued whole or not at all: on SQLite ``notice send`` (send_notice) renders into a
compressed Spool on disk under a read-only transaction, then inserts it all in one transaction,
so that the write lock is held only while inserting; queue_notice does both in its caller's
transaction, as ``notice send`` does on PostgreSQL, where an open write transaction blocks no
other writer. Rendering is most of a notice's cost: a large one (PARALLEL_FROM recipients) is
rendered by a process per core (helpdeskd.workers), a few chunks ahead of the one stored, in
the audience's order still, while this process reads and writes the database.
"""

from __future__ import annotations

import asyncio
import collections
import marshal
import os
import tempfile
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import Config
from helpdeskd.desk.noticemail import NoticeWriter, Recipient, Written, render, start_renderer
from helpdeskd.desk.notices import (
    Audience,
    Facts,
    NoticeReport,
    Plan,
    audience_size,
    plan_notice,
    recipients,
    suppressed,
)
from helpdeskd.errors import UserError
from helpdeskd.mail.build import new_message_id
from helpdeskd.mail.parse import is_address
from helpdeskd.mail.render import Renderer
from helpdeskd.outbox import sender as outbox
from helpdeskd.store.db import SessionMaker, engine_of, reading
from helpdeskd.store.models import Base, Event, Notice, Outbox, OutboxRecipient
from helpdeskd.workers import worker_pool

log = structlog.get_logger(__name__)

CHUNK = 1000
"""Recipients read, rendered and stored at a time: one INSERT per table per chunk (SQLAlchemy
sends up to 1,000 rows in each multi-row INSERT), and never more than a chunk of mail in memory."""

PARALLEL_FROM = 5000
"""Recipients from which a notice is rendered by several processes (renderers_for)."""
MAX_RENDERERS = 4
RENDER_AHEAD = 2  # chunks in the renderers' hands per process, besides the one yielded

_OUTBOX = Base.metadata.tables[Outbox.__tablename__]
_RECIPIENTS = Base.metadata.tables[OutboxRecipient.__tablename__]
_EVENTS = Base.metadata.tables[Event.__tablename__]
# The outbox rows of a chunk, with their ids by Message-ID (unique) for the recipients: RETURNING
# has no order on SQLite, and asking SQLAlchemy for one there costs a statement per row.
_INSERT_OUTBOX = insert(_OUTBOX).returning(_OUTBOX.c.message_id, _OUTBOX.c.id)

Advance = Callable[[int], None]
Progress = Callable[[str, int | None], AbstractContextManager[Advance]]
"""How long work is shown: called with a label and the total, it gives the function that counts
what is done (helpdeskd.cli.progress.progress is one)."""


@contextmanager
def no_progress(_label: str, _total: int | None) -> Iterator[Advance]:
    """A Progress that shows nothing."""
    yield lambda _done: None


@dataclass
class Tally:
    """What a notice came to so far: counts only, whatever the size of the audience."""

    recipients: int = 0
    queued: int = 0
    failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # by reason, "opted out" for both kinds
    subject: str = ""  # of the first mail rendered

    def skip(self, reason: str) -> None:
        key = reason.split(" of ")[0]
        self.skipped[key] = self.skipped.get(key, 0) + 1

    def report(self, notice_id: int | None) -> NoticeReport:
        return NoticeReport(
            notice_id, self.recipients, self.queued, dict(self.skipped), self.subject, self.failed
        )


@dataclass(frozen=True)
class Chunk:
    """The mail of one chunk of recipients, rendered."""

    mails: list[tuple[str, str, bytes]]  # (address, Message-ID, message), in the audience's order
    unaddressable: list[str]  # contacts' addresses no mail can be written to


def renderers_for(total: int) -> int:
    """How many processes render a notice to TOTAL recipients besides this one: none for a
    small one (starting a process costs more than it saves) or on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return min(cores, MAX_RENDERERS) if total >= PARALLEL_FROM and cores > 1 else 0


async def rendered_chunks(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    plan: Plan,
    tally: Tally,
    *,
    send_at: datetime,
    extra: Mapping[str, Any] | None = None,
    advance: Advance | None = None,
    chunk: int = CHUNK,
    renderers: int = 0,
) -> AsyncGenerator[Chunk, None]:
    """Read PLAN's audience from SESSION a chunk at a time, leave out the suppressed (one query
    for the chunk's opt-outs, one for its erased addresses), and yield each chunk's mail,
    counting in TALLY.

    With RENDERERS, the mail is rendered by that many processes (a large notice: rendering is
    most of its cost), a few chunks ahead of the one yielded, in the audience's order still.

    Raises UserError or TemplateError (from NoticeWriter.mail) at the first recipient whose mail
    cannot be written: a notice is queued whole or not at all.
    """
    extra = extra or {}
    kind = plan.kind
    writer = NoticeWriter(config, renderer, kind, send_at=send_at, extra=extra)
    pool = None
    if renderers:
        pool = worker_pool(
            renderers, start_renderer, (config, renderer.folder, kind, send_at, dict(extra))
        )
    loop = asyncio.get_running_loop()
    # rendering: its mail to come, the chunk's unaddressable, how many recipients it read
    ahead: collections.deque[tuple[asyncio.Future[list[Written]], list[str], int]]
    ahead = collections.deque()

    def done(mails: list[Written], unaddressable: list[str], read: int) -> Chunk:
        for _address, _message_id, _data, subject in mails[:1]:
            tally.subject = tally.subject or subject
        tally.queued += len(mails)
        if advance is not None:
            advance(read)
        return Chunk([(a, m, d) for a, m, d, _ in mails], unaddressable)

    try:
        async with aclosing(recipients(session, plan.audience, chunk)) as chunks:
            async for contacts in chunks:
                facts = [Facts.of(c) for c in contacts]
                reasons = await suppressed(session, facts, plan.category, plan.critical)
                writing: list[Recipient] = []
                unaddressable: list[str] = []
                for contact in contacts:
                    reason = reasons.get(contact.id)
                    if reason is not None:
                        tally.skip(reason)
                    elif not is_address(contact.email):
                        # Stored before imports were checked: one such contact must not stop
                        # the notice (a critical one least of all) for everybody else.
                        unaddressable.append(contact.email)
                    else:
                        c = contact
                        writing.append(Recipient(c.id, c.email, c.name, c.plan, c.app))
                tally.recipients += len(contacts)
                tally.failed += len(unaddressable)
                if pool is None:
                    yield done([writer.mail(r) for r in writing], unaddressable, len(contacts))
                    continue
                future = loop.run_in_executor(pool, render, writing)
                ahead.append((future, unaddressable, len(contacts)))
                if len(ahead) > RENDER_AHEAD * renderers:
                    future, unaddressable, read = ahead.popleft()
                    yield done(await _rendered(future), unaddressable, read)
        while ahead:
            future, unaddressable, read = ahead.popleft()
            yield done(await _rendered(future), unaddressable, read)
    finally:
        for future, _, _ in ahead:  # not wanted any more: their outcome is only read
            future.add_done_callback(_outcome_read)
        if pool is not None:
            # The pool cancels what has not started (from its own thread: cancelled here, a
            # future the pool then fails for a dead process raises in that thread). Not waited
            # for: a renderer stops after the chunk in hand.
            pool.shutdown(wait=False, cancel_futures=True)


def _outcome_read(future: asyncio.Future[list[Written]]) -> None:
    if not future.cancelled():
        future.exception()


async def _rendered(future: asyncio.Future[list[Written]]) -> list[Written]:
    """A chunk's mail from a renderer process; UserError if the process died (killed, out of
    memory): the notice is queued whole or not at all."""
    try:
        return await future
    except BrokenProcessPool:
        raise UserError(
            "a process rendering the notice stopped (killed, or out of memory?); nothing was queued"
        ) from None


@asynccontextmanager
async def _rendering(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    plan: Plan,
    label: str,
    *,
    send_at: datetime,
    extra: Mapping[str, Any] | None,
    progress: Progress,
    chunk: int,
    renderers: int | None,
) -> AsyncIterator[tuple[Tally, AsyncGenerator[Chunk, None]]]:
    """Count PLAN's audience, show the work under LABEL, and give a fresh Tally with the
    rendered_chunks that fill it, closed (and the progress ended) on leaving; rendered by
    RENDERERS processes (None: as many as renderers_for the audience's size gives)."""
    tally = Tally()
    total = await audience_size(session, plan.audience)
    with progress(label, total) as advance:
        chunks = rendered_chunks(
            session,
            config,
            renderer,
            plan,
            tally,
            send_at=send_at,
            extra=extra,
            advance=advance,
            chunk=chunk,
            renderers=renderers_for(total) if renderers is None else renderers,
        )
        async with aclosing(chunks):
            yield tally, chunks


class Spool:
    """Rendered chunks on disk between rendering and storing, so that neither the memory nor the
    database's write lock has to hold a whole notice: an unnamed temporary file (gone when closed,
    or when the process dies), each chunk marshalled and compressed (a notice's mails differ in
    a few lines: a tenth of their size or less)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self.size = 0  # bytes written

    def write(self, chunk: Chunk) -> None:
        blob = zlib.compress(marshal.dumps((chunk.mails, chunk.unaddressable)), 1)
        self._file.write(len(blob).to_bytes(4, "big") + blob)
        self.size += 4 + len(blob)

    def chunks(self) -> Iterator[Chunk]:
        """The chunks written, in order."""
        self._file.flush()
        self._file.seek(0)
        while head := self._file.read(4):
            blob = self._file.read(int.from_bytes(head, "big"))
            mails, unaddressable = marshal.loads(zlib.decompress(blob))
            yield Chunk(mails, unaddressable)

    async def replay(self) -> AsyncGenerator[Chunk, None]:
        """The chunks written, in order, for store_notice."""
        for chunk in self.chunks():
            yield chunk

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def render_notice(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    plan: Plan,
    *,
    send_at: datetime,
    extra: Mapping[str, Any] | None = None,
    spool: Spool | None = None,
    progress: Progress = no_progress,
    chunk: int = CHUNK,
    renderers: int | None = None,
) -> Tally:
    """Render PLAN's notice for every recipient, reading SESSION (which may be read-only: no
    lock is held meanwhile), into SPOOL (None: a dry run, counting only)."""
    rendering = _rendering(
        session,
        config,
        renderer,
        plan,
        "rendering",
        send_at=send_at,
        extra=extra,
        progress=progress,
        chunk=chunk,
        renderers=renderers,
    )
    async with rendering as (tally, chunks):
        async for rendered in chunks:
            if spool is not None:
                spool.write(rendered)
    return tally


async def store_notice(
    session: AsyncSession,
    config: Config,
    plan: Plan,
    chunks: AsyncIterable[Chunk],
    tally: Tally,
    *,
    now: datetime,
    send_at: datetime,
    expires_at: datetime | None,
    progress: Progress = no_progress,
    total: int | None = None,
) -> NoticeReport:
    """Queue the mail of CHUNKS at NOW in SESSION's transaction, every row due at SEND_AT: the
    outbox paces them by their class's rate (``[smtp.rates]``), in the order they were queued.

    TALLY has the counts of CHUNKS, or gets them as CHUNKS are rendered; its subject and
    skipped count go into the notice row at the end. Rows are inserted a chunk at a time with
    one multi-row INSERT per table (no ORM object per recipient); nothing is visible to the
    sender until the caller commits.
    """
    notices = config.notices
    assert notices is not None
    notice = Notice(
        category=plan.category,
        template=plan.template.removeprefix("notices/").removesuffix(".txt.j2"),
        audience=str(plan.audience),
        critical=plan.critical,
        subject=tally.subject,
        send_at=send_at,
        expires_at=expires_at,
        skipped=sum(tally.skipped.values()),
        created_at=now,
    )
    session.add(notice)
    await session.flush()
    with progress("queueing", total) as advance:
        async for chunk in chunks:
            await _insert_chunk(
                session,
                config,
                notice.id,
                chunk,
                now=now,
                send_at=send_at,
                expires_at=expires_at,
            )
            advance(len(chunk.mails) + len(chunk.unaddressable))
    notice.subject = tally.subject
    notice.skipped = sum(tally.skipped.values())
    session.add(
        Event(
            ticket_id=None,
            type="notice_queued",
            actor="cli",
            detail={
                "notice": notice.id,
                "category": plan.category,
                "queued": tally.queued,
                "failed": tally.failed,
            },
            created_at=now,
        )
    )
    await session.flush()
    log.info(
        "notice_queued",
        notice=notice.id,
        category=plan.category,
        queued=tally.queued,
        failed=tally.failed,
    )
    return tally.report(notice.id)


async def _insert_chunk(
    session: AsyncSession,
    config: Config,
    notice_id: int,
    chunk: Chunk,
    *,
    now: datetime,
    send_at: datetime,
    expires_at: datetime | None,
) -> None:
    """Insert CHUNK's outbox rows, their recipients and the failures' events: one statement per
    table. The rows are those outbox.enqueue and outbox.enqueue_failed write, in bulk."""
    notices = config.notices
    assert notices is not None
    envelope_from = notices.from_address
    rows: list[dict[str, Any]] = [
        {
            "ticket_id": None,
            "notice_id": notice_id,
            "kind": "notice",
            "message_id": message_id,
            "envelope_from": envelope_from,
            "data": data,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": send_at,  # the sender paces the class, in id order
            "expires_at": expires_at,
            "last_error": None,
            "created_at": now,
        }
        for _address, message_id, data in chunk.mails
    ]
    addresses = [address.lower() for address, _, _ in chunk.mails]
    # Whom no mail can be written to: a failed row holding no mail, as enqueue_failed writes.
    failed = [address[:320] for address in chunk.unaddressable]  # the column's size
    failed_ids = [new_message_id(config.service.support_domain) for _ in failed]
    rows.extend(
        {
            "ticket_id": None,
            "notice_id": notice_id,
            "kind": "notice",
            "message_id": message_id,
            "envelope_from": envelope_from,
            "data": b"",
            "state": "failed",
            "attempts": 0,
            "next_attempt_at": now,
            "expires_at": None,
            "last_error": outbox.UNADDRESSABLE,
            "created_at": now,
        }
        for message_id in failed_ids
    )
    if not rows:
        return
    ids: dict[str, int] = {
        message_id: outbox_id
        for message_id, outbox_id in await session.execute(_INSERT_OUTBOX, rows)
    }
    recipients = [
        {
            "outbox_id": ids[message_id],
            "address": address,
            "state": "pending",
            "attempts": 0,
            "last_error": None,
        }
        for address, (_, message_id, _data) in zip(addresses, chunk.mails, strict=True)
    ]
    recipients.extend(
        {
            "outbox_id": ids[message_id],
            "address": address,
            "state": "failed",
            "attempts": 0,
            "last_error": outbox.UNADDRESSABLE,
        }
        for address, message_id in zip(failed, failed_ids, strict=True)
    )
    await session.execute(insert(_RECIPIENTS), recipients)
    if failed:
        await session.execute(
            insert(_EVENTS),
            [
                {
                    "ticket_id": None,
                    "type": "delivery_failed",
                    "actor": "system",
                    "detail": {
                        "recipient": address,
                        "error": outbox.UNADDRESSABLE,
                        "message_id": message_id,
                    },
                    "created_at": now,
                }
                for address, message_id in zip(failed, failed_ids, strict=True)
            ],
        )
        for address, message_id in zip(failed, failed_ids, strict=True):
            log.error(
                "recipient_unaddressable",
                recipient=address,
                error=outbox.UNADDRESSABLE,
                message_id=message_id,
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
    progress: Progress = no_progress,
    chunk: int = CHUNK,
    renderers: int | None = None,
) -> NoticeReport:
    """Plan, render and queue a notice at NOW in SESSION's transaction, sent from SEND_AT
    (default NOW) on: each chunk of recipients is read, rendered and inserted in turn.

    On SQLite the transaction holds the database's write lock while every mail is rendered;
    send_notice, for a large notice on its own, renders first and holds it only to insert.
    """
    send_at = send_at or now
    plan = plan_notice(config, renderer, category=category, template=template, audience=audience)
    rendering = _rendering(
        session,
        config,
        renderer,
        plan,
        "rendering" if dry_run else "queueing",
        send_at=send_at,
        extra=extra,
        progress=progress,
        chunk=chunk,
        renderers=renderers,
    )
    async with rendering as (tally, chunks):
        if dry_run:
            async for _chunk in chunks:
                pass
            return tally.report(None)
        return await store_notice(
            session,
            config,
            plan,
            chunks,
            tally,
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
    progress: Progress = no_progress,
    clock: Clock = system_clock,
    chunk: int = CHUNK,
    renderers: int | None = None,
) -> NoticeReport:
    """Queue a notice as queue_notice does, in a transaction of its own, without keeping
    SQLite's write lock while rendering: a running daemon keeps storing mail while a hundred
    thousand notices are rendered.

    On SQLite the mail is rendered chunk by chunk in a read-only transaction into a Spool on
    disk, then inserted from it in one transaction: the notice is queued whole or not at all,
    and the sender sees none of it before the commit. On PostgreSQL an open write transaction
    keeps no other writer waiting: the notice is queue_notice's, each chunk inserted while the
    next ones are rendered, in one transaction all the same.
    """
    now = clock()
    send_at = send_at or now
    if not dry_run and engine_of(sessions).dialect.name == "postgresql":
        async with sessions() as session, session.begin():
            return await queue_notice(
                session,
                config,
                renderer,
                category=category,
                template=template,
                audience=audience,
                now=now,
                send_at=send_at,
                expires_at=expires_at,
                extra=extra,
                progress=progress,
                chunk=chunk,
                renderers=renderers,
            )
    plan = plan_notice(config, renderer, category=category, template=template, audience=audience)
    with Spool() as spool:
        async with reading(sessions) as session:
            tally = await render_notice(
                session,
                config,
                renderer,
                plan,
                send_at=send_at,
                extra=extra,
                spool=None if dry_run else spool,
                progress=progress,
                chunk=chunk,
                renderers=renderers,
            )
        if dry_run:
            return tally.report(None)
        async with sessions() as session, session.begin(), aclosing(spool.replay()) as chunks:
            return await store_notice(
                session,
                config,
                plan,
                chunks,
                tally,
                now=now,
                send_at=send_at,
                expires_at=expires_at,
                progress=progress,
                total=tally.queued + tally.failed,
            )
