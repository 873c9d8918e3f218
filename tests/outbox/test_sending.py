"""The sender at speed and by policy, against a real SMTP server and real databases:
connections kept open, batches shared by two daemons, a domain's 4xx, priority, rates, VERP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from structlog.testing import capture_logs

from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import SendRates
from helpdeskd.mail.build import OutgoingMail, build_message, new_message_id
from helpdeskd.mail.tokens import BounceToken, bounce_address, verify_bounce
from helpdeskd.outbox import ledger, sendpass
from helpdeskd.outbox import sender as outbox
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.db import create_engine, sessionmaker
from helpdeskd.store.models import Notice, Outbox, OutboxRecipient
from tests.clocks import ManualClock
from tests.harness import Desk
from tests.servers.smtp import SmtpSink

START = datetime(2030, 1, 1, tzinfo=UTC)  # years away: only the sender's clock counts


async def _queue(
    desk: Desk, recipients: list[str], *, due: datetime, notice: int | None = None
) -> int:
    """Queue one mail to RECIPIENTS, due at DUE (a notice's, with NOTICE); return its row id."""
    [row_id] = await _queue_many(desk, [recipients], due=due, notice=notice)
    return row_id


async def _queue_many(
    desk: Desk, mails: list[list[str]], *, due: datetime, notice: int | None = None
) -> list[int]:
    """Queue a mail to each list of MAILS in one transaction; return their row ids."""
    rows = []
    async with desk.sessions() as session, session.begin():
        for recipients in mails:
            message_id = new_message_id("acme.test")
            mail = OutgoingMail(
                from_addr="support@acme.test",
                from_name="Acme",
                to=tuple(recipients),
                subject="hello",
                text="body",
                message_id=message_id,
                date=due,
            )
            row = outbox.enqueue(
                session,
                kind="notice" if notice else "ack",
                message_id=message_id,
                envelope_from="support@acme.test",
                recipients=recipients,
                data=build_message(mail),
                not_before=due,
            )
            row.notice_id = notice
            rows.append(row)
        await session.flush()
        return [row.id for row in rows]


async def _notice(desk: Desk, *, critical: bool) -> int:
    async with desk.sessions() as session, session.begin():
        notice = Notice(
            category="incident" if critical else "survey",
            template="t",
            audience="all",
            critical=critical,
            subject="s",
        )
        session.add(notice)
        await session.flush()
        return notice.id


async def _rows(desk: Desk) -> dict[int, Outbox]:
    async with desk.sessions() as session:
        return {r.id: r for r in await session.scalars(select(Outbox).order_by(Outbox.id))}


def _each_sent_once(sink: SmtpSink, rows: dict[int, Outbox], addresses: list[str]) -> None:
    """Every one of ADDRESSES got its mail once, and every row ended sent after one attempt."""
    got = sink.by_recipient()
    assert sorted(got) == sorted(addresses)
    assert {len(deliveries) for deliveries in got.values()} == {1}
    assert {(r.state, r.attempts) for r in rows.values()} == {("sent", 1)}


async def _recipient_attempts(desk: Desk) -> dict[str, tuple[str, int]]:
    async with desk.sessions() as session:
        found = await session.execute(
            select(OutboxRecipient.address, OutboxRecipient.state, OutboxRecipient.attempts)
        )
        return {address: (state, tries) for address, state, tries in found}


async def test_mail_goes_over_the_configured_connections_and_they_are_reused(
    make_config, smtp_sink
):
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 3})
    clock = ManualClock(START)
    async with Desk(config) as desk:
        for n in range(30):
            await _queue(desk, [f"r{n}@example.org"], due=clock())
        sender = OutboxSender(desk.sessions, config.smtp, clock=clock)
        try:
            assert await sender.run_once() == 30
            for n in range(30, 40):
                await _queue(desk, [f"r{n}@example.org"], due=clock())
            assert await sender.run_once() == 10  # over the connections already open
        finally:
            await sender.close()
        rows = await _rows(desk)
    assert smtp_sink.connections == sender.connections_opened == 3
    assert sorted(r for d in smtp_sink.deliveries for r in d.recipients) == sorted(
        f"r{n}@example.org" for n in range(40)
    )
    assert {(r.state, r.attempts) for r in rows.values()} == {("sent", 1)}


