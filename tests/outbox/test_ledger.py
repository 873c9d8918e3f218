"""The outbox ledger's SQL: how the database finds the rows a claim takes and a record writes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.dialects import sqlite

from helpdeskd.outbox import ledger
from helpdeskd.store import db
from helpdeskd.store.db import SessionMaker, engine_of
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


async def test_a_claim_reads_due_rows_in_index_order(sessions: SessionMaker) -> None:
    """A notice's thousands of rows are all due at the same time. Ordered by (next_attempt_at,
    id) on an index of (state, next_attempt_at), each claim on PostgreSQL read and sorted every
    due row (under FOR UPDATE SKIP LOCKED, no top-N sort): a notice to N customers cost
    N²/batch. A claim walks the index in its order and stops at the batch."""
    async with engine_of(sessions).connect() as connection:
        due = NOW - timedelta(minutes=1)
        rows = _pending_rows(3000, due, data=b"x" * 1200, attempts=0)
        postgres = await _stored(connection, rows)
        for lease, params in _step_params(postgres):
            # The second step: the one that takes a notice's rows.
            plan = await _database_plan(connection, ledger._DUE[(False, lease)], params)
            await connection.rollback()
            assert "ix_outbox_state_next_attempt_at_id" in plan, plan
            assert ("Sort" if postgres else "TEMP B-TREE") not in plan, plan


async def test_a_claims_first_step_reads_the_pending_transactional_mail_alone(
    sessions: SessionMaker,
) -> None:
    """The first step takes every transactional mail due, however long ago it became due (a
    batch commits its acknowledgements after a claim may have run), without walking the rows
    of a notice queued beside them: on the partial index of the pending transactional rows.
    On PostgreSQL also in the plan it keeps for any values of the parameters (asyncpg prepares
    each statement once), which could not use the index if the state were a parameter."""
    async with engine_of(sessions).connect() as connection:
        due = NOW - timedelta(minutes=1)
        notice = (
            await connection.execute(
                insert(ledger._NOTICES).returning(ledger._NOTICES.c.id),
                {"category": "survey", "template": "t", "audience": "all", "critical": False},
            )
        ).scalar_one()
        rows = _pending_rows(3000, due, data=b"x" * 1200, attempts=0)
        for n, row in enumerate(rows):  # a notice's, and a hundred acknowledgements
            row["notice_id"] = notice if n < 2900 else None
        postgres = await _stored(connection, rows)
        for lease, params in _step_params(postgres):
            plans = [await _database_plan(connection, ledger._DUE[(True, lease)], params)]
            await connection.rollback()
            if postgres:
                plans.append(await _generic_plan(connection, ledger._DUE[(True, lease)], params))
            for plan in plans:
                assert "ix_outbox_transactional_due" in plan, plan
                assert ("Sort" if postgres else "TEMP B-TREE") not in plan, plan


async def _stored(connection: Any, rows: list[dict[str, Any]]) -> bool:
    """Insert outbox ROWS and commit; on PostgreSQL, analyze the table as autovacuum would.
    Whether it is PostgreSQL."""
    await connection.execute(insert(ledger._OUTBOX), rows)
    await connection.commit()
    postgres = bool(connection.dialect.name == "postgresql")
    if postgres:
        await connection.execute(text("ANALYZE outbox"))
        await connection.commit()
    return postgres


def _step_params(postgres: bool) -> list[tuple[bool, dict[str, Any]]]:
    """A claim step's parameters without a lease, and on POSTGRES with one too."""
    plain: dict[str, Any] = {"now": NOW, "exclude": [1, 2], "limit": 200}
    leased = {**plain, "lease": NOW + timedelta(seconds=20)}
    return [(False, plain), (True, leased)] if postgres else [(False, plain)]


