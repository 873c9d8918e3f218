"""The mail a plan sends, composed (helpdeskd.triage.mails.compose) and built as it goes out.

Each kind of mail is composed for a ticket with a number, built to bytes and read back: who it
is from and to, where a reply goes (an agent's own signed token address, or the ticket's), the
[HD-n] tag, the thread headers, the loop markers and the ticket it is stored on.
"""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage

import pytest

from helpdeskd.config.settings import Config
from helpdeskd.mail.build import build_message
from helpdeskd.mail.compose import Composed, Parent
from helpdeskd.mail.thread_index import thread_index_root
from helpdeskd.mail.tokens import ReplyToken, tokens_in, verify_reply
from helpdeskd.triage.mails import (
    Ack,
    FloodAlert,
    Mail,
    Note,
    Notification,
    RuleCopy,
    Said,
    TicketCard,
    compose,
)
from tests.triage.plan_support import (
    ALICE,
    BOB,
    JANE,
    NOW,
    RENDERER,
    SUPPORT,
    make_config,
    write_secrets,
)

SERVICE = "Acme Postgres add-on"
CARD = TicketCard(42, "Backups not running", "new", "high", "billing", "email", None, ALICE.email)
ROOT = base64.b64encode(bytes(range(22))).decode()  # an Outlook conversation's Thread-Index
PARENT = Parent("<c1@example.org>", ("<c0@example.org>",), "<c0@example.org>", ROOT)
SAID = Said(
    message_id="<c1@example.org>",
    from_addr=JANE.email,
    from_name=JANE.name,
    kind="customer",
    text="The backups stopped on Sunday.",
    attachments=({"name": "log.txt", "type": "text/plain", "size": 1200, "sha256": "ab"},),
    references=("<c0@example.org>",),
    in_reply_to="<c0@example.org>",
    thread_index=None,
)
ACK = Ack("<ack-1@acme.test>", "ack.txt.j2", (JANE.name or "", JANE.email), PARENT)
NOTIFICATION = Notification(
    "<n-1@acme.test>", ALICE.id, ALICE.email, ALICE.name, SAID, (JANE.name or "", JANE.email), 3
)
NOTE = Note(
    "<note-1@acme.test>",
    ALICE.email,
    "Not sent: Backups not running",
    "Your mail to HD-42 was not sent.\n",
    agent_id=ALICE.id,
    parent=Parent("<draft-1@acme.test>"),
)
RULE_COPY = RuleCopy("<copy-1@acme.test>", "accounting@example.net", SAID)
FLOOD = FloodAlert("<flood-1@acme.test>", BOB.id, BOB.email, JANE.email, 10, 10)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return make_config(write_secrets(tmp_path_factory.mktemp("mails")))


def composed(config: Config, mail: Mail, card: TicketCard | None = CARD) -> Composed:
    return compose(mail, card, config, RENDERER, NOW)


