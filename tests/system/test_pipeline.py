"""The core end to end: mail in, tickets and acknowledgements out, on SQLite and PostgreSQL."""

from __future__ import annotations

from email.utils import getaddresses

from helpdeskd.mail.tokens import tokens_in, verify_reply
from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail


async def test_twenty_mails_make_twenty_tickets_and_acks(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    mails = [customer_mail(n) for n in range(20)]
    async with Desk(config) as desk:
        outcomes = await desk.ingest(mails)
        assert [o.outcome for o in outcomes] == ["new_ticket"] * 20
        await desk.send_all()

    tickets = cli_json(config, "tickets", "list")
    assert len(tickets) == 20
    assert {t["requester"] for t in tickets} == {f"customer{n}@example.org" for n in range(20)}
    assert all(t["state"] == "new" and t["message_count"] == 2 for t in tickets)

    deliveries = [d for d in smtp_sink.wait_for(40) if d.recipients != ["alice@acme.test"]]
    assert len(deliveries) == 20  # and 20 notifications to the agent
    by_rcpt = {d.recipients[0]: d.message for d in deliveries}
    assert set(by_rcpt) == {f"customer{n}@example.org" for n in range(20)}
    for n in range(20):
        ack = by_rcpt[f"customer{n}@example.org"]
        ticket = next(t for t in tickets if t["requester"] == f"customer{n}@example.org")
        assert f"[{ticket['ref']}]" in ack["Subject"]
        assert ack["Auto-Submitted"] == "auto-replied"
        assert ack["X-Auto-Response-Suppress"] == "OOF, AutoReply"
        assert "support@acme.test" in ack["X-Loop"]
        original = customer_mail(n)
        original_id = original.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
        assert ack["In-Reply-To"] == original_id
        assert original_id in ack["References"]
        assert len(ack["Message-ID"]) > 30
        [(_, reply_to)] = getaddresses([ack["Reply-To"]])
        [token] = tokens_in([reply_to], "support@acme.test")
        assert verify_reply(config.service.secret_keys, token).ref == ticket["ref"]
        # Never quote the customer's words back in an acknowledgement.
        assert "too many connections" not in ack.get_content()


async def test_ingesting_again_changes_nothing(make_config, smtp_sink, tmp_path):
    config = make_config(smtp=smtp_sink)
    folder = tmp_path / "mail"
    folder.mkdir()
    for n in range(20):
        (folder / f"{n:02}.eml").write_bytes(customer_mail(n))
    first = [line for line in cli(config, "ingest", "--json", str(folder)).stdout.splitlines()]
    assert len(first) == 20
    before_tickets = cli_json(config, "tickets", "list")
    before_outbox = cli_json(config, "outbox", "list")
    second = cli(config, "ingest", "--json", str(folder)).stdout.splitlines()
    assert len(second) == 20 and all('"outcome": "duplicate"' in line for line in second)
    # The same mails from another path (received again elsewhere) are duplicates by Message-ID.
    copy = tmp_path / "copy"
    copy.mkdir()
    for n in range(20):
        (copy / f"{n:02}.eml").write_bytes(customer_mail(n))
    third = cli(config, "ingest", "--json", str(copy)).stdout.splitlines()
    assert all('"outcome": "duplicate"' in line for line in third)
    assert cli_json(config, "tickets", "list") == before_tickets
    assert cli_json(config, "outbox", "list") == before_outbox


async def test_reply_with_in_reply_to_joins_ticket_whatever_its_subject(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    first = customer_mail(1, message_id="<first@example.org>")
    async with Desk(config) as desk:
        [created] = await desk.ingest([first])
        reply = customer_mail(
            1,
            subject="totally different words",
            in_reply_to="<first@example.org>",
            references=("<first@example.org>",),
            message_id="<second@example.org>",
        )
        [joined] = await desk.ingest([reply])
    assert created.outcome == "new_ticket"
    assert joined.outcome == "reply" and joined.ticket == created.ticket
    detail = cli_json(config, "tickets", "show", created.ticket)
    assert [m["message_id"] for m in detail["messages"] if m["direction"] == "in"] == [
        "<first@example.org>",
        "<second@example.org>",
    ]


async def test_reply_to_our_acknowledgement_joins_by_references(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        [created] = await desk.ingest([customer_mail(3)])
        await desk.send_all()
        ack = smtp_sink.wait_for(1)[0].message
        reply = customer_mail(
            3,
            subject="Re: thanks",
            in_reply_to=ack["Message-ID"],
            references=(ack["Message-ID"],),
            message_id="<r3@example.org>",
        )
        [joined] = await desk.ingest([reply])
    assert joined.outcome == "reply" and joined.ticket == created.ticket


async def test_subject_tag_from_stranger_opens_new_ticket(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        [created] = await desk.ingest([customer_mail(5, cc=("colleague@example.org",))])
        ref = created.ticket
        stranger = customer_mail(6, sender="mallory@evil.example", subject=f"Re: [{ref}] hi")
        colleague = customer_mail(7, sender="colleague@example.org", subject=f"Re: [{ref}] more")
        requester = customer_mail(5, subject=f"Re: [{ref}] again", message_id="<again@x.org>")
        [s, c, r] = await desk.ingest([stranger, colleague, requester])
    assert s.outcome == "new_ticket" and s.ticket != ref
    assert "non-participant" in s.reason
    assert c.outcome == "reply" and c.ticket == ref  # a Cc of the first message is a participant
    assert r.outcome == "reply" and r.ticket == ref


async def test_token_address_threads_even_without_headers(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        [created] = await desk.ingest([customer_mail(8)])
        await desk.send_all()
        [ack] = smtp_sink.by_recipient()["customer8@example.org"]
        ack = ack.message
        [(_, token_address)] = getaddresses([ack["Reply-To"]])
        reply = customer_mail(8, to=token_address, subject="no tag here", message_id="<t8@x.org>")
        [joined] = await desk.ingest([reply])
        forged = customer_mail(9, to="support+HD-1.k1.aaaaaaaaaa@acme.test", subject="x")
        [other] = await desk.ingest([forged])
    assert joined.outcome == "reply" and joined.ticket == created.ticket
    assert other.outcome == "new_ticket" and other.ticket != created.ticket


async def test_backfill_sends_nothing(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config, backfill=True) as desk:
        outcomes = await desk.ingest([customer_mail(n) for n in range(3)])
        await desk.send_all()
    assert [o.outcome for o in outcomes] == ["new_ticket"] * 3
    assert cli_json(config, "outbox", "list") == []
    assert smtp_sink.deliveries == []


async def test_automatic_mail_is_never_acknowledged(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    robots = [
        customer_mail(20, headers={"Auto-Submitted": "auto-replied"}),
        customer_mail(21, headers={"Precedence": "bulk"}),
        customer_mail(22, sender="mailer-daemon@example.org", subject="Undeliverable: hello"),
        customer_mail(23, subject="Out of Office: back Monday"),
        customer_mail(24, headers={"X-Loop": "helpdeskd; support@acme.test"}),
        customer_mail(25, sender="support@acme.test"),
        customer_mail(26, headers={"X-Spam-Flag": "YES"}),
        customer_mail(27, headers={"List-Id": "<news.example.org>"}),
    ]
    async with Desk(config) as desk:
        outcomes = await desk.ingest(robots)
        await desk.send_all()
    kinds = [o.outcome for o in outcomes]
    assert kinds[:7] == [
        "auto_reply",
        "auto_reply",
        "bounce",
        "auto_reply",
        "ignored",
        "ignored",
        "spam",
    ]
    assert kinds[7] == "new_ticket"  # a list mail is a ticket but never answered
    assert [d.recipients for d in smtp_sink.deliveries] == [["alice@acme.test"]]


async def test_acknowledgements_are_capped_per_sender(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, service={"autoreply_limit": 2})
    async with Desk(config) as desk:
        mails = [customer_mail(n, sender="chatty@example.org") for n in range(4)]
        await desk.ingest(mails)
        await desk.send_all()
    assert len(smtp_sink.by_recipient()["chatty@example.org"]) == 2


async def test_broken_message_is_quarantined_not_lost(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        outcomes = await desk.ingest([b"this is not a mail at all\r\n", customer_mail(1)])
    assert outcomes[0].outcome == "quarantined"
    assert outcomes[1].outcome == "new_ticket"
    rows = cli_json(config, "quarantine", "list")
    assert len(rows) == 1 and "From" in rows[0]["error"]


def test_schema_not_at_head_is_refused(tmp_path, make_config):
    config = make_config()
    from helpdeskd.store.db import downgrade

    downgrade(config.database.url, "base")
    proc = cli(config, "tickets", "list", check=False)
    assert proc.returncode == 1
    assert "helpdeskd db upgrade" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
