"""Issue 19, properties 10 and 6 (classification), end to end through the real processor on
SQLite and PostgreSQL.

Bounces: all of them recognised, none answered. 181 real bounces from more than 30 MTAs
(tests/fixtures/bounces) go through ingest; each is a ``bounce`` (but the one whose body the
parser cannot see, which is an ``auto_reply``) and not one acknowledgement is written. An NDR
that also says Auto-Submitted counts against the address.

Nothing addressed to us is swallowed by a side address: a customer's mail to support@ with a
valid ``unsubscribe+TOKEN@`` in Cc opens a ticket, is acknowledged, and opts nobody out.
"""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpdeskd.clock import system_clock
from helpdeskd.config.secrets import Secret
from helpdeskd.desk.notices import unsubscribe_mailto
from helpdeskd.mail.tokens import ALL_CATEGORIES, BounceToken, sign_bounce, verify_bounce
from helpdeskd.store.db import create_engine, sessionmaker
from helpdeskd.store.models import Contact, Event, OptOut, Outbox, OutboxRecipient
from tests.clocks import ManualClock
from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink
from tests.system.test_attacks_authresults import agent_reply
from tests.triage import real_bounces

BATCH = 40


async def _acks(desk: Desk) -> int:
    async with desk.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Outbox).where(Outbox.kind == "ack")
        )
    return int(count or 0)


async def test_real_bounces_are_recognised_and_never_answered(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)  # without a relay no acknowledgement is ever written
    files = real_bounces.FILES
    async with Desk(config) as desk:
        outcomes = []
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            outcomes += await desk.ingest([p.read_bytes() for p in chunk], source="support")
        acks = await _acks(desk)
        await desk.send_all()
    assert len(outcomes) == len(files) >= 150
    wrong = {
        real_bounces.name(path): f"{o.outcome}: {o.reason}"
        for path, o in zip(files, outcomes, strict=True)
        if o.outcome != real_bounces.UNRECOGNISED.get(real_bounces.name(path), "bounce")
    }
    assert not wrong, "\n".join(f"{name}: {why}" for name, why in sorted(wrong.items()))
    assert acks == 0
    assert smtp_sink.deliveries == []


async def test_auto_submitted_ndr_marks_the_address_undeliverable(make_config, smtp_sink):
    """Exim-style NDR robots say Auto-Submitted: the bounce still counts against the address
    (here one hard bounce reaches the threshold, and the address is suspended)."""
    config = make_config(smtp=smtp_sink, extra="[bounces]\nthreshold = 1\n")
    customer = "kijitora@nyaan.example.org"  # the address lhost-x6-01 reports as failed
    ndr = real_bounces.FIXTURES / "sisimai" / "rb-dos-lhost-x6-01.eml"
    assert b"Auto-Submitted: auto-replied" in ndr.read_bytes()
    async with Desk(config) as desk:
        [first] = await desk.ingest([customer_mail(1, sender=customer, subject="Hello")])
        await desk.send_all()
        [ack] = [d.message for d in smtp_sink.deliveries if customer in d.recipients]
        # The NDR returns our acknowledgement: anyone can send a bounce, and only one about
        # mail we sent to the address counts against it.
        returned = ndr.read_bytes().replace(
            b"<68b329da9893e34099c7d8ad5cb9c940@x6.example.co.jp>", ack["Message-ID"].encode()
        )
        [bounce] = await desk.ingest([returned])
        [second] = await desk.ingest([customer_mail(2, sender=customer, subject="Again")])
        await desk.send_all()
        async with desk.sessions() as session:
            contact = await session.scalar(select(Contact).where(Contact.email == customer))
    assert (first.outcome, bounce.outcome, second.outcome) == ("new_ticket", "bounce", "new_ticket")
    assert "hard 5.4.6" in bounce.reason
    assert contact is not None and contact.undeliverable and contact.bounce_score == 1.0
    # Only the first ticket was acknowledged: the address bounced before the second.
    assert len([d for d in smtp_sink.deliveries if customer in d.recipients]) == 1