async def test_two_senders_on_postgresql_never_send_a_row_twice(
    make_pg_config, smtp_sink, monkeypatch
):
    """Two daemons claim batches of the same table: each row goes once, and both take part."""
    monkeypatch.setattr(sendpass, "CLAIM_BATCH", 16)  # many claims, interleaved
    config = make_pg_config(smtp=smtp_sink, smtp_extra={"connections": 2})
    smtp = replace(config.smtp, domain_rate=None)  # 240 mails to one domain, flat out
    clock = ManualClock(START)
    async with Desk(config) as desk:
        for n in range(240):
            await _queue(desk, [f"r{n}@example.org"], due=clock())
        other = create_engine(config.database.url)  # the other daemon's own engine
        first = OutboxSender(desk.sessions, smtp, clock=clock)
        second = OutboxSender(sessionmaker(other), smtp, clock=clock)
        try:
            await asyncio.gather(first.drain(60), second.drain(60))
        finally:
            await first.close()
            await second.close()
            await other.dispose()
        rows = await _rows(desk)
    _each_sent_once(smtp_sink, rows, [f"r{n}@example.org" for n in range(240)])
    assert first.connections_opened and second.connections_opened  # both sent some


async def test_a_4xx_backs_off_the_whole_domain_and_the_others_flow(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, connections=2, retry_base=60, retry_max=600)
    smtp_sink.handler.refuse_domains["slow.example"] = "451 4.7.1 slow down"
    clock = ManualClock(START)
    async with Desk(config) as desk:
        for n in range(8):
            await _queue(desk, [f"s{n}@slow.example"], due=clock())
            await _queue(desk, [f"f{n}@fast.example"], due=clock())
        sender = OutboxSender(desk.sessions, smtp, clock=clock)
        try:
            await sender.run_once()
            tried = len(smtp_sink.refused)
            assert 1 <= tried <= smtp.connections  # those on their way when the 4xx came
            assert len(smtp_sink.deliveries) == 8  # the other domain flowed
            slow = [r for r in (await _rows(desk)).values() if "slow" in r.data.decode()]
            assert {r.state for r in slow} == {"pending"}
            assert sum(r.attempts for r in slow) == tried  # the others were not tried
            # every mail to the domain waits for its backoff: half to all of retry_base
            wait = min(r.next_attempt_at for r in slow) - clock()
            assert timedelta(seconds=30) <= wait <= timedelta(seconds=60)
            assert await sender.run_once() == 0  # nothing due meanwhile
            clock.advance(seconds=29)
            assert await sender.run_once() == 0
            assert len(smtp_sink.refused) == tried

            del smtp_sink.handler.refuse_domains["slow.example"]
            clock.set(max(r.next_attempt_at for r in slow))
            await sender.drain(10)
        finally:
            await sender.close()
        recipients = await _recipient_attempts(desk)
    got = smtp_sink.by_recipient()
    assert {len(d) for d in got.values()} == {1} and len(got) == 16
    slow_tries = sorted(t for a, (_s, t) in recipients.items() if "slow" in a)
    assert {s for s, _t in recipients.values()} == {"sent"}
    assert sum(slow_tries) == 8 + tried  # each once more, and the ones refused once before


async def test_acknowledgements_go_before_a_big_notice(make_config, smtp_sink, monkeypatch):
    """A notice's rows due long before do not hold back an acknowledgement due now."""
    monkeypatch.setattr(sendpass, "CLAIM_BATCH", 8)
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 1})
    clock = ManualClock(START)
    async with Desk(config) as desk:
        notice = await _notice(desk, critical=True)
        for n in range(40):
            await _queue(
                desk, [f"n{n}@example.org"], due=clock() - timedelta(hours=1), notice=notice
            )
        sender = OutboxSender(desk.sessions, config.smtp, clock=clock)
        try:
            assert await sender.run_once() == 8  # the notice goes out, oldest first
            await _queue(desk, ["ack@example.org"], due=clock())
            assert await sender.run_once() == 8
        finally:
            await sender.close()
    got = [d.recipients[0] for d in smtp_sink.deliveries]
    assert len(got) == 16
    assert got[8] == "ack@example.org"  # first of the second batch, ahead of 32 older rows


