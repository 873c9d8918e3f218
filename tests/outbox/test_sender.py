"""The outbox against a real SMTP server: retries, per-recipient state, never twice."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from helpdeskd.config.settings import SmtpConfig
from helpdeskd.desk.redelivery import retry_outbox
from helpdeskd.mail.build import OutgoingMail, build_message, new_message_id
from helpdeskd.outbox import sender as outbox
from helpdeskd.outbox import sendpass
from helpdeskd.outbox.relay import Relay
from helpdeskd.outbox.sender import OutboxSender, backoff
from helpdeskd.store.models import Outbox
from tests.clocks import ManualClock
from tests.harness import Desk, cli_json
from tests.oauth.support import Tokens, unused_oauth
from tests.servers.oauth import AuthServer
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


async def _rows(desk: Desk) -> list[Outbox]:
    async with desk.sessions() as session:
        return list(await session.scalars(select(Outbox).order_by(Outbox.id)))


async def _until_done(
    sender: OutboxSender, config, clock: ManualClock, rounds: int = 60
) -> list[dict]:
    """Send until no row is pending, moving SENDER's CLOCK past any backoff between rounds."""
    try:
        for _ in range(rounds):
            await sender.run_once()
            rows = cli_json(config, "outbox", "list")
            if all(r["state"] != "pending" for r in rows):
                return rows
            clock.advance(seconds=config.smtp.retry_max)
        return cli_json(config, "outbox", "list")
    finally:
        await sender.close()


async def test_sink_down_then_back_delivers_once(make_config):
    sink = SmtpSink()  # not started: connection refused
    config = make_config(smtp=sink)
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
        clock = ManualClock()
        sender = OutboxSender(desk.sessions, config.smtp, clock=clock)
        await sender.run_once()
        [row] = cli_json(config, "outbox", "list")
        assert row["state"] == "pending" and row["attempts"] == 1 and row["last_error"]
        sink.start()
        try:
            rows = await _until_done(sender, config, clock)
        finally:
            sink.stop()
    assert rows[0]["state"] == "sent"
    assert [d.recipients for d in sink.deliveries] == [["a@example.org"]]


async def test_a_relay_that_falls_silent_is_dropped_and_the_mail_waits(make_config, smtp_sink):
    """A reply that does not come within [smtp] timeout fails the connection: it is dropped
    (a late reply would be taken for the next command's), and the mail waits for its retry,
    charged an attempt. The retry goes over a new connection."""
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, timeout=0.3, connections=1)
    smtp_sink.handler.delay = 2.0  # the relay answers the mail's DATA too late
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
        clock = ManualClock()
        sender = OutboxSender(desk.sessions, smtp, clock=clock)
        assert await sender.run_once() == 1
        [row] = cli_json(config, "outbox", "list")
        assert row["state"] == "pending" and row["attempts"] == 1
        assert row["last_error"] == "SMTPReadTimeoutError: no reply within 0.3 s"
        assert not sender.relays[0].connected
        smtp_sink.handler.delay = 0.0
        rows = await _until_done(sender, config, clock)
    assert rows[0]["state"] == "sent"
    assert sender.connections_opened == 2
    assert smtp_sink.by_recipient()["a@example.org"]  # at least once


async def test_each_reply_has_its_own_time_however_long_the_mail_takes(make_config, smtp_sink):
    """[smtp] timeout limits each reply from its command, not the whole mail: a relay slow to
    answer every command, each within the limit, gets the mail on the first try, though the
    mail takes several times the limit in all."""
    config = make_config(smtp=smtp_sink)
    # Each reply half a second within the limit (the sink shares this process: room for a
    # loaded machine); three recipients: 1.5 s of RCPT replies.
    smtp = replace(config.smtp, timeout=1.0, connections=1)
    smtp_sink.handler.rcpt_delay = 0.5
    smtp_sink.handler.delay = 0.5
    recipients = ["a@example.org", "b@example.org", "c@example.org"]
    async with Desk(config) as desk:
        await _queue(desk, recipients)
        sender = OutboxSender(desk.sessions, smtp, clock=ManualClock())
        try:
            assert await sender.run_once() == 1
        finally:
            await sender.close()
    [row] = cli_json(config, "outbox", "list")
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    assert [sorted(d.recipients) for d in smtp_sink.deliveries] == [recipients]
    assert sender.connections_opened == 1