CSV = "email,name,plan,app,addon_id,status\nbob@customer.example,Bob,basic,bob-web,addon-2,active\n"


@pytest.mark.parametrize("category", ["survey", ALL_CATEGORIES])
async def test_unsubscribe_address_beside_support_is_customer_mail(
    make_config, smtp_sink: SmtpSink, tmp_path: Path, category: str
):
    config = make_config(smtp=smtp_sink)
    customers = tmp_path / "customers.csv"
    customers.write_text(CSV)
    cli(config, "customers", "import", str(customers))
    async with Desk(config) as desk:
        async with desk.sessions() as session:
            bob = await session.scalar(
                select(Contact).where(Contact.email == "bob@customer.example")
            )
        assert bob is not None
        mailto = unsubscribe_mailto(config, bob.id, category)
        # The attack: a mail to support that carries a real unsubscribe address in Cc.
        attack = customer_mail(
            1,
            sender="bob@customer.example",
            to="support@acme.test",
            cc=(mailto,),
            subject="Our database is down",
        )
        [outcome] = await desk.ingest([attack])
        await desk.send_all()
        async with desk.sessions() as session:
            optouts = (await session.scalars(select(OptOut))).all()
        # The unsubscribe address alone still unsubscribes.
        [alone] = await desk.ingest(
            [customer_mail(2, sender="bob@customer.example", to=mailto, subject="unsubscribe")]
        )
        async with desk.sessions() as session:
            after = (await session.scalars(select(OptOut))).all()
    assert outcome.outcome == "new_ticket", outcome.reason
    assert optouts == []
    acks = [d.message for d in smtp_sink.deliveries if "bob@customer.example" in d.recipients]
    assert len(acks) == 1 and acks[0]["Auto-Submitted"] == "auto-replied"
    assert alone.outcome == "unsubscribe"
    assert [(o.contact_id, o.category) for o in after] == [(bob.id, category)]


async def test_a_forged_bounce_marks_nobody_undeliverable(make_config, smtp_sink):
    """A bounce about mail we never sent to the address (anyone can write one) is recorded
    and answered by nobody, but the customer's address stays deliverable."""
    config = make_config(smtp=smtp_sink)
    customer = "kijitora@nyaan.example.org"
    ndr = real_bounces.FIXTURES / "sisimai" / "rb-dos-lhost-x6-01.eml"
    async with Desk(config) as desk:
        [first] = await desk.ingest([customer_mail(1, sender=customer, subject="Hello")])
        [bounce] = await desk.ingest([ndr.read_bytes()])
        async with desk.sessions() as session:
            contact = await session.scalar(select(Contact).where(Contact.email == customer))
    assert (first.outcome, bounce.outcome) == ("new_ticket", "bounce")
    assert contact is not None and not contact.undeliverable and contact.bounce_count == 0
    assert contact.bounce_score == 0.0 and contact.last_bounce_on is None


# --- issue 21: Mailman's bounce scoring, and bounces to our VERP return path ---------------

CUSTOMER = "jane@customer.example"
FORWARD = "jane.roe@forward.example"  # where the customer's mailbox forwards: the NDR names it