async def test_an_optional_notices_rate_puts_back_what_cannot_go_yet(make_config, smtp_sink):
    """At 2 optional notices a second, the sender takes two, puts the rest back untried at
    their turns, half a second apart, and the acknowledgement queued after them goes at once."""
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, rates=SendRates(critical=None, optional=2, transactional=None))
    clock = ManualClock(START)
    async with Desk(config) as desk:
        notice = await _notice(desk, critical=False)
        ids = [
            await _queue(desk, [f"n{n}@x{n}.example"], due=clock(), notice=notice) for n in range(6)
        ]
        ack = await _queue(desk, ["ack@example.org"], due=clock())
        sender = OutboxSender(desk.sessions, smtp, clock=clock, hold=0)
        try:
            assert await sender.run_once() == 3
            rows = await _rows(desk)
            assert rows[ack].state == "sent"
            assert [rows[i].state for i in ids] == ["sent"] * 2 + ["pending"] * 4
            waiting = [rows[i] for i in ids[2:]]
            assert {r.attempts for r in waiting} == {0}  # put back, not tried
            turns = [(r.next_attempt_at - clock()).total_seconds() for r in waiting]
            assert turns == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=0.01)
            clock.advance(seconds=1)
            assert await sender.run_once() == 2  # the two whose turn came
            clock.advance(seconds=1)
            assert await sender.run_once() == 2
        finally:
            await sender.close()
        rows = await _rows(desk)
    assert {rows[i].state for i in ids} == {"sent"}
    assert len(smtp_sink.deliveries) == 7


async def test_a_domains_rate_spaces_its_mail(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, domain_rates=(("gmail.com", 2.0),))
    clock = ManualClock(START)
    async with Desk(config) as desk:
        for n in range(5):
            await _queue(desk, [f"g{n}@gmail.com"], due=clock())
        other = await _queue(desk, ["x@example.org"], due=clock())
        sender = OutboxSender(desk.sessions, smtp, clock=clock, hold=0)
        try:
            assert await sender.run_once() == 3  # two to gmail.com, and the other domain's
        finally:
            await sender.close()
        rows = await _rows(desk)
    assert rows[other].state == "sent"
    pending = sorted(r.next_attempt_at for r in rows.values() if r.state == "pending")
    assert [(t - clock()).total_seconds() for t in pending] == pytest.approx(
        [0.5, 1.0, 1.5], abs=0.01
    )


async def _recipient_ids(desk: Desk) -> dict[str, int]:
    async with desk.sessions() as session:
        found = await session.execute(select(OutboxRecipient.address, OutboxRecipient.id))
        return {address: rid for address, rid in found}


async def _send_the_row(desk: Desk, config: Any, keys: tuple[tuple[str, Secret], ...]) -> None:
    """One pass of a sender signing VERP return paths with KEYS: the one row queued is handled."""
    sender = OutboxSender(desk.sessions, config.smtp, keys=keys)
    try:
        assert await sender.run_once() == 1
    finally:
        await sender.close()


def _verp(keys: tuple[tuple[str, Secret], ...], return_path: str) -> BounceToken | None:
    """What the VERP return path RETURN_PATH names, verified (None: not one of ours)."""
    local, _, domain = return_path.partition("@")
    assert domain == "acme.test" and local.startswith("bounces+"), return_path
    return verify_bounce(keys, local.removeprefix("bounces+"))


async def test_each_recipient_has_its_own_verp_return_path(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, smtp_extra={"return_path": "bounces@acme.test"})
    keys = config.service.secret_keys
    assert config.smtp is not None
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"], due=datetime.now(UTC))
        await OutboxSender(desk.sessions, config.smtp, keys=keys).drain(10)
        # A sender given no keys cannot sign return paths: it says so, and uses the From, one
        # transaction for all the recipients of a mail.
        await _queue(desk, ["d@example.org", "e@example.org"], due=datetime.now(UTC))
        with capture_logs() as logs:
            await OutboxSender(desk.sessions, config.smtp).drain(10)
        assert "verp_disabled" in [e["event"] for e in logs]
        ids = await _recipient_ids(desk)
    by = {tuple(d.recipients): d.sender for d in smtp_sink.deliveries}
    assert by == {
        ("a@example.org",): bounce_address("bounces@acme.test", keys, ids["a@example.org"]),
        ("d@example.org", "e@example.org"): "support@acme.test",
    }
    assert _verp(keys, by[("a@example.org",)]) == BounceToken("recipient", ids["a@example.org"])
    # the From header is untouched: VERP is the envelope only
    assert all(
        d.message["From"].addresses[0].addr_spec == "support@acme.test"
        for d in smtp_sink.deliveries
    )