async def test_accepted_recipient_is_never_sent_again(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.refuse["b@example.org"] = "450 4.2.0 mailbox busy"
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org", "b@example.org"])
        clock = ManualClock()
        sender = OutboxSender(desk.sessions, config.smtp, clock=clock)
        await sender.run_once()
        await sender.close()
        [row] = cli_json(config, "outbox", "list")
        states = {r["address"]: r["state"] for r in row["recipients"]}
        assert states == {"a@example.org": "sent", "b@example.org": "pending"}
        del smtp_sink.handler.refuse["b@example.org"]
        rows = await _until_done(sender, config, clock)
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


async def test_a_mail_refused_to_every_recipient_leaves_the_connection_to_the_next(
    make_config, smtp_sink
):
    """The envelope of a mail nobody took is reset: the next mail goes over the same
    connection (a second MAIL FROM without it is refused as a nested transaction)."""
    config = make_config(smtp=smtp_sink, smtp_extra={"connections": 1})
    smtp_sink.handler.refuse["gone@example.org"] = "550 5.1.1 no such user"
    async with Desk(config) as desk:
        await _queue(desk, ["gone@example.org"])
        await _queue(desk, ["a@example.org"])
        sender = OutboxSender(desk.sessions, config.smtp)
        await sender.drain(5)
    first, second = cli_json(config, "outbox", "list")
    assert (first["state"], second["state"]) == ("failed", "sent")
    assert [d.recipients for d in smtp_sink.deliveries] == [["a@example.org"]]
    assert sender.connections_opened == 1 and smtp_sink.connections == 1


async def test_the_relay_is_told_the_size_of_each_mail_as_it_goes(make_config, smtp_sink):
    """RFC 1870: MAIL FROM's SIZE is the mail's octets on the wire, every line ending a CRLF,
    whatever endings the stored mail has."""
    config = make_config(smtp=smtp_sink)
    bodies = [
        b"Subject: crlf\r\n\r\none\r\ntwo\r\n",
        b"Subject: bare\n\none\ntwo\rthree\r\n",
    ]
    async with Desk(config) as desk:
        async with desk.sessions() as session, session.begin():
            for n, data in enumerate(bodies):
                outbox.enqueue(
                    session,
                    kind="test",
                    message_id=f"<size{n}@acme.test>",
                    envelope_from="support@acme.test",
                    recipients=[f"r{n}@example.org"],
                    data=data,
                )
        await OutboxSender(desk.sessions, config.smtp).drain(5)
    deliveries = sorted(smtp_sink.deliveries, key=lambda d: d.recipients)
    assert [d.data.count(b"\r\n") for d in deliveries] == [4, 5]
    assert [d.mail_options for d in deliveries] == [[f"SIZE={len(d.data)}"] for d in deliveries]


async def test_the_relay_is_given_each_address_as_stored_and_nothing_after_it(
    make_config, smtp_sink
):
    """MAIL and RCPT carry an address the desk stores as it is: a local part with stray dots,
    an address literal, the null sender. An address it would not store goes through
    aiosmtplib's own quoting, so nothing after it reaches the relay as a parameter or a
    command."""
    config = make_config(smtp=smtp_sink)
    relay = Relay(config.smtp)
    stored = ["foo..bar.@docomo.ne.jp", "user+tag@example.org", "x@[127.0.0.1]"]
    hostile = ["a@example.org> NOTIFY=NEVER", "b@example.org>\r\nRSET"]
    mails = [b"Subject: a\r\n\r\none\r\n", b"Subject: b\r\n\r\n"]
    await relay.connect()
    try:
        first = await relay.send("", stored, mails[0])
        second = await relay.send("bounces@acme.test> RET=FULL", hostile, mails[1])
    finally:
        await relay.close()
    assert first.accepted == tuple(stored) and second.accepted == tuple(hostile)
    assert [(d.sender, d.recipients) for d in smtp_sink.deliveries] == [
        ("<>", stored),
        ("bounces@acme.test", ["a@example.org", "b@example.org"]),
    ]
    assert [d.mail_options for d in smtp_sink.deliveries] == [[f"SIZE={len(m)}"] for m in mails]


async def test_temporary_failures_give_up_after_max_attempts(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, smtp_extra={"max_attempts": 3})
    smtp_sink.handler.refuse["slow@example.org"] = "451 4.3.0 try later"
    async with Desk(config) as desk:
        await _queue(desk, ["slow@example.org"])
        clock = ManualClock()
        rows = await _until_done(
            OutboxSender(desk.sessions, config.smtp, clock=clock), config, clock
        )
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


async def test_a_deferred_mail_waits_out_its_backoff_on_the_senders_clock(make_config, smtp_sink):
    """A 4xx defers the mail by the backoff counted on the sender's clock: it is not tried
    again a second before, and is at once when the clock reaches it."""
    config = make_config(smtp=smtp_sink)
    smtp = replace(config.smtp, retry_base=600, retry_max=3600)
    smtp_sink.handler.refuse["a@example.org"] = "451 4.3.0 try later"
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))  # years away: only the clock counts
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"], not_before=clock())
        sender = OutboxSender(desk.sessions, smtp, clock=clock)
        try:
            assert await sender.run_once() == 1
            [row] = await _rows(desk)
            assert (row.state, row.attempts) == ("pending", 1)
            # The first retry waits half to all of retry_base (full jitter).
            wait = row.next_attempt_at - clock()
            assert timedelta(seconds=300) <= wait <= timedelta(seconds=600)
            del smtp_sink.handler.refuse["a@example.org"]
            clock.set(row.next_attempt_at - timedelta(seconds=1))
            assert await sender.run_once() == 0
            assert smtp_sink.deliveries == []
            clock.set(row.next_attempt_at)
            assert await sender.run_once() == 1
        finally:
            await sender.close()
        [row] = await _rows(desk)
    assert (row.state, row.attempts, row.sent_at) == ("sent", 2, clock())
    assert [d.recipients for d in smtp_sink.deliveries] == [["a@example.org"]]


