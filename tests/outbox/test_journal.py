"""SQLite: the sender's results go to a journal, so that no batch being stored holds the mail
back, and are written once, at the sender's turn or after a crash. Against a real SMTP server
and SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from helpdeskd.desk.erasure import erase
from helpdeskd.outbox import sender as outbox
from helpdeskd.outbox.journal import Journal
from helpdeskd.outbox.ledger import Results
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.db import reading
from helpdeskd.store.models import Event, Outbox, OutboxJournalMark, OutboxRecipient
from tests.harness import Desk
from tests.outbox.test_sending import _each_sent_once, _queue_many, _rows
from tests.servers.smtp import SmtpSink

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the journal is SQLite's


@contextlib.asynccontextmanager
async def _another_writer(desk: Desk) -> AsyncIterator[None]:
    """Hold the database as a batch of the ingest does: this process's turn to write, and
    SQLite's write lock, in a transaction that wrote."""
    async with desk.sessions() as session, session.begin():
        await session.execute(update(OutboxJournalMark).values(applied=OutboxJournalMark.applied))
        yield


async def _until(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


async def _states(desk: Desk) -> set[str]:
    async with reading(desk.sessions) as session:  # beside the other writer
        return set(await session.scalars(select(Outbox.state)))


async def _loaded(desk: Desk, path: Path) -> Journal:
    journal = Journal(path)
    async with reading(desk.sessions) as session:
        await journal.load(await session.connection())
    return journal


@SQLITE
async def test_acknowledgements_flow_while_another_writer_holds_the_database(
    make_config, smtp_sink: SmtpSink, tmp_path: Path
):
    """A connection sends its next acknowledgement once its last is recorded. While the
    ingest holds SQLite's write lock, the records go to the journal: every mail goes out
    during the hold, and the rows are written once it ends. (Without the journal one mail per
    connection goes until the hold ends.)"""
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 4})
    path = tmp_path / "outbox.journal"
    addresses = [f"r{n}@example.org" for n in range(60)]
    stop = asyncio.Event()
    async with Desk(config) as desk:
        await _queue_many(desk, [[a] for a in addresses], due=datetime.now(UTC))
        sender = OutboxSender(
            desk.sessions, replace(config.smtp, domain_rate=None), idle_poll=30, journal=path
        )
        running = asyncio.create_task(sender.run(stop))
        try:
            async with _another_writer(desk):

                async def all_sent() -> bool:
                    return smtp_sink.received >= len(addresses)

                went_during_the_hold = await _until(all_sent, 20)
                states_during_the_hold = await _states(desk)
                kept = path.stat().st_size

            async def written() -> bool:
                return await _states(desk) == {"sent"}

            assert await _until(written, 10)
        finally:
            stop.set()
            await running
        rows = await _rows(desk)
    assert went_during_the_hold
    assert states_during_the_hold == {"pending"} and kept > 0
    _each_sent_once(smtp_sink, rows, addresses)
    assert path.stat().st_size == 0  # all written: nothing left to write after a crash


@SQLITE
async def test_results_left_in_the_journal_are_written_at_the_next_start_and_nothing_goes_twice(
    make_config, smtp_sink: SmtpSink, tmp_path: Path, monkeypatch
):
    """The sender stops (or dies) while the database is still held: its results stay in the
    journal. The next sender loads them before it claims anything, writes them, and sends
    nothing again."""
    close_wait = outbox.JOURNAL_CLOSE
    # The first sender gives up on the held database after a tenth of a second. The second
    # waits as long as a sender does: under load its write can take longer than that.
    monkeypatch.setattr(outbox, "JOURNAL_CLOSE", 0.1)
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 2})
    smtp = replace(config.smtp, domain_rate=None)
    path = tmp_path / "outbox.journal"
    addresses = [f"r{n}@example.org" for n in range(12)]
    async with Desk(config) as desk:
        await _queue_many(desk, [[a] for a in addresses], due=datetime.now(UTC))
        first = OutboxSender(desk.sessions, smtp, idle_poll=30, journal=path)
        stop = asyncio.Event()
        with capture_logs() as stopping:
            async with _another_writer(desk):
                running = asyncio.create_task(first.run(stop))

                async def all_sent() -> bool:
                    return smtp_sink.received >= len(addresses)

                assert await _until(all_sent, 20)
                stop.set()
                await running
        assert await _states(desk) == {"pending"}
        assert path.stat().st_size > 0
        monkeypatch.setattr(outbox, "JOURNAL_CLOSE", close_wait)
        second = OutboxSender(desk.sessions, smtp, idle_poll=30, journal=path)
        with capture_logs() as starting:
            await second.drain(3)
            await second.close()
        rows = await _rows(desk)
    assert "outbox_journal_left" in [entry["event"] for entry in stopping]
    assert "outbox_journal_recovered" in [entry["event"] for entry in starting]
    _each_sent_once(smtp_sink, rows, addresses)
    assert path.stat().st_size == 0


