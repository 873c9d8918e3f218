"""The IMAP watcher against a real private Dovecot (no IMAP mocks): catch-up, batches, marks."""

from __future__ import annotations

import asyncio
from typing import Any

import aioimaplib
import pytest
from structlog.testing import capture_logs

from helpdeskd.config.secrets import Secret
from helpdeskd.imap.client import FETCH_BYTES, MAX_FETCH
from helpdeskd.imap.watcher import KEYWORD, MailboxWatcher
from tests.imap.support import (
    DovecotFactory,
    RecordingSink,
    eventually,
    mailbox,
    message,
    ok_polls,
    watching,
)
from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD as PASSWORD
from tests.servers.fixtures import SUPPORT_USER as USER

NO_MOVE = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS\n"
NO_IDLE = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UIDPLUS MOVE\n"


# --- one-shot catch-up -----------------------------------------------------------------------


async def test_every_mail_reaches_the_sink_once_and_is_moved(dovecot: Dovecot) -> None:
    raws = [message(n) for n in range(20)]
    for raw in raws:
        dovecot.append(USER, PASSWORD, raw)
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=7), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 20

    assert sink.raws() == set(raws)
    assert set(sink.deliveries.values()) == {1}
    assert [len(batch) for batch in sink.batches] == [7, 7, 6]
    assert all(mail.size == len(mail.raw or b"") for mail in sink.mails.values())
    assert all(mail.internal_date for mail in sink.mails.values())
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []
    processed = dovecot.flags(USER, PASSWORD, "Processed")
    assert len(processed) == 20
    assert not any("\\Seen" in flags for flags in processed.values())  # BODY.PEEK[] only
    assert sink.polls == [(True, None)]
    assert await watcher.run_once() == 0
    assert len(sink.mails) == 20


async def test_a_batch_bigger_than_one_fetch_arrives_whole_and_intact(dovecot: Dovecot) -> None:
    # 12 mails of about 24 kB: one batch, fetched in several FETCH commands of <= FETCH_BYTES.
    raws = [message(n, body=f"line {n} of a long log\r\n" * 1000) for n in range(12)]
    assert sum(map(len, raws)) > 3 * FETCH_BYTES
    for raw in raws:
        dovecot.append(USER, PASSWORD, raw)
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=12), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 12

    assert [len(batch) for batch in sink.batches] == [12]
    assert sink.raws() == set(raws)
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []


def _count_uids(uids: str) -> int:
    """How many UIDs a UID set such as '1:100,104' names."""
    count = 0
    for part in uids.split(","):
        first, _, last = part.partition(":")
        count += int(last or first) - int(first) + 1
    return count


async def test_a_batch_of_more_mail_than_one_fetch_takes_arrives_whole(
    dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small mail, more of it than one FETCH asks for: one batch, one commit, several FETCHes.
    raws = [message(n) for n in range(MAX_FETCH + 30)]
    for raw in raws:
        dovecot.append(USER, PASSWORD, raw)
    asked: list[int] = []
    real_uid = aioimaplib.IMAP4.uid

    async def uid(self: aioimaplib.IMAP4, command: str, *criteria: str, **kw: Any) -> Any:
        if command == "fetch" and "BODY.PEEK[]" in criteria[-1]:
            asked.append(_count_uids(criteria[0]))
        return await real_uid(self, command, *criteria, **kw)

    monkeypatch.setattr(aioimaplib.IMAP4, "uid", uid)
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=len(raws)), sink, stop=asyncio.Event())

    assert await watcher.run_once() == len(raws)

    assert [len(batch) for batch in sink.batches] == [len(raws)]
    assert sink.raws() == set(raws)
    assert sum(asked) == len(raws)
    assert max(asked) <= MAX_FETCH
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []


async def test_keyword_mode_marks_in_place_and_skips_marked_mail(dovecot: Dovecot) -> None:
    for n in range(3):
        dovecot.append(USER, PASSWORD, message(n))
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot, processed_folder=None), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 3
    flags = dovecot.flags(USER, PASSWORD, "INBOX")
    assert len(flags) == 3
    assert all(KEYWORD in f and "\\Seen" not in f for f in flags.values())
    assert await watcher.run_once() == 0

    dovecot.append(USER, PASSWORD, message(99))
    assert await watcher.run_once() == 1
    assert message(99) in sink.raws()
    assert set(sink.deliveries.values()) == {1}


async def test_a_failing_sink_leaves_mail_in_the_folder(dovecot: Dovecot) -> None:
    uids = [dovecot.append(USER, PASSWORD, message(n)) for n in range(5)]
    failing = RecordingSink(fail=RuntimeError("database is locked"))
    config = mailbox(dovecot)

    with pytest.raises(RuntimeError, match="database is locked"):
        await MailboxWatcher(config, failing, stop=asyncio.Event()).run_once()

    assert failing.polls == [(False, "RuntimeError: database is locked")]
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == uids
    assert dovecot.list_uids(USER, PASSWORD, "Processed") == []
    sink = RecordingSink()
    assert await MailboxWatcher(config, sink, stop=asyncio.Event()).run_once() == 5
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []


async def test_oversize_mail_is_passed_without_bytes_and_still_moved(dovecot: Dovecot) -> None:
    small = message(1)
    big = message(2, body="x" * 70 + "\r\n") * 1 + b"y" * 10_000 + b"\r\n"
    dovecot.append(USER, PASSWORD, small)
    big_uid = dovecot.append(USER, PASSWORD, big)
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot, max_message_bytes=2_000), sink, stop=asyncio.Event())

    with capture_logs() as logs:
        assert await watcher.run_once() == 2

    oversize = next(m for m in sink.mails.values() if m.uid == big_uid)
    assert oversize.raw is None
    assert oversize.size == len(big)
    assert oversize.internal_date
    assert small in sink.raws()
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []
    assert len(dovecot.list_uids(USER, PASSWORD, "Processed")) == 2
    assert any(e["event"] == "imap_message_oversize" and e["uid"] == big_uid for e in logs)


async def test_without_move_it_copies_and_expunges_only_its_own_uids(
    dovecot_factory: DovecotFactory,
) -> None:
    server = dovecot_factory(extra_config=NO_MOVE)
    # someone else's deleted message: a plain EXPUNGE would remove it, UID EXPUNGE must not
    foreign = server.append(USER, PASSWORD, message(0), flags="\\Deleted")
    for n in range(1, 4):
        server.append(USER, PASSWORD, message(n))
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(server), sink, stop=asyncio.Event())

    with capture_logs() as logs:
        assert await watcher.run_once() == 3

    assert message(0) not in sink.raws()
    assert server.list_uids(USER, PASSWORD, "INBOX") == [foreign]
    assert len(server.list_uids(USER, PASSWORD, "Processed")) == 3
    connected = next(e for e in logs if e["event"] == "imap_connected")
    assert connected["move"] is False and connected["uidplus"] is True


async def test_uidvalidity_change_is_passed_through(dovecot: Dovecot) -> None:
    dovecot.append(USER, PASSWORD, message(1))
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot), sink, stop=asyncio.Event())
    assert await watcher.run_once() == 1
    old = dovecot.uidvalidity(USER, PASSWORD, "INBOX")
    second_uid = dovecot.append(USER, PASSWORD, message(2))

    new = dovecot.change_uidvalidity(USER, PASSWORD, "INBOX")
    with capture_logs() as logs:
        assert await watcher.run_once() == 1

    assert new != old
    assert sink.mails[("support", old, 1)].raw == message(1)
    renumbered = [key for key in sink.mails if key[1] == new]
    assert len(renumbered) == 1
    assert sink.mails[renumbered[0]].raw == message(2)
    assert renumbered[0][2] != second_uid or new != old
    changed = next(e for e in logs if e["event"] == "imap_uidvalidity_changed")
    assert (changed["old"], changed["new"]) == (old, new)


