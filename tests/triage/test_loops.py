"""Loop safety in one place (DESIGN.md "Loops, backscatter and automated mail"): one list of
robot markers for classification and for the never-answer policy, the autoreply cap, the flood
breaker."""

from __future__ import annotations

import pytest

from helpdeskd.mail.parse import parse_message
from helpdeskd.triage.classify import ClassifyContext, classify
from helpdeskd.triage.loops import autoreply_limit_reached, flood, may_autorespond, robot_marker
from tests.mailgen import customer_mail

SUPPORT = "support@acme.test"
CTX = ClassifyContext(
    support_address=SUPPORT,
    own_addresses=frozenset({SUPPORT}),
    agent_addresses=frozenset({"alice@acme.test"}),
)

MARKERS = [
    ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
    ({"Auto-Submitted": "auto-generated; owner-email=x@y"}, "Auto-Submitted: auto-generated"),
    ({"X-Autoreply": "yes"}, "x-autoreply header"),
    ({"X-Autorespond": "yes"}, "x-autorespond header"),
    ({"X-Auto-Response-Suppress": "All"}, "X-Auto-Response-Suppress: All"),
    ({"Precedence": "bulk"}, "Precedence: bulk"),
    ({"Precedence": "junk"}, "Precedence: junk"),
    ({"Precedence": "list"}, "Precedence: list"),
    ({"Precedence": "auto_reply"}, "Precedence: auto_reply"),
]


@pytest.mark.parametrize(("headers", "reason"), MARKERS)
def test_every_robot_marker_is_an_auto_reply_and_never_answered(
    headers: dict[str, str], reason: str
) -> None:
    # Classification and the never-answer policy read one list: a marker that makes a mail an
    # auto-reply also forbids answering it, whichever path asks.
    parsed = parse_message(customer_mail(1, headers=headers))
    assert robot_marker(parsed) == reason
    assert classify(parsed, CTX).kind == "auto_reply"
    verdict = may_autorespond(parsed, support_address=SUPPORT, own_addresses=CTX.own_addresses)
    assert not verdict.allowed
    assert verdict.reason == reason


def test_a_person_mail_carries_no_marker() -> None:
    parsed = parse_message(customer_mail(1, headers={"X-Auto-Response-Suppress": "OOF"}))
    assert robot_marker(parsed) is None
    assert may_autorespond(parsed, support_address=SUPPORT, own_addresses=frozenset()).allowed


@pytest.mark.parametrize(
    ("sent", "limit", "expected"),
    [(0, 5, None), (4, 5, None), (5, 5, "autoreply_limit of 5 per 24 h reached"), (9, 5, "a")],
)
def test_autoreply_limit(sent: int, limit: int, expected: str | None) -> None:
    reason = autoreply_limit_reached(sent, limit)
    if expected == "a":
        assert reason is not None
    else:
        assert reason == expected


@pytest.mark.parametrize(
    ("by_sender", "by_ticket", "desk", "expected"),
    [
        (10, 10, False, None),
        (11, 3, False, "flood: more than 10 messages in 5 min from a@x.org"),
        (3, 11, False, "flood: more than 10 messages in 5 min from a@x.org on HD-7"),
        (50, 3, True, None),  # Heroku's desk writes for everyone: only a ticket floods
        (50, 11, True, "flood: more than 10 messages in 5 min from a@x.org on HD-7"),
    ],
)
def test_flood(by_sender: int, by_ticket: int, desk: bool, expected: str | None) -> None:
    got = flood(by_sender, by_ticket, limit=10, minutes=5, sender="a@x.org", ref="HD-7", desk=desk)
    assert got == expected
