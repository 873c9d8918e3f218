"""SQLite transactions as helpdeskd opens them: a writer locks at once, a READ_ONLY reader never
waits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from helpdeskd.store.db import READ_ONLY, create_engine, sessionmaker, upgrade
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