async def test_the_next_batch_is_prepared_while_one_is_stored(dovecot: Dovecot) -> None:
    for n in range(6):
        dovecot.append(USER, PASSWORD, message(n))
    steps: list[str] = []

    class LoggingSink(RecordingSink):
        async def prepare_batch(self, mailbox: str, uidvalidity: int, mails: Any) -> Any:
            steps.append(f"prepare {[m.uid for m in mails]}")
            return await super().prepare_batch(mailbox, uidvalidity, mails)

        async def store_batch(self, prepared: Any) -> None:
            uids = [m.uid for m in prepared[2]]
            # the batch is still in INBOX when its commit begins (MOVE renumbers it in Processed)
            assert set(uids) <= set(dovecot.list_uids(USER, PASSWORD, "INBOX"))
            await asyncio.sleep(0.05)  # a commit takes a while: the next batch is being parsed
            await super().store_batch(prepared)
            steps.append(f"stored {uids}")

    sink = LoggingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=2), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 6
    assert steps == [
        "prepare [1, 2]",
        "prepare [3, 4]",
        "stored [1, 2]",
        "prepare [5, 6]",
        "stored [3, 4]",
        "stored [5, 6]",
    ]
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []


async def test_the_batch_before_is_moved_and_the_next_fetched_while_one_is_stored(
    dovecot: Dovecot,
) -> None:
    for n in range(6):
        dovecot.append(USER, PASSWORD, message(n))
    prepared: list[list[int]] = []
    seen_while_storing: dict[str, Any] = {}

    class WaitingSink(RecordingSink):
        async def prepare_batch(self, mailbox: str, uidvalidity: int, mails: Any) -> Any:
            prepared.append([m.uid for m in mails])
            return await super().prepare_batch(mailbox, uidvalidity, mails)

        async def store_batch(self, prepared_batch: Any) -> None:
            if [m.uid for m in prepared_batch[2]] == [3, 4]:
                # The store does not wait for the connection: [1, 2], committed before, is
                # still in INBOX and [5, 6] not fetched yet when it begins ...
                inbox = dovecot.list_uids(USER, PASSWORD, "INBOX")
                seen_while_storing["at start"] = (list(prepared), inbox)
                # ... and meanwhile the connection moves [1, 2], then fetches [5, 6] and
                # starts preparing it.
                await eventually(lambda: [5, 6] in prepared)
                inbox = await asyncio.to_thread(dovecot.list_uids, USER, PASSWORD, "INBOX")
                seen_while_storing["meanwhile"] = inbox
            await super().store_batch(prepared_batch)

    sink = WaitingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=2), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 6
    assert seen_while_storing["at start"] == ([[1, 2], [3, 4]], [1, 2, 3, 4, 5, 6])
    assert seen_while_storing["meanwhile"] == [3, 4, 5, 6]
    assert sink.batches == [[1, 2], [3, 4], [5, 6]]
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []
    assert len(dovecot.list_uids(USER, PASSWORD, "Processed")) == 6


async def test_cancelled_while_storing_leaves_the_rest_unmarked_and_nothing_dangling(
    dovecot: Dovecot,
) -> None:
    uids = [dovecot.append(USER, PASSWORD, message(n)) for n in range(6)]
    storing = asyncio.Event()
    loose: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: loose.append(context))

    class HangingSink(RecordingSink):
        async def store_batch(self, prepared: Any) -> None:
            if self.batches:  # the second batch: hangs until cancelled
                storing.set()
                await asyncio.Event().wait()
            await super().store_batch(prepared)

    sink = HangingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=2), sink, stop=asyncio.Event())
    task = asyncio.create_task(watcher.run_once())
    await asyncio.wait_for(storing.wait(), 5)
    await asyncio.sleep(0.2)  # the connection moves the first batch meanwhile
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    loop.set_exception_handler(None)

    assert sink.batches == [[1, 2]]
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == uids[2:]
    assert loose == []  # no task left behind whose failure nobody saw


