"""SQLite transactions as helpdeskd opens them: a writer locks at once, in its turn among the
process's writers; a READ_ONLY reader never waits."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select, text, update

from helpdeskd.store import db
from helpdeskd.store.db import (
    READ_ONLY,
    SQLITE_STATEMENT_CACHE,
    create_engine,
    sessionmaker,
    upgrade,
)
from helpdeskd.store.models import MailboxState


async def test_a_read_only_transaction_reads_beside_a_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'helpdeskd.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    sessions = sessionmaker(engine)

    async def names(read_only: bool) -> list[str]:
        async with sessions() as session:
            if read_only:
                await session.connection(execution_options=READ_ONLY)
            return list(await session.scalars(select(MailboxState.name)))

    try:
        async with sessions() as writer, writer.begin():
            writer.add(MailboxState(name="support", last_uid=7))
            await writer.flush()  # BEGIN IMMEDIATE: the write lock is held from here
            assert await asyncio.wait_for(names(read_only=True), 5) == []  # the snapshot
            waiting = asyncio.ensure_future(names(read_only=False))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # a default transaction waits for the write lock
        assert await asyncio.wait_for(waiting, 5) == ["support"]
    finally:
        await engine.dispose()


async def _engine(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'helpdeskd.db'}"
    await asyncio.to_thread(upgrade, url)
    return create_engine(url)


async def _touch(sessions: Any, hold: float = 0.0) -> None:
    """A write transaction, holding the write lock HOLD seconds."""
    async with sessions() as session, session.begin():
        await session.execute(update(MailboxState).values(last_uid=MailboxState.last_uid))
        await asyncio.sleep(hold)


async def test_a_writer_gets_its_turn_while_others_hand_the_database_on(tmp_path: Path) -> None:
    """Two writers commit and begin again at once, as the ingest's batches and the sender's
    records do through a backlog. A third (an unsubscribe, the heartbeat) is done after one of
    their transactions: left to SQLite's busy handler it lost the lock to them (in 3 runs of
    3, before every writer took its turn)."""
    engine = await _engine(tmp_path)
    sessions = sessionmaker(engine)
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await _touch(sessions, hold=0.3)

    writers = [asyncio.create_task(writer()) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        await asyncio.wait_for(_touch(sessions), timeout=3)  # about 0.6 s
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await engine.dispose()


async def test_a_turn_ends_with_its_transaction_however_it_ends(tmp_path: Path) -> None:
    """Committed, rolled back by an error, or left open on a connection handed back to the
    pool: the next writer begins at once (a turn kept would hold every writer of the process)."""
    engine = await _engine(tmp_path)
    sessions = sessionmaker(engine)
    try:
        await asyncio.wait_for(_touch(sessions), timeout=2)
        with pytest.raises(ZeroDivisionError):
            async with sessions() as session, session.begin():
                await session.execute(update(MailboxState).values(last_uid=1))
                _ = 1 / 0
        await asyncio.wait_for(_touch(sessions), timeout=2)
        connection = await engine.connect()
        await connection.execute(update(MailboxState).values(last_uid=2))
        await connection.close()  # the pool rolls it back
        await asyncio.wait_for(_touch(sessions), timeout=2)
        async with engine.connect() as reader:  # a reader takes no turn, and holds none
            await reader.execution_options(**READ_ONLY)
            await reader.execute(select(MailboxState.name))
            await asyncio.wait_for(_touch(sessions), timeout=2)
    finally:
        await engine.dispose()


async def test_a_writer_that_waited_too_long_for_its_turn_waits_for_the_lock_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After TURN_WAIT seconds a writer goes on to wait for SQLite's lock itself (so a
    transaction nested in another of its own task fails as SQLite makes it, and never hangs);
    it takes no turn then, and leaves none taken. Here the turn is another task's, held 0.6 s."""
    monkeypatch.setattr(db, "TURN_WAIT", 0.2)
    engine = await _engine(tmp_path)
    sessions = sessionmaker(engine)
    try:
        with structlog.testing.capture_logs() as logs:
            holder = asyncio.create_task(_touch(sessions, hold=0.6))
            await asyncio.sleep(0.1)
            await asyncio.wait_for(_touch(sessions), timeout=5)
            await holder
        assert [e["event"] for e in logs] == ["sqlite_write_turn_not_taken"]
        await asyncio.wait_for(_touch(sessions), timeout=2)
    finally:
        await engine.dispose()


