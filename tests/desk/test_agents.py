"""Agents work by email, end to end over a real database and a real SMTP server."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, make_msgid

import pytest

from tests.harness import Desk, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink

ALICE = "alice@acme.test"
BOB = "bob@acme.test"
AGENTS = [(ALICE, "Alice"), (BOB, "Bob")]
# Our MTA's verdict that the agent's own domain signed the mail: the proof #cc +x and #merge
# need beyond the reply address (tests/system/test_attacks_tokens.py has the confirmation).
DKIM = {"Authentication-Results": "mx.acme.test; dkim=pass header.d=acme.test"}


def agent_mail(
    to: str,
    body: str,
    *,
    sender: str = ALICE,
    subject: str = "Re: [HD-1] question",
    in_reply_to: str | None = None,
    html: str | None = None,
    headers: dict[str, str] | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Agent <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid("agent", domain="acme.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    for key, value in (headers or {}).items():
        msg[key] = value
    if html is not None and not body:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    if attachment:
        msg.add_attachment(
            attachment[1], maintype="application", subtype="pdf", filename=attachment[0]
        )
    return msg.as_bytes(policy=SMTP)


def mails_to(sink: SmtpSink, address: str) -> list[EmailMessage]:
    return [d.message for d in sink.deliveries if address in d.recipients]


def reply_to(message: EmailMessage) -> str:
    [(_, address)] = getaddresses([message["Reply-To"]])
    return address


class Scene:
    """A customer's ticket, its agent notification, and helpers to answer it."""

    def __init__(self, desk: Desk, sink: SmtpSink) -> None:
        self.desk, self.sink = desk, sink

    async def open(self, n: int = 1, **kwargs) -> str:
        [outcome] = await self.desk.ingest([customer_mail(n, **kwargs)])
        await self.desk.send_all()
        return outcome.ticket

    def notification(self, agent: str = ALICE) -> EmailMessage:
        found = [m for m in mails_to(self.sink, agent) if "via" in str(m["From"])]
        assert found, f"no notification for {agent}"
        return found[-1]

    async def answer(self, body: str, *, agent: str = ALICE, **kwargs) -> str:
        note = self.notification(agent)
        raw = agent_mail(
            reply_to(note),
            body,
            sender=agent,
            subject=f"Re: {note['Subject']}",
            in_reply_to=note["Message-ID"],
            **kwargs,
        )
        [outcome] = await self.desk.ingest([raw])
        await self.desk.send_all()
        return outcome.reason


@pytest.fixture
def config(make_config, smtp_sink):
    return make_config(smtp=smtp_sink, agents=AGENTS, service={"authserv_id": "mx.acme.test"})


async def test_agents_are_notified_with_their_own_reply_address(config, smtp_sink):
    async with Desk(config) as desk:
        ref = await Scene(desk, smtp_sink).open(1, name="Ada Lovelace")
    for agent in (ALICE, BOB):
        [note] = mails_to(smtp_sink, agent)
        [sender] = note["From"].addresses
        assert sender.display_name == "Ada Lovelace via Acme Postgres add-on"
        assert sender.addr_spec == "support@acme.test"
        assert f"[{ref}]" in note["Subject"]
        body = note.get_content()
        assert body.index("cannot reach the database") < body.index(ref)  # words first
        assert reply_to(note).startswith(f"support+{ref}.a")
    assert reply_to(mails_to(smtp_sink, ALICE)[0]) != reply_to(mails_to(smtp_sink, BOB)[0])