async def test_a_row_is_not_sent_once_the_clock_passes_its_expiry(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    async with Desk(config) as desk:
        for address, hours in (("stale@example.org", 1), ("fresh@example.org", 2)):
            expires_at = clock() + timedelta(hours=hours)
            await _queue(desk, [address], not_before=clock(), expires_at=expires_at)
        clock.advance(hours=1)  # the stale one's expiry: it is over at that moment
        await OutboxSender(desk.sessions, config.smtp, clock=clock).drain(5)
    rows = {r["recipients"][0]["address"]: r["state"] for r in cli_json(config, "outbox", "list")}
    assert rows == {"stale@example.org": "expired", "fresh@example.org": "sent"}
    assert [d.recipients for d in smtp_sink.deliveries] == [["fresh@example.org"]]


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
    goes, not only when the batch was read. (One connection: the second mail waits for the
    first; with more they would go at once.)"""
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.delay = 1.0  # each mail takes a second at the relay
    async with Desk(config) as desk:
        await _queue(desk, ["first@example.org"])
        await _queue(
            desk, ["late@example.org"], expires_at=datetime.now(UTC) + timedelta(seconds=0.5)
        )
        sender = OutboxSender(desk.sessions, replace(config.smtp, connections=1))
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
        monkeypatch.setattr(sendpass, "CLAIM_BYTES", 1)  # smaller than any mail: one a batch
        assert await sender.run_once() == 1
        monkeypatch.undo()
        assert await sender.run_once() == 2
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


async def test_a_recipient_no_mail_can_be_addressed_to_fails_and_the_rest_go(
    make_config, smtp_sink
):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        message_id = new_message_id("acme.test")
        mail = OutgoingMail(
            from_addr="support@acme.test",
            from_name="Acme",
            to=("a@example.org",),
            subject="hello",
            text="body",
            message_id=message_id,
            date=datetime.now(UTC),
        )
        async with desk.sessions() as session, session.begin():
            outbox.enqueue(  # stored by an older release, before addresses were checked
                session,
                kind="test",
                message_id=message_id,
                envelope_from="support@acme.test",
                recipients=["a@example.org", "bad@@example.org", "b c@example.org"],
                data=build_message(mail),
            )
        await OutboxSender(desk.sessions, config.smtp).drain(5)
    [row] = cli_json(config, "outbox", "list")
    got = {r["address"]: (r["state"], r["last_error"]) for r in row["recipients"]}
    assert got == {
        "a@example.org": ("sent", None),
        "bad@@example.org": ("failed", outbox.UNADDRESSABLE),
        "b c@example.org": ("failed", outbox.UNADDRESSABLE),
    }
    assert row["state"] == "sent"
    assert [d.recipients for d in smtp_sink.deliveries] == [["a@example.org"]]


async def test_a_row_for_an_unaddressable_recipient_fails_again_on_retry_untried(make_config):
    sink = SmtpSink()  # never started: a connection attempt would leave a temporary error
    config = make_config(smtp=sink)
    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    async with Desk(config) as desk:
        async with desk.sessions() as session, session.begin():
            row = outbox.enqueue_failed(
                session,
                kind="notice",
                message_id=new_message_id("acme.test"),
                envelope_from="notices@acme.test",
                address="bad@@example.org",
                reason=outbox.UNADDRESSABLE,
                now=now,
            )
            await session.flush()
            row_id = row.id
        [listed] = cli_json(config, "outbox", "list")
        assert (listed["state"], listed["recipients"][0]["last_error"]) == (
            "failed",
            outbox.UNADDRESSABLE,
        )
        async with desk.sessions() as session, session.begin():
            await retry_outbox(session, row_id, now=now)
        await OutboxSender(desk.sessions, config.smtp, clock=ManualClock(now)).drain(5)
    [listed] = cli_json(config, "outbox", "list")
    assert listed["state"] == "failed" and listed["attempts"] == 1
    assert listed["recipients"][0]["last_error"] == outbox.UNADDRESSABLE  # no connection tried


# --- OAuth 2.0 ---------------------------------------------------------------------------------


def _oauth(smtp: SmtpConfig, mechanism: str = "xoauth2") -> SmtpConfig:
    oauth = unused_oauth(mechanism)
    return replace(smtp, auth="oauth2", username="support@acme.test", oauth=oauth)


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
async def test_oauth_login_sends_as_the_tokens_account(
    make_config, auth_server: AuthServer, oauth_smtp_sink: SmtpSink, mechanism: str
) -> None:
    config = make_config(smtp=oauth_smtp_sink)
    tokens = Tokens(auth_server.issue_access_token("support@acme.test"))
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
        sender = OutboxSender(desk.sessions, _oauth(config.smtp, mechanism), token_source=tokens)
        await sender.drain(5)
    [delivery] = oauth_smtp_sink.deliveries
    assert delivery.account == "support@acme.test"
    assert [a.mechanism.lower() for a in oauth_smtp_sink.auth_log] == [mechanism]


async def test_a_refused_login_charges_no_mail_is_reported_once_and_recovers(
    make_config, auth_server: AuthServer, oauth_smtp_sink: SmtpSink
) -> None:
    config = make_config(smtp=oauth_smtp_sink)
    revoked = auth_server.issue_access_token("support@acme.test")
    auth_server.revoke_account("support@acme.test")
    tokens = Tokens(revoked)
    reports: list[tuple[str | None, str | None]] = []

    async def on_login(error: str | None, fix: str | None) -> None:
        reports.append((error, fix))

    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
        clock = ManualClock()  # after the queueing: the row is due by the sender's clock
        smtp = _oauth(config.smtp)
        sender = OutboxSender(
            desk.sessions, smtp, clock=clock, token_source=tokens, on_login=on_login
        )
        assert await sender.run_once() == 0
        [(error, fix)] = reports
        assert error is not None and "refused: 535" in error and "(status 401" in error
        assert fix == "helpdeskd oauth login smtp"
        [row] = cli_json(config, "outbox", "list")
        assert row["state"] == "pending" and row["attempts"] == 0  # nobody's mail was charged

        # backed off: no second try, no second report, until the sender's clock says so
        assert await sender.run_once() == 0
        assert len(oauth_smtp_sink.auth_log) == 1 and len(reports) == 1
        clock.advance(seconds=outbox.LOGIN_RETRY_MAX)
        assert await sender.run_once() == 0
        assert len(oauth_smtp_sink.auth_log) == 2 and len(reports) == 1

        tokens.tokens = [auth_server.issue_access_token("support@acme.test")]
        clock.advance(seconds=outbox.LOGIN_RETRY_MAX)
        rows = await _until_done(sender, config, clock)
    assert rows[0]["state"] == "sent" and rows[0]["attempts"] == 1
    assert reports[1:] == [(None, None)]
    assert [d.recipients for d in oauth_smtp_sink.deliveries] == [["a@example.org"]]