def built(item: Composed) -> EmailMessage:
    """ITEM as it goes out, read back."""
    message = email.message_from_bytes(build_message(item.mail), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def reply_token(config: Config, message: EmailMessage) -> ReplyToken | None:
    """The signed token of MESSAGE's Reply-To address (None: no Reply-To)."""
    if message["Reply-To"] is None:
        return None
    [address] = message["Reply-To"].addresses
    [text] = tokens_in([address.addr_spec], SUPPORT)
    return verify_reply(config.service.secret_keys, text)


def sender(message: EmailMessage) -> tuple[str, str]:
    [address] = message["From"].addresses
    return address.display_name, address.addr_spec


@pytest.mark.parametrize(
    ("mail", "kind", "from_name", "to", "token", "subject", "in_reply_to", "auto"),
    [
        pytest.param(
            ACK,
            "ack",
            f"{SERVICE} support",
            JANE.email,
            ReplyToken("HD-42"),  # the ticket's address: the customer's answer finds it
            "[HD-42] Re: Backups not running",
            "<c1@example.org>",
            "auto-replied",
            id="ack",
        ),
        pytest.param(
            NOTIFICATION,
            "agent_notification",
            f"{JANE.name} via {SERVICE}",
            ALICE.email,
            # the agent's own address for the ticket, dated: it expires
            ReplyToken("HD-42", agent_id=ALICE.id, issued=NOW.date()),
            "[HD-42] Backups not running",
            "<c1@example.org>",
            "auto-generated",
            id="notification",
        ),
        pytest.param(
            NOTE,
            "agent_notice",
            f"{SERVICE} helpdesk",
            ALICE.email,
            ReplyToken("HD-42", agent_id=ALICE.id, issued=NOW.date()),
            "[HD-42] Not sent: Backups not running",
            "<draft-1@acme.test>",
            "auto-generated",
            id="note",
        ),
        pytest.param(
            RULE_COPY,
            "rule_notification",
            f"{JANE.name} via {SERVICE}",
            "accounting@example.net",
            None,  # not an agent: no reply address
            "[HD-42] Backups not running",
            "<c1@example.org>",
            "auto-generated",
            id="rule-copy",
        ),
        pytest.param(
            FLOOD,
            "agent_notice",
            f"{SERVICE} helpdesk",
            BOB.email,
            ReplyToken("HD-42", agent_id=BOB.id, issued=NOW.date()),
            "[HD-42] Mail flood: Backups not running",
            None,
            "auto-generated",
            id="flood-alert",
        ),
    ],
)
def test_headers(
    config: Config,
    mail: Mail,
    kind: str,
    from_name: str,
    to: str,
    token: ReplyToken | None,
    subject: str,
    in_reply_to: str | None,
    auto: str,
) -> None:
    item = composed(config, mail)
    message = built(item)
    assert (item.kind, item.ticket_id, item.message["ticket_id"]) == (kind, 42, 42)
    assert item.message_id == message["Message-ID"] == mail.message_id  # events name it
    assert item.recipients == (to,)
    assert sender(message) == (from_name, SUPPORT)
    assert [a.addr_spec for a in message["To"].addresses] == [to]
    assert reply_token(config, message) == token
    assert message["Subject"] == subject
    assert message["In-Reply-To"] == in_reply_to
    assert message["Auto-Submitted"] == auto
    assert message["X-Loop"] == f"helpdeskd; {SUPPORT}"
    assert message["X-Auto-Response-Suppress"] == "OOF, AutoReply"
    assert message["Precedence"] == ("auto_reply" if auto == "auto-replied" else "bulk")
    assert item.message["internal"] is (kind != "ack")
    assert item.message["direction"] == "out"


def test_ack_threads_into_the_customers_conversation(config: Config) -> None:
    item = composed(config, ACK)
    message = built(item)
    assert message["References"] == "<c0@example.org> <c1@example.org>"
    assert thread_index_root(message["Thread-Index"]) == ROOT  # Outlook groups it
    assert item.message["thread_index"] == ROOT
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hello Jane Roe," in text
    assert "opened ticket HD-42" in text


def test_oversize_ack_names_the_limit(config: Config) -> None:
    item = composed(config, Ack(ACK.message_id, "oversize.txt.j2", ACK.requester, ACK.parent))
    assert item.mail.subject == "[HD-42] Re: Backups not running"
    assert "larger than the\n26.2 MB we can process" in item.mail.text


def test_notification_passes_the_customers_words_on(config: Config) -> None:
    text = composed(config, NOTIFICATION).mail.text
    assert text.startswith("The backups stopped on Sunday.\n")
    assert "HD-42 · new · high priority" in text
    assert "Requester: Jane Roe <jane@example.org>" in text
    assert "Queue: billing · Assignee: alice@acme.test · 3 message(s)" in text


def test_rule_copy_carries_the_text_and_a_footer(config: Config) -> None:
    text = composed(config, RULE_COPY).mail.text
    assert text == "The backups stopped on Sunday.\n\n-- \nHD-42 · new · high priority\n"


def test_flood_alert_text(config: Config) -> None:
    assert composed(config, FLOOD).mail.text == (
        "jane@example.org sent more than 10 messages in 10 minutes. Automatic mail to them and "
        "per-message notifications for HD-42 are paused until the flood ends; all their mail "
        "is stored.\n"
    )


@pytest.mark.parametrize(
    ("note", "card", "subject", "ticket_id"),
    [
        # A plain address (not an agent) gets no reply address, even about a ticket.
        (Note("<n@acme.test>", "ops@example.net", "Alert", "x\n"), CARD, "[HD-42] Alert", 42),
        (
            Note("<n@acme.test>", ALICE.email, "Alert", "x\n", 1, about_ticket=False),
            CARD,
            "Alert",
            None,
        ),
        (Note("<n@acme.test>", ALICE.email, "Alert", "x\n", 1), None, "Alert", None),
    ],
)
def test_note_without_a_reply_address(
    config: Config, note: Note, card: TicketCard | None, subject: str, ticket_id: int | None
) -> None:
    item = composed(config, note, card)
    message = built(item)
    assert message["Reply-To"] is None
    assert message["Subject"] == subject
    assert (item.ticket_id, item.message["ticket_id"]) == (ticket_id, ticket_id)
    assert message["Auto-Submitted"] == "auto-generated"
