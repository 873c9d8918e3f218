"""The outbox against a real SMTP server: retries, per-recipient state, never twice."""

from __future__ import annotations

import asyncio
import email
import email.policy
from datetime import UTC, datetime, timedelta

from helpdeskd.mail.build import OutgoingMail, build_message, new_message_id
from helpdeskd.outbox import sender as outbox
from helpdeskd.outbox.sender import OutboxSender, backoff
from tests.harness import Desk, cli_json
from tests.servers.smtp import SmtpSink


async def _queue(desk: Desk, recipients: list[str], **kwargs: object) -> str:
    message_id = new_message_id("acme.test")
    mail = OutgoingMail(
        from_addr="support@acme.test",
        from_name="Acme",
        to=tuple(recipients),
        subject="hello",
        text="body",
        message_id=message_id,
        date=datetime.now(UTC),
    )
    async with desk.sessions() as session, session.begin():
        outbox.enqueue(
            session,
            kind="test",
            message_id=message_id,
            envelope_from="support@acme.test",
            recipients=recipients,
            data=build_message(mail),
            **kwargs,
        )
    return message_id


async def _until_done(sender: OutboxSender, config, rounds: int = 60) -> list[dict]:
    try:
        for _ in range(rounds):
            await sender.run_once()
            rows = cli_json(config, "outbox", "list")
            if all(r["state"] != "pending" for r in rows):
                return rows
            await asyncio.sleep(0.3)
        return cli_json(config, "outbox", "list")
    finally:
        await sender.close()


async def test_sink_down_then_back_delivers_once(make_config):
    sink = SmtpSink()  # not started: connection refused
    config = make_config(smtp=sink)
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
        sender = OutboxSender(desk.sessions, config.smtp)
        await sender.run_once()
        [row] = cli_json(config, "outbox", "list")
        assert row["state"] == "pending" and row["attempts"] == 1 and row["last_error"]
        sink.start()
        try:
            rows = await _until_done(sender, config)
        finally:
            sink.stop()
    assert rows[0]["state"] == "sent"
    assert [d.recipients for d in sink.deliveries] == [["a@example.org"]]