def _pending_rows(count: int, due: datetime, *, data: bytes, attempts: int) -> list[dict[str, Any]]:
    """COUNT pending outbox rows of a notice, due at DUE, each with DATA as its mail."""
    return [
        {
            "kind": "notice",
            "message_id": f"<n{i}@example.org>",
            "envelope_from": "notices@example.org",
            "data": data,
            "state": "pending",
            "attempts": attempts,
            "next_attempt_at": due,
            "created_at": due,
        }
        for i in range(count)
    ]


async def _sent_to_driver(connection: Any, statement: Any, params: dict[str, Any]) -> Any:
    """Run STATEMENT with PARAMS (in the caller's transaction) and return the SQL and the
    parameters the driver was given."""
    sent: list[tuple[str, Any]] = []

    def take(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_args: Any) -> None:
        sent.append((sql, parameters))

    event.listen(connection.sync_connection, "before_cursor_execute", take)
    try:
        await connection.execute(statement, params)
    finally:
        event.remove(connection.sync_connection, "before_cursor_execute", take)
    return sent[-1]


async def _database_plan(connection: Any, statement: Any, params: dict[str, Any]) -> str:
    """The database's own plan for STATEMENT with PARAMS: the SQL and parameters the driver
    is given, taken as the statement runs (its transaction is the caller's to roll back),
    then explained."""
    sql, parameters = await _sent_to_driver(connection, statement, params)
    explain = "EXPLAIN" if connection.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    rows = await connection.exec_driver_sql(f"{explain} {sql}", parameters)
    return "\n".join(str(row[-1]) for row in rows)


async def _generic_plan(connection: Any, statement: Any, params: dict[str, Any]) -> str:
    """PostgreSQL's plan for STATEMENT made for any values of its parameters, as a prepared
    statement keeps once it has run a few times."""
    try:
        sql, parameters = await _sent_to_driver(connection, statement, params)
    finally:
        await connection.rollback()
    await connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    await connection.exec_driver_sql(f"PREPARE claim_step AS {sql}")
    try:
        arguments = ", ".join(_literal(value) for value in parameters)
        rows = await connection.exec_driver_sql(f"EXPLAIN EXECUTE claim_step({arguments})")
        return "\n".join(str(row[-1]) for row in rows)
    finally:
        await connection.rollback()
        await connection.exec_driver_sql("DEALLOCATE claim_step")
        await connection.exec_driver_sql("RESET plan_cache_mode")
        await connection.commit()


def _literal(value: Any) -> str:
    """VALUE (a claim's parameter: a time, a list of ids, a number) as SQL."""
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, list):
        return f"ARRAY[{', '.join(str(int(v)) for v in value)}]::integer[]"
    return str(int(value))


async def test_a_row_sent_to_all_it_was_tried_for_is_sent_unless_a_recipient_is_pending_again(
    sessions: SessionMaker,
) -> None:
    """A row sent to every recipient it was tried for is sent, at the record's time. One whose
    failed recipient was made pending again meanwhile (``outbox retry`` of the row while it was
    in flight) counts the attempt and stays pending, its sent_at untouched, so that recipient
    still gets the mail."""
    await _sent_unless_pending_again(engine_of(sessions), ledger.record)


async def test_postgresqls_record_in_one_statement_writes_what_the_record_writes(
    pg_url: str,
) -> None:
    """PostgreSQL's common record in one statement: the same rows and recipients, the row
    with a recipient pending again left pending (its recipients' update, a CTE, is not seen by
    the rows' update)."""
    engine = db.create_engine(pg_url)
    try:
        await _sent_unless_pending_again(engine, ledger.record_sent)
    finally:
        await engine.dispose()


