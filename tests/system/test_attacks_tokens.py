"""Issue 19 item 4, end to end: a leaked reply address is not a master key.

An agent's reply address (``support+HD-1.a1.d2530.k1.…@``) reaches the ticket's customer, so it
leaks: a forwarded notification, a reply with the notification quoted and Cc'd. Whoever holds it
and can also forge the agent's From must not keep it for ever, nor use it to reach beyond the
ticket. Each attack is real mail through the ingest path, on SQLite and PostgreSQL:

- an address older than ``agent_token_days`` is held like a forgery; one signed with a key no
  longer configured too, and the key ring rotates without breaking fresh ones;
- ``#cc +outsider`` or ``#merge`` with the token alone is held, and the agent asked to confirm
  from their own mailbox; only a reply to that request carries it out, once; our aligned DKIM
  pass is proof enough on its own;
- forged mail from an agent's address tells the agent at most once an hour.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, make_msgid
from pathlib import Path

import pytest

from helpdeskd.config.settings import Config
from helpdeskd.mail.tokens import ReplyToken, reply_address, tokens_in, verify_reply
from tests.harness import Desk, cli_json
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink

SUPPORT = "support@acme.test"
ALICE = "alice@acme.test"
BOB = "bob@acme.test"
CUSTOMER = "customer1@example.org"
EVE = "eve@evil.example"
DKIM_PASS = "mx.acme.test; dkim=pass header.d=acme.test; spf=pass smtp.mailfrom=acme.test"


def agent_mail(
    to: str,
    body: str,
    *,
    in_reply_to: str | None = None,
    results: str | None = None,
    subject: str = "Re: your question",
) -> bytes:
    """Mail From Alice's address (whoever really sent it) to TO."""
    msg = EmailMessage()
    if results is not None:
        msg["Authentication-Results"] = results  # on top, as our MTA adds it
    msg["From"] = f"Alice <{ALICE}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid("agent", domain="acme.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def mails_to(sink: SmtpSink, address: str) -> list[EmailMessage]:
    return [d.message for d in sink.deliveries if address in d.recipients]


def reply_to(message: EmailMessage) -> str:
    [(_, address)] = getaddresses([message["Reply-To"]])
    return address


def token_of(config: Config, address: str) -> ReplyToken:
    [text] = tokens_in([address], SUPPORT)
    token = verify_reply(config.service.secret_keys, text)
    assert token is not None, address
    return token


def notification(sink: SmtpSink, ref: str, agent: str = ALICE) -> EmailMessage:
    found = [
        m for m in mails_to(sink, agent) if "via" in str(m["From"]) and f"[{ref}]" in m["Subject"]
    ]
    assert found, f"no notification of {ref} for {agent}"
    return found[-1]


def to_customer(sink: SmtpSink, customer: str = CUSTOMER) -> list[EmailMessage]:
    """What reached the customer besides the acknowledgement."""
    return [m for m in mails_to(sink, customer) if m["Auto-Submitted"] is None]


def events(config: Config, ref: str) -> list[dict[str, object]]:
    return list(cli_json(config, "tickets", "show", ref)["events"])


def write_keys(tmp_path: Path, *lines: str) -> None:
    """Configure the key ring LINES ("ID SECRET"), the first signing (as an operator would)."""
    (tmp_path / "secret.key").write_text("".join(f"{line}\n" for line in lines))


K1 = "k1 test-secret-key-0123456789abcdef"  # the key conftest's configs start with
K2 = "k2 the-next-secret-key-0123456789ab"


async def open_ticket(desk: Desk, n: int = 1, source: str = "test") -> str:
    [outcome] = await desk.ingest([customer_mail(n)], source)
    await desk.send_all()
    assert outcome.ticket is not None
    return outcome.ticket


async def answer(desk: Desk, to: str, body: str, source: str = "test", **kwargs: str) -> str:
    """Ingest Alice's mail BODY to TO (from SOURCE: a desk over the same database after
    another one counts its mail from 1 again) and send what it plans."""
    [outcome] = await desk.ingest([agent_mail(to, body, **kwargs)], source)
    await desk.send_all()
    return outcome.reason


@pytest.fixture
def config(make_config, smtp_sink):
    return make_config(smtp=smtp_sink, agents=[(ALICE, "Alice"), (BOB, "Bob")])