async def test_authenticated_reply_reaches_customer_without_quote_or_signature(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        await scene.answer(
            "We restarted the server, please try again.\n\n-- \nAlice, Acme support\n\n"
            "On Mon, Nov 2, 2026 at 09:00 Customer 1 <customer1@example.org> wrote:\n"
            "> my app cannot reach the database\n",
            attachment=("runbook.pdf", b"%PDF-1.4 runbook"),
        )
    replies = [
        m for m in mails_to(smtp_sink, "customer1@example.org") if m["Auto-Submitted"] is None
    ]
    [reply] = replies
    text = reply.get_body(("plain",)).get_content()
    assert "We restarted the server" in text
    assert "wrote:" not in text and "Alice, Acme support" not in text
    [sender] = reply["From"].addresses
    assert sender.addr_spec == "support@acme.test" and "Alice" in sender.display_name
    assert f"[{ref}]" in reply["Subject"]
    assert (
        reply["In-Reply-To"]
        == customer_mail(1).split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
    )
    assert [p.get_filename() for p in reply.iter_attachments()] == ["runbook.pdf"]
    ticket = cli_json(config, "tickets", "show", ref)
    assert ticket["state"] == "pending"
    assert any(e["type"] == "reply_sent" for e in ticket["events"])
    # Bob, also on the ticket's agents, sees Alice's reply; Alice is not sent her own.
    assert any(
        "We restarted the server" in m.get_content()
        for m in mails_to(smtp_sink, BOB)
        if "via" in str(m["From"])
    )


async def test_commands_apply_all_and_send_a_receipt(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        await scene.answer("#Status Solved.\n#priority high\n#tags +billing\n#assign me\n\nFixed.")
    [ticket] = cli_json(config, "tickets", "list")
    assert (ticket["state"], ticket["priority"], ticket["tags"], ticket["assignee"]) == (
        "solved",
        "high",
        ["billing"],
        ALICE,
    )
    receipts = [
        m for m in mails_to(smtp_sink, ALICE) if str(m["Subject"]).startswith(f"[{ref}] Done")
    ]
    assert receipts and "solved" in receipts[0].get_content()


async def test_invalid_command_changes_and_sends_nothing(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        before = len(mails_to(smtp_sink, "customer1@example.org"))
        reason = await scene.answer("#status slved\n#priority high\n\nAll good now.")
    assert "refused" in reason
    assert len(mails_to(smtp_sink, "customer1@example.org")) == before
    [ticket] = cli_json(config, "tickets", "list")
    assert (ticket["state"], ticket["priority"]) == ("new", "normal")
    errors = [m for m in mails_to(smtp_sink, ALICE) if "Not sent" in str(m["Subject"])]
    assert errors and "slved" in errors[0].get_content()
    detail = cli_json(config, "tickets", "show", ref)
    drafts = [m for m in detail["messages"] if m["kind"] == "agent_draft"]
    assert drafts and drafts[0]["internal"]


async def test_spoofed_agent_sends_and_changes_nothing(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        before = len(mails_to(smtp_sink, "customer1@example.org"))
        spoof = agent_mail(
            "support@acme.test",
            "#status closed\n\nYour account is deleted.",
            subject=f"Re: [{ref}] question",
        )
        [outcome] = await desk.ingest([spoof])
        await desk.send_all()
        # Bob's token address does not authenticate Alice either.
        bobs = reply_to(scene.notification(BOB))
        [other] = await desk.ingest([agent_mail(bobs, "#status closed\n\nhi")])
        await desk.send_all()
    assert "held" in outcome.reason and "held" in other.reason
    assert len(mails_to(smtp_sink, "customer1@example.org")) == before
    detail = cli_json(config, "tickets", "show", ref)
    assert detail["state"] == "new"
    assert [e for e in detail["events"] if e["type"] == "security_event"]
    assert any("Not sent" in str(m["Subject"]) for m in mails_to(smtp_sink, ALICE))


async def test_note_never_reaches_the_customer(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        before = len(mails_to(smtp_sink, "customer1@example.org"))
        await scene.answer(
            "#note\nCustomer is on the legacy plan, SECRET-NOTE",
            html="<p>#note</p><p>SECRET-NOTE in html</p>",
        )
    assert len(mails_to(smtp_sink, "customer1@example.org")) == before
    for delivery in smtp_sink.deliveries:
        if "customer1@example.org" in delivery.recipients:
            assert b"SECRET-NOTE" not in delivery.data
    detail = cli_json(config, "tickets", "show", ref)
    [note] = [m for m in detail["messages"] if m["kind"] == "note"]
    assert note["internal"] and "legacy plan" in note["text"]


async def test_html_only_reply_from_a_phone(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        await scene.open(1)
        await scene.answer(
            "",
            html="<div>#status\u00a0solved</div><div>Restarted it for you.</div>"
            "<div><br></div><div>Sent from my iPhone</div>",
        )
    [ticket] = cli_json(config, "tickets", "list")
    assert ticket["state"] == "solved"
    [reply] = [
        m for m in mails_to(smtp_sink, "customer1@example.org") if m["Auto-Submitted"] is None
    ]
    text = reply.get_content()
    assert "Restarted it for you." in text and "#status" not in text
    assert reply.get_body(("html",)) is None or reply.get_content_type() == "text/plain"


async def test_agent_out_of_office_never_reaches_customer(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        await scene.open(1)
        note = scene.notification()
        ooo = agent_mail(
            reply_to(note),
            "I am out of the office until Monday.",
            subject="Automatic reply: question",
            headers={"Auto-Submitted": "auto-replied"},
        )
        before = len(mails_to(smtp_sink, "customer1@example.org"))
        [outcome] = await desk.ingest([ooo])
        await desk.send_all()
    assert outcome.outcome == "auto_reply"
    assert len(mails_to(smtp_sink, "customer1@example.org")) == before


async def test_canned_reply_and_cc(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        await scene.open(1)
        await scene.answer("#template thanks\n#cc +colleague@example.org", headers=DKIM)
    [reply] = [
        m for m in mails_to(smtp_sink, "customer1@example.org") if m["Auto-Submitted"] is None
    ]
    assert "Thank you for your patience" in reply.get_content()
    assert "colleague@example.org" in str(reply["Cc"])


async def test_merge_needs_force_across_requesters(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        first = await scene.open(1)
        await scene.open(2)
        reason = await scene.answer(f"#merge {first}", headers=DKIM)
        assert "another requester" in reason
        await scene.answer(f"#merge {first} force", headers=DKIM)
    tickets = {t["ref"]: t for t in cli_json(config, "tickets", "list")}
    assert tickets[first]["message_count"] > 2
    assert [t["state"] for r, t in tickets.items() if r != first] == ["closed"]


async def test_merge_carries_mail_and_participants_whatever_the_command_order(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        first = await scene.open(1)
        second = await scene.open(2)
        reason = await scene.answer(
            f"#merge {first} force\n#cc +colleague@example.org", headers=DKIM
        )
        assert (
            reason
            == f"merged into {first} (forced: different requesters); cc +colleague@example.org"
        )
        [note] = [
            m
            for m in mails_to(smtp_sink, ALICE)
            if "via" in str(m["From"]) and f"[{first}]" in str(m["Subject"])
        ]
        raw = agent_mail(reply_to(note), "Both are fixed.", in_reply_to=note["Message-ID"])
        [outcome] = await desk.ingest([raw])
        await desk.send_all()
    assert outcome.ticket == first and outcome.reason == "reply sent"
    [answer] = [m for m in mails_to(smtp_sink, "customer1@example.org") if "Both" in str(m)]
    # the merged ticket's requester, and the Cc added in the same reply, hear of it too
    assert "customer2@example.org" in str(answer["Cc"])
    assert "colleague@example.org" in str(answer["Cc"])
    merged = cli_json(config, "tickets", "show", second)
    assert merged["state"] == "closed"
    assert {"command_merge", "command_cc"} <= {e["type"] for e in merged["events"]}
    target = cli_json(config, "tickets", "show", first)
    [merged_in] = [e for e in target["events"] if e["type"] == "merged_in"]
    assert (merged_in["actor"], merged_in["detail"]) == (ALICE, {"from": second})
    assert any(m["from"] == "customer2@example.org" for m in target["messages"])


async def test_cc_removal_and_a_known_address(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1, cc=("carol@example.org",))
        await scene.open(2)  # customer2 is a contact already
        notes = [
            m
            for m in mails_to(smtp_sink, ALICE)
            if "via" in str(m["From"]) and f"[{ref}]" in str(m["Subject"])
        ]
        raw = agent_mail(
            reply_to(notes[0]),
            "#cc -carol@example.org +Customer2@Example.org\n\nLooping in your colleague.",
            in_reply_to=notes[0]["Message-ID"],
            headers=DKIM,
        )
        [outcome] = await desk.ingest([raw])
        await desk.send_all()
    assert "reply sent" in outcome.reason
    [answer] = [m for m in mails_to(smtp_sink, "customer1@example.org") if "Looping" in str(m)]
    assert "customer2@example.org" in str(answer["Cc"])
    assert "carol@example.org" not in str(answer["Cc"])


FORWARD = (
    "Can someone look at this?\n\n---------- Forwarded message ---------\n"
    "From: Grace Hopper <grace@navy.example>\nDate: Mon, 2 Nov 2026\n"
    "Subject: backups\n\nMy backups stopped.\n"
)
# Our MTA's verdict on the agent's mail: an aligned DKIM pass for acme.test.
SIGNED = {"Authentication-Results": "mx.acme.test; dkim=pass header.d=acme.test; spf=pass"}


async def test_agent_forward_opens_ticket_for_the_customer(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, agents=AGENTS, service={"authserv_id": "mx.acme.test"})
    forward = agent_mail("support@acme.test", FORWARD, subject="Fwd: backups", headers=SIGNED)
    async with Desk(config) as desk:
        [outcome] = await desk.ingest([forward])
        await desk.send_all()
    assert outcome.outcome == "new_ticket"
    [ticket] = cli_json(config, "tickets", "list")
    assert ticket["requester"] == "grace@navy.example"
    assert mails_to(smtp_sink, "grace@navy.example") == []  # no acknowledgement for a forward


async def test_a_forward_for_a_known_customer_opens_their_ticket(make_config, smtp_sink):
    """The customer a forward names may be a contact already: the ticket is theirs, and the
    forward is not quarantined on the contact row it found."""
    config = make_config(smtp=smtp_sink, agents=AGENTS, service={"authserv_id": "mx.acme.test"})
    forward = agent_mail("support@acme.test", FORWARD, subject="Fwd: backups", headers=SIGNED)
    async with Desk(config) as desk:
        [first] = await desk.ingest([customer_mail(1, sender="grace@navy.example")])
        [outcome] = await desk.ingest([forward])
    assert first.outcome == "new_ticket"
    assert outcome.outcome == "new_ticket", outcome
    assert outcome.reason.startswith("forwarded by")


@pytest.mark.parametrize("authserv_id", [None, "mx.acme.test"])
async def test_a_forward_that_does_not_authenticate_opens_nothing(
    make_config, smtp_sink, authserv_id
):
    """A forged 'forward' from an agent's address (or one with no DKIM verdict to prove it)
    does not open a ticket for the customer it names: it is a held draft, the agent told."""
    service = {"authserv_id": authserv_id} if authserv_id else {}
    config = make_config(smtp=smtp_sink, agents=AGENTS, service=service)
    forward = agent_mail("support@acme.test", FORWARD, subject="Fwd: backups")
    async with Desk(config) as desk:
        [outcome] = await desk.ingest([forward])
        await desk.send_all()
    assert outcome.outcome == "new_ticket" and "held as a draft" in outcome.reason
    [ticket] = cli_json(config, "tickets", "list")
    assert ticket["requester"] == ALICE
    assert mails_to(smtp_sink, "grace@navy.example") == []
    [note] = [m for m in mails_to(smtp_sink, ALICE) if "Not opened" in str(m["Subject"])]
    assert "grace@navy.example" in note.get_content()


HEROKU = """
[heroku]
senders = ["support@heroku-desk.example"]
reply_address = "support@heroku-desk.example"
agent_address = "heroku-agent@acme.test"
"""
FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "heroku"


async def test_heroku_round_trip(make_config, smtp_sink):
    from helpdeskd.config.load import load_config

    base = make_config(smtp=smtp_sink, agents=AGENTS)
    source = __import__("pathlib").Path(base.source)
    source.write_text(source.read_text() + HEROKU)
    config = load_config(source)
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        [created] = await desk.ingest([(FIXTURES / "01-new-ticket.eml").read_bytes()])
        await desk.send_all()
        assert created.outcome == "new_ticket"
        await scene.answer("Hello Jane, we are looking into the one-off dyno connections.")
        [update] = await desk.ingest([(FIXTURES / "02-customer-update.eml").read_bytes()])
        await desk.send_all()
    assert update.outcome == "reply" and update.ticket == created.ticket
    [ticket] = cli_json(config, "tickets", "list")
    assert (ticket["channel"], ticket["external_ref"]) == ("heroku", "482913")
    assert ticket["requester"] == "jane.doe@example.com"
    to_desk = mails_to(smtp_sink, "support@heroku-desk.example")
    [reply] = to_desk  # our agent's reply, and nothing automatic
    assert reply["Subject"] == (
        "[Heroku Support] Ticket #482913: Cannot connect to Postgres from one-off dynos"
    )
    [sender] = reply["From"].addresses
    assert sender.addr_spec == "heroku-agent@acme.test"
    assert reply["Reply-To"] is None and reply["Auto-Submitted"] is None
    assert mails_to(smtp_sink, "jane.doe@example.com") == []


async def test_a_note_quoted_in_another_agents_reply_never_reaches_the_customer(config, smtp_sink):
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        await scene.open(1)
        await scene.answer("#note\nSECRET-NOTE: the customer owes us money")
        note_to_bob = scene.notification(BOB)
        assert "SECRET-NOTE" in note_to_bob.get_content()  # agents see notes
        await scene.answer(
            "Your database is back.\n\nOn Mon, Nov 2, 2026 at 10:00 Alice wrote:\n"
            "> SECRET-NOTE: the customer owes us money\n",
            agent=BOB,
            html="<p>Your database is back.</p><blockquote>SECRET-NOTE in html</blockquote>",
        )
    to_customer = [d for d in smtp_sink.deliveries if "customer1@example.org" in d.recipients]
    assert len(to_customer) == 2  # the acknowledgement and Bob's reply
    assert all(b"SECRET-NOTE" not in d.data for d in to_customer)
    assert b"Your database is back." in to_customer[-1].data


def test_agent_round_trip_through_dovecot_and_the_daemon(make_config, smtp_sink, dovecot):
    """A customer writes, the agent answers from the notification, over real IMAP and SMTP."""
    from tests.system.test_daemon import start_daemon
    from tests.web.test_app import wait_until

    mailbox = {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": "support@acme.test",
        "password": "secret",
        "processed_folder": "Processed",
        "poll_interval": 600,
    }
    config = make_config(smtp=smtp_sink, agents=AGENTS, mailboxes=[mailbox])
    proc = start_daemon(config)
    try:
        dovecot.append("support@acme.test", "secret", customer_mail(1))
        note = wait_until(
            lambda: next((m for m in mails_to(smtp_sink, ALICE) if "via" in str(m["From"])), None)
        )
        reply = agent_mail(
            reply_to(note),
            "#priority high\n\nRestarted; please try again.",
            subject=f"Re: {note['Subject']}",
            in_reply_to=note["Message-ID"],
        )
        dovecot.append("support@acme.test", "secret", reply)
        answer = wait_until(
            lambda: next(
                (
                    m
                    for m in mails_to(smtp_sink, "customer1@example.org")
                    if m["Auto-Submitted"] is None
                ),
                None,
            )
        )
        assert "Restarted; please try again." in answer.get_content()
        assert "#priority" not in answer.get_content()
        wait_until(lambda: cli_json(config, "tickets", "list")[0]["priority"] == "high")
        assert dovecot.list_uids("support@acme.test", "secret", "INBOX") == []
    finally:
        proc.terminate()
        proc.wait(30)