@SQLITE
async def test_an_entry_written_before_a_crash_left_it_in_the_file_is_not_written_again(
    make_config, smtp_sink: SmtpSink, tmp_path: Path
):
    """The crash came after the transaction that wrote the entries and moved the mark, before
    the file was emptied: the entries are not written again (a retry's attempt is counted
    once), and the next entry's number follows the mark."""
    config = make_config(smtp=smtp_sink)
    path = tmp_path / "outbox.journal"
    async with Desk(config) as desk:
        [row_id] = await _queue_many(desk, [["slow@example.org"]], due=T0)
        async with desk.sessions() as session:
            rid = await session.scalar(select(OutboxRecipient.id))
        retry = Results(
            deferred=[{"rid": rid, "e": "451 later", "max": 5}],
            retry=[{"oid": row_id, "e": "451 later", "next": T0 + timedelta(minutes=5), "t": T0}],
        )
        journal = await _loaded(desk, path)
        journal.append(retry, T0)
        async with desk.engine.begin() as connection:
            assert len(await journal.write(connection)) == 1
        journal.close()  # the crash: written() never ran
        assert path.stat().st_size > 0

        again = await _loaded(desk, path)
        left, emptied = list(again.entries), path.stat().st_size == 0
        async with desk.sessions() as session:
            row = await session.get(Outbox, row_id)
            recipient = await session.get(OutboxRecipient, rid)
        again.append(Results(), T0)
        again.close()
    assert left == [] and again.rows == set() and emptied
    assert [entry.number for entry in again.entries] == [2]
    assert (row.state, row.attempts, row.next_attempt_at) == (
        "pending",
        1,
        T0 + timedelta(minutes=5),
    )
    assert (recipient.state, recipient.attempts, recipient.last_error) == (
        "pending",
        1,
        "451 later",
    )


@SQLITE
async def test_an_entry_appended_while_the_entries_before_it_were_written_is_kept(
    make_config, tmp_path: Path
):
    """A record came while the entries before it were being written, and the crash came
    before the file was rewritten: the next start keeps that entry alone, and the file holds
    only it (readable by the daemon's user alone)."""
    path = tmp_path / "outbox.journal"
    async with Desk(make_config()) as desk:
        [row_id, other_id] = await _queue_many(desk, [["a@example.org"], ["b@example.org"]], due=T0)
        journal = await _loaded(desk, path)
        journal.append(Results(settled=[row_id]), T0)
        async with desk.engine.begin() as connection:
            await journal.write(connection)
            journal.append(Results(settled=[other_id]), T0)  # meanwhile
        journal.close()  # the crash: written() never ran
        again = await _loaded(desk, path)
        again.close()
        kept = await _loaded(desk, path)
        kept.close()
    assert [(e.number, e.results.settled) for e in again.entries] == [(2, [other_id])]
    assert again.rows == {other_id}
    assert [(e.number, e.results.settled) for e in kept.entries] == [(2, [other_id])]
    assert len(path.read_bytes().splitlines()) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@SQLITE
async def test_a_line_a_crash_cut_short_is_left_out_and_the_rest_is_kept(
    make_config, tmp_path: Path
):
    config = make_config()
    path = tmp_path / "outbox.journal"
    async with Desk(config) as desk:
        journal = await _loaded(desk, path)
        journal.append(Results(sent=[7], sent_rows=[3]), T0)
        journal.close()
        with path.open("ab") as handle:
            handle.write(b'{"n":2,"at":{"$time":"2030-')  # the crash came mid-write
        with capture_logs() as logs:
            again = await _loaded(desk, path)
        again.close()
    assert [(e.number, e.results.sent_rows) for e in again.entries] == [(1, [3])]
    assert again.rows == {3}
    assert [e["event"] for e in logs] == ["outbox_journal_line_skipped"]


