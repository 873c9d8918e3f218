"""The outbox ledger's SQL: how SQLite finds the rows a record writes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import sqlite

from helpdeskd.outbox import ledger
from helpdeskd.store.models import Base

NOW = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "outbox.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    connection = sqlite3.connect(path)
    yield connection
    connection.close()


def _plan(connection: sqlite3.Connection, statement) -> str:
    """SQLite's plan for STATEMENT, its id list three ids long (the other values unbound: a
    plan needs none)."""
    sql = str(statement.compile(dialect=sqlite.dialect()))
    sql = sql.replace("(__[POSTCOMPILE_ids])", "(1, 2, 3)")
    rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", [None] * sql.count("?")).fetchall()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(
    "name", ["_SENT_ROWS", "_EXPIRED_ROWS", "_DONE_ROWS[0]", "_DONE_ROWS[1]", "renew"]
)
def test_a_record_finds_its_rows_by_primary_key(database, name) -> None:
    """With 100,000 notice rows pending, a record that walked the (state, next_attempt_at)
    index for state = 'pending' tested each of them against its ids (23 ms a record); it must
    look its rows up by id. SQLite has no statistics here, as in a fresh database."""
    if name == "renew":
        statement = (
            ledger.update(ledger._OUTBOX)
            .where(ledger._pending_rows(ledger._OUTBOX.c.id.in_(ledger._IDS)))
            .values(next_attempt_at=NOW)
        )
    elif name.startswith("_DONE_ROWS"):
        statement = ledger._DONE_ROWS[int(name[-2])]
    else:
        statement = getattr(ledger, name)
    plan = _plan(database, statement)
    first = plan.splitlines()[0]
    assert "SEARCH outbox USING INTEGER PRIMARY KEY" in first, plan
