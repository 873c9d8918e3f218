"""SQLite: the sender's results kept in an append-only file until its turn to write comes.

SQLite has one writer at a time. Through a backlog the ingest's batches hold the write lock
almost all the time, each for a fraction of a second, and take turns with this process's other
writers as each begins (:class:`helpdeskd.store.db._Turn`). A customer's or an agent's mail is
recorded before its connection sends the next such mail, so that a crash sends again only the
mail in flight; with each record waiting for a turn, acknowledgements went out at about one per
connection per batch, and through a backlog most of them left only when the ingest ended.

So on SQLite the sender appends each record to the journal instead: one line of JSON, flushed
to disk (fsync: as durable as SQLite's commit under ``synchronous=FULL``), and the connection
goes on. At the sender's next turn to write, every entry appended meanwhile is written to the
database in one transaction (:meth:`Journal.write`), which also moves the database's mark of
the last entry written (``outbox_journal``); until then the entries' rows stay out of every
claim. Every record goes there, not only those that meet a batch: one that found the turn free
a moment before a batch took it would wait for the whole batch, with its connection. After a
crash the sender loads what the file holds beyond the mark before it claims anything
(:meth:`Journal.load`), so an entry is written once, even if the crash came between that
transaction and the file's rewrite. A line the crash cut short was never confirmed to its
connection: that mail was in flight, and goes again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from helpdeskd.outbox import ledger
from helpdeskd.outbox.ledger import Results
from helpdeskd.store.models import OutboxJournalMark
from helpdeskd.store.spool import sync_directory

__all__ = ["FILENAME", "Entry", "Journal"]

log = structlog.get_logger(__name__)

FILENAME = "outbox.journal"  # in the state directory
MARK = "outbox"  # the mark's row in outbox_journal
_FIELDS = tuple(f.name for f in dataclasses.fields(Results))
_TIME = "$time"  # a datetime in an entry's JSON: {"$time": ISO 8601}


@dataclass(frozen=True)
class Entry:
    """One record kept in the journal: its number, when its results were known (their
    sent_at), and the results."""

    number: int
    at: datetime
    results: Results


class Journal:
    """The journal at PATH: entries appended, not yet written to the database, and their rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[Entry] = []
        self._next: int | None = None  # the next entry's number, once loaded
        self._fd: int | None = None

    @property
    def loaded(self) -> bool:
        return self._next is not None

    @property
    def rows(self) -> set[int]:
        """The entries' rows: no claim may take them until they are written."""
        return {row for entry in self.entries for row in entry.results.row_ids()}

    async def load(self, connection: AsyncConnection) -> None:
        """Read the entries the file holds beyond the database's mark (what a crash left)."""
        mark = await _mark(connection)
        found = _read(self.path)
        self.entries = [entry for entry in found if entry.number > mark]
        self._next = max([mark, *(entry.number for entry in found)]) + 1
        if len(self.entries) < len(found):  # the file keeps only what is left to write
            self._rewrite(self.entries)

    def append(self, results: Results, at: datetime) -> None:
        """Keep RESULTS, known AT, on disk; their rows stay out of claims until written."""
        if self._next is None:
            raise RuntimeError("the journal is appended to before it was loaded")
        entry = Entry(self._next, at, results)
        self._next += 1  # a number is used once, even by a line that could not be written
        self._append(_encode(entry))
        self.entries.append(entry)

    async def write(self, connection: AsyncConnection) -> list[Entry]:
        """Write the entries so far beyond the database's mark, in CONNECTION's transaction
        (which holds the write lock), and move the mark to the last; return those entries.
        Their results are recorded together, at the time of the first (their sent_at)."""
        entries = list(self.entries)
        if not entries:
            return []
        mark = await _mark(connection)
        left = [entry for entry in entries if entry.number > mark]
        if left:
            results = Results()
            for entry in left:
                results.merge(entry.results)
            await ledger.record(connection, results, left[0].at)
        last = max(mark, entries[-1].number)  # the mark only moves on
        moved = await connection.execute(
            update(OutboxJournalMark).where(OutboxJournalMark.name == MARK).values(applied=last)
        )
        if not moved.rowcount:
            await connection.execute(insert(OutboxJournalMark).values(name=MARK, applied=last))
        return entries

    def written(self, entries: list[Entry]) -> None:
        """ENTRIES are in the database (the transaction of :meth:`write` committed): forget
        them, and leave the file only what is still to write."""
        numbers = {entry.number for entry in entries}
        self.entries = [entry for entry in self.entries if entry.number not in numbers]
        self._rewrite(self.entries)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- the file ---------------------------------------------------------------------------
    # Written on the event loop's own thread, so that no two writes interleave and the entries
    # in memory are the lines in the file, in order. An append and its fsync take a fraction of
    # a millisecond; a hop to a worker thread, with the loop busy storing a backlog, took
    # milliseconds (the thread waits for the GIL), and each connection waited that long.

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if created:
                sync_directory(self.path.parent)
        fd = self._fd
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            # The record is written to the database instead (OutboxSender._journaled): the
            # line must not be written again from here after a crash.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise

    def _rewrite(self, entries: list[Entry]) -> None:
        """The file holds ENTRIES only: emptied in place, or replaced at once."""
        if not entries:
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
            elif self.path.exists():
                with open(self.path, "r+b") as handle:
                    handle.truncate(0)
                    os.fsync(handle.fileno())
            return
        fresh = self.path.with_name(self.path.name + ".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        with os.fdopen(os.open(fresh, flags, 0o600), "wb") as handle:
            handle.writelines(_encode(entry) for entry in entries)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(fresh, self.path)
        sync_directory(self.path.parent)
        self.close()  # the next append opens the new file


async def _mark(connection: AsyncConnection) -> int:
    mark = await connection.scalar(
        select(OutboxJournalMark.applied).where(OutboxJournalMark.name == MARK)
    )
    return mark or 0


def _encode(entry: Entry) -> bytes:
    results = {name: value for name in _FIELDS if (value := getattr(entry.results, name))}
    line = {"n": entry.number, "at": entry.at, "results": results}
    return (json.dumps(line, default=_time, separators=(",", ":")) + "\n").encode()


def _time(value: object) -> dict[str, str]:
    if isinstance(value, datetime):
        return {_TIME: value.isoformat()}
    raise TypeError(f"{type(value).__name__} in an outbox journal entry")


def _untime(value: dict[str, Any]) -> Any:
    if len(value) == 1 and _TIME in value:
        return datetime.fromisoformat(value[_TIME])
    return value


def _read(path: Path) -> list[Entry]:
    """The entries in the file at PATH, in order; a line that is not whole is left out (the
    last, cut short by a crash: its record was never confirmed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("cut short")
            found = json.loads(line, object_hook=_untime)
            entries.append(Entry(int(found["n"]), found["at"], Results(**found["results"])))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("outbox_journal_line_skipped", path=str(path), line=number, error=str(exc))
    return entries