async def test_a_mail_to_several_goes_once_to_each_with_its_own_return_path(make_config, smtp_sink):
    """With VERP, a mail's return path names one recipient: a Cc's copy carries his own, so he
    cannot forge a bounce against the other recipients. A mail to three goes as three SMTP
    transactions over one connection, each with that recipient's verified return path; a
    recipient the relay refuses fails alone, and the mail is one row's result."""
    config = make_config(smtp=smtp_sink, smtp_extra={"return_path": "bounces@acme.test"})
    keys = config.service.secret_keys
    smtp_sink.handler.refuse["gone@example.org"] = "550 5.1.1 no such user"
    to = ["jane@example.org", "gone@example.org", "cc@example.net"]
    async with Desk(config) as desk:
        row_id = await _queue(desk, to, due=datetime.now(UTC))
        await _send_the_row(desk, config, keys)
        ids = await _recipient_ids(desk)
        states = await _recipient_attempts(desk)
        row = (await _rows(desk))[row_id]
    deliveries = smtp_sink.deliveries
    assert sorted(d.recipients[0] for d in deliveries) == ["cc@example.net", "jane@example.org"]
    for delivery in deliveries:
        [address] = delivery.recipients
        assert _verp(keys, delivery.sender) == BounceToken("recipient", ids[address])
        assert delivery.data == deliveries[0].data  # the same mail, signed once
    assert smtp_sink.refused == [("gone@example.org", "550 5.1.1 no such user")]
    assert smtp_sink.connections == 1  # the connection is reused
    assert states == {
        "jane@example.org": ("sent", 1),
        "gone@example.org": ("failed", 1),
        "cc@example.net": ("sent", 1),
    }
    assert (row.state, row.attempts) == ("sent", 1)  # it went: to two of the three


async def test_a_recipient_whose_transaction_drops_the_connection_leaves_the_others_theirs(
    make_config, smtp_sink, monkeypatch
):
    """The relay refuses one recipient's copy after DATA and drops the connection: the next
    recipient's copy goes over a new one, and each keeps its own result."""
    config = make_config(smtp=smtp_sink, smtp_extra={"return_path": "bounces@acme.test"})
    keys = config.service.secret_keys
    accept = smtp_sink.handler.handle_DATA

    async def refuse_one(server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos == ["spam@example.org"]:
            return "554 5.7.1 message refused"
        return await accept(server, session, envelope)

    monkeypatch.setattr(smtp_sink.handler, "handle_DATA", refuse_one)
    async with Desk(config) as desk:
        await _queue(
            desk, ["a@example.org", "spam@example.org", "b@example.org"], due=datetime.now(UTC)
        )
        await _send_the_row(desk, config, keys)
        ids = await _recipient_ids(desk)
        states = await _recipient_attempts(desk)
    assert sorted(d.recipients[0] for d in smtp_sink.deliveries) == [
        "a@example.org",
        "b@example.org",
    ]
    for delivery in smtp_sink.deliveries:
        [address] = delivery.recipients
        assert _verp(keys, delivery.sender) == BounceToken("recipient", ids[address])
    assert smtp_sink.connections == 2
    assert states == {
        "a@example.org": ("sent", 1),
        "spam@example.org": ("failed", 1),
        "b@example.org": ("sent", 1),
    }


async def test_the_daemons_loop_sends_mail_queued_while_it_runs(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 2})
    stop = asyncio.Event()
    async with Desk(config) as desk:
        sender = OutboxSender(desk.sessions, config.smtp, idle_poll=30)
        running = asyncio.create_task(sender.run(stop))
        try:
            mails = [[f"r{n}@example.org"] for n in range(25)]
            await _queue_many(desk, mails, due=datetime.now(UTC))  # one commit, as a batch's
            sender.wakeup.set()  # as the processor does when it queues mail
            for _ in range(200):  # at most 10 s: the wakeup, not the 30 s poll, starts it
                rows = await _rows(desk)
                if {r.state for r in rows.values()} == {"sent"}:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
    assert {(r.state, r.attempts) for r in rows.values()} == {("sent", 1)}
    assert len(smtp_sink.deliveries) == 25
    assert smtp_sink.connections == 2  # both, each kept open for the batch