async def test_accepted_recipient_is_never_sent_again(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.refuse["b@example.org"] = "450 4.2.0 mailbox busy"
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org", "b@example.org"])
        sender = OutboxSender(desk.sessions, config.smtp)
        await sender.run_once()
        await sender.close()
        [row] = cli_json(config, "outbox", "list")
        states = {r["address"]: r["state"] for r in row["recipients"]}
        assert states == {"a@example.org": "sent", "b@example.org": "pending"}
        del smtp_sink.handler.refuse["b@example.org"]
        rows = await _until_done(sender, config)
    assert rows[0]["state"] == "sent"
    got = smtp_sink.by_recipient()
    assert len(got["a@example.org"]) == 1
    assert len(got["b@example.org"]) == 1


async def test_permanent_refusal_fails_that_recipient_only(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.refuse["gone@example.org"] = "550 5.1.1 no such user"
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org", "gone@example.org"])
        await OutboxSender(desk.sessions, config.smtp).drain(5)
    [row] = cli_json(config, "outbox", "list")
    states = {r["address"]: r["state"] for r in row["recipients"]}
    assert states == {"a@example.org": "sent", "gone@example.org": "failed"}
    assert row["state"] == "sent"
    assert "550" in next(r for r in row["recipients"] if r["state"] == "failed")["last_error"]


async def test_all_refused_permanently_fails_the_row(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.refuse["gone@example.org"] = "550 5.1.1 no such user"
    async with Desk(config) as desk:
        await _queue(desk, ["gone@example.org"])
        await OutboxSender(desk.sessions, config.smtp).drain(5)
    [row] = cli_json(config, "outbox", "list")
    assert row["state"] == "failed"
    assert smtp_sink.deliveries == []


async def test_temporary_failures_give_up_after_max_attempts(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, smtp_extra={"max_attempts": 3})
    smtp_sink.handler.refuse["slow@example.org"] = "451 4.3.0 try later"
    async with Desk(config) as desk:
        await _queue(desk, ["slow@example.org"])
        rows = await _until_done(OutboxSender(desk.sessions, config.smtp), config)
    assert rows[0]["state"] == "failed"
    assert rows[0]["recipients"][0]["attempts"] == 3


async def test_non_ascii_address_fails_at_once_where_the_relay_lacks_smtputf8(make_config):
    sink = SmtpSink()  # aiosmtpd offers no SMTPUTF8 unless asked
    sink.start()
    try:
        config = make_config(smtp=sink)
        async with Desk(config) as desk:
            await _queue(desk, ["a@example.org", "jürgen@example.org"])
            await OutboxSender(desk.sessions, config.smtp).drain(5)
    finally:
        sink.stop()
    [row] = cli_json(config, "outbox", "list")
    recipients = {r["address"]: r for r in row["recipients"]}
    assert recipients["a@example.org"]["state"] == "sent"
    wide = recipients["jürgen@example.org"]
    assert wide["state"] == "failed" and wide["attempts"] == 1
    assert "SMTPUTF8" in wide["last_error"]
    assert [d.recipients for d in sink.deliveries] == [["a@example.org"]]


async def test_non_ascii_address_is_delivered_where_the_relay_offers_smtputf8(make_config):
    sink = SmtpSink(smtputf8=True)
    sink.start()
    try:
        config = make_config(smtp=sink)
        async with Desk(config) as desk:
            await _queue(desk, ["jürgen@example.org"])
            await OutboxSender(desk.sessions, config.smtp).drain(5)
    finally:
        sink.stop()
    [row] = cli_json(config, "outbox", "list")
    assert row["state"] == "sent"
    [delivery] = sink.deliveries
    assert delivery.recipients == ["jürgen@example.org"]
    # RFC 6532: the header carries the address as UTF-8, never as encoded words
    to = email.message_from_string(delivery.data.decode(), policy=email.policy.default)["To"]
    assert [a.addr_spec for a in to.addresses] == ["jürgen@example.org"]
    assert b"To: j\xc3\xbcrgen@example.org\r\n" in delivery.data


async def test_expired_row_is_not_sent(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
        await OutboxSender(desk.sessions, config.smtp).drain(5)
    [row] = cli_json(config, "outbox", "list")
    assert row["state"] == "expired"
    assert smtp_sink.deliveries == []


async def test_row_that_expires_while_its_batch_goes_out_is_not_sent(make_config, smtp_sink):
    """Rows are claimed a batch at a time: a row is checked for expiry again just before it
    goes, not only when the batch was read."""
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.delay = 1.0  # each mail takes a second at the relay
    async with Desk(config) as desk:
        await _queue(desk, ["first@example.org"])
        await _queue(
            desk, ["late@example.org"], expires_at=datetime.now(UTC) + timedelta(seconds=0.5)
        )
        sender = OutboxSender(desk.sessions, config.smtp)
        assert await sender.run_once() == 2
        await sender.close()
    rows = {r["recipients"][0]["address"]: r["state"] for r in cli_json(config, "outbox", "list")}
    assert rows == {"first@example.org": "sent", "late@example.org": "expired"}
    assert [d.recipients for d in smtp_sink.deliveries] == [["first@example.org"]]


async def test_a_batch_holds_at_most_claim_bytes_of_mail(make_config, smtp_sink, monkeypatch):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        for n in range(3):
            await _queue(desk, [f"r{n}@example.org"])
        sender = OutboxSender(desk.sessions, config.smtp)
        monkeypatch.setattr(outbox, "CLAIM_BYTES", 1)  # smaller than any mail: one a batch
        if config.database.url.startswith("sqlite"):
            assert await sender.run_once() == 1
            monkeypatch.undo()
            assert await sender.run_once() == 2
        else:  # PostgreSQL claims, and holds, one row at a time
            assert await sender.run_once() == 3
        assert await sender.run_once() == 0
        await sender.close()
    assert sorted(r for d in smtp_sink.deliveries for r in d.recipients) == [
        "r0@example.org",
        "r1@example.org",
        "r2@example.org",
    ]


def test_backoff_grows_and_is_capped():
    delays = [backoff(n, 30, 3600) for n in range(1, 12)]
    assert 15 <= delays[0] <= 30
    assert all(d <= 3600 for d in delays)
    assert max(delays[-3:]) >= 1800
