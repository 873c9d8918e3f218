"""The registry of daemons: registered at start, beating, removed on a clean stop, shown stale
when its heartbeat is overdue, and a dead predecessor on the same machine recognised."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.leases import acquire, database_now
from helpdeskd.store.models import DaemonRecord
from helpdeskd.store.registry import (
    Identity,
    daemon_rows,
    deregister,
    heartbeat,
    pid_alive,
    register,
)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


async def rows(sessions: SessionMaker) -> list[dict[str, object]]:
    async with reading(sessions) as session:
        return await daemon_rows(session, await database_now(session))


async def test_registered_beating_and_gone_after_a_clean_stop(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    me = Identity.here(tmp_path)
    assert await register(sessions, me, every=5) == []
    [row] = await rows(sessions)
    assert row["id"] == me.id and row["pid"] == me.pid and row["host"] == me.host
    assert row["version"] == me.version and row["stale"] is False and row["mailboxes"] == []
    first = row["heartbeat_at"]
    await heartbeat(sessions, me, every=5)
    [row] = await rows(sessions)
    assert str(row["heartbeat_at"]) >= str(first) and row["stale"] is False
    await acquire(sessions, "support", me.id, seconds=60)
    assert (await rows(sessions))[0]["mailboxes"] == ["support"]
    await deregister(sessions, me)
    assert await rows(sessions) == []


async def test_an_overdue_heartbeat_is_stale_and_a_day_later_forgotten(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    gone = replace(Identity.here(tmp_path / "a"), pid=dead_pid())
    live = Identity.here(tmp_path / "b")
    await register(sessions, gone, every=5)
    await register(sessions, live, every=5)
    async with sessions() as session, session.begin():
        await session.execute(
            update(DaemonRecord)
            .where(DaemonRecord.id == gone.id)
            .values(stale_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    stale = {row["id"]: row["stale"] for row in await rows(sessions)}
    assert stale == {gone.id: True, live.id: False}
    async with sessions() as session, session.begin():
        await session.execute(
            update(DaemonRecord)
            .where(DaemonRecord.id == gone.id)
            .values(stale_at=datetime.now(UTC) - timedelta(days=1, minutes=1))
        )
    await heartbeat(sessions, live, every=5)
    assert [row["id"] for row in await rows(sessions)] == [live.id]


async def test_a_dead_predecessor_on_this_machine_is_replaced(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    """Killed with SIGKILL and restarted (same machine, same state directory): the new daemon
    removes the old row and may take its leases at once. A live daemon there, or a dead one
    elsewhere, is left alone (its leases expire)."""
    killed = replace(Identity.here(tmp_path), pid=dead_pid())
    running = replace(Identity.here(tmp_path), pid=1)  # alive: pid 1 always is
    elsewhere = replace(Identity.here(tmp_path), pid=dead_pid(), machine="other-host:1")
    for daemon in (running, elsewhere, killed):
        await register(sessions, daemon, every=5)
    restarted = Identity.here(tmp_path)
    assert await register(sessions, restarted, every=5) == [killed.id]
    left = {row["id"] for row in await rows(sessions)}
    assert left == {running.id, elsewhere.id, restarted.id}
    # another state directory is another daemon, not a predecessor
    assert await register(sessions, Identity.here(tmp_path / "other"), every=5) == []


async def test_a_row_removed_meanwhile_is_added_again_by_the_heartbeat(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    me = Identity.here(tmp_path)
    await register(sessions, me, every=5)
    async with sessions() as session, session.begin():
        await session.delete(await session.get_one(DaemonRecord, me.id))
    await heartbeat(sessions, me, every=5)
    async with sessions() as session:
        assert (await session.scalars(select(DaemonRecord.id))).all() == [me.id]
