"""The one decision for a customer's mail (helpdeskd.triage.plan.decide), case by case.

Real mail (tests.mailgen, parsed for real), a real config with the shipped rules and templates,
and the facts built by hand: no database, no servers. Each case compares the whole plan's
summary with the one expected (tests/triage/plan_support.py). Agents' mail, Heroku's desk,
returned mail and the routing rules have test_plan_agents.py, test_plan_returned.py and
test_plan_rules.py.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import parse_message
from helpdeskd.triage.facts import Facts, Policy, StoredMessage, needs
from helpdeskd.triage.mails import Ack, FloodAlert, Note, Notification
from helpdeskd.triage.received import Incoming
from tests.triage.plan_support import (
    AGENTS,
    ALERTS,
    ALICE,
    BOB,
    CAROL,
    EVERYONE,
    JANE,
    NOW,
    OWN_MAILBOX,
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

# --- a Message-ID we stored ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "outcome", "reason"),
    [
        ("in", "duplicate", "Message-ID already stored"),
        ("out", "ignored", "our own outgoing mail came back"),
    ],
)
def test_stored_message_id(policy: Policy, direction: str, outcome: str, reason: str) -> None:
    """The same mail again (same sender, same content) is a duplicate, or our own mail."""
    raw = mail(message_id="<seen@example.org>")
    digest = needs(Incoming("support", 1, raw, len(raw)), parse_message(raw), policy).digest
    stored = StoredMessage(
        "<seen@example.org>", 7, direction, "customer", from_addr=JANE.email, digest=digest
    )
    plan = plan_for(policy, raw, facts(stored=stored, by_reference=ticket()))
    assert summary(plan) == expected(outcome, reason, ticket_id=7)
    assert plan.message is None


def test_stored_before_digests_is_judged_by_its_sender(policy: Policy) -> None:
    raw = mail(message_id="<seen@example.org>")
    stored = StoredMessage("<seen@example.org>", 7, "in", "customer", from_addr=JANE.email)
    plan = plan_for(policy, raw, facts(stored=stored))
    assert (plan.outcome, plan.ticket_id) == ("duplicate", 7)


@pytest.mark.parametrize("who", ["mallory@example.net", JANE.email])
def test_a_stored_message_id_does_not_hide_another_mail(policy: Policy, who: str) -> None:
    """A stranger who sent first under a victim's future Message-ID (or the victim's own mail
    with other content) hides nothing: the mail is stored under a derived ID, and the clash is
    a security event."""
    raw = mail(message_id="<victim-next@example.org>")
    stored = StoredMessage(
        "<victim-next@example.org>", 9, "in", "customer", from_addr=who, digest="0" * 64
    )
    mail_needs = needs(Incoming("support", 1, raw, len(raw)), parse_message(raw), policy)
    plan = plan_for(policy, raw, facts(stored=stored))
    assert plan.outcome == "new_ticket"
    assert plan.message is not None
    assert plan.message["message_id"] == mail_needs.derived_id != "<victim-next@example.org>"
    assert plan.message["digest"] == mail_needs.digest
    clash = event(plan, "security_event")
    assert clash["message_id"] == "<victim-next@example.org>"
    assert clash["stored_as"] == mail_needs.derived_id
    again = StoredMessage(mail_needs.derived_id, 12, "in", "customer", from_addr=JANE.email)
    plan = plan_for(policy, raw, facts(stored=stored, derived=again))
    assert (plan.outcome, plan.ticket_id) == ("duplicate", 12)


# --- a new customer mail -------------------------------------------------------------------------


def test_new_customer_mail_with_cc(policy: Policy) -> None:
    """The requester and outside Cc join; never an agent, one of our addresses or a token."""
    raw = mail(
        to=f"{SUPPORT}, Sam Lee <Sam.Lee@Example.com>",
        cc=(
            "Max Mustermann <max@example.net>",
            BOB.email,  # an agent on a domain that is not ours
            ALICE.email,
            OWN_MAILBOX,
            "support+hd-3.k1.aaaaaaaaaa@acme.test",
        ),
        in_reply_to="<b@example.org>",
        references=("<a@example.org>", "<b@example.org>"),
    )
    plan = plan_for(policy, raw)
    assert summary(plan) == expected(
        "new_ticket",
        "no thread found",
        ticket=new_row(),
        participants=[
            (JANE.email, "requester"),
            ("max@example.net", "cc"),
            ("sam.lee@example.com", "cc"),
        ],
        events=["ticket_created", "ack_queued", "agents_notified"],
        mails=[("Ack", JANE.email), *EVERYONE],
        thread_refs=["<b@example.org>", "<a@example.org>"],
        contacts=[
            (JANE.email, None, {}),
            ("max@example.net", None, {}),
            ("sam.lee@example.com", None, {}),
        ],
        autoreply_to=JANE.email,
    )
    message_id = parse_message(raw).message_id
    ack, *notifications = plan.mails
    assert isinstance(ack, Ack)
    assert ack.template == "ack.txt.j2"
    assert ack.requester == (JANE.name, JANE.email)
    assert ack.parent == Parent(
        message_id, ("<a@example.org>", "<b@example.org>"), "<b@example.org>"
    )
    assert event(plan, "ack_queued") == {"message_id": ack.message_id}
    assert event(plan, "ticket_created") == {"message_id": message_id, "thread": "no thread found"}
    assert event(plan, "agents_notified") == {
        "agents": [ALICE.email, BOB.email, CAROL.email],
        "message_id": message_id,
    }
    for note in notifications:
        assert isinstance(note, Notification)
        assert (note.said.message_id, note.requester[1], note.message_count) == (
            message_id,
            JANE.email,
            1,
        )
    assert plan.message is not None
    assert (plan.message["kind"], plan.message["internal"]) == ("customer", False)
    assert len({m.message_id for m in plan.mails}) == 4  # each mail its own new Message-ID


@pytest.mark.parametrize("reply", [False, True])
def test_mail_names_a_known_requester(policy: Policy, reply: bool) -> None:
    """Jane's stored name is on every mail about her, the acknowledgement and notifications."""
    found = facts(by_reference=ticket()) if reply else facts()
    plan = plan_for(policy, mail(in_reply_to=STORED_REPLY if reply else None), found)
    assert {m.requester for m in plan.mails if isinstance(m, Ack | Notification)} == {
        (JANE.name, JANE.email)
    }


