"""The decision for mail from agents and from Heroku's support desk.

An agent's mail is taken only when it came to the agent's own signed token address for the
ticket; anything else is held as a draft. The desk's mail opens or updates Heroku tickets and
never gets an acknowledgement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from helpdeskd.mail.tokens import ReplyToken, reply_address
from helpdeskd.triage.facts import ContactFacts, Policy
from helpdeskd.triage.mails import Note, Notification, Reply
from tests.triage.plan_support import (
    ALERTS,
    ALICE,
    BOB,
    CAROL,
    DESK,
    NOW,
    STORED_REPLY,
    SUPPORT,
    PolicyFor,
    event,
    expected,
    facts,
    mail,
    new_row,
    plan_for,
    summary,
    ticket,
)

# --- agents' mail --------------------------------------------------------------------------------


def token_for(policy: Policy, ref: str, agent_id: int | None) -> str:
    keys = policy.config.service.secret_keys
    return reply_address(SUPPORT, keys, ReplyToken(ref, agent_id=agent_id))


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        (lambda p: SUPPORT, "not sent to the agent's own reply address"),
        (
            lambda p: token_for(p, "HD-7", BOB.id),
            "sent to a reply address that is not this agent's",
        ),
        (lambda p: token_for(p, "HD-8", ALICE.id), "reply address is for another ticket"),
    ],
)
def test_agent_mail_not_to_own_token_is_held(
    policy: Policy, to: Callable[[Policy], str], reason: str
) -> None:
    raw = mail(sender=ALICE.email, name="Alice", to=to(policy), in_reply_to=STORED_REPLY)
    plan = plan_for(policy, raw, facts(by_reference=ticket()))
    assert summary(plan) == expected(
        "reply",
        f"agent mail held as a draft: {reason}",
        ticket_id=7,
        ticket={"id": 7},
        events=["message_received", "security_event"],
        mails=[("Note", ALICE.email)],
    )
    assert plan.message is not None
    assert (plan.message["kind"], plan.message["internal"]) == ("agent_draft", True)
    assert event(plan, "security_event")["reason"] == reason
    [note] = plan.mails
    assert isinstance(note, Note)
    assert (note.agent_id, note.subject) == (ALICE.id, "Not sent: Backups not running")
    assert note.text.startswith(
        f"Your mail to HD-7 was not sent to the customer and changed nothing: {reason}.\n"
    )


def test_authenticated_agent_reply_is_sent_to_the_customer(policy: Policy) -> None:
    """The agent's own reply: its text goes to the requester, the others hear of it, and the
    ticket waits on the customer (agent_reply_state) with its first response stamped."""
    raw = mail(sender=ALICE.email, name="Alice", to=token_for(policy, "HD-7", ALICE.id))
    plan = plan_for(policy, raw, facts(by_token=ticket()))
    assert (plan.outcome, plan.reason, plan.ticket_id) == ("reply", "reply sent", 7)
    assert [e.type for e in plan.events] == [
        "message_received",
        "reply_sent",
        "state_changed",
        "agents_notified",
    ]
    reply = plan.mails[0]
    assert isinstance(reply, Reply)
    assert reply.to == ("jane@example.org",)
    notified = {m.agent_email for m in plan.mails if isinstance(m, Notification)}
    assert ALICE.email not in notified and notified
    assert plan.ticket is not None
    assert plan.ticket.state == policy.config.service.agent_reply_state
    assert plan.ticket.first_response_at is not None
    assert plan.message is not None
    assert (plan.message["kind"], plan.message["internal"]) == ("agent_reply", True)


FORWARD_BODY = (
    "Can you take this one?\n\n---------- Forwarded message ---------\n"
    "From: Sam Lee <sam.lee@example.com>\nDate: Mon, 2 Nov 2026 08:00\n"
    "Subject: Backups not running\nTo: alice@acme.test\n\nThe backups stopped.\n"
)


def test_agent_forwarding_a_customers_mail_opens_the_customers_ticket(
    policy_for: PolicyFor,
) -> None:
    policy = policy_for(authserv_id="mx.acme.test")
    signed = {"Authentication-Results": "mx.acme.test; dkim=pass header.d=acme.test"}
    raw = mail(
        sender=ALICE.email,
        name="Alice",
        subject="Fwd: Backups not running",
        body=FORWARD_BODY,
        headers=signed,
    )
    plan = plan_for(policy, raw, facts(contacts={}))
    assert summary(plan) == expected(
        "new_ticket",
        "forwarded by alice@acme.test for sam.lee@example.com",
        ticket=new_row("sam.lee@example.com"),
        participants=[("sam.lee@example.com", "requester")],
        events=["ticket_created", "opened_from_forward", "agents_notified"],
        mails=[("Notification", BOB.email), ("Notification", CAROL.email)],
        contacts=[("sam.lee@example.com", "Sam Lee", {})],
    )


def test_a_forward_that_does_not_authenticate_is_held(policy: Policy) -> None:
    raw = mail(
        sender=ALICE.email, name="Alice", subject="Fwd: Backups not running", body=FORWARD_BODY
    )
    plan = plan_for(policy, raw, facts(contacts={}))
    assert plan.outcome == "new_ticket"
    assert plan.ticket is not None and plan.ticket.requester == ALICE.email
    assert plan.message is not None and plan.message["kind"] == "agent_draft"
    assert "sam.lee@example.com" not in {email for email, _ in plan.participants}
    assert event(plan, "security_event")["customer"] == "sam.lee@example.com"
    assert [(type(m).__name__, m.to) for m in plan.mails if isinstance(m, Note)] == [
        ("Note", ALICE.email)
    ]


# --- Heroku's desk -------------------------------------------------------------------------------

HEROKU_SUBJECT = "[Heroku Support] Ticket #500001: Slow queries on premium-0"
HEROKU_BODY = (
    "A ticket has been assigned to your add-on agent account.\n\n"
    "Requester: Sam Lee <sam.lee@example.com>\n\nOur p95 went from 20 ms to 900 ms.\n"
)
QUEUE_HEROKU = [("Notification", BOB.email), ("Notification", CAROL.email)]


def desk_mail() -> bytes:
    return mail(sender=DESK, name="Heroku Support", subject=HEROKU_SUBJECT, body=HEROKU_BODY)


def test_heroku_forwarded_ticket(policy: Policy) -> None:
    plan = plan_for(policy, desk_mail(), facts(recent_by_sender=50))  # the desk never floods
    assert summary(plan) == expected(
        "new_ticket",
        "Heroku ticket #500001",
        ticket=new_row(
            "sam.lee@example.com",
            subject=HEROKU_SUBJECT,
            channel="heroku",
            external_ref="500001",
            queue="heroku",
            tags=("heroku",),
        ),
        participants=[("sam.lee@example.com", "requester")],
        events=["ticket_created", "rule_applied", "rule_applied", "agents_notified"],
        mails=QUEUE_HEROKU,
        contacts=[("sam.lee@example.com", "Sam Lee", {})],
    )
    assert plan.message is not None and plan.message["kind"] == "heroku_forward"
    rules = {e.actor for e in plan.events if e.type == "rule_applied"}
    assert rules == {"rule:heroku-to-heroku-queue"}


@pytest.mark.parametrize(
    ("state", "recent", "changes", "events", "mails"),
    [
        ("open", 0, {}, ["message_received", "agents_notified"], QUEUE_HEROKU),
        (
            "solved",
            0,
            {"state": "open", "solved_at": None},
            ["message_received", "reopened", "agents_notified"],
            QUEUE_HEROKU,
        ),
        ("open", 10, {}, ["message_received", "flood_detected"], ALERTS),
    ],
)
def test_heroku_update(
    policy: Policy,
    state: str,
    recent: int,
    changes: dict[str, Any],
    events: list[str],
    mails: list[tuple[str, str]],
) -> None:
    sam = ContactFacts("sam.lee@example.com", "Sam Lee", id=12)
    known = ticket(
        9,
        state,
        requester=sam,
        channel="heroku",
        external_ref="500001",
        queue="heroku",
        solved_at=NOW - timedelta(days=1) if state == "solved" else None,
        recent=recent,
    )
    plan = plan_for(policy, desk_mail(), facts(by_external_ref=known))
    assert summary(plan, known) == expected(
        "reply",
        "Heroku ticket #500001",
        ticket_id=9,
        ticket={"id": 9, **changes, "updated_at": NOW},
        events=events,
        mails=mails,
        # The requester, for the notification (a flood sends none).
        contacts=[] if recent else [(sam.email, None, {})],
    )
    assert plan.message is not None and plan.message["kind"] == "heroku_update"
    if recent:
        reason = f"flood: more than 10 messages in 10 min from {DESK} on HD-9"
        assert event(plan, "flood_detected") == {"reason": reason}
