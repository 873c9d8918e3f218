"""An erased person's copies in the processed folder, and old processed mail, on a real Dovecot."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from helpdeskd.clock import system_clock
from helpdeskd.desk.erasure import erase
from helpdeskd.imap.erase import expunge_pending, imap_date, keep_mailboxes, quoted, sweep_processed
from helpdeskd.store.models import PendingDeletion, Ticket
from tests.conftest import config_factory, sqlite_database
from tests.desk.privacy_scene import ADA, ADA_NAME, BOB, mail_with_file, with_sections
from tests.harness import Desk
from tests.servers.fixtures import SUPPORT_PASSWORD as PASSWORD
from tests.servers.fixtures import SUPPORT_USER as USER

NO_UIDPLUS = "imap_capability = IMAP4rev1 IDLE MOVE"


@pytest.fixture
def sqlite_config(request, tmp_path):
    """The config factory on SQLite only: what IMAP does is the same on either database (the
    first test here runs on both)."""
    url = sqlite_database(request, tmp_path / "helpdeskd.db")
    return config_factory(tmp_path, url)


def mails() -> list[bytes]:
    return [
        mail_with_file(1, ADA, ADA_NAME, "First", "Her first mail.\n", b"a" * 100),
        mail_with_file(2, ADA, ADA_NAME, "Second", "Her second mail.\n", b"b" * 100),
        mail_with_file(3, BOB, "Bob Stone", "His", "His mail.\n", b"c" * 100),
    ]


def mailbox_config(make_config, server, **extra):
    mailbox = {
        "name": "support",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": USER,
        "password": PASSWORD,
        "timeout": 5,
        **extra,
    }
    return make_config(mailboxes=[mailbox])


async def stored(config, folder: str, server, flags: str = "") -> tuple[Desk, list[str]]:
    """The desk took the mails in: they sit in FOLDER (with FLAGS) and in the database, as
    the watcher leaves them."""
    raws = mails()
    for raw in raws:
        server.append(USER, PASSWORD, raw, folder=folder, flags=flags)
    desk = Desk(config)
    outcomes = await desk.ingest(raws, source="support")
    return desk, [str(o.ticket) for o in outcomes]


def messages_in(server, folder: str) -> list[bytes]:
    return [
        server.fetch(USER, PASSWORD, uid, folder)
        for uid in server.list_uids(USER, PASSWORD, folder)
    ]


async def test_erasure_expunges_her_processed_copies_only(make_config, dovecot):
    config = mailbox_config(make_config, dovecot, processed_folder="Processed")
    dovecot.append(USER, PASSWORD, b"Subject: not the desk's\r\n\r\nx\r\n", folder="Processed")
    desk, _ = await stored(config, "Processed", dovecot)
    async with desk:
        report = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        assert sorted(mid for _, mid in report.imap) == [f"<scene1.{ADA}>", f"<scene2.{ADA}>"]
        done = await expunge_pending(desk.sessions, config)
        assert (done.expunged, done.left, done.failed) == (2, [], [])
        async with desk.sessions() as session:
            assert await session.scalar(select(func.count(PendingDeletion.id))) == 0
    left = b"\n".join(messages_in(dovecot, "Processed"))
    assert ADA.encode() not in left
    assert BOB.encode() in left and b"not the desk's" in left


async def test_without_a_processed_folder_the_marked_copies_go(sqlite_config, dovecot, tmp_path):
    config = mailbox_config(sqlite_config, dovecot)
    desk, _ = await stored(config, "INBOX", dovecot, flags="$Helpdeskd")
    unmarked = dovecot.append(USER, PASSWORD, mails()[0], folder="INBOX")  # not taken in yet
    async with desk:
        await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        done = await expunge_pending(desk.sessions, config)
    assert done.expunged == 2
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == [3, unmarked]


async def test_without_uidplus_the_copies_are_flagged_and_listed(sqlite_config, dovecot_factory):
    server = dovecot_factory(extra_config=NO_UIDPLUS)
    config = mailbox_config(sqlite_config, server, processed_folder="Processed")
    desk, _ = await stored(config, "Processed", server)
    async with desk:
        await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        done = await expunge_pending(desk.sessions, config)
    assert done.expunged == 0
    assert sorted(left.uids for left in done.left) == [(1,), (2,)]
    assert all("UIDPLUS" in left.reason for left in done.left)
    flags = server.flags(USER, PASSWORD, "Processed")
    assert "\\Deleted" in flags[1] and "\\Deleted" in flags[2] and "\\Deleted" not in flags[3]


async def test_an_unreachable_mailbox_is_tried_again_later(sqlite_config, dovecot):
    config = mailbox_config(sqlite_config, dovecot, processed_folder="Processed")
    desk, _ = await stored(config, "Processed", dovecot)
    async with desk:
        await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        dovecot.stop()
        done = await expunge_pending(desk.sessions, config)
        assert done.expunged == 0 and done.failed and done.failed[0].startswith("support: ")
        async with desk.sessions() as session:
            attempts = list(await session.scalars(select(PendingDeletion.attempts)))
        assert attempts == [1, 1]
        dovecot.start()
        # the daemon's round: at most hourly for the pending copies, and now is its first
        assert await keep_mailboxes(desk.sessions, config, system_clock()) == 2
    assert len(dovecot.list_uids(USER, PASSWORD, "Processed")) == 1


async def test_retention_sweeps_old_processed_mail_but_not_held_tickets(sqlite_config, dovecot):
    config = mailbox_config(sqlite_config, dovecot, processed_folder="Processed")
    config = with_sections(config, "\n[retention]\nprocessed_mail_days = 30\n")
    desk, tickets = await stored(config, "Processed", dovecot)
    later = system_clock() + timedelta(days=31)  # all of it arrived before the cutoff
    async with desk:
        async with desk.sessions.begin() as session:
            await session.execute(
                update(Ticket).where(Ticket.id == int(tickets[1][3:])).values(tags=["hold"])
            )
        now = system_clock()
        assert await sweep_processed(desk.sessions, config, now) is not None
        assert len(dovecot.list_uids(USER, PASSWORD, "Processed")) == 3  # nothing old yet
        hour = timedelta(hours=1)
        assert await sweep_processed(desk.sessions, config, now + hour) is None  # once a day
        done = await sweep_processed(desk.sessions, config, later)
        assert done is not None and done.expunged == 2
    [kept] = messages_in(dovecot, "Processed")
    assert b"Her second mail." in kept


@pytest.mark.parametrize(
    "value, wire", [("<a@b>", '"<a@b>"'), ('<"x"@b>', '"<\\"x\\"@b>"'), ("<a\\b>", '"<a\\\\b>"')]
)
def test_message_ids_are_quoted_for_search(value, wire):
    assert quoted(value) == wire


def test_imap_dates():
    from datetime import UTC, datetime

    assert imap_date(datetime(2026, 12, 5, 23, 0, tzinfo=UTC)) == "5-Dec-2026"
