"""Mailbox leases on SQLite and PostgreSQL: taken once, renewed, taken over when expired, and
fenced: a holder that lost its lease stores nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from helpdeskd.ingest.batch import MailboxMark, Processor
from helpdeskd.store import leases
from helpdeskd.store.db import SessionMaker, create_engine, sessionmaker, upgrade
from helpdeskd.store.leases import Lease, LeaseLost, acquire, fence, release, renew
from helpdeskd.store.models import MailboxLease, MailboxState, RawMessage, Ticket
from helpdeskd.triage.received import Incoming
from tests.conftest import ConfigFactory, config_factory, need
from tests.harness import Desk
from tests.mailgen import customer_mail
from tests.servers.pgbouncer import PgBouncer
from tests.servers.pgbouncer import unavailable_reason as pgbouncer_missing


async def expire(sessions: SessionMaker, mailbox: str) -> None:
    """Make MAILBOX's lease expired, as if its holder had stopped renewing a while ago."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(MailboxLease)
            .where(MailboxLease.mailbox == mailbox)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


async def test_one_holder_at_a_time_and_a_new_token_for_each(sessions: SessionMaker) -> None:
    first = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert first == Lease("support", "daemon-a", 1)
    assert await acquire(sessions, "support", "daemon-b", seconds=60) is None
    assert await renew(sessions, first, seconds=60)
    await expire(sessions, "support")
    second = await acquire(sessions, "support", "daemon-b", seconds=60)
    assert second == Lease("support", "daemon-b", 2)
    # the holder that lost it finds out when it renews, and can take it back only when free
    assert not await renew(sessions, first, seconds=60)
    assert await acquire(sessions, "support", "daemon-a", seconds=60) is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_renewal_gets_its_turn_while_other_writers_hand_the_database_on(
    sessions: SessionMaker,
) -> None:
    """SQLite: through a backlog the ingest's batches and the sender's records hand the write
    lock to each other, taking turns as each begins. A renewal takes its turn with them and is
    done after one of their transactions; one left to SQLite's busy handler lost the lock to
    them until the lease ran out."""
    lease = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert lease is not None
    stop = asyncio.Event()

    async def writer() -> None:  # a batch after a record after a batch, each holding the lock
        while not stop.is_set():
            async with sessions() as session, session.begin():
                await session.execute(update(MailboxState).values(last_uid=MailboxState.last_uid))
                await asyncio.sleep(0.5)

    writers = [asyncio.create_task(writer()) for _ in range(2)]
    try:
        await asyncio.sleep(0.2)
        # after one of their transactions: 0.7 s measured (busy-waiting: over 10 s)
        assert await asyncio.wait_for(renew(sessions, lease, seconds=60), timeout=3)
    finally:
        stop.set()
        await asyncio.gather(*writers)


async def test_a_released_lease_is_free_at_once_and_its_token_goes_on(
    sessions: SessionMaker,
) -> None:
    first = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert first is not None
    await release(sessions, first)
    second = await acquire(sessions, "support", "daemon-b", seconds=60)
    assert second is not None and second.token == first.token + 1
    await release(sessions, first)  # a lease it no longer holds: nothing happens
    assert await acquire(sessions, "support", "daemon-c", seconds=60) is None


async def test_a_dead_daemons_lease_is_taken_before_it_expires(sessions: SessionMaker) -> None:
    assert await acquire(sessions, "support", "dead", seconds=60) is not None
    assert await acquire(sessions, "support", "next", seconds=60) is None
    taken = await acquire(sessions, "support", "next", seconds=60, replacing=["dead"])
    assert taken == Lease("support", "next", 2)


async def test_its_holder_takes_its_own_lease_again_under_a_new_token(
    sessions: SessionMaker,
) -> None:
    first = await acquire(sessions, "support", "daemon-a", seconds=60)
    again = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert first is not None and again is not None and again.token == first.token + 1
    async with sessions() as session, session.begin():
        with pytest.raises(LeaseLost):
            await fence(session, first)  # the old token fences nothing any more


async def test_renewals_hold_against_others_trying_to_take_the_lease(
    sessions: SessionMaker,
) -> None:
    """Daemons waiting for a mailbox try every few seconds; the holder's renewals meanwhile
    must all hold (a check of one must never be taken for a loss by the other)."""
    lease = await acquire(sessions, "support", "holder", seconds=60)
    assert lease is not None

    async def holder() -> list[bool]:
        return [await renew(sessions, lease, seconds=60) for _ in range(30)]

    async def waiter(name: str) -> list[Lease | None]:
        return [await acquire(sessions, "support", name, seconds=60) for _ in range(30)]

    renewed, *tries = await asyncio.gather(holder(), waiter("b"), waiter("c"))
    assert all(renewed)
    assert not any(got for attempts in tries for got in attempts)


async def test_names_whose_hashes_collide_are_two_leases(sessions: SessionMaker) -> None:
    # "plumless" and "buckeroo" share a CRC-32: the advisory lock keys of the release before
    # collided on them; a lease is keyed by the name itself.
    assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")
    assert await acquire(sessions, "plumless", "daemon-a", seconds=60) is not None
    assert await acquire(sessions, "buckeroo", "daemon-b", seconds=60) is not None