async def test_claims_and_records_interleaved_never_send_a_row_twice(
    make_config, smtp_sink, monkeypatch
):
    """While the daemon sends, batches are claimed while others are recorded: a claim never
    takes a row whose result is being recorded (SQLite: the rows in hand are left out)."""
    monkeypatch.setattr(sendpass, "CLAIM_BATCH", 12)
    monkeypatch.setattr(sendpass, "FLUSH_ROWS", 5)
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 4})
    smtp = replace(config.smtp, domain_rate=None)
    async with Desk(config) as desk:
        mails = [[f"r{n}@example.org"] for n in range(400)]
        await _queue_many(desk, mails, due=datetime.now(UTC))
        await OutboxSender(desk.sessions, smtp).drain(60)
        rows = await _rows(desk)
    got = smtp_sink.by_recipient()
    assert len(got) == 400
    assert {len(deliveries) for deliveries in got.values()} == {1}
    assert {(r.state, r.attempts) for r in rows.values()} == {("sent", 1)}


async def test_a_connection_waits_for_the_record_of_its_own_last_ack_only(
    make_config, smtp_sink, monkeypatch
):
    """Before a customer's or an agent's mail goes, the last one its connection sent is
    recorded: a crash sends again at most one per connection. A connection does not wait for
    the others' mail: it sends while a mail another one sent is still being recorded (waiting
    for all of them, acknowledgements fell behind their mail through a backlog)."""
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 4})
    smtp = replace(config.smtp, domain_rate=None)
    recorded: set[int] = set()  # rows whose result is committed
    sent_by: dict[int, list[int]] = {}  # each connection's rows, as it sent them
    unrecorded_own: list[int] = []  # a connection's mail found unrecorded when it sent again
    others_unrecorded: list[int] = []  # rows another connection had not seen recorded yet
    record = sendpass.SendPass._record
    transmit = OutboxSender._transmit

    async def slow_record(self: sendpass.SendPass, results: ledger.Results) -> None:
        await asyncio.sleep(0.03)  # a database busy with a backlog's ingest
        await record(self, results)
        recorded.update(results.row_ids())

    async def watched(self: OutboxSender, relay: Any, row: Any, *args: Any) -> Any:
        mine = sent_by.setdefault(id(relay), [])
        unrecorded_own.extend(r for r in mine if r not in recorded)
        for key, rows in sent_by.items():
            if key != id(relay):
                others_unrecorded.extend(r for r in rows if r not in recorded)
        result = await transmit(self, relay, row, *args)
        mine.append(row.row_id)
        return result

    monkeypatch.setattr(sendpass.SendPass, "_record", slow_record)
    monkeypatch.setattr(OutboxSender, "_transmit", watched)
    async with Desk(config) as desk:
        addresses = [f"r{n}@example.org" for n in range(40)]
        await _queue_many(desk, [[a] for a in addresses], due=datetime.now(UTC))
        sender = OutboxSender(desk.sessions, smtp)
        await sender.drain(60)
        await sender.close()
        rows = await _rows(desk)
    _each_sent_once(smtp_sink, rows, addresses)
    assert len(sent_by) == 4
    assert unrecorded_own == []
    assert others_unrecorded  # the connections did not wait for each other


async def test_mail_queued_as_a_pass_finishes_is_left_to_the_next_pass(
    make_config, smtp_sink, monkeypatch
):
    """A wakeup while a pass records its last results starts no claim of that pass: the rows
    it took would be held where nobody sends them (leased, on PostgreSQL) until the next
    pass gave them back."""
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        await _queue_many(desk, [["first@example.org"]], due=datetime.now(UTC))
        sender = OutboxSender(desk.sessions, config.smtp)
        record = sendpass.SendPass._flush
        queued: list[bool] = []

        async def last_record_meets_new_mail(self: sendpass.SendPass) -> None:
            if self.finished and not queued:
                queued.append(True)
                await _queue_many(desk, [["second@example.org"]], due=datetime.now(UTC))
                sender.wakeup.set()  # as the processor does when it queues mail
                await asyncio.sleep(0.1)  # the pass's watcher sees it
            await record(self)

        monkeypatch.setattr(sendpass.SendPass, "_flush", last_record_meets_new_mail)
        assert await sendpass.SendPass(sender, refill=True, stop=asyncio.Event()).run() == 1
        await asyncio.sleep(0.3)  # a claim started meanwhile has ended by now
        assert queued and sender._held == set()
        assert {r.state for r in (await _rows(desk)).values()} == {"sent", "pending"}
        with capture_logs() as logs:
            await sender.drain(10)
        await sender.close()
        rows = await _rows(desk)
    assert "outbox_rows_given_back" not in [entry["event"] for entry in logs]
    assert {(r.state, r.attempts) for r in rows.values()} == {("sent", 1)}
    assert sorted(r for d in smtp_sink.deliveries for r in d.recipients) == [
        "first@example.org",
        "second@example.org",
    ]


