"""The daemon's lease wiring: a watcher whose lease is taken away mid-run stores nothing more,
moves nothing more and gives the mailbox up at once (real Dovecot, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from helpdeskd.daemon.run import LeasedSink, ProcessorSink, lease_seconds
from helpdeskd.errors import HelpdeskError
from helpdeskd.imap.watcher import FetchedMail, MailboxWatcher
from helpdeskd.store.leases import acquire
from helpdeskd.store.models import MailboxLease, RawMessage
from tests.harness import Desk
from tests.mailgen import customer_mail
from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD, SUPPORT_USER


class TakenAway(LeasedSink):
    """A leased sink whose lease another daemon takes while the second batch is stored."""

    def __init__(self, sink: ProcessorSink, lease: Any) -> None:
        super().__init__(sink, lease)
        self.batches: list[list[int]] = []

    async def prepare_batch(
        self, mailbox: str, uidvalidity: int, mails: Sequence[FetchedMail]
    ) -> Any:
        self.batches.append([m.uid for m in mails])
        return await super().prepare_batch(mailbox, uidvalidity, mails)

    async def store_batch(self, prepared: Any) -> None:
        if prepared[1].last_uid > 10:  # the second batch: the lease expires and is taken
            sessions = self.sink.sessions
            async with sessions() as session, session.begin():
                await session.execute(
                    update(MailboxLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
            assert await acquire(sessions, "support", "another-daemon", seconds=60)
        await super().store_batch(prepared)


async def test_a_watcher_whose_lease_is_taken_stores_and_moves_nothing_more(
    make_config: Any, dovecot: Dovecot
) -> None:
    for n in range(30):
        dovecot.append(SUPPORT_USER, SUPPORT_PASSWORD, customer_mail(n))
    mailbox = {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": SUPPORT_USER,
        "password": SUPPORT_PASSWORD,
        "processed_folder": "Processed",
        "batch_size": 10,
    }
    config = make_config(mailboxes=[mailbox], agents=[])
    async with Desk(config) as desk:
        lease = await acquire(desk.sessions, "support", "this-daemon", seconds=60)
        assert lease is not None
        sink = TakenAway(ProcessorSink(desk.processor, desk.sessions), lease)
        stop = asyncio.Event()  # never set: the watcher must end by itself
        with capture_logs() as logs:
            await asyncio.wait_for(MailboxWatcher(config.mailboxes[0], sink, stop=stop).run(), 120)
        async with desk.sessions() as session:
            stored = sorted((await session.scalars(select(RawMessage.uid))).all())
            assert await session.scalar(select(func.count(RawMessage.id))) == 10
    first = sink.batches[0]
    assert stored == first  # the first batch only: nothing after the lease was lost
    moved = dovecot.list_uids(SUPPORT_USER, SUPPORT_PASSWORD, "Processed")
    assert len(moved) <= 10  # at most the first batch, committed under the lease
    assert len(dovecot.list_uids(SUPPORT_USER, SUPPORT_PASSWORD)) >= 20
    events = [e["event"] for e in logs]
    assert "mailbox_lease_lost" in events
    assert "imap_reconnect_scheduled" not in events  # given up, not retried
    assert events.count("imap_batch_stored") == 1


def test_the_lease_lasts_ten_seconds_unless_tests_shorten_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HELPDESKD_LEASE_SECONDS", raising=False)
    assert lease_seconds() == 10.0
    monkeypatch.setenv("HELPDESKD_LEASE_SECONDS", "2.5")
    assert lease_seconds() == 2.5
    for wrong in ("0.5", "soon", "1000"):
        monkeypatch.setenv("HELPDESKD_LEASE_SECONDS", wrong)
        with pytest.raises(HelpdeskError, match="HELPDESKD_LEASE_SECONDS"):
            lease_seconds()