async def test_fence_passes_for_the_holder_and_refuses_an_expired_lease(
    sessions: SessionMaker,
) -> None:
    lease = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert lease is not None
    async with sessions() as session, session.begin():
        await fence(session, lease)
    await expire(sessions, "support")
    async with sessions() as session, session.begin():
        with pytest.raises(LeaseLost, match="mailbox support"):
            await fence(session, lease)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_mailbox_polled_by_the_release_before_is_left_to_it(
    sessions: SessionMaker, db_url: str
) -> None:
    """During a rolling upgrade a daemon of the previous release holds its session-level
    advisory lock on a mailbox it polls: a lease is neither taken nor kept then."""
    held = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert held is not None
    engine = create_engine(db_url)
    try:
        async with engine.connect() as old:
            key = {"k": leases.legacy_lock_key("support")}
            assert await old.scalar(text("SELECT pg_try_advisory_lock(:k)"), key)
            await old.commit()
            assert not await renew(sessions, held, seconds=60)  # given up
            assert await acquire(sessions, "support", "daemon-b", seconds=60) is None
            await old.execute(text("SELECT pg_advisory_unlock(:k)"), key)
            await old.commit()
    finally:
        await engine.dispose()
    assert await acquire(sessions, "support", "daemon-b", seconds=60) is not None


async def test_a_batch_whose_lease_is_taken_away_mid_batch_stores_nothing(
    config_desk: Desk, db_url: str
) -> None:
    """The lease is taken over while the batch is being stored (on SQLite, whose writers take
    turns, while it was being prepared): the fence in the batch's own transaction finds it
    gone, and nothing of the batch (tickets, raw mail, the mailbox's last UID) is committed.
    The same batch stored under a live lease commits."""
    desk = config_desk
    postgres = db_url.startswith("postgresql")
    sessions = desk.sessions
    lease = await acquire(sessions, "support", "daemon-a", seconds=60)
    assert lease is not None
    items = [
        Incoming(source="support", uid=n, raw=raw, size=len(raw), uidvalidity=7)
        for n, raw in enumerate([customer_mail(n) for n in range(1, 6)], start=1)
    ]
    processor: Processor = desk.processor
    prepared = await processor.prepare(items)

    async def take_over() -> None:
        await expire(sessions, "support")
        assert await acquire(sessions, "support", "daemon-b", seconds=60) is not None

    async def taken_mid_batch(session: object) -> None:
        # Everything of the batch is written by now, in this transaction; meanwhile, in
        # another, the lease expires and another daemon takes the mailbox.
        if postgres:
            await take_over()
        await fence(session, lease)  # type: ignore[arg-type]

    if not postgres:
        await take_over()
    mark = MailboxMark("support", 7, 5, fence=taken_mid_batch)
    with pytest.raises(LeaseLost):
        await processor.store(prepared, mark)
    async with sessions() as session:
        assert await session.scalar(select(func.count(Ticket.id))) == 0
        assert await session.scalar(select(func.count(RawMessage.id))) == 0
        assert await session.get(MailboxState, "support") is None

    theirs = Lease("support", "daemon-b", lease.token + 1)

    async def held(session: object) -> None:
        await fence(session, theirs)  # type: ignore[arg-type]

    outcomes = await processor.store(prepared, MailboxMark("support", 7, 5, fence=held))
    assert [o.outcome for o in outcomes] == ["new_ticket"] * 5
    async with sessions() as session:
        state = await session.get(MailboxState, "support")
        assert state is not None and state.last_uid == 5


@pytest.fixture
async def config_desk(make_config: ConfigFactory) -> AsyncIterator[Desk]:
    async with Desk(make_config(agents=[])) as desk:
        yield desk


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    need(pgbouncer_missing())
    bouncer = PgBouncer()
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


async def test_leases_work_through_pgbouncer_transaction_pooling(
    pg_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """Three daemons' engines (two tasks each) through one PgBouncer in transaction mode take,
    renew, fence and release leases at once (nothing lives in a session: each step is one
    transaction), a fenced batch is stored, and 'db upgrade' takes its lock, all through it."""
    url = pgbouncer.url(pg_url)
    await asyncio.to_thread(upgrade, url)  # at head already: the lock, then nothing to do
    engines = [create_engine(url) for _ in range(3)]
    taken: dict[str, list[int]] = {"m1": [], "m2": []}

    async def daemon(number: int) -> None:
        sessions = sessionmaker(engines[number % 3])
        for step in range(25):
            mailbox = ("m1", "m2")[(step + number) % 2]
            lease = await acquire(sessions, mailbox, f"daemon-{number}", seconds=0.05)
            if lease is None:
                continue
            taken[mailbox].append(lease.token)
            await renew(sessions, lease, seconds=0.05)
            with contextlib.suppress(LeaseLost):
                async with sessions() as session, session.begin():
                    await fence(session, lease)
            await release(sessions, lease)

    try:
        await asyncio.gather(*(daemon(n) for n in range(6)))  # two tasks per engine
    finally:
        for engine in engines:
            await engine.dispose()
    for tokens in taken.values():
        assert tokens and sorted(tokens) == list(range(1, len(tokens) + 1))  # one each, in turn

    async with Desk(config_factory(tmp_path, url)(agents=[])) as desk:
        lease = await acquire(desk.sessions, "support", "daemon-0", seconds=60)
        assert lease is not None
        raws = [customer_mail(n) for n in range(3)]
        items = [
            Incoming(source="support", uid=n, raw=raw, size=len(raw), uidvalidity=1)
            for n, raw in enumerate(raws, start=1)
        ]

        async def held(session: object) -> None:
            await fence(session, lease)  # type: ignore[arg-type]

        outcomes = await desk.processor.process_batch(items, MailboxMark("support", 1, 3, held))
        assert [o.outcome for o in outcomes] == ["new_ticket"] * 3
