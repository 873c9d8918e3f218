"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpdeskd.store.db import SessionMaker, create_engine, sessionmaker


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[SessionMaker]:
    """Sessions on a migrated, empty database (SQLite, then PostgreSQL: see db_url)."""
    engine = create_engine(db_url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()