def test_new_requester_gets_a_contact_with_a_name(policy: Policy) -> None:
    plan = plan_for(policy, mail(sender="new@example.org", name="Nina New"), facts(contacts={}))
    assert plan.contacts[0].email == "new@example.org"
    assert plan.contacts[0].name == "Nina New"
    assert plan.participants == (("new@example.org", "requester"),)


# --- replies by References -----------------------------------------------------------------------

DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("stored", "changes", "events", "notified"),
    [
        pytest.param(
            {"queue": "heroku"},
            {},
            ["message_received", "participant_added", "agents_notified"],
            [BOB, CAROL],
            id="open-in-a-queue",
        ),
        pytest.param(
            {"state": "pending", "assignee_id": ALICE.id},
            {"state": "open"},
            ["message_received", "participant_added", "state_changed", "agents_notified"],
            [ALICE],
            id="pending-assigned",
        ),
        pytest.param(
            {"state": "solved", "solved_at": NOW - 2 * DAY},
            {"state": "open", "solved_at": None},
            ["message_received", "participant_added", "reopened", "agents_notified"],
            [ALICE, BOB, CAROL],
            id="solved",
        ),
        pytest.param(
            {"state": "closed", "closed_at": NOW - 13 * DAY},
            {"state": "open", "closed_at": None},
            ["message_received", "participant_added", "reopened", "agents_notified"],
            [ALICE, BOB, CAROL],
            id="closed-within-the-reopen-window",
        ),
    ],
)
def test_reply_by_references(
    policy: Policy,
    stored: dict[str, Any],
    changes: dict[str, Any],
    events: list[str],
    notified: list[Any],
) -> None:
    raw = mail(
        subject="Re: [HD-7] Backups not running",
        cc=("max@example.net",),
        in_reply_to=STORED_REPLY,
        references=("<c0@example.org>", STORED_REPLY),
    )
    before = ticket(**stored)
    plan = plan_for(policy, raw, facts(by_reference=before, known_ids=frozenset({STORED_REPLY})))
    assert summary(plan, before) == expected(
        "reply",
        "In-Reply-To/References",
        ticket_id=7,
        ticket={"id": 7, **changes, "updated_at": NOW},
        participants=[("max@example.net", "cc")],
        events=events,
        mails=[("Notification", a.email) for a in notified],
        contacts=[("max@example.net", None, {}), (JANE.email, None, {})],
    )
    assert event(plan, "participant_added") == {"email": "max@example.net"}
    assert event(plan, "message_received")["step"] == "references"
    note = plan.mails[0]
    assert isinstance(note, Notification)
    assert note.message_count == 1  # the ticket had no inbound mail counted before