@SQLITE
async def test_a_journal_entry_holds_every_kind_of_result_as_it_was(make_config, tmp_path: Path):
    """What the journal keeps comes back the same: ids, reasons, times, events."""
    results = Results(
        sent=[1, 2],
        failed=[{"rid": 3, "e": "550 no such user"}],
        deferred=[{"rid": 4, "e": "451 later", "max": 5}],
        skipped=[{"rid": 5, "e": "opted out"}],
        sent_rows=[10],
        done=[11],
        settled=[12],
        retry=[{"oid": 13, "e": "451 later", "next": T0 + timedelta(minutes=5), "t": T0}],
        expired=[14],
        released=[{"oid": 15, "at": T0}],
        events=[
            {
                "ticket_id": None,
                "rid": 3,
                "recipient": "x@example.org",
                "detail": {"recipient": "x@example.org", "error": "550", "message_id": "<m>"},
                "created_at": T0,
            }
        ],
    )
    path = tmp_path / "outbox.journal"
    async with Desk(make_config()) as desk:
        first = await _loaded(desk, path)
        first.append(results, T0)
        first.close()
        again = await _loaded(desk, path)
        again.close()
    [entry] = again.entries
    assert (entry.number, entry.at, entry.results) == (1, T0, results)
    assert again.rows == {10, 11, 12, 13, 14, 15}


async def test_on_postgresql_results_go_to_the_database_and_no_journal_is_kept(
    make_pg_config, smtp_sink: SmtpSink, tmp_path: Path
):
    """PostgreSQL locks rows, not the database: a record never waits for the ingest there."""
    config = make_pg_config(smtp=smtp_sink)
    path = tmp_path / "outbox.journal"
    addresses = [f"r{n}@example.org" for n in range(5)]
    async with Desk(config) as desk:
        await _queue_many(desk, [[a] for a in addresses], due=datetime.now(UTC))
        sender = OutboxSender(desk.sessions, config.smtp, journal=path)
        await sender.drain(5)
        await sender.close()
        rows = await _rows(desk)
    assert sender.journal is None and not path.exists()
    _each_sent_once(smtp_sink, rows, addresses)


@SQLITE
async def test_a_journal_that_cannot_be_written_leaves_the_records_to_the_database(
    make_config, smtp_sink: SmtpSink, tmp_path: Path, monkeypatch
):
    """A full disk: the line is taken back out of the file, and the record is written to the
    database at the sender's turn, as without a journal. Every mail goes once."""
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 2})
    path = tmp_path / "outbox.journal"
    addresses = [f"r{n}@example.org" for n in range(6)]
    fsync = os.fsync

    def full(fd: int) -> None:
        if fd != -1 and os.readlink(f"/proc/self/fd/{fd}") == str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    async with Desk(config) as desk:
        await _queue_many(desk, [[a] for a in addresses], due=datetime.now(UTC))
        sender = OutboxSender(desk.sessions, config.smtp, journal=path)
        monkeypatch.setattr(os, "fsync", full)
        with capture_logs() as logs:
            await sender.drain(5)
            await sender.close()
        monkeypatch.undo()
        rows = await _rows(desk)
    _each_sent_once(smtp_sink, rows, addresses)
    assert "outbox_journal_failed" in [entry["event"] for entry in logs]
    assert path.read_bytes() == b""


@SQLITE
async def test_a_failure_kept_over_an_erasure_does_not_bring_the_address_back(
    make_config, tmp_path: Path
):
    """The person was erased between the send and the record (the daemon stopped with the
    result in its journal, and the erasure ran while it was down): no delivery_failed event
    names the address again, and the recipient stays as the erasure left it. Another
    recipient's failure is recorded as ever."""
    config = make_config()
    path = tmp_path / "outbox.journal"
    async with Desk(config) as desk:
        addresses = ["gone@example.org", "kept@example.org"]
        row_ids = await _queue_many(desk, [[a] for a in addresses], due=T0)
        rows = dict(zip(addresses, row_ids, strict=True))
        async with desk.sessions() as session:
            found = await session.execute(select(OutboxRecipient.address, OutboxRecipient.id))
            rids = dict(found.all())
        journal = await _loaded(desk, path)
        for address, row_id in rows.items():
            journal.append(
                Results(
                    failed=[{"rid": rids[address], "e": "550 no such user"}],
                    done=[row_id],
                    events=[
                        {
                            "ticket_id": None,
                            "rid": rids[address],
                            "recipient": address,
                            "detail": {"recipient": address, "error": "550 no such user"},
                            "created_at": T0,
                        }
                    ],
                ),
                T0,
            )
        journal.close()
        await erase(desk.sessions, config, "gone@example.org", by="admin@acme.test", now=T0)
        again = await _loaded(desk, path)
        async with desk.engine.begin() as connection:
            await again.write(connection)
        again.close()
        async with desk.sessions() as session:
            details = list(await session.scalars(select(Event.detail)))
            recipients = dict(
                (await session.execute(select(OutboxRecipient.id, OutboxRecipient.state))).all()
            )
    assert "gone@example.org" not in json.dumps(details)
    assert [d for d in details if d.get("error") == "550 no such user"] == [
        {"recipient": "kept@example.org", "error": "550 no such user"}
    ]
    assert recipients == {rids["gone@example.org"]: "skipped", rids["kept@example.org"]: "failed"}
