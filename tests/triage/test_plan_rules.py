"""The routing rules in the decision: spam, queue, priority, tags, assignment, notify, the ack.

The shipped rules, and rules of the tests' own in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.mail.parse import parse_message
from helpdeskd.triage.facts import AgentFacts, Policy
from helpdeskd.triage.mails import Ack, RuleCopy
from tests.triage.plan_support import (
    ALICE,
    BOB,
    CAROL,
    JANE,
    NOW,
    STORED_REPLY,
    SUNDAY,
    expected,
    facts,
    mail,
    make_config,
    make_policy,
    new_row,
    plan_for,
    recipient,
    row,
    summary,
    ticket,
)

RULES = """\
- name: casino-is-spam
  when: {subject_matches: '(?i)casino'}
  then: [spam]

- name: invoices-to-billing
  when: {subject_matches: '(?i)invoice'}
  then:
    - queue: billing
    - priority: high
    - tags: [+billing, +money]
    - assign: %s
    - notify: accounting@example.net

- name: thank-for-feedback
  when: {subject_matches: '(?i)feedback'}
  then:
    - auto_reply: replies/thanks

- name: partners-get-no-ack
  when: {from: '@partner.example'}
  then:
    - auto_reply: none
"""


def rules_policy(base: Path, assign: str) -> Policy:
    folder = base / f"rules-{assign}"
    folder.mkdir(exist_ok=True)
    (folder / "10-routing.yaml").write_text(RULES % assign)
    return make_policy(make_config(base, rules=folder))


def test_rule_marks_spam(base: Path) -> None:
    plan = plan_for(rules_policy(base, "least-loaded"), mail(subject="Casino bonus"))
    assert summary(plan) == expected("spam", "rule casino-is-spam marked it as spam")
    assert plan.message is None
    assert plan.logs == (("rules_matched", {"rules": ["casino-is-spam"]}),)


def test_shipped_rules_on_a_sunday(policy: Policy) -> None:
    plan = plan_for(policy, mail(n=SUNDAY, subject="Refund for the duplicate charge"))
    assert plan.ticket is not None
    assert (plan.ticket.queue, plan.ticket.priority, plan.ticket.tags) == (
        "billing",
        "high",
        ("billing", "out-of-hours"),
    )
    rules = [(e.actor, e.detail["action"], e.detail["value"]) for e in plan.events[2:-1]]
    assert rules == [
        ("rule:billing-to-billing-queue", "queue", "billing"),
        ("rule:billing-to-billing-queue", "priority", "high"),
        ("rule:billing-to-billing-queue", "tags", "+billing"),
        ("rule:out-of-hours-tag", "tags", "+out-of-hours"),
    ]
    assert [e.type for e in plan.events] == [
        "ticket_created",
        "ack_queued",
        *["rule_applied"] * 4,
        "agents_notified",
    ]
    assert [recipient(m) for m in plan.mails] == [JANE.email, ALICE.email, BOB.email]


@pytest.mark.parametrize(
    ("sender", "subject", "template"),
    [
        (JANE.email, "Feedback on the backups", "replies/thanks.txt.j2"),
        ("joe@partner.example", "Backups not running", None),
    ],
)
def test_rule_chooses_the_acknowledgement(
    base: Path, sender: str, subject: str, template: str | None
) -> None:
    plan = plan_for(rules_policy(base, "least-loaded"), mail(sender=sender, subject=subject))
    acks = [m for m in plan.mails if isinstance(m, Ack)]
    assert [a.template for a in acks] == ([template] if template else [])
    assert [e.type for e in plan.events] == [
        "ticket_created",
        *(["ack_queued"] if template else []),  # "none" is no acknowledgement, not a blocked one
        "rule_applied",
        "agents_notified",
    ]
    assert plan.autoreply_to == (sender if template else None)


LOAD = {ALICE.id: (5, 10), BOB.id: (2, 30), CAROL.id: (0, 0)}  # open tickets, last assigned


@pytest.mark.parametrize(
    ("assign", "picked"),
    [
        ("least-loaded", BOB),  # the fewest open tickets among billing's agents (not Carol)
        ("round-robin", ALICE),  # the longest since an assignment
        (ALICE.email, ALICE),
    ],
)
def test_rule_actions(base: Path, assign: str, picked: AgentFacts) -> None:
    policy = rules_policy(base, assign)
    plan = plan_for(policy, mail(subject="Invoice 2026-11"), facts(agent_load=LOAD))
    assert summary(plan) == expected(
        "new_ticket",
        "no thread found",
        ticket=new_row(
            subject="Invoice 2026-11",
            queue="billing",
            priority="high",
            tags=("billing", "money"),
            assignee_id=picked.id,
        ),
        participants=[(JANE.email, "requester")],
        events=["ticket_created", "ack_queued", *["rule_applied"] * 6, "agents_notified"],
        mails=[
            ("Ack", JANE.email),
            ("RuleCopy", "accounting@example.net"),
            ("Notification", picked.email),
        ],
        contacts=[(JANE.email, None, {})],
        autoreply_to=JANE.email,
    )
    applied = [(e.actor, e.detail["action"], e.detail["value"]) for e in plan.events[2:-1]]
    assert applied == [
        ("rule:invoices-to-billing", "queue", "billing"),
        ("rule:invoices-to-billing", "priority", "high"),
        ("rule:invoices-to-billing", "tags", "+billing"),
        ("rule:invoices-to-billing", "tags", "+money"),
        ("rule:invoices-to-billing", "assign", assign),
        ("rule:invoices-to-billing", "notify", "accounting@example.net"),
    ]
    assert plan.events[2].detail["where"].endswith("10-routing.yaml:8")
    copy = plan.mails[1]
    assert isinstance(copy, RuleCopy)
    assert copy.said.message_id == parse_message(mail(subject="Invoice 2026-11")).message_id


def test_rules_change_a_stored_ticket(base: Path) -> None:
    policy = rules_policy(base, "least-loaded")
    raw = mail(subject="Re: Invoice 2026-11", in_reply_to=STORED_REPLY)
    plan = plan_for(policy, raw, facts(by_reference=ticket(tags=("vip",)), agent_load=LOAD))
    assert row(plan.ticket) == {
        "id": 7,
        "assignee_id": BOB.id,
        "priority": "high",
        "queue": "billing",
        "tags": ("vip", "billing", "money"),
        "updated_at": NOW,
    }
    assert [e.type for e in plan.events] == [
        "message_received",
        *["rule_applied"] * 6,
        "agents_notified",
    ]
