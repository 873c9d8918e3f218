"""A list bound as one parameter (one_of, none_of) selects what IN and NOT IN select, on SQLite
and PostgreSQL, with one statement whatever the list's length."""

from __future__ import annotations

import pytest
from sqlalchemy import event, insert, select, update

from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import Base, Contact
from helpdeskd.store.valuelist import none_of, one_of, values

_CONTACTS = Base.metadata.tables[Contact.__tablename__]
EMAILS = ["ada@example.org", "bob@example.org", "chloé@exämple.org", "o'hara@example.org"]

_BY_ID = select(_CONTACTS.c.email).where(one_of(_CONTACTS.c.id, values("ids", "int")))
_NOT_BY_ID = select(_CONTACTS.c.email).where(none_of(_CONTACTS.c.id, values("ids", "int")))
_BY_EMAIL = select(_CONTACTS.c.id).where(one_of(Contact.email, values("emails", "text")))


@pytest.fixture
async def ids(sessions: SessionMaker) -> dict[str, int]:
    async with sessions() as session, session.begin():
        await session.execute(insert(_CONTACTS), [{"email": e} for e in EMAILS])
        rows = await session.execute(select(_CONTACTS.c.email, _CONTACTS.c.id))
        return {email: contact_id for email, contact_id in rows}


async def test_one_of_and_none_of_select_as_in_and_not_in(
    sessions: SessionMaker, ids: dict[str, int]
) -> None:
    ada, chloe = ids["ada@example.org"], ids["chloé@exämple.org"]
    async with sessions() as session:
        connection = await session.connection()

        async def emails(statement: object, given: object) -> set[str]:
            return set((await connection.execute(statement, {"ids": given})).scalars())  # type: ignore[call-overload]

        assert await emails(_BY_ID, [ada, chloe, 999_999]) == {
            "ada@example.org",
            "chloé@exämple.org",
        }
        assert await emails(_NOT_BY_ID, [ada, chloe]) == {"bob@example.org", "o'hara@example.org"}
        assert await emails(_BY_ID, (i for i in (ada,))) == {"ada@example.org"}  # any iterable
        # An empty list: nothing is one of it, everything is none of it.
        assert await emails(_BY_ID, []) == set()
        assert await emails(_NOT_BY_ID, []) == set(EMAILS)
        found = await connection.execute(
            _BY_EMAIL, {"emails": ["chloé@exämple.org", "o'hara@example.org", "nobody@x.org"]}
        )
        assert set(found.scalars()) == {chloe, ids["o'hara@example.org"]}


async def test_the_statement_is_the_same_for_every_length(
    sessions: SessionMaker, ids: dict[str, int]
) -> None:
    """One SQL text for 1, 2 and 300 values: the database prepares it once (an expanding IN
    would be a new statement for each length)."""
    texts: list[str] = []
    async with sessions() as session, session.begin():
        connection = await session.connection()

        def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
            texts.append(statement)

        sync_engine = connection.sync_engine
        event.listen(sync_engine, "before_cursor_execute", seen)
        try:
            for given in ([1], [1, 2], list(range(300))):
                await connection.execute(_BY_ID, {"ids": given})
            await connection.execute(
                update(_CONTACTS)
                .where(one_of(_CONTACTS.c.id, values("ids", "int")))
                .values(suppressed=True),
                {"ids": list(ids.values())[:2]},
            )
        finally:
            event.remove(sync_engine, "before_cursor_execute", seen)
        assert len(texts) == 4 and len(set(texts[:3])) == 1
        suppressed = await connection.execute(
            select(_CONTACTS.c.email).where(_CONTACTS.c.suppressed)
        )
        assert len(suppressed.all()) == 2
