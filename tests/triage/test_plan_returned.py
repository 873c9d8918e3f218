"""The decision for mail about our mail: bounces, complaints, and unsubscribing by mail.

Reports built by hand that return our stored reply, parsed for real; the facts built by hand.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpdeskd.mail.compose import Parent
from helpdeskd.mail.tokens import UnsubscribeToken, sign_unsubscribe
from helpdeskd.triage.facts import Policy, Returned, StoredMessage
from helpdeskd.triage.mails import Note
from tests.triage.plan_support import (
    ALICE,
    JANE,
    STORED_REPLY,
    SUPPORT,
    event,
    expected,
    facts,
    mail,
    plan_for,
    summary,
    ticket,
)

# --- returned mail -------------------------------------------------------------------------------


def returned_report(
    report_type: str,
    part: str,
    status: str,
    *,
    sender: str = "MAILER-DAEMON@mx.example.org",
    subject: str = "Undelivered Mail Returned to Sender",
) -> bytes:
    """A multipart/report of REPORT_TYPE whose PART holds STATUS, returning our stored reply."""
    text = (
        f"From: {sender}\n"
        f"To: {SUPPORT}\n"
        f"Subject: {subject}\n"
        "Date: Mon, 2 Nov 2026 09:00:00 +0000\n"
        "Message-ID: <report.1@mx.example.org>\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="b0"\n'
        "\n--b0\nContent-Type: text/plain\n\nYour message could not be delivered.\n"
        f"--b0\nContent-Type: {part}\n\n{status}\n"
        "--b0\nContent-Type: message/rfc822\n\n"
        f"From: {SUPPORT}\nTo: {JANE.email}\nSubject: Re: [HD-7] Backups not running\n"
        f"Message-ID: {STORED_REPLY}\nReferences: <c0@example.org>\n\nHello Jane,\n"
        "--b0--\n"
    )
    return text.replace("\n", "\r\n").encode()


def dsn(status: str) -> bytes:
    return returned_report(
        "delivery-status",
        "message/delivery-status",
        "Reporting-MTA: dns; mx.example.org\n\n"
        f"Final-Recipient: rfc822; {JANE.email}\nAction: failed\nStatus: {status}\n",
    )


def returned(kind: str = "reply") -> Returned:
    """Our stored reply to Jane, as the lookup finds it: it went to Jane."""
    message = StoredMessage(STORED_REPLY, 7, "out", kind, ("<c0@example.org>",), to=(JANE.email,))
    return Returned(ticket(), message, ALICE, sent_to=frozenset({JANE.email}))


@pytest.mark.parametrize(
    ("status", "count", "undeliverable", "state"),
    [
        ("5.1.1", 0, True, "hard"),  # a permanent failure
        ("5.2.2", 0, False, "failed"),  # mailbox full: soft, below the limit
        ("5.2.2", 2, True, "failed"),  # the third soft one
    ],
)
def test_bounce_of_our_reply(
    policy: Policy, status: str, count: int, undeliverable: bool, state: str
) -> None:
    jane = replace(JANE, bounce_count=count)
    plan = plan_for(policy, dsn(status), facts(contacts={JANE.email: jane}, returned=returned()))
    line = f"{JANE.email} {state} {status}"
    assert summary(plan) == expected(
        "bounce",
        f"RFC 3464 delivery status report; {line}",
        ticket_id=7,
        events=["bounce"],
        mails=[("Note", ALICE.email)],
        contacts=[(JANE.email, None, {"bounce_count": count + 1, "undeliverable": undeliverable})],
    )
    assert event(plan, "bounce") == {"message_id": STORED_REPLY, "recipients": [line]}
    [note] = plan.mails
    assert isinstance(note, Note)
    assert note.agent_id == ALICE.id
    assert note.subject == "Undeliverable: Backups not running"
    assert note.text == f"Your reply on HD-7 could not be delivered:\n  {line}\n"
    assert note.parent == Parent(STORED_REPLY, ("<c0@example.org>",))


def test_bounce_of_an_acknowledgement_tells_nobody(policy: Policy) -> None:
    plan = plan_for(policy, dsn("5.1.1"), facts(returned=returned("ack")))
    assert summary(plan) == expected(
        "bounce",
        f"RFC 3464 delivery status report; {JANE.email} hard 5.1.1",
        ticket_id=7,
        events=["bounce"],
        contacts=[(JANE.email, None, {"bounce_count": 1, "undeliverable": True})],
    )


def test_bounce_about_nobody_we_know_changes_nothing(policy: Policy) -> None:
    plan = plan_for(policy, dsn("5.1.1"), facts(contacts={}))
    assert summary(plan) == expected(
        "bounce", f"RFC 3464 delivery status report; {JANE.email} hard 5.1.1"
    )


def test_complaint_suppresses_the_complainant(policy: Policy) -> None:
    raw = returned_report(
        "feedback-report",
        "message/feedback-report",
        f"Feedback-Type: abuse\nUser-Agent: Example-FBL/1.0\nVersion: 1\n"
        f"Original-Rcpt-To: {JANE.email}\n",
        sender="fbl@feedback.example.net",
        subject="Complaint about a message from acme.test",
    )
    plan = plan_for(policy, raw, facts(returned=returned()))
    assert summary(plan) == expected(
        "report",
        f"ARF feedback report; abuse complaint from {JANE.email}; suppressed",
        ticket_id=7,
        events=["complaint"],
        contacts=[(JANE.email, None, {"suppressed": True})],
    )
    assert plan.events[0].actor == JANE.email


# --- unsubscribe by mail -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "opted_out", "reason", "opt_out"),
    [
        ("valid", False, "jane@example.org opted out of survey", (11, "survey")),
        ("valid", True, "jane@example.org already opted out of survey", (11, "survey")),
        ("11-survey.k1.aaaaaaaaaa", False, "no valid unsubscribe token: nothing changed", None),
    ],
)
def test_unsubscribe_by_mail(
    policy: Policy, token: str, opted_out: bool, reason: str, opt_out: tuple[int, str] | None
) -> None:
    if token == "valid":
        keys = policy.config.service.secret_keys
        token = sign_unsubscribe(keys, UnsubscribeToken(JANE.id or 0, "survey"))
    raw = mail(to=f"unsubscribe+{token}@acme.test", subject="unsubscribe")
    plan = plan_for(policy, raw, facts(unsubscriber=JANE, opted_out=opted_out))
    assert summary(plan) == expected("unsubscribe", reason)
    assert plan.opt_out == opt_out


def test_a_bounce_about_mail_we_did_not_send_there_counts_for_nothing(policy: Policy) -> None:
    """Anyone can send a bounce: one naming Jane about mail that did not go to Jane (or about
    no mail of ours) does not make her undeliverable."""
    for found in (Returned(), Returned(ticket(), returned().message, ALICE)):
        plan = plan_for(policy, dsn("5.1.1"), facts(returned=found))
        assert plan.outcome == "bounce"
        assert plan.contacts == ()