# --- expiry and rotation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "age", "applied"),
    [
        (None, 10, True),
        (None, 90, True),
        (None, 91, False),  # the default: 90 days
        (30, 30, True),
        (30, 31, False),
    ],
)
async def test_an_expired_agent_address_is_held(
    make_config, smtp_sink, days: int | None, age: int, applied: bool
) -> None:
    service = {} if days is None else {"agent_token_days": days}
    config = make_config(smtp=smtp_sink, agents=[(ALICE, "Alice")], service=service)
    async with Desk(config) as desk:
        ref = await open_ticket(desk)
        note = notification(smtp_sink, ref)
        token = token_of(config, reply_to(note))
        today = datetime.now(UTC).date()
        assert token.issued == today  # the notification's address carries its issue day
        old = ReplyToken(ref, token.agent_id, issued=today - timedelta(days=age))
        leaked = reply_address(SUPPORT, config.service.secret_keys, old)
        reason = await answer(
            desk, leaked, "#status solved\n\nAll fixed.", in_reply_to=note["Message-ID"]
        )
    ticket = cli_json(config, "tickets", "show", ref)
    if applied:
        assert "reply sent" in reason
        assert ticket["state"] == "solved"
        assert [m.get_content().strip() for m in to_customer(smtp_sink)] == ["All fixed."]
        return
    assert "the reply address has expired" in reason
    assert ticket["state"] == "new"
    assert to_customer(smtp_sink) == []
    [security] = [e for e in ticket["events"] if e["type"] == "security_event"]
    assert "expired" in security["detail"]["reason"]
    [told] = [
        m
        for m in mails_to(smtp_sink, ALICE)
        if str(m["Subject"]).startswith("[") and "Not sent" in m["Subject"]
    ]
    assert "expired" in told.get_content()


async def test_the_key_ring_rotates(make_config, smtp_sink, tmp_path: Path) -> None:
    """The previous key still verifies while it is listed, a fresh address only until it
    expires; once the operator drops the key, what it signed is held."""
    config = make_config(smtp=smtp_sink, agents=[(ALICE, "Alice")])
    async with Desk(config) as desk:
        first = await open_ticket(desk, 1)
        second = await open_ticket(desk, 2)
    old_notes = {ref: notification(smtp_sink, ref) for ref in (first, second)}
    agent_id = token_of(config, reply_to(old_notes[first])).agent_id
    stale = ReplyToken(first, agent_id, issued=date.today() - timedelta(days=91))
    stale_address = reply_address(SUPPORT, config.service.secret_keys, stale)

    write_keys(tmp_path, K2, K1)  # rotated: k2 signs, k1 still verifies
    rotated = make_config(smtp=smtp_sink, agents=[(ALICE, "Alice")])
    async with Desk(rotated) as desk:
        note = old_notes[first]
        reason = await answer(
            desk, reply_to(note), "Fixed.", "rotated", in_reply_to=note["Message-ID"]
        )
        assert reason == "reply sent"  # signed with k1, still listed
        reason = await answer(
            desk, stale_address, "Again.", "rotated", in_reply_to=note["Message-ID"]
        )
        assert "expired" in reason  # k1 verifies it, but it is too old
        [outcome] = await desk.ingest([customer_mail(3)], "rotated")
        await desk.send_all()
    fresh = notification(smtp_sink, outcome.ticket)
    [text] = tokens_in([reply_to(fresh)], SUPPORT)
    assert text.split(".")[-2] == "k2"  # new addresses are signed with the new key

    write_keys(tmp_path, K2)  # k1 dropped
    dropped = make_config(smtp=smtp_sink, agents=[(ALICE, "Alice")])
    async with Desk(dropped) as desk:
        note = old_notes[second]
        reason = await answer(
            desk, reply_to(note), "Late.", "dropped", in_reply_to=note["Message-ID"]
        )
        assert "not sent to the agent's own reply address" in reason
        reason = await answer(
            desk, reply_to(fresh), "Fine.", "dropped", in_reply_to=fresh["Message-ID"]
        )
        assert reason == "reply sent"
    assert [m.get_content().strip() for m in to_customer(smtp_sink)] == ["Fixed."]
    assert [m.get_content().strip() for m in to_customer(smtp_sink, "customer3@example.org")] == [
        "Fine."
    ]


# --- stronger proof ------------------------------------------------------------------------------


