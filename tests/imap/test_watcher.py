"""The IMAP watcher against a real private Dovecot (no IMAP mocks), plus its pure parsers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioimaplib
import pytest
from structlog.testing import capture_logs

from helpdeskd.config.settings import MailboxConfig, Secret
from helpdeskd.imap.watcher import (
    FETCH_BYTES,
    KEYWORD,
    MAX_FETCH,
    FetchedMail,
    ImapError,
    MailboxWatcher,
    encode_mailbox,
    parse_fetch,
    parse_search,
    parse_select,
    split_runs,
    uid_set,
)
from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD as PASSWORD
from tests.servers.fixtures import SUPPORT_USER as USER

DovecotFactory = Callable[..., Dovecot]
NO_MOVE = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS\n"
NO_IDLE = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UIDPLUS MOVE\n"


class RecordingSink:
    """Record what the watcher hands over; the real processor is wired in by the daemon."""

    def __init__(self, *, fail: Exception | None = None) -> None:
        self.fail = fail
        self.mails: dict[tuple[str, int, int], FetchedMail] = {}
        self.deliveries: Counter[tuple[str, int, int]] = Counter()
        self.batches: list[list[int]] = []
        self.polls: list[tuple[bool, str | None]] = []

    async def prepare_batch(self, mailbox: str, uidvalidity: int, mails: Any) -> Any:
        return mailbox, uidvalidity, mails

    async def store_batch(self, prepared: Any) -> None:
        mailbox, uidvalidity, mails = prepared
        if self.fail is not None:
            raise self.fail
        self.batches.append([mail.uid for mail in mails])
        for mail in mails:
            key = (mailbox, uidvalidity, mail.uid)
            self.deliveries[key] += 1
            self.mails[key] = mail

    async def record_poll(self, mailbox: str, *, ok: bool, error: str | None) -> None:
        self.polls.append((ok, error))

    def raws(self) -> set[bytes | None]:
        return {mail.raw for mail in self.mails.values()}


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait until PREDICATE holds; return the seconds it took, fail after TIMEOUT."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return loop.time() - start


def mailbox(server: Dovecot, **overrides: Any) -> MailboxConfig:
    values: dict[str, Any] = {
        "name": "support",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": USER,
        "password": Secret(PASSWORD),
        "processed_folder": "Processed",
        "idle": True,
        "poll_interval": 600.0,
        "timeout": 5.0,
    }
    values.update(overrides)
    return MailboxConfig(**values)


def message(n: int, body: str = "") -> bytes:
    return (
        f"From: Customer {n} <customer{n}@example.org>\r\n"
        "To: support@acme.test\r\n"
        f"Subject: Help needed {n}\r\n"
        f"Message-ID: <m{n}@example.org>\r\n"
        "Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        "\r\n"
        f"Body of message {n}.\r\n{body}"
    ).encode()


@contextlib.asynccontextmanager
async def watching(
    watcher: MailboxWatcher, stop: asyncio.Event
) -> AsyncIterator[asyncio.Task[None]]:
    """Run WATCHER.run() in the background; stop it (and require it to return) at the end."""
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def ok_polls(sink: RecordingSink) -> int:
    return sum(1 for ok, _ in sink.polls if ok)


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


TRICKY_BODIES = [
    # lines a line-based parser would take for responses, tags, continuations or literals
    "* 1 FETCH (UID 99 BODY[] {5}\r\nhello)\r\n* 7 EXISTS\r\n",
    "A0001 OK FETCH completed\r\n)\r\n+ idling\r\n* BYE see you\r\n",
    "a literal marker at the end of a line {12}\r\n(((\r\n",
    "no final line break, ends in a paren )",
    "8bit: caf\u00e9 \u00fcber \u2603\r\n",
]


async def test_bodies_that_look_like_imap_responses_arrive_intact(dovecot: Dovecot) -> None:
    raws = [message(n, body) for n, body in enumerate(TRICKY_BODIES)]
    raws.append(message(50, body="0123456789abcdef" * 20_000 + "\r\n"))  # 320 kB: many reads
    for raw in raws:
        dovecot.append(USER, PASSWORD, raw)
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot), sink, stop=asyncio.Event())

    assert await watcher.run_once() == len(raws)

    assert sink.raws() == set(raws)
    assert len(sink.batches) == 1  # all in one multi-message FETCH


async def test_a_folder_name_with_a_space_is_created_and_used(dovecot: Dovecot) -> None:
    dovecot.append(USER, PASSWORD, message(1))
    sink = RecordingSink()
    config = mailbox(dovecot, processed_folder="Helpdesk Done")

    assert await MailboxWatcher(config, sink, stop=asyncio.Event()).run_once() == 1
    assert len(dovecot.list_uids(USER, PASSWORD, "Helpdesk Done")) == 1


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


async def test_mail_arriving_during_a_catch_up_is_handled_in_it(dovecot: Dovecot) -> None:
    dovecot.append(USER, PASSWORD, message(1))

    class AppendingSink(RecordingSink):
        async def store_batch(self, prepared: Any) -> None:
            await super().store_batch(prepared)
            if len(self.mails) == 1:
                await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(2))

    sink = AppendingSink()
    watcher = MailboxWatcher(mailbox(dovecot, processed_folder=None), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 2
    assert sink.raws() == {message(1), message(2)}


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


async def test_idle_keepalives_and_re_idle_periods_are_weathered(dovecot: Dovecot) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    # this Dovecot says "* OK Still here" every 2 s; re-IDLE every second
    config = mailbox(dovecot, poll_interval=600.0, idle_interval=1.0)
    watcher = MailboxWatcher(config, sink, stop=stop)

    async with watching(watcher, stop):
        await eventually(lambda: ok_polls(sink) >= 1)
        await asyncio.sleep(2.5)
        assert ok_polls(sink) >= 3  # a catch-up after every re-IDLE
        await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(4))
        took = await eventually(lambda: message(4) in sink.raws(), timeout=5.0)

    assert took < 2.0
    assert all(ok for ok, _ in sink.polls)


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "poll"])
async def test_stop_makes_run_return_promptly_after_logout(dovecot: Dovecot, idle: bool) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    watcher = MailboxWatcher(mailbox(dovecot, idle=idle, poll_interval=600.0), sink, stop=stop)
    task = asyncio.create_task(watcher.run())
    await eventually(lambda: ok_polls(sink) >= 1)
    await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    start = loop.time()
    stop.set()
    await asyncio.wait_for(task, 5)

    assert loop.time() - start < 2.0
    await eventually(lambda: "Disconnected: Logged out" in dovecot.log_tail(), timeout=2.0)


async def test_run_survives_a_dovecot_restart(dovecot: Dovecot) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    watcher = MailboxWatcher(mailbox(dovecot), sink, stop=stop)

    with capture_logs() as logs:
        async with watching(watcher, stop):
            await eventually(lambda: ok_polls(sink) >= 1)
            await asyncio.to_thread(dovecot.restart)
            await eventually(lambda: any(not ok for ok, _ in sink.polls))
            await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(7))
            await eventually(lambda: message(7) in sink.raws(), timeout=10.0)

    events = [e["event"] for e in logs]
    assert "imap_disconnected" in events
    assert events.count("imap_connected") >= 2
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


# --- TLS and XOAUTH2 ---------------------------------------------------------------------------


async def test_starttls_and_implicit_tls(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(tls=True)
    assert server.tls_port is not None
    trust = ssl.create_default_context(cafile=str(server.cert_path))
    server.append(USER, PASSWORD, message(1))
    server.append(USER, PASSWORD, message(2))

    starttls = mailbox(server, security="starttls", batch_size=1)
    sink = RecordingSink()
    watcher = MailboxWatcher(starttls, sink, stop=asyncio.Event(), ssl_context=trust)
    # one message per session: a batch of one, then stop
    assert await watcher.run_once() == 2

    server.append(USER, PASSWORD, message(3))
    tls = mailbox(server, security="tls", port=server.tls_port)
    assert await MailboxWatcher(tls, sink, stop=asyncio.Event(), ssl_context=trust).run_once() == 1

    assert sink.raws() == {message(1), message(2), message(3)}
    logins = [line for line in server.log_tail(200).splitlines() if "Login: user=<" in line]
    assert len([line for line in logins if ", TLS," in line]) >= 2


async def test_starttls_never_falls_back_to_plain_text(dovecot: Dovecot) -> None:
    config = mailbox(dovecot, security="starttls")
    sink = RecordingSink()

    with pytest.raises(ImapError, match="does not offer STARTTLS"):
        await MailboxWatcher(config, sink, stop=asyncio.Event()).run_once()

    assert "Login: user=<" not in dovecot.log_tail(200)
    assert sink.polls and not sink.polls[0][0]


async def test_an_untrusted_certificate_is_refused(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(tls=True)
    config = mailbox(server, security="starttls")

    with pytest.raises(ssl.SSLCertVerificationError):
        await MailboxWatcher(config, RecordingSink(), stop=asyncio.Event()).run_once()


async def test_xoauth2_login_and_refusal(dovecot_factory: DovecotFactory) -> None:
    # Dovecot 2.3 checks an XOAUTH2 token as the user's password: enough to test the exchange
    server = dovecot_factory(mechanisms="plain login xoauth2")
    server.append(USER, PASSWORD, message(1))
    sink = RecordingSink()
    tokens = ["secret"]

    async def token() -> str:
        return tokens.pop()

    config = mailbox(server, auth="xoauth2", password=None)
    watcher = MailboxWatcher(config, sink, stop=asyncio.Event(), token_provider=token)
    assert await watcher.run_once() == 1
    assert "method=XOAUTH2" in server.log_tail()

    # a refused token gets a "+ <error>" challenge; unanswered, aioimaplib would hang
    refused = mailbox(server, auth="xoauth2", password=Secret("expired"), timeout=30.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ImapError, match="refused"):
        await MailboxWatcher(refused, sink, stop=asyncio.Event()).run_once()
    assert loop.time() - start < 5.0


# --- pure parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([5], "5"), ([3, 1, 2], "1:3"), ([1, 2, 3, 7, 9, 10, 10], "1:3,7,9:10")],
)
def test_uid_set(uids: list[int], expected: str) -> None:
    assert uid_set(uids) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("INBOX", '"INBOX"'),
        ("Helpdesk Done", '"Helpdesk Done"'),
        ("Caf\u00e9 & Co", '"Caf&AOk- &- Co"'),
        ("\u65e5\u672c\u8a9e", '"&ZeVnLIqe-"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
    ],
)
def test_encode_mailbox(name: str, expected: str) -> None:
    assert encode_mailbox(name) == expected


def test_parse_fetch_takes_literals_by_position_not_content() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 7 RFC822.SIZE 11 BODY[] {11}",
        bytearray(b"* 2 FETCH ("),
        b")",
        b"2 FETCH (FLAGS (\\Seen))",  # unsolicited, no UID: ignored
        b"3 FETCH (BODY[] {3}",
        bytearray(b"abc"),
        b' UID 9 INTERNALDATE "02-Jun-2025 10:00:00 +0000")',
        b"4 FETCH (UID 10 BODY[] NIL)",
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    records = parse_fetch(lines)
    assert set(records) == {7, 9, 10}
    assert records[7].body == b"* 2 FETCH (" and records[7].size == 11
    assert records[9].body == b"abc" and records[9].internal_date == "02-Jun-2025 10:00:00 +0000"
    assert records[10].body is None


def test_runs_keep_order_and_both_limits_with_at_least_one_uid_each() -> None:
    uids = [1, 2, 3, 4, 5, 6, 7]
    weights = [10, 30, 70, 5, 5, 200, 1]
    assert list(split_runs(uids, weights, 50, 10)) == [[1, 2], [3], [4, 5], [6], [7]]
    assert list(split_runs(uids, weights, 1000, 3)) == [[1, 2, 3], [4, 5, 6], [7]]
    assert list(split_runs([], [], 50, 10)) == []


def test_parse_search_ignores_the_tagged_text() -> None:
    assert parse_search([b"4 2 9", b"Search completed (0.001 + 0.000 secs)."]) == [2, 4, 9]
    assert parse_search([b"", b"Search completed (0.001 secs)."]) == []


def test_parse_select_reads_keyword_support() -> None:
    lines = [
        b"FLAGS (\\Answered \\Seen)",
        b"OK [PERMANENTFLAGS (\\Answered \\Seen)] Limited",
        b"3 EXISTS",
        b"OK [UIDVALIDITY 1700000000] UIDs valid",
        b"[READ-WRITE] Select completed",
    ]
    info = parse_select(lines)
    assert (info.uidvalidity, info.exists, info.read_only) == (1700000000, 3, False)
    assert not info.keeps_keyword()
    with_star = parse_select([b"OK [PERMANENTFLAGS (\\Seen \\*)] ok", *lines[2:]])
    assert with_star.keeps_keyword()
    assert parse_select([*lines[2:4], b"[READ-ONLY] Select completed"]).read_only
    with pytest.raises(ImapError, match="UIDVALIDITY"):
        parse_select([b"3 EXISTS", b"Select completed"])