async def test_a_failed_store_leaves_its_batch_and_the_one_prepared_ahead(dovecot: Dovecot) -> None:
    uids = [dovecot.append(USER, PASSWORD, message(n)) for n in range(6)]

    class FailingSecond(RecordingSink):
        async def store_batch(self, prepared: Any) -> None:
            if self.batches:
                raise RuntimeError("disk full")
            await super().store_batch(prepared)

    sink = FailingSecond()
    with pytest.raises(RuntimeError, match="disk full"):
        await MailboxWatcher(mailbox(dovecot, batch_size=2), sink, stop=asyncio.Event()).run_once()

    assert sink.batches == [[1, 2]]
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == uids[2:]
    assert len(dovecot.list_uids(USER, PASSWORD, "Processed")) == 2


async def test_stop_during_a_catch_up_finishes_the_batch_in_hand(dovecot: Dovecot) -> None:
    for n in range(5):
        dovecot.append(USER, PASSWORD, message(n))
    stop = asyncio.Event()

    class StoppingSink(RecordingSink):
        async def store_batch(self, prepared: Any) -> None:
            stop.set()  # SIGTERM arrives while the first batch is being committed
            await super().store_batch(prepared)

    sink = StoppingSink()
    watcher = MailboxWatcher(mailbox(dovecot, batch_size=2), sink, stop=stop)
    await asyncio.wait_for(watcher.run(), 5)

    assert sink.batches == [[1, 2]]
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == [3, 4, 5]
    assert len(dovecot.list_uids(USER, PASSWORD, "Processed")) == 2


# --- the long-running watcher ------------------------------------------------------------------


async def test_mail_appended_during_idle_arrives_within_seconds(dovecot: Dovecot) -> None:
    dovecot.append(USER, PASSWORD, message(1))
    sink = RecordingSink()
    stop = asyncio.Event()
    watcher = MailboxWatcher(mailbox(dovecot, poll_interval=600.0), sink, stop=stop)

    async with watching(watcher, stop):
        await eventually(lambda: ok_polls(sink) >= 1)  # caught up; now idling
        await asyncio.sleep(0.3)
        await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(2))
        took = await eventually(lambda: message(2) in sink.raws(), timeout=5.0)

    assert took < 5.0
    assert sink.raws() == {message(1), message(2)}
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []


async def test_polls_when_the_server_has_no_idle(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(extra_config=NO_IDLE)
    sink = RecordingSink()
    stop = asyncio.Event()
    watcher = MailboxWatcher(mailbox(server, poll_interval=0.3), sink, stop=stop)

    with capture_logs() as logs:
        async with watching(watcher, stop):
            await eventually(lambda: ok_polls(sink) >= 1)
            await asyncio.to_thread(server.append, USER, PASSWORD, message(3))
            await eventually(lambda: message(3) in sink.raws(), timeout=3.0)

    assert any(e["event"] == "imap_idle_unsupported" for e in logs)


async def test_refused_login_is_recorded_and_stop_cuts_the_retry_short(dovecot: Dovecot) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    config = mailbox(dovecot, password=Secret("wrong"))
    watcher = MailboxWatcher(config, sink, stop=stop)
    watcher.backoff_initial = 0.05
    task = asyncio.create_task(watcher.run())

    with capture_logs() as logs:
        await eventually(lambda: len(sink.polls) >= 1)
        # the retry's login waits out Dovecot's penalty for failed logins (seconds)
        await eventually(lambda: any(e["event"] == "imap_reconnect_scheduled" for e in logs))
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        stop.set()
        await asyncio.wait_for(task, 5)

    assert loop.time() - start < 1.0
    ok, error = sink.polls[0]
    assert not ok
    assert (
        error == "password login as support@acme.test refused: [AUTHENTICATIONFAILED] "
        "Authentication failed."
    )