def verp_dsn(n: int, token: str, named: str, status: str, diagnostic: str) -> bytes:
    """An RFC 3464 report sent to our VERP return path, naming NAMED and returning no copy of
    our mail: only the token says which send it is about."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.forward.example>\r\n"
        f"To: bounces+{token}@acme.test\r\n"
        f"Delivered-To: bounces+{token}@acme.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn.{n}@mx.forward.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n'
        "\r\n--b0\r\nContent-Type: text/plain\r\n\r\n"
        "Your message could not be delivered to one or more recipients.\r\n"
        "--b0\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.forward.example\r\n\r\n"
        f"Final-Recipient: rfc822; {named}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n"
        "--b0--\r\n"
    ).encode()


def verp_ndr_naming_nobody(n: int, token: str) -> bytes:
    """A plain NDR that names no recipient at all, sent to our VERP return path."""
    return (
        "From: MAILER-DAEMON@mx.forward.example\r\n"
        f"To: bounces+{token}@acme.test\r\n"
        "Subject: Mail delivery failed: returning message to sender\r\n"
        f"Message-ID: <ndr.{n}@mx.forward.example>\r\n"
        "\r\n"
        "This message was created automatically by mail delivery software.\r\n\r\n"
        "A message that you sent could not be delivered. This is a permanent error.\r\n"
    ).encode()


async def _jane(desk: Desk) -> Contact:
    async with desk.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.email == CUSTOMER))
    assert contact is not None
    return contact


async def test_bounce_scores_through_ingest(make_config, smtp_sink):
    """A customer's acknowledgement bounces, day after day, to our VERP return path: a soft
    and a hard bounce on one day count once (the hard one); a forged token and a spam refusal
    count nothing; a stale score starts again; at 5 the address is suspended, which stops
    its acknowledgement and a critical notice; `contacts show` explains it, and `contacts
    unsuspend` lifts it."""
    config = make_config(smtp=smtp_sink, smtp_extra={"return_path": "bounces@acme.test"})
    keys = config.service.secret_keys
    # The bounces happen over 15 days that end the day before yesterday: `contacts show` reads
    # the real clock.
    clock = ManualClock(system_clock() - timedelta(days=16))
    first_day = clock().date()
    async with Desk(config) as desk:
        desk.processor.clock = clock
        [opened] = await desk.ingest([customer_mail(1, sender=CUSTOMER, subject="Hello")])
        async with desk.sessions() as session:
            ack = await session.scalar(select(Outbox.id).where(Outbox.kind == "ack"))
            rid = await session.scalar(
                select(OutboxRecipient.id).where(OutboxRecipient.outbox_id == ack)
            )
        assert opened.outcome == "new_ticket" and ack is not None and rid is not None
        token = sign_bounce(keys, BounceToken("recipient", rid))  # what the ack to her carried
        forged = f"r{rid}.{'a' * 10}"
        refused = "550 5.7.1 Message rejected as spam by Content Filtering"
        day0 = await desk.ingest(
            [
                verp_dsn(1, token, FORWARD, "5.2.2", "552 5.2.2 Mailbox full"),  # soft: 0.5
                verp_ndr_naming_nobody(2, token),  # names nobody: the token says who; hard: 1
                verp_dsn(3, token, FORWARD, "5.1.1", "550 5.1.1 User unknown"),  # the same day
                verp_dsn(4, forged, CUSTOMER, "5.1.1", "550 5.1.1 User unknown"),  # forged
                verp_dsn(5, token, FORWARD, "5.7.1", refused),  # a spam refusal: 0
            ]
        )
        assert [o.outcome for o in day0] == ["bounce"] * 5
        assert f"{CUSTOMER} hard 5.0.0" in day0[1].reason and "(by VERP)" in day0[1].reason
        jane = await _jane(desk)
        assert (jane.bounce_score, jane.last_bounce_on, jane.undeliverable) == (
            1.0,
            first_day,
            False,
        )
        assert jane.bounce_count == 3  # three real bounces; the forged one and the refusal not
        clock.advance(days=1)
        await desk.ingest([verp_dsn(6, token, FORWARD, "5.1.1", "550 5.1.1 User unknown")])
        assert (await _jane(desk)).bounce_score == 2.0
        # Nine days without a scored bounce: the score is stale and starts again.
        for n, days in enumerate((9, 1, 1, 1), start=7):
            clock.advance(days=days)
            await desk.ingest([verp_dsn(n, token, FORWARD, "5.1.1", "550 5.1.1 User unknown")])
        jane = await _jane(desk)
        assert (jane.bounce_score, jane.undeliverable) == (4.0, False)
        clock.advance(days=1)
        await desk.ingest([verp_dsn(11, token, FORWARD, "5.1.1", "550 5.1.1 User unknown")])
        jane = await _jane(desk)
        assert (jane.bounce_score, jane.undeliverable) == (5.0, True)
        suspended_on = clock().date()
        # Suspended: her next mail opens a ticket, but is not acknowledged.
        [again] = await desk.ingest([customer_mail(12, sender=CUSTOMER, subject="Still there?")])
        async with desk.sessions() as session:
            acks = (await session.scalars(select(Outbox.id).where(Outbox.kind == "ack"))).all()
            jane_row = await session.get_one(Contact, jane.id)
            jane_row.status = "active"  # a customer, so that notices are for her
            session.add(Contact(email="ok@customer.example", status="active"))
            await session.commit()
    assert again.outcome == "new_ticket" and acks == [ack]

    shown = cli_json(config, "contacts", "show", CUSTOMER)["bounces"]
    assert (shown["score"], shown["threshold"], shown["suspended"]) == (5.0, 5.0, True)
    assert shown["suspended_on"] == suspended_on.isoformat()
    assert [(d["day"], d["weight"], d["state"]) for d in shown["counted"]] == [
        ((first_day + timedelta(days=n)).isoformat(), 1.0, "hard") for n in range(10, 15)
    ]
    assert shown["resets_on"] == (suspended_on + timedelta(days=8)).isoformat()
    assert shown["policy_refusals"] == 1
    assert shown["last"]["reason"] == "hard 5.1.1 550 5.1.1 User unknown"

    sent = cli(
        config,
        "notice",
        "send",
        "incident",
        "--template",
        "incident",
        "--var",
        "title=Database outage",
        "--var",
        "status=investigating",
        "--var",
        "message=We are on it.",
        "--var",
        "status_url=https://support.acme.test/status",
    )
    assert "1 suspended for bouncing" in sent.stdout, sent.stdout
    lifted = cli(config, "contacts", "unsuspend", CUSTOMER, "--by", "dpo@acme.test").stdout
    assert "suspension lifted; bounce score 5 cleared to 0" in lifted
    engine = create_engine(config.database.url)
    try:
        async with sessionmaker(engine)() as session:
            notice_to = set(
                await session.scalars(
                    select(OutboxRecipient.address)
                    .join(Outbox, Outbox.id == OutboxRecipient.outbox_id)
                    .where(Outbox.notice_id.is_not(None))
                )
            )
            jane = await session.get_one(Contact, jane.id)
            [lift] = await session.scalars(select(Event).where(Event.type == "bounce_unsuspended"))
    finally:
        await engine.dispose()
    assert notice_to == {"ok@customer.example"}
    assert (jane.bounce_score, jane.last_bounce_on, jane.undeliverable) == (0.0, None, False)
    assert (lift.actor, lift.detail["by"], lift.detail["score"]) == (CUSTOMER, "dpo@acme.test", 5.0)


# --- issue 21: a return path per recipient ----------------------------------------------------

ALICE = "alice@acme.test"
MALLORY = "mallory@customer.example"  # Jane's colleague, on the ticket in Cc


def forged_dsn(n: int, token: str | None, named: str, reply: EmailMessage) -> bytes:
    """A DSN as a mail system writes it, sent to the return path TOKEN (None: to the bare
    bounces@ address), naming NAMED as the recipient that failed and returning the headers of
    our REPLY."""
    to = f"bounces+{token}@acme.test" if token is not None else "bounces@acme.test"
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\r\n"
        f"To: {to}\r\n"
        f"Delivered-To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <forged.{n}@mx.customer.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b0"\r\n'
        "\r\n--b0\r\nContent-Type: text/plain\r\n\r\n"
        "Your message could not be delivered to one or more recipients.\r\n"
        "--b0\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.example\r\n\r\n"
        f"Final-Recipient: rfc822; {named}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        "--b0\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {reply['From']}\r\nTo: {reply['To']}\r\nCc: {reply['Cc']}\r\n"
        f"Subject: {reply['Subject']}\r\nMessage-ID: {reply['Message-ID']}\r\n"
        "--b0--\r\n"
    ).encode()


def return_path_of(
    sink: SmtpSink, keys: tuple[tuple[str, Secret], ...], message_id: str, to: str
) -> str:
    """The VERP token of the copy of our mail MESSAGE_ID that went to TO alone, verified."""
    [delivery] = [
        d for d in sink.deliveries if d.recipients == [to] and d.message["Message-ID"] == message_id
    ]
    local, _, domain = delivery.sender.partition("@")
    assert domain == "acme.test" and local.startswith("bounces+r"), delivery.sender
    token = local.removeprefix("bounces+")
    assert verify_bounce(keys, token) is not None
    return token


async def _scores(desk: Desk) -> dict[str, tuple[float, int]]:
    async with desk.sessions() as session:
        found = await session.execute(
            select(Contact.email, Contact.bounce_score, Contact.bounce_count).where(
                Contact.email.in_((CUSTOMER, MALLORY))
            )
        )
        return {email: (score, count) for email, score, count in found}


async def _scored(desk: Desk) -> list[str]:
    """Whom each bounce_scored event so far was about, in order."""
    async with desk.sessions() as session:
        return list(
            await session.scalars(
                select(Event.actor).where(Event.type == "bounce_scored").order_by(Event.id)
            )
        )


async def _alice_answers_jane_and_mallory(desk: Desk, smtp_sink: SmtpSink) -> None:
    """Jane writes with Mallory in Cc, and Alice answers both by mail: all of it sent."""
    [opened] = await desk.ingest(
        [customer_mail(1, sender=CUSTOMER, subject="Backups", cc=(MALLORY,))]
    )
    await desk.send_all()
    [note] = [
        d.message
        for d in smtp_sink.deliveries
        if d.recipients == [ALICE] and f"[{opened.ticket}]" in d.message["Subject"]
    ]
    [replied] = await desk.ingest([agent_reply(note, "Your backups run again.")])
    assert replied.reason.endswith("reply sent"), replied.reason
    await desk.send_all()


async def test_a_cc_cannot_forge_a_bounce_against_the_other_recipient(make_config, smtp_sink):
    """Alice's reply goes to Jane and, in Cc, to Mallory: one outbox row, two copies, each
    with a return path naming its own recipient. Mallory forges a DSN to the return path he
    got, naming Jane and returning the reply's headers: it is his bounce, never hers. The
    return path of mail sent before return paths were per recipient named the row, which
    both received: for a row to two it proves nothing and counts against nobody, while for a
    row to one (Jane's acknowledgement) it still counts against her."""
    config = make_config(
        smtp=smtp_sink,
        agents=[(ALICE, "Alice")],
        smtp_extra={"return_path": "bounces@acme.test"},
    )
    keys = config.service.secret_keys
    async with Desk(config) as desk:
        await _alice_answers_jane_and_mallory(desk, smtp_sink)
        async with desk.sessions() as session:
            [(reply_row, count)] = (
                await session.execute(
                    select(Outbox.id, func.count(OutboxRecipient.id))
                    .join(OutboxRecipient, OutboxRecipient.outbox_id == Outbox.id)
                    .where(Outbox.kind == "reply")
                    .group_by(Outbox.id)
                )
            ).all()
            ack = await session.scalar(select(Outbox.id).where(Outbox.kind == "ack"))
        assert count == 2 and ack is not None  # one row to both
        [reply] = [d.message for d in smtp_sink.deliveries if d.recipients == [MALLORY]]
        assert CUSTOMER in reply["To"] and MALLORY in reply["Cc"]
        mallory = return_path_of(smtp_sink, keys, reply["Message-ID"], MALLORY)
        assert return_path_of(smtp_sink, keys, reply["Message-ID"], CUSTOMER) != mallory
        assert await _scores(desk) == {CUSTOMER: (0.0, 0), MALLORY: (0.0, 0)}

        # Mallory's return path names him: naming Jane, his forgery counts against him alone.
        [forged] = await desk.ingest([forged_dsn(1, mallory, CUSTOMER, reply)])
        assert forged.outcome == "bounce"
        assert f"{MALLORY} hard 5.1.1" in forged.reason and "(by VERP)" in forged.reason
        assert await _scores(desk) == {CUSTOMER: (0.0, 0), MALLORY: (1.0, 1)}
        # One naming himself counts against him, and him only.
        [own] = await desk.ingest([forged_dsn(2, mallory, MALLORY, reply)])
        assert own.outcome == "bounce"
        assert await _scores(desk) == {CUSTOMER: (0.0, 0), MALLORY: (1.0, 2)}
        assert await _scored(desk) == [MALLORY, MALLORY]

        # The old form of the reply's return path, which named the row both received.
        old = sign_bounce(keys, BounceToken("outbox", reply_row))
        [both] = await desk.ingest([verp_dsn(3, old, CUSTOMER, "5.1.1", "550 5.1.1 User unknown")])
        assert both.outcome == "bounce"
        assert "not counted: the return path names the row, and the mail went to 2" in both.reason
        assert await _scores(desk) == {CUSTOMER: (0.0, 0), MALLORY: (1.0, 2)}
        # No token at all, the reply named by its Message-ID: every real bounce of a copy
        # carries its recipient's token, so this one could be Mallory's about Jane.
        [bare] = await desk.ingest([forged_dsn(5, None, CUSTOMER, reply)])
        assert bare.outcome == "bounce" and "not counted: no VERP token" in bare.reason
        assert await _scores(desk) == {CUSTOMER: (0.0, 0), MALLORY: (1.0, 2)}
        # The old form of a row to Jane alone (her acknowledgement) still says whose it is.
        one = sign_bounce(keys, BounceToken("outbox", ack))
        [hers] = await desk.ingest([verp_dsn(4, one, FORWARD, "5.1.1", "550 5.1.1 User unknown")])
        assert "(by VERP)" in hers.reason
        assert await _scores(desk) == {CUSTOMER: (1.0, 1), MALLORY: (1.0, 2)}
        assert await _scored(desk) == [MALLORY, MALLORY, CUSTOMER]


async def test_without_return_path_a_cc_cannot_forge_a_bounce_against_the_other(
    make_config, smtp_sink
):
    """Without ``[smtp] return_path`` no copy carries a token, so every bounce is read by the
    Message-ID it returns, which Mallory knows as well as Jane: his DSN about the reply to
    both, naming Jane, is noted on the ticket and counts against nobody. A bounce of Jane's
    acknowledgement, which went to her alone, still counts against her."""
    config = make_config(smtp=smtp_sink, agents=[(ALICE, "Alice")])
    assert config.smtp is not None and config.smtp.return_path is None
    async with Desk(config) as desk:
        await _alice_answers_jane_and_mallory(desk, smtp_sink)
        [ack] = [
            d.message
            for d in smtp_sink.deliveries
            if d.recipients == [CUSTOMER] and d.message["Auto-Submitted"] == "auto-replied"
        ]
        [reply] = [d for d in smtp_sink.deliveries if MALLORY in d.recipients]
        assert set(reply.recipients) == {CUSTOMER, MALLORY}  # one transaction: no VERP
        assert "+" not in reply.sender

        [forged] = await desk.ingest([forged_dsn(1, None, CUSTOMER, reply.message)])
        assert forged.outcome == "bounce"
        assert "not counted: no VERP token, and the mail went to 2" in forged.reason
        assert await _scores(desk) == {CUSTOMER: (0.0, 0), MALLORY: (0.0, 0)}
        assert await _scored(desk) == []

        # Her acknowledgement went to her alone: only she (or a mail system) knows its ID.
        ack_headers = EmailMessage()
        for name in ("From", "To", "Subject", "Message-ID"):
            ack_headers[name] = ack[name]
        ack_headers["Cc"] = ""
        [hers] = await desk.ingest([forged_dsn(2, None, CUSTOMER, ack_headers)])
        assert hers.outcome == "bounce" and "not counted" not in hers.reason
        assert await _scores(desk) == {CUSTOMER: (1.0, 1), MALLORY: (0.0, 0)}
