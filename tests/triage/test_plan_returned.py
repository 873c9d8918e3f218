"""The decision for mail about our mail: bounces, complaints, and unsubscribing by mail.

Reports built by hand that return our stored reply, parsed for real; the facts built by hand.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import parse_message
from helpdeskd.mail.tokens import BounceToken, UnsubscribeToken, sign_bounce, sign_unsubscribe
from helpdeskd.triage.facts import ContactFacts, Policy, Returned, StoredMessage, needs
from helpdeskd.triage.mails import Note
from helpdeskd.triage.plan import Plan
from helpdeskd.triage.received import Incoming
from tests.triage.plan_support import (
    ALICE,
    JANE,
    NOW,
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
    to: str = SUPPORT,
) -> bytes:
    """A multipart/report of REPORT_TYPE whose PART holds STATUS, returning our stored reply."""
    text = (
        f"From: {sender}\n"
        f"To: {to}\n"
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


def dsn(status: str, diagnostic: str = "", recipient: str = JANE.email, to: str = SUPPORT) -> bytes:
    code = f"Diagnostic-Code: smtp; {diagnostic}\n" if diagnostic else ""
    return returned_report(
        "delivery-status",
        "message/delivery-status",
        "Reporting-MTA: dns; mx.example.org\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: {status}\n{code}",
        to=to,
    )


def returned(kind: str = "reply", verp: int | None = None) -> Returned:
    """Our stored reply to Jane, as the lookup finds it: it went to Jane."""
    message = StoredMessage(STORED_REPLY, 7, "out", kind, ("<c0@example.org>",), to=(JANE.email,))
    return Returned(ticket(), message, ALICE, sent_to=frozenset({JANE.email}), verp=verp)


TODAY = NOW.date()  # the config's time zone is UTC
YESTERDAY = TODAY - timedelta(days=1)


def scored(plan: Plan) -> list[dict[str, Any]]:
    """The bounce_scored events of PLAN: one per address a bounce was weighed against."""
    found = [e for e in plan.events if e.type == "bounce_scored"]
    assert all(e.ticketless for e in found)
    return [{"actor": e.actor, **e.detail} for e in found]


@pytest.mark.parametrize(
    ("status", "standing", "changes"),
    [
        # a permanent failure weighs 1
        (
            "5.1.1",
            {},
            {"bounce_score": 1.0, "last_bounce_weight": 1.0, "bounce_reason": "hard 5.1.1"},
        ),
        # mailbox full: soft, 0.5
        (
            "5.2.2",
            {},
            {"bounce_score": 0.5, "last_bounce_weight": 0.5, "bounce_reason": "failed 5.2.2"},
        ),
        # a score from yesterday: today's bounce adds to it
        (
            "5.1.1",
            {"bounce_score": 2.5, "last_bounce_on": YESTERDAY, "last_bounce_weight": 0.5},
            {"bounce_score": 3.5, "last_bounce_weight": 1.0, "bounce_reason": "hard 5.1.1"},
        ),
        # a score from nine days ago is stale: the score starts again
        (
            "5.2.2",
            {"bounce_score": 4.5, "last_bounce_on": TODAY - timedelta(days=9)},
            {"bounce_score": 0.5, "last_bounce_weight": 0.5, "bounce_reason": "failed 5.2.2"},
        ),
    ],
)
def test_bounce_of_our_reply(
    policy: Policy, status: str, standing: dict[str, Any], changes: dict[str, Any]
) -> None:
    jane = replace(JANE, bounce_count=3, **standing)
    plan = plan_for(policy, dsn(status), facts(contacts={JANE.email: jane}, returned=returned()))
    line = f"{JANE.email} {'hard' if status == '5.1.1' else 'failed'} {status}"
    assert summary(plan) == expected(
        "bounce",
        f"RFC 3464 delivery status report; {line}",
        ticket_id=7,
        events=["bounce", "bounce_scored"],
        mails=[("Note", ALICE.email)],
        contacts=[
            (
                JANE.email,
                None,
                {
                    "bounce_count": 4,
                    **changes,
                    "last_bounce_on": TODAY,
                    "undeliverable": False,
                },
            )
        ],
    )
    assert event(plan, "bounce") == {"message_id": STORED_REPLY, "recipients": [line]}
    [detail] = scored(plan)
    assert detail["actor"] == JANE.email
    assert (detail["score"], detail["counted"], detail["suspended"]) == (
        changes["bounce_score"],
        changes["last_bounce_weight"],
        False,
    )
    [note] = plan.mails
    assert isinstance(note, Note)
    assert note.agent_id == ALICE.id
    assert note.subject == "Undeliverable: Backups not running"
    assert note.text == f"Your reply on HD-7 could not be delivered:\n  {line}\n"
    assert note.parent == Parent(STORED_REPLY, ("<c0@example.org>",))


def test_the_threshold_suspends_the_address(policy: Policy) -> None:
    jane = replace(JANE, bounce_score=4.5, last_bounce_on=YESTERDAY, last_bounce_weight=1.0)
    plan = plan_for(policy, dsn("5.2.2"), facts(contacts={JANE.email: jane}, returned=returned()))
    [(_, _, changes)] = [(c.email, c.name, dict(c.changes)) for c in plan.contacts]
    assert (changes["bounce_score"], changes["undeliverable"]) == (5.0, True)
    assert scored(plan)[0]["suspended"] is True
    assert ("bounce_suspended", {"contact": JANE.id, "score": 5.0}) in plan.logs


def test_one_bounce_a_day_the_heaviest(policy: Policy) -> None:
    """Today scored 0.5 already: another soft bounce adds nothing (but is counted as a bounce),
    a hard one makes today weigh 1."""
    jane = replace(
        JANE, bounce_count=1, bounce_score=2.0, last_bounce_on=TODAY, last_bounce_weight=0.5
    )
    same = plan_for(policy, dsn("5.2.2"), facts(contacts={JANE.email: jane}, returned=returned()))
    assert [dict(c.changes) for c in same.contacts] == [{"bounce_count": 2}]
    assert scored(same)[0] | {"diagnostic": ""} == {
        "actor": JANE.email,
        "day": TODAY.isoformat(),
        "state": "failed",
        "status": "5.2.2",
        "diagnostic": "",
        "weight": 0.5,
        "counted": 0.0,
        "score": 2.0,
        "threshold": 5.0,
        "suspended": False,
        "message_id": STORED_REPLY,
        "outbox_id": None,
    }
    harder = plan_for(policy, dsn("5.1.1"), facts(contacts={JANE.email: jane}, returned=returned()))
    [changes] = [dict(c.changes) for c in harder.contacts]
    assert (changes["bounce_score"], changes["last_bounce_weight"]) == (2.5, 1.0)
    assert scored(harder)[0]["counted"] == 0.5


def test_a_spam_refusal_is_recorded_and_scores_nothing(policy: Policy) -> None:
    diagnostic = "550 5.7.1 Message rejected as spam by Content Filtering"
    jane = replace(JANE, bounce_score=1.0, last_bounce_on=YESTERDAY, last_bounce_weight=1.0)
    plan = plan_for(
        policy,
        dsn("5.7.1", diagnostic),
        facts(contacts={JANE.email: jane}, returned=returned()),
    )
    line = f"{JANE.email} policy 5.7.1 {diagnostic}"
    assert summary(plan) == expected(
        "bounce",
        f"RFC 3464 delivery status report; {line}",
        ticket_id=7,
        events=["bounce", "bounce_scored"],
        mails=[("Note", ALICE.email)],
    )
    [detail] = scored(plan)
    assert (detail["state"], detail["weight"], detail["counted"], detail["score"]) == (
        "policy",
        0.0,
        0.0,
        1.0,
    )
    [note] = plan.mails
    assert isinstance(note, Note)
    assert "refused it as spam or by its policy" in note.text
    assert "does not count against it" in note.text


def test_bounce_of_an_acknowledgement_tells_nobody(policy: Policy) -> None:
    plan = plan_for(policy, dsn("5.1.1"), facts(returned=returned("ack")))
    assert summary(plan) == expected(
        "bounce",
        f"RFC 3464 delivery status report; {JANE.email} hard 5.1.1",
        ticket_id=7,
        events=["bounce", "bounce_scored"],
        contacts=[
            (
                JANE.email,
                None,
                {
                    "bounce_count": 1,
                    "bounce_score": 1.0,
                    "last_bounce_on": TODAY,
                    "last_bounce_weight": 1.0,
                    "bounce_reason": "hard 5.1.1",
                    "undeliverable": False,
                },
            )
        ],
    )


def test_bounce_about_nobody_we_know_changes_nothing(policy: Policy) -> None:
    plan = plan_for(policy, dsn("5.1.1"), facts(contacts={}))
    assert summary(plan) == expected(
        "bounce", f"RFC 3464 delivery status report; {JANE.email} hard 5.1.1"
    )


# --- VERP: the send a verified token names --------------------------------------------------


def test_only_a_verp_token_we_signed_names_a_send(policy: Policy) -> None:
    keys = policy.config.service.secret_keys
    good = sign_bounce(keys, BounceToken("recipient", 12))
    old = sign_bounce(keys, BounceToken("outbox", 12))  # mail sent before the upgrade
    mac = good.partition(".")[2]
    for token, named in (
        (good, BounceToken("recipient", 12)),
        (old, BounceToken("outbox", 12)),
        ("r12.aaaaaaaaaa", None),
        (f"r13.{mac}", None),
        (f"12.{mac}", None),  # a recipient's MAC does not name the row of the same number
    ):
        raw = dsn("5.1.1", to=f"bounces+{token}@acme.test")
        incoming = Incoming("support", 1, raw, len(raw))
        assert needs(incoming, parse_message(raw), policy).verp == named, token


def test_verp_counts_against_the_sends_recipient_whoever_the_report_names(
    policy: Policy,
) -> None:
    """The report names a forward's final address; the token names our send to Jane."""
    raw = dsn("5.1.1", recipient="jane.roe@forwarded.example")
    plan = plan_for(policy, raw, facts(returned=returned(verp=12)))
    assert plan.reason == (
        "RFC 3464 delivery status report; jane.roe@forwarded.example hard 5.1.1; "
        f"{JANE.email} hard 5.1.1 (by VERP)"
    )
    [change] = plan.contacts
    assert (change.email, change.changes["bounce_score"]) == (JANE.email, 1.0)
    assert scored(plan)[0]["outbox_id"] == 12


def test_verp_counts_against_its_recipient_only_whoever_else_the_report_names(
    policy: Policy,
) -> None:
    """The token names Jane's copy of our mail; the report names Bob, who received it too (a
    Cc forging a bounce with the return path of his own copy names himself, never Jane)."""
    bob = ContactFacts("bob@example.org", "Bob", id=12)
    contacts = {JANE.email: JANE, bob.email: bob}
    named = plan_for(
        policy,
        dsn("5.1.1", recipient=bob.email),
        facts(contacts=contacts, returned=returned(verp=12)),
    )
    assert [c.email for c in named.contacts] == [JANE.email]
    assert [e["actor"] for e in scored(named)] == [JANE.email]


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
