"""The Alembic migrations build exactly the models, and go down and up again, on both databases."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from helpdeskd.store.db import SCHEMA_HEAD, create_engine, downgrade, head_revision, upgrade
from helpdeskd.store.models import Base


def _diff(url: str) -> list[object]:
    def compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async def main() -> list[object]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _tables(url: str) -> set[str]:
    async def main() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_migrations_build_exactly_the_models(db_url):
    assert head_revision() is not None
    assert _diff(db_url) == []


def test_the_schema_check_knows_the_newest_migration():
    assert head_revision() == SCHEMA_HEAD, (
        "a new migration: set helpdeskd.store.db.SCHEMA_HEAD to it"
    )


def test_downgrade_and_upgrade_again(db_url):
    downgrade(db_url, "base")
    assert _tables(db_url) <= {"alembic_version"}
    upgrade(db_url)
    assert set(Base.metadata.tables) <= _tables(db_url)
    assert _diff(db_url) == []