async def test_a_pass_records_on_one_connection_and_a_lost_one_loses_no_result(
    make_pg_config, smtp_sink, monkeypatch
):
    """A pass records every result on the one connection it holds. When the database drops
    that connection, the record fails, the pass stops, and the next pass records what was
    sent on a fresh connection: every mail goes once."""
    config = make_pg_config(smtp=smtp_sink, smtp_extra={"connections": 1})
    async with Desk(config) as desk:
        await _queue_many(desk, [[f"r{n}@example.org"] for n in range(6)], due=datetime.now(UTC))
        sender = OutboxSender(desk.sessions, replace(config.smtp, domain_rate=None))
        record = sendpass.SendPass._record
        servers: list[int] = []  # the database server process of each record's connection

        async def record_then_lose_the_connection(
            self: sendpass.SendPass, results: ledger.Results
        ) -> None:
            if self.recorder is not None:
                raw = await self.recorder.get_raw_connection()
                servers.append(raw.driver_connection.get_server_pid())
                if len(servers) == 2:  # the third record: its connection is dropped
                    async with desk.sessions() as session:
                        await session.execute(
                            text("SELECT pg_terminate_backend(:pid)"), {"pid": servers[-1]}
                        )
            await record(self, results)

        monkeypatch.setattr(sendpass.SendPass, "_record", record_then_lose_the_connection)
        with pytest.raises(DBAPIError):
            await sendpass.SendPass(sender, refill=True, stop=asyncio.Event()).run()
        assert len(servers) == 2 and servers[0] == servers[1]  # one connection, held
        assert len(sender._unrecorded) == 1  # what the lost record was to write
        await sender.drain(10)
        await sender.close()
        rows = await _rows(desk)
    _each_sent_once(smtp_sink, rows, [f"r{n}@example.org" for n in range(6)])


async def test_a_record_that_fails_in_its_transaction_leaves_no_transaction_in_the_pool(
    make_pg_config, smtp_sink, monkeypatch
):
    """PostgreSQL: the pass's recording connection commits each statement, and a record other
    than the common kind is an explicit transaction on it. When a statement of that transaction
    fails, the connection is discarded: put back in the pool, it would keep the failed
    transaction open for whoever takes it next. What the record was to write is written by the
    next pass: every mail goes once."""
    config = make_pg_config(smtp=smtp_sink, smtp_extra={"connections": 1})
    async with Desk(config) as desk:
        ids = await _queue_many(
            desk, [[f"f{n}@example.org"] for n in range(3)], due=datetime.now(UTC)
        )
        sender = OutboxSender(desk.sessions, replace(config.smtp, domain_rate=None))
        record = ledger.record

        async def record_then_fail(connection: Any, results: ledger.Results, now: Any) -> None:
            await record(connection, results, now)
            await connection.exec_driver_sql("SELECT 1 / 0")

        with monkeypatch.context() as patch:
            patch.setattr(ledger.Results, "sent_only", lambda self: False)  # the general path
            patch.setattr(ledger, "record", record_then_fail)
            with pytest.raises(DBAPIError, match="division by zero"):
                await sendpass.SendPass(sender, refill=True, stop=asyncio.Event()).run()
        async with desk.sessions() as session:
            open_transactions = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%'"
                )
            )
        assert open_transactions == 0
        # not written: the first mail's result, and the other two put back untried
        assert sender._unrecorded.sent_rows == ids[:1]
        await sender.drain(10)
        await sender.close()
        rows = await _rows(desk)
    _each_sent_once(smtp_sink, rows, [f"f{n}@example.org" for n in range(3)])