async def test_a_leaked_address_cannot_add_an_outsider(config, smtp_sink) -> None:
    async with Desk(config) as desk:
        ref = await open_ticket(desk)
        note = notification(smtp_sink, ref)
        leaked = reply_to(note)  # e.g. the notification was forwarded
        reason = await answer(desk, leaked, f"#cc +{EVE}\n\nSee my colleague's mail.")
    assert reason == f"held for confirmation: #cc: adds {EVE}, not on the ticket yet"
    assert mails_to(smtp_sink, EVE) == [] and to_customer(smtp_sink) == []
    kinds = [e["type"] for e in events(config, ref)]
    assert "confirmation_requested" in kinds and "command_cc" not in kinds
    [request] = [m for m in mails_to(smtp_sink, ALICE) if "Confirm:" in m["Subject"]]
    body = request.get_content()
    assert EVE in body and "See my colleague's mail." in body
    assert "someone may be using your" in body
    confirm = token_of(config, reply_to(request))
    assert confirm.agent_id == token_of(config, leaked).agent_id and confirm.confirms


async def test_a_leaked_address_cannot_merge(config, smtp_sink) -> None:
    async with Desk(config) as desk:
        first = await open_ticket(desk, 1)
        second = await open_ticket(desk, 2)
        leaked = reply_to(notification(smtp_sink, second))
        reason = await answer(desk, leaked, f"#merge {first} force")
    assert reason.startswith(f"held for confirmation: #merge {first}")
    tickets = {t["ref"]: t for t in cli_json(config, "tickets", "list")}
    assert tickets[second]["state"] == "new"
    assert "merged_in" not in [e["type"] for e in events(config, first)]


async def test_the_agent_confirms_from_their_own_mailbox(config, smtp_sink) -> None:
    async with Desk(config) as desk:
        ref = await open_ticket(desk)
        note = notification(smtp_sink, ref)
        reason = await answer(
            desk, reply_to(note), "#cc +colleague@example.org\n\nLooping in your colleague."
        )
        assert reason.startswith("held for confirmation")
        [request] = [m for m in mails_to(smtp_sink, ALICE) if "Confirm:" in m["Subject"]]
        # A reply to the ordinary address again is held again: the token alone never does it.
        again = await answer(desk, reply_to(note), "#cc +colleague@example.org\n\nLooping in.")
        assert again.startswith("held for confirmation")
        # The confirmation: only the agent's mailbox received its address.
        reason = await answer(
            desk, reply_to(request), "Yes, that was me.", in_reply_to=request["Message-ID"]
        )
        assert reason == "confirmed: cc +colleague@example.org; reply sent"
        twice = await answer(desk, reply_to(request), "Yes!", in_reply_to=request["Message-ID"])
        assert twice == "confirmation refused: the held reply was confirmed already"
    [sent] = to_customer(smtp_sink)
    assert sent.get_content().strip() == "Looping in your colleague."
    assert "colleague@example.org" in str(sent["Cc"])
    assert "Yes, that was me." not in sent.get_content()
    kinds = [e["type"] for e in events(config, ref)]
    assert kinds.count("reply_confirmed") == 1 and kinds.count("command_cc") == 1


async def test_our_aligned_dkim_pass_is_proof_enough(make_config, smtp_sink) -> None:
    """With DKIM there is nothing to confirm: the agent's #cc applies at once."""
    config = make_config(
        smtp=smtp_sink, agents=[(ALICE, "Alice")], service={"authserv_id": "mx.acme.test"}
    )
    async with Desk(config) as desk:
        ref = await open_ticket(desk)
        note = notification(smtp_sink, ref)
        reason = await answer(
            desk,
            reply_to(note),
            "#cc +colleague@example.org\n\nLooping in your colleague.",
            results=DKIM_PASS,
        )
    assert reason == "cc +colleague@example.org; reply sent"
    [sent] = to_customer(smtp_sink)
    assert "colleague@example.org" in str(sent["Cc"])


# --- forged mail costs little --------------------------------------------------------------------


async def test_forged_mail_tells_the_agent_once_an_hour(config, smtp_sink) -> None:
    async with Desk(config) as desk:
        ref = await open_ticket(desk)
        note = notification(smtp_sink, ref)
        forged = [
            agent_mail(SUPPORT, f"#status closed\n\nForged {n}.", in_reply_to=note["Message-ID"])
            for n in range(5)
        ]
        for raw in forged[:3]:  # one run each: the lookup reads what was told
            [outcome] = await desk.ingest([raw])
            assert "not sent to the agent's own reply address" in outcome.reason
        outcomes = await desk.ingest(forged[3:])  # one run: the run learns it as it goes
        assert all("agent's own reply address" in o.reason for o in outcomes)
        await desk.send_all()
    notices = [m for m in mails_to(smtp_sink, ALICE) if "Not sent" in m["Subject"]]
    assert len(notices) == 1
    held = [e for e in events(config, ref) if e["type"] == "security_event"]
    assert [e["detail"]["told"] for e in held] == [True, False, False, False, False]
    assert cli_json(config, "tickets", "show", ref)["state"] == "new"