async def _sent_unless_pending_again(engine: Any, write: Any) -> None:
    """Two rows: one to a@, one to b@ and c@, c@ failed once and made pending again; WRITE the
    results of sending both rows to a@ and b@."""
    earlier = NOW - timedelta(hours=1)
    async with engine.connect() as connection:
        rows = _pending_rows(2, earlier, data=b"x", attempts=1)
        ids = list(
            (
                await connection.execute(
                    insert(ledger._OUTBOX).returning(ledger._OUTBOX.c.id), rows
                )
            ).scalars()
        )
        recipients = [
            {"outbox_id": ids[0], "address": "a@example.org", "state": "pending", "attempts": 0},
            {"outbox_id": ids[1], "address": "b@example.org", "state": "pending", "attempts": 0},
            # failed at the first attempt, made pending again by `outbox retry`
            {"outbox_id": ids[1], "address": "c@example.org", "state": "pending", "attempts": 1},
        ]
        rids = list(
            (
                await connection.execute(
                    insert(ledger._RECIPIENTS).returning(ledger._RECIPIENTS.c.id), recipients
                )
            ).scalars()
        )
        await connection.commit()
        results = ledger.Results(sent=rids[:2], sent_rows=ids)
        assert results.sent_only()
        async with connection.begin():
            await write(connection, results, NOW)
        found = {
            row_id: (state, attempts, sent_at, due)
            for row_id, state, attempts, sent_at, due in await connection.execute(
                select(
                    ledger._OUTBOX.c.id,
                    ledger._OUTBOX.c.state,
                    ledger._OUTBOX.c.attempts,
                    ledger._OUTBOX.c.sent_at,
                    ledger._OUTBOX.c.next_attempt_at,
                )
            )
        }
        sent = {
            address: (state, attempts, sent_at)
            for address, state, attempts, sent_at in await connection.execute(
                select(
                    ledger._RECIPIENTS.c.address,
                    ledger._RECIPIENTS.c.state,
                    ledger._RECIPIENTS.c.attempts,
                    ledger._RECIPIENTS.c.sent_at,
                )
            )
        }
    assert found[ids[0]] == ("sent", 2, NOW, NOW)
    assert found[ids[1]] == ("pending", 2, None, NOW)
    assert sent == {
        "a@example.org": ("sent", 1, NOW),
        "b@example.org": ("sent", 1, NOW),
        "c@example.org": ("pending", 1, None),
    }


async def test_a_delivery_failure_is_not_recorded_against_an_address_erased_meanwhile(
    sessions: SessionMaker,
) -> None:
    """A recipient's delivery_failed event names its address. When an erasure took the address
    out of the recipient between the send and the record, the record writes no event that
    would bring it back; another recipient's event is written as ever."""
    async with engine_of(sessions).connect() as connection:
        rows = _pending_rows(2, NOW, data=b"x", attempts=0)
        ids = list(
            (
                await connection.execute(
                    insert(ledger._OUTBOX).returning(ledger._OUTBOX.c.id), rows
                )
            ).scalars()
        )
        rids = []
        for row_id, address in zip(ids, ["gone@example.org", "kept@example.org"], strict=True):
            rids.append(
                await connection.scalar(
                    insert(ledger._RECIPIENTS)
                    .values(outbox_id=row_id, address=address, state="pending", attempts=0)
                    .returning(ledger._RECIPIENTS.c.id)
                )
            )
        # the erasure: the recipient's address is a pseudonym, its mail cancelled
        await connection.execute(
            ledger._RECIPIENTS.update()
            .where(ledger._RECIPIENTS.c.id == rids[0])
            .values(address="erased-1@erased.invalid", state="skipped")
        )
        await connection.commit()
        results = ledger.Results(done=ids)
        for rid, address in zip(rids, ["gone@example.org", "kept@example.org"], strict=True):
            results.failed.append({"rid": rid, "e": "550 no such user"})
            results.events.append(
                {
                    "ticket_id": None,
                    "rid": rid,
                    "recipient": address,
                    "detail": {"recipient": address, "error": "550 no such user"},
                    "created_at": NOW,
                }
            )
        async with connection.begin():
            await ledger.record(connection, results, NOW)
        events = (
            await connection.execute(
                select(ledger._EVENTS.c.type, ledger._EVENTS.c.actor, ledger._EVENTS.c.detail)
            )
        ).all()
    assert [tuple(e) for e in events] == [
        (
            "delivery_failed",
            "system",
            {"recipient": "kept@example.org", "error": "550 no such user"},
        )
    ]
