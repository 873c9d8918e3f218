"""Authentication-Results fails closed (issue 19 item 1), end to end through ingest and the outbox.

A sender gets our MTA to write an odd HELO or MAIL FROM into our own topmost Authentication-Results
and puts a forged one of our authserv-id, with an aligned pass, below it. Before, our field
failed authres's parse and was skipped, so the forgery counted (or, with an encoded word in the
MAIL FROM, our own field was decoded into a pass): an agent's reply under
``agent_auth = "token+dkim"`` applied its commands, and a spoofed sender got an acknowledgement.
Now our field is read as our MTA wrote it or found unreadable, and nothing below it counts.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, make_msgid

import pytest

from tests.harness import Desk, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink

OURS = "mx.acme.test"
ALICE = "alice@acme.test"
CUSTOMER = "customer1@example.org"
VICTIM = "ceo@victim.example"

# A valid MAIL FROM whose local part is an RFC 2047 encoded word: SPF passes for the sender's own
# domain, and once decoded the field reads "spf=pass smtp.mailfrom=x; dkim=pass header.d=acme.test
# header.s=@evil.example". Before, that alone authenticated a forged agent reply.
ENCODED_MAILFROM = "=?utf-8?q?x=3B_dkim=3Dpass_header.d=3Dacme.test_header.s=3D?=@evil.example"
# What our MTA writes for a sender's HELO and MAIL FROM: unreadable (a quote never closed), or
# read, with nothing in it passing (the UTF-8 MAIL FROM authres alone could not read).
OUR_FIELDS = {
    "helo-with-a-stray-quote": f'{OURS}; spf=none smtp.helo=mail"evil.example; dkim=none',
    "utf8-mailfrom": f"{OURS}; spf=softfail smtp.mailfrom=älice@acme.test; dkim=none",
    "encoded-word-mailfrom": f"{OURS}; dkim=none; spf=pass smtp.mailfrom={ENCODED_MAILFROM}",
}


def with_fields(raw: bytes, *fields: str) -> bytes:
    """Return RAW with FIELDS as its topmost Authentication-Results, in order."""
    head = b"".join(b"Authentication-Results: " + f.encode() + b"\r\n" for f in fields)
    return head + raw


def mails_to(sink: SmtpSink, address: str) -> list[EmailMessage]:
    return [d.message for d in sink.deliveries if address in d.recipients]


def agent_reply(note: EmailMessage, body: str) -> bytes:
    """Return Alice's answer to agent notification NOTE, sent to her own reply address."""
    [(_, reply_address)] = getaddresses([note["Reply-To"]])
    msg = EmailMessage()
    msg["From"] = f"Alice <{ALICE}>"
    msg["To"] = reply_address
    msg["Subject"] = f"Re: {note['Subject']}"
    msg["Message-ID"] = make_msgid("agent", domain="acme.test")
    msg["In-Reply-To"] = msg["References"] = note["Message-ID"]
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


@pytest.fixture
def config(make_config, smtp_sink):
    return make_config(
        smtp=smtp_sink,
        service={"agent_auth": "token+dkim", "authserv_id": OURS},
        agents=[(ALICE, "Alice")],
    )


@pytest.mark.parametrize("ours", OUR_FIELDS.values(), ids=OUR_FIELDS.keys())
async def test_forged_dkim_below_our_field_does_not_authenticate_an_agent(config, smtp_sink, ours):
    forged = f"{OURS}; dkim=pass header.d=acme.test header.s=s1"
    async with Desk(config) as desk:
        [opened] = await desk.ingest([customer_mail(1)])
        await desk.send_all()
        ref = opened.ticket
        [note] = [m for m in mails_to(smtp_sink, ALICE) if "via" in str(m["From"])]
        before = len(mails_to(smtp_sink, CUSTOMER))

        attack = agent_reply(note, "#status solved\n#priority urgent\n\nAll your data is gone.")
        [held] = await desk.ingest([with_fields(attack, ours, forged)])
        await desk.send_all()
        assert "held" in held.reason, held.reason
        assert len(mails_to(smtp_sink, CUSTOMER)) == before
        detail = cli_json(config, "tickets", "show", ref)
        assert (detail["state"], detail["priority"]) == ("new", "normal")
        drafts = [m for m in detail["messages"] if m["kind"] == "agent_draft"]
        assert drafts and drafts[0]["internal"] and "data is gone" in drafts[0]["text"]
        assert [e for e in detail["events"] if e["type"] == "security_event"]

        # The same reply with our own field showing the pass is Alice's: the setup is sound.
        genuine = agent_reply(note, "#status solved\n\nFixed, please try again.")
        await desk.ingest([with_fields(genuine, f"{OURS}; dkim=pass header.d=acme.test")])
        await desk.send_all()
    assert cli_json(config, "tickets", "show", ref)["state"] == "solved"
    assert any("Fixed" in m.get_content() for m in mails_to(smtp_sink, CUSTOMER)[before:])


async def test_spoofed_sender_with_our_field_unreadable_gets_no_acknowledgement(config, smtp_sink):
    ours = OUR_FIELDS["helo-with-a-stray-quote"]
    forged = f"{OURS}; dmarc=pass header.from=victim.example"
    spoof = with_fields(customer_mail(1, sender=VICTIM), ours, forged)
    genuine = with_fields(
        customer_mail(2), f"{OURS}; dmarc=pass (p=reject) header.from=example.org"
    )
    async with Desk(config) as desk:
        spoofed, real = await desk.ingest([spoof, genuine])
        await desk.send_all()
    # The mail is kept as a ticket; only the automatic answer to the forged sender is withheld.
    assert spoofed.outcome == "new_ticket" and spoofed.ticket
    assert mails_to(smtp_sink, VICTIM) == []
    events = cli_json(config, "tickets", "show", spoofed.ticket)["events"]
    assert {"reason": "dmarc=fail"} in [
        e["detail"] for e in events if e["type"] == "ack_suppressed"
    ]
    assert real.outcome == "new_ticket"
    assert len(mails_to(smtp_sink, "customer2@example.org")) == 1