async def test_an_ack_queued_while_notices_wait_for_their_rate_goes_at_once(make_config, smtp_sink):
    """The daemon's loop: optional notices at one a second wait in memory for their turns; an
    acknowledgement queued after the first of them goes as soon as the processor wakes the
    sender, not at the next notice's turn."""
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, rates=SendRates(critical=None, optional=1, transactional=None))
    stop = asyncio.Event()
    async with Desk(config) as desk:
        notice = await _notice(desk, critical=False)
        for n in range(3):
            await _queue(desk, [f"n{n}@x{n}.example"], due=datetime.now(UTC), notice=notice)
        sender = OutboxSender(desk.sessions, smtp, idle_poll=30)
        running = asyncio.create_task(sender.run(stop))
        try:
            await _until(lambda: len(smtp_sink.deliveries) == 1)  # the first notice (burst)
            await _queue(desk, ["ack@example.org"], due=datetime.now(UTC))
            sender.wakeup.set()  # as the processor does
            # well before the second notice's turn, a second after the first
            await _until(lambda: len(smtp_sink.deliveries) == 2, seconds=0.5)
        finally:
            stop.set()
            await running
    assert [d.recipients for d in smtp_sink.deliveries][1] == ["ack@example.org"]


async def test_an_ack_due_before_the_last_claim_goes_at_once_while_the_pool_is_full(
    make_config, smtp_sink
):
    """A batch stores its acknowledgements due when it began, and commits them when it ends: a
    claim may have run in between. Such an acknowledgement goes as soon as the processor wakes
    the sender, even while the pool is full of mail waiting for its domain's turn. (The first
    step of a claim read only what became due since the claim before, and the second does not
    run while the pool is full: through a backlog such acknowledgements waited until its end.)"""
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, domain_rates=(("slow.example", 5.0),))
    stop = asyncio.Event()
    async with Desk(config) as desk:
        began = datetime.now(UTC)
        await _queue_many(desk, [[f"s{n}@slow.example"] for n in range(150)], due=began)
        # All 150 held in the pool for their turns (30 s): the pool stays full for 10 s.
        sender = OutboxSender(desk.sessions, smtp, idle_poll=30, hold=60)
        running = asyncio.create_task(sender.run(stop))
        try:
            await _until(lambda: len(smtp_sink.deliveries) >= 1)
            await asyncio.sleep(0.3)  # claims have run since the batch began
            await _queue(desk, ["ack@example.org"], due=began)
            sender.wakeup.set()  # as the processor does once the batch is committed
            await _until(lambda: "ack@example.org" in smtp_sink.by_recipient(), seconds=2)
        finally:
            stop.set()
            await running
    assert len(smtp_sink.deliveries) < 150  # the slow domain's mail was still waiting


async def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Wait until CONDITION holds (the sink works in another thread), SECONDS at most."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds} s")


async def test_an_opt_out_while_a_notice_goes_out_is_looked_up_again_before_each_mail(
    make_config, smtp_sink
):
    """Opt-outs are looked up for the batch when it is claimed and again just before a mail
    goes when that lookup is older than RECHECK_AGE: an opt-out that comes while the first mail
    is at the relay keeps the second from going (one connection: the second waits)."""
    from helpdeskd.desk import notices
    from helpdeskd.store.models import Contact

    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 1})
    smtp_sink.handler.delay = 2 * sendpass.RECHECK_AGE  # the first mail's lookup goes stale
    async with Desk(config) as desk:
        async with desk.sessions() as session, session.begin():
            for name in ("ada", "bob"):
                session.add(Contact(email=f"{name}@customer.example", status="active"))
        notice = await _notice(desk, critical=False)
        now = datetime.now(UTC)
        for name in ("ada", "bob"):
            await _queue(desk, [f"{name}@customer.example"], due=now, notice=notice)
        sender = OutboxSender(desk.sessions, config.smtp, recheck=notices.recheck)
        sending = asyncio.create_task(sender.run_once())
        try:
            await _until(lambda: smtp_sink.handler.receiving == 1)  # ada's mail is at the relay
            async with desk.sessions() as session, session.begin():
                bob = await session.scalar(
                    select(Contact).where(Contact.email == "bob@customer.example")
                )
                assert await notices.opt_out(session, bob, "survey", via="test")
            assert await sending == 2
        finally:
            await sender.close()
        recipients = await _recipient_attempts(desk)
    assert [d.recipients for d in smtp_sink.deliveries] == [["ada@customer.example"]]
    assert recipients == {
        "ada@customer.example": ("sent", 1),
        "bob@customer.example": ("skipped", 0),
    }