async def test_a_turn_ended_on_another_thread_is_released_on_the_loops() -> None:
    """A connection the garbage collector closes may end its transaction on any thread: the
    lock (an asyncio.Lock, not thread-safe) is released on the loop's own thread, and the
    writer waiting for it goes on. (In debug mode the loop refuses a call from another
    thread.)"""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        turn = db._Turn(loop)
        holder = object()
        await turn.lock.acquire()
        turn.holder = holder
        waiting = asyncio.ensure_future(turn.lock.acquire())
        await asyncio.to_thread(turn.give_back, object())  # not its holder: nothing happens
        await asyncio.sleep(0.1)
        assert not waiting.done() and turn.holder is holder
        await asyncio.to_thread(turn.give_back, holder)
        await asyncio.wait_for(waiting, timeout=2)
        assert turn.holder is None
    finally:
        loop.set_debug(False)


async def test_sqlite_connections_keep_fewer_statements_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's cache of prepared statements is bounded below its default of 128: each
    length of an IN list is a statement of its own (see SQLITE_STATEMENT_CACHE)."""
    opened: list[dict[str, Any]] = []
    connect = sqlite3.connect

    def recording(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(kwargs)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", recording)
    engine = create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert [kwargs.get("cached_statements") for kwargs in opened] == [SQLITE_STATEMENT_CACHE]
    assert 16 < SQLITE_STATEMENT_CACHE < 128


def test_a_newer_schema_is_refused_with_what_to_do(db_url: str) -> None:
    """A release whose head is behind the database's (a rolling upgrade, a host not upgraded
    yet) refuses to start, and does not tell the admin to run db upgrade."""
    import pytest
    from sqlalchemy import text

    from helpdeskd.errors import SchemaError
    from helpdeskd.store.db import SCHEMA_HEAD, check_schema

    newer = f"{int(SCHEMA_HEAD) + 1:04d}"

    async def main() -> None:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE alembic_version SET version_num = :v"), {"v": newer}
                )
            with pytest.raises(SchemaError) as caught:
                await check_schema(engine)
        finally:
            await engine.dispose()
        message = str(caught.value)
        assert f"revision {newer}, newer than this helpdeskd" in message
        assert "db upgrade" not in message and "install the release" in message

    asyncio.run(main())


def test_two_upgrades_never_run_at_once(pg_url: str, tmp_path: Path) -> None:
    """While one 'db upgrade' holds the upgrade lock, a second says it waits and waits; once
    the first is done, the second finds nothing to do and succeeds."""
    import os
    import sys

    import asyncpg

    from helpdeskd.store.db import UPGRADE_LOCK
    from tests.harness import ROOT

    config = tmp_path / "helpdeskd.toml"
    secret = tmp_path / "secret.key"
    secret.write_text("k1 test-secret-key-0123456789abcdef\n")
    config.write_text(
        '[service]\nname = "Acme"\nsupport_address = "support@acme.test"\n'
        'public_url = "https://support.acme.test"\n'
        f'secret_key_file = "{secret}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[database]\nurl = "{pg_url}"\n'
    )
    waiting = (
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )

    async def main() -> None:
        first = await asyncpg.connect(pg_url)
        second = None
        try:
            async with first.transaction():
                await first.execute("SELECT pg_advisory_xact_lock($1)", UPGRADE_LOCK)
                second = await asyncio.create_subprocess_exec(
                    *(sys.executable, "-m", "helpdeskd", "--config", str(config)),
                    *("db", "upgrade"),
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={k: v for k, v in os.environ.items() if k != "HELPDESKD_CONFIG"},
                )
                assert second.stderr is not None
                line = await asyncio.wait_for(second.stderr.readline(), 60)
                assert b"another 'helpdeskd db upgrade' is running" in line
                # it waits for the lock (the first still holds it), not for anything else
                for _ in range(600):
                    if await first.fetchval(waiting) == 1:
                        break
                    await asyncio.sleep(0.1)
                assert await first.fetchval(waiting) == 1
                assert second.returncode is None
            out, err = await asyncio.wait_for(second.communicate(), 120)
            assert second.returncode == 0, err
            assert out == b"database at head\n"
        finally:
            await first.close()
            if second is not None and second.returncode is None:
                second.kill()
                await second.wait()

    asyncio.run(main())