def test_reply_to_a_ticket_closed_long_ago_opens_a_follow_up(policy: Policy) -> None:
    raw = mail(
        subject="Re: [HD-7] Backups not running",
        in_reply_to=STORED_REPLY,
        references=("<c0@example.org>", STORED_REPLY),
    )
    old = ticket(state="closed", closed_at=NOW - 15 * DAY)
    plan = plan_for(policy, raw, facts(by_reference=old, known_ids=frozenset({STORED_REPLY})))
    assert summary(plan) == expected(
        "new_ticket",
        "follow-up to closed HD-7",
        ticket=new_row(parent_id=7),
        participants=[(JANE.email, "requester")],
        events=["ticket_created", "ack_queued", "agents_notified"],
        mails=[("Ack", JANE.email), *EVERYONE],
        thread_refs=["<c0@example.org>"],  # the stored reply is known already
        contacts=[(JANE.email, None, {})],
        autoreply_to=JANE.email,
    )
    assert event(plan, "ticket_created")["follow_up_to"] == "HD-7"


def test_strangers_reply_by_references_opens_a_linked_ticket(policy: Policy) -> None:
    """Our reply went to Jane; Mallory, who knows its Message-ID, does not join her ticket."""
    raw = mail(
        sender="mallory@example.net",
        name="Mallory",
        subject="Re: Backups not running",
        in_reply_to=STORED_REPLY,
        references=(STORED_REPLY,),
    )
    known = frozenset({STORED_REPLY})
    plan = plan_for(policy, raw, facts(by_reference=ticket(), known_ids=known, contacts={}))
    assert (plan.outcome, plan.ticket_id) == ("new_ticket", None)
    assert plan.ticket is not None and plan.ticket.parent_id == 7
    assert plan.participants == (("mallory@example.net", "requester"),)
    assert event(plan, "ticket_created")["linked_to"] == "HD-7"
    [told] = [e for e in plan.events if e.type == "stranger_reference"]
    assert told.on == 7
    # the agents hear of it; nothing of HD-7 goes to Mallory
    assert {m.to for m in plan.mails if isinstance(m, Note)} == {a.email for a in AGENTS.values()}
    assert all(getattr(m, "ticket_id", None) != 7 for m in plan.mails)


def test_recipients_of_our_mail_may_answer_it(policy: Policy) -> None:
    """Max got our reply (Cc): his answer to it files into the ticket though he is not yet on it."""
    raw = mail(sender="max@example.net", in_reply_to=STORED_REPLY, references=(STORED_REPLY,))
    found = facts(by_reference=ticket(), referrers=frozenset({"max@example.net"}))
    plan = plan_for(policy, raw, found)
    assert (plan.outcome, plan.ticket_id) == ("reply", 7)


# --- the subject tag -----------------------------------------------------------------------------


def test_strangers_subject_tag_opens_a_new_ticket(policy: Policy) -> None:
    raw = mail(
        sender="mallory@example.net", name="Mallory", subject="Re: [HD-7] Backups not running"
    )
    plan = plan_for(policy, raw, facts(by_subject=ticket(), contacts={}))
    assert summary(plan) == expected(
        "new_ticket",
        "subject tag [HD-7] from a non-participant: new ticket",
        ticket=new_row("mallory@example.net"),
        participants=[("mallory@example.net", "requester")],
        events=["ticket_created", "ack_queued", "agents_notified"],
        mails=[("Ack", "mallory@example.net"), *EVERYONE],
        contacts=[("mallory@example.net", "Mallory", {})],
        autoreply_to="mallory@example.net",
    )
    assert plan.ticket is not None and plan.ticket.parent_id is None


def test_participants_subject_tag_files_the_mail_but_adds_nobody(policy: Policy) -> None:
    raw = mail(subject="Re: [HD-7] Backups not running", cc=("max@example.net",))
    plan = plan_for(policy, raw, facts(by_subject=ticket()))
    assert summary(plan, ticket()) == expected(
        "reply",
        "subject tag [HD-7]",
        ticket_id=7,
        ticket={"id": 7, "updated_at": NOW},
        events=["message_received", "agents_notified"],
        mails=EVERYONE,
        contacts=[(JANE.email, None, {})],  # the requester, for the notification
    )


# --- automatic answers to us ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "headers", "reason"),
    [
        (JANE.email, {"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
        (ALICE.email, {"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
    ],
)
def test_auto_reply(policy: Policy, sender: str, headers: dict[str, str], reason: str) -> None:
    """The requester's or an agent's out-of-office is kept on the ticket, never answered."""
    raw = mail(sender=sender, headers=headers, in_reply_to=STORED_REPLY)
    alone = plan_for(policy, raw)
    assert summary(alone) == expected("auto_reply", reason)
    kept = plan_for(policy, raw, facts(by_reference=ticket()))
    assert summary(kept) == expected(
        "auto_reply",
        f"{reason}; kept on the ticket, not answered",
        ticket_id=7,
        ticket={"id": 7},
        events=["auto_reply_received"],
    )
    assert kept.message is not None and kept.message["kind"] == "auto_reply"


def test_a_robot_not_on_the_ticket_is_not_kept_on_it(policy: Policy) -> None:
    """A robot that names the ticket's mail but is not on it is recorded, not filed."""
    raw = mail(sender="noreply@example.org", in_reply_to=STORED_REPLY)
    plan = plan_for(policy, raw, facts(by_reference=ticket()))
    assert summary(plan) == expected("auto_reply", "robot sender noreply@example.org")


# --- loop safety: when no acknowledgement goes out -----------------------------------------------


def _from_two(raw: bytes) -> bytes:
    return re.sub(rb"(?m)^From: .*$", b"From: jane@example.org, joe@example.org", raw, count=1)


@pytest.mark.parametrize(
    ("config", "change", "reason"),
    [
        ({}, {"facts": {"autoreplies": 5}}, "autoreply_limit of 5 per 24 h reached"),
        ({"ack": False}, {}, "acknowledgements are off"),
        ({"smtp": False}, {}, "no [smtp] configured"),
        ({}, {"jane": {"undeliverable": True}}, "requester is undeliverable"),
        ({}, {"jane": {"suppressed": True}}, "requester complained (ARF): suppressed"),
        ({}, {"headers": {"List-Id": "<ops.example.org>"}}, "list-id header"),
        ({}, {"headers": {"Return-Path": "<>"}}, "null return path"),
        ({}, {"raw": _from_two}, "several From mailboxes"),
        (
            {"authserv_id": "mx.acme.test"},
            {"headers": {"Authentication-Results": "mx.acme.test; dmarc=fail"}},
            "dmarc=fail",
        ),
    ],
)
def test_no_acknowledgement(
    policy_for: PolicyFor, config: dict[str, Any], change: dict[str, Any], reason: str
) -> None:
    raw = change.get("raw", lambda raw: raw)(mail(headers=change.get("headers")))
    jane = replace(JANE, **change.get("jane", {}))
    plan = plan_for(
        policy_for(**config), raw, facts(contacts={JANE.email: jane}, **change.get("facts", {}))
    )
    assert summary(plan) == expected(
        "new_ticket",
        "no thread found",
        ticket=new_row(),
        participants=[(JANE.email, "requester")],
        events=["ticket_created", "ack_suppressed", "agents_notified"],
        mails=EVERYONE,
        contacts=[(JANE.email, None, {})],
    )
    assert event(plan, "ack_suppressed") == {"reason": reason}
    assert ("ack_suppressed", {"reason": reason}) in plan.logs


def test_backfill_sends_nothing_at_all(policy_for: PolicyFor) -> None:
    plan = plan_for(policy_for(backfill=True), mail())
    assert summary(plan) == expected(
        "new_ticket",
        "no thread found",
        ticket=new_row(),
        participants=[(JANE.email, "requester")],
        events=["ticket_created", "ack_suppressed"],
        contacts=[(JANE.email, None, {})],
    )
    assert event(plan, "ack_suppressed") == {"reason": "backfill sends nothing"}


# --- the flood breaker ---------------------------------------------------------------------------

FLOOD = "flood: more than 10 messages in 10 min from jane@example.org"


def test_flood_of_new_tickets_alerts_the_agents_once(policy: Policy) -> None:
    plan = plan_for(policy, mail(), facts(recent_by_sender=10))
    assert summary(plan) == expected(
        "new_ticket",
        "no thread found",
        ticket=new_row(),
        participants=[(JANE.email, "requester")],
        events=["ticket_created", "flood_detected", "ack_suppressed"],
        mails=ALERTS,
        contacts=[(JANE.email, None, {})],
    )
    assert event(plan, "flood_detected") == {"reason": FLOOD}
    assert event(plan, "ack_suppressed") == {"reason": FLOOD}
    alert = plan.mails[0]
    assert isinstance(alert, FloodAlert)
    assert (alert.agent_id, alert.sender, alert.limit, alert.minutes) == (1, JANE.email, 10, 10)

    told = plan_for(policy, mail(), facts(recent_by_sender=10, sender_flood_told=True))
    assert summary(told)["events"] == ["ticket_created", "ack_suppressed"]
    assert told.mails == ()


@pytest.mark.parametrize("told", [False, True])
def test_flood_on_a_ticket(policy: Policy, told: bool) -> None:
    raw = mail(in_reply_to=STORED_REPLY)
    plan = plan_for(policy, raw, facts(by_reference=ticket(recent=10, flood_told=told)))
    assert summary(plan) == expected(
        "reply",
        "In-Reply-To/References",
        ticket_id=7,
        ticket={"id": 7, "updated_at": NOW},
        events=["message_received"] if told else ["message_received", "flood_detected"],
        mails=[] if told else ALERTS,
        contacts=[(JANE.email, None, {})],
    )
    if not told:
        assert event(plan, "flood_detected") == {"reason": FLOOD + " on HD-7"}


# --- oversize mail -------------------------------------------------------------------------------

NOTE = (
    "[This message is 30 MB, over the 26.2 MB limit, and was not processed. "
    "Its bytes are kept at /spool/ab12.eml.]"
)


@pytest.mark.parametrize("reply", [False, True])
def test_oversize_mail(policy: Policy, reply: bool) -> None:
    """The text is a note saying where the bytes are; the sender hears it was too large."""
    raw = mail(attachment=True, in_reply_to=STORED_REPLY if reply else None)
    before = ticket()
    found = facts(by_reference=before, contacts={}) if reply else facts(contacts={})
    plan = plan_for(policy, raw, found, raw=None, size=30_000_000, path="/spool/ab12.eml")
    common: dict[str, Any] = {
        "mails": [("Ack", JANE.email), *EVERYONE],
        "contacts": [(JANE.email, JANE.name, {})],
        "autoreply_to": JANE.email,
    }
    if reply:
        assert summary(plan, before) == expected(
            "reply",
            "In-Reply-To/References",
            ticket_id=7,
            ticket={"id": 7, "updated_at": NOW},
            events=["message_received", "ack_queued", "agents_notified"],
            **common,
        )
    else:
        assert summary(plan) == expected(
            "new_ticket",
            "no thread found",
            ticket=new_row(),
            participants=[(JANE.email, "requester")],
            events=["ticket_created", "ack_queued", "agents_notified"],
            **common,
        )
    assert plan.message is not None
    assert (plan.message["text"], plan.message["full_text"]) == (NOTE, NOTE)
    assert plan.message["attachments"] == []
    ack, notification = plan.mails[:2]
    assert isinstance(ack, Ack)
    assert (ack.template, ack.requester) == ("oversize.txt.j2", (JANE.name, JANE.email))
    assert isinstance(notification, Notification)
    assert notification.said.text == NOTE


# --- what decide() refuses -----------------------------------------------------------------------


def _without_from(raw: bytes) -> bytes:
    return re.sub(rb"(?m)^From: .*\r\n", b"", raw, count=1)


@pytest.mark.parametrize(
    ("raw", "found", "error"),
    [
        (_without_from(mail()), facts(), "no usable From address"),
        (mail(sender=ALICE.email), facts(agents={}), "agent alice@acme.test has no row"),
    ],
)
def test_refused(policy: Policy, raw: bytes, found: Facts, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        plan_for(policy, raw, found)
