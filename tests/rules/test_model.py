"""Conditions and rules (DESIGN.md "Rules", rules/README.md "Conditions"): every condition's
verdict and reason in words, ``on``, all conditions checked and reported, business hours in the
calendar's time zone, the body limit, Facts, and a Decision described and as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.rules.evaluate import evaluate
from helpdeskd.rules.model import Facts
from tests.rules.rulefiles import SATURDAY, facts, load, one_rule

# --- conditions -------------------------------------------------------------------------------

CONDITION_CASES = [
    ("mailbox: support", {"mailbox": "support"}, True, "mailbox support == support"),
    ("mailbox: Support", {"mailbox": "support"}, True, "mailbox support == support"),
    (
        "mailbox: [billing, sales]",
        {"mailbox": "support"},
        False,
        "mailbox support not in [billing, sales]",
    ),
    (
        "from: bob@example.org",
        {"from_addr": "Bob@Example.org"},
        True,
        "from bob@example.org matches bob@example.org",
    ),
    ("from: '@example.org'", {}, True, "from bob@example.org matches @example.org"),
    (
        "from: '@example.org'",
        {"from_addr": "bob@eu.example.org"},
        False,
        "from bob@eu.example.org does not match @example.org",
    ),
    (
        "from: ['@acme.test', carol@example.org]",
        {},
        False,
        "from bob@example.org does not match [@acme.test, carol@example.org]",
    ),
    (
        "to: support@acme.test",
        {"to": ("sales@acme.test", "Support@acme.test")},
        True,
        "to support@acme.test matches support@acme.test",
    ),
    ("to: support@acme.test", {"to": ()}, False, "to none does not match support@acme.test"),
    (
        "cc: '@example.org'",
        {"cc": ("a@x.org", "b@example.org")},
        True,
        "cc b@example.org matches @example.org",
    ),
    ("cc: '@example.org'", {"cc": ("a@x.org",)}, False, "cc a@x.org does not match @example.org"),
    ("from_domain: acme.test", {}, False, "from_domain example.org != acme.test"),
    (
        "from_domain: [acme.test, Example.org]",
        {"from_addr": "bob@EXAMPLE.org"},
        True,
        "from_domain example.org in [acme.test, example.org]",
    ),
    ("from_domain: '@example.org'", {}, True, "from_domain example.org == example.org"),
    (
        "subject_matches: '(?i)invoice'",
        {"subject": "Invoice #12"},
        True,
        "subject_matches '(?i)invoice' matched 'Invoice'",
    ),
    (
        "subject_matches: 'invoice'",
        {"subject": "Invoice #12"},
        False,
        "subject_matches 'invoice' did not match 'Invoice #12'",
    ),
    (
        r"subject_matches: '(?i)\binvoice\b|billing|refund'",
        {"subject": "Re: refund please"},
        True,
        r"subject_matches '(?i)\binvoice\b|billing|refund' matched 'refund'",
    ),
    (
        "subject_matches: '^Re:'",
        {"subject": "Fwd: Re: help"},
        False,
        "subject_matches '^Re:' did not match 'Fwd: Re: help'",
    ),
    (
        "subject_matches: ' urgent'",
        {"subject": "Not urgent"},
        True,
        "subject_matches ' urgent' matched ' urgent'",
    ),
    (
        "subject_matches: ' urgent'",
        {"subject": "urgent\n help"},
        False,
        "subject_matches ' urgent' did not match 'urgent  help'",
    ),
    (
        r"body_matches: '(?i)\bcredit card\b'",
        {"body": "I updated my Credit Card yesterday"},
        True,
        r"body_matches '(?i)\bcredit card\b' matched 'Credit Card'",
    ),
    (
        "body_matches: refund",
        {"body": "hello there"},
        False,
        "body_matches 'refund' did not match the body (11 characters)",
    ),
    (
        "header: {X-Priority: '^1'}",
        {"headers": (("x-priority", "1 (Highest)"),)},
        True,
        "header X-Priority '^1' matched '1'",
    ),
    ("header: {X-Priority: '^1'}", {}, False, "header X-Priority is absent"),
    (
        "header: {X-Priority: '^1'}",
        {"headers": (("X-Priority", "3"), ("X-Priority", "1"))},
        True,
        "header X-Priority '^1' matched '1'",
    ),
    (
        "header: {X-Priority: '^1'}",
        {"headers": (("X-Priority", "3 (Normal)"),)},
        False,
        "header X-Priority '^1' did not match '3 (Normal)'",
    ),
    ("channel: heroku", {}, False, "channel email != heroku"),
    ("channel: heroku", {"channel": "heroku"}, True, "channel heroku == heroku"),
    ("channel: [email, heroku]", {}, True, "channel email in [email, heroku]"),
    (
        "plan: [premium, enterprise]",
        {"plan": "Premium"},
        True,
        "plan premium in [premium, enterprise]",
    ),
    ("plan: [premium, enterprise]", {}, False, "plan none not in [premium, enterprise]"),
    (
        "business_hours: true",
        {},
        True,
        "business_hours true: received Wed 2026-03-25 10:00 UTC, within business hours",
    ),
    (
        "business_hours: true",
        {"received_at": SATURDAY},
        False,
        "business_hours true: received Sat 2026-03-28 10:00 UTC, outside business hours",
    ),
    (
        "business_hours: false",
        {"received_at": datetime(2026, 3, 25, 17, 0, tzinfo=UTC)},
        True,
        "business_hours false: received Wed 2026-03-25 17:00 UTC, outside business hours",
    ),
    (
        "business_hours: false",
        {"received_at": datetime(2026, 3, 25, 9, 0, tzinfo=UTC)},
        False,
        "business_hours false: received Wed 2026-03-25 09:00 UTC, within business hours",
    ),
    ("state: [open, pending]", {"state": "pending"}, True, "state pending in [open, pending]"),
    ("state: solved", {}, False, "state new != solved"),
    ("priority: urgent", {"priority": "urgent"}, True, "priority urgent == urgent"),
    ("priority: [high, urgent]", {}, False, "priority normal not in [high, urgent]"),
    ("queue: billing", {}, False, "queue none != billing"),
    ("queue: billing", {"queue": "billing"}, True, "queue billing == billing"),
    ("tags: [vip, billing]", {"tags": {"billing", "vip", "x"}}, True, "tags has vip, billing"),
    ("tags: [vip, billing]", {"tags": {"billing"}}, False, "tags lacks vip (has billing)"),
    ("tags: vip", {}, False, "tags lacks vip (has no tags)"),
    (
        "kind: [auto_reply, bounce]",
        {},
        False,
        "kind customer not in [auto_reply, bounce]",
    ),
    (
        "kind: heroku_forward",
        {"kind": "heroku_forward"},
        True,
        "kind heroku_forward == heroku_forward",
    ),
    ("new_ticket: true", {"new_ticket": False}, False, "new_ticket true: a reply"),
    ("new_ticket: false", {"new_ticket": False}, True, "new_ticket false: a reply"),
    ("new_ticket: true", {}, True, "new_ticket true: a new ticket"),
]


@pytest.mark.parametrize(("when", "overrides", "ok", "reason"), CONDITION_CASES)
def test_condition(
    tmp_path: Path, when: str, overrides: dict[str, Any], ok: bool, reason: str
) -> None:
    rules = load(tmp_path, one_rule(when))
    decision = evaluate(rules, facts(**overrides))
    (result,) = decision.results
    assert result.matched is ok
    assert [(r.ok, r.text) for r in result.reasons] == [(ok, reason)]
    assert decision.actions.tags_add == (("hit",) if ok else ())
    assert (decision.hits if ok else decision.misses) == (result,)
    assert result.failed == (() if ok else (reason,))


@pytest.mark.parametrize(("when", "overrides", "ok", "reason"), CONDITION_CASES)
@pytest.mark.parametrize("on", ["any", "new", "reply"])
def test_matches_says_what_check_says(
    tmp_path: Path, when: str, overrides: dict[str, Any], ok: bool, reason: str, on: str
) -> None:
    """The walk without reasons (the ingest path) matches exactly where the explained one does."""
    rules = load(tmp_path, one_rule(when, head=f"on: {on}"))
    (rule,), calendar = rules.rules, rules.calendar
    for new_ticket in (True, False):
        mail = facts(**{"new_ticket": new_ticket, **overrides})
        assert rule.matches(mail, calendar) is rule.check(mail, calendar)[0]
        for condition in rule.conditions:
            assert condition.holds(mail, calendar) is condition.check(mail, calendar).ok


@pytest.mark.parametrize(
    ("on", "new_ticket", "ok", "reason"),
    [
        ("new", True, True, "on new: a new ticket"),
        ("new", False, False, "on new: a reply"),
        ("reply", False, True, "on reply: a reply"),
        ("reply", True, False, "on reply: a new ticket"),
    ],
)
def test_on(tmp_path: Path, on: str, new_ticket: bool, ok: bool, reason: str) -> None:
    rules = load(tmp_path, one_rule("channel: email", head=f"on: {on}"))
    (result,) = evaluate(rules, facts(new_ticket=new_ticket)).results
    assert result.matched is ok
    assert result.reasons[0].text == reason
    assert result.reasons[1].text == "channel email == email"


def test_all_conditions_must_hold_and_all_are_reported(tmp_path: Path) -> None:
    when = """\
        channel: email
        from_domain: acme.test
        subject_matches: '(?i)invoice'
        header: {X-Mailer: Outlook, X-Priority: '^1'}
    """
    rules = load(tmp_path, one_rule(when))
    (result,) = evaluate(
        rules, facts(subject="Invoice", headers=(("X-Mailer", "Outlook"),))
    ).results
    assert not result.matched
    assert [(r.ok, r.text) for r in result.reasons] == [
        (True, "channel email == email"),
        (False, "from_domain example.org != acme.test"),
        (True, "subject_matches '(?i)invoice' matched 'Invoice'"),
        (True, "header X-Mailer 'Outlook' matched 'Outlook'"),
        (False, "header X-Priority is absent"),
    ]
    assert result.failed == ("from_domain example.org != acme.test", "header X-Priority is absent")


def test_rule_without_conditions_always_matches(tmp_path: Path) -> None:
    rules = load(tmp_path, "- name: default-queue\n  then:\n    - queue: general\n")
    decision = evaluate(rules, facts())
    assert decision.hits[0].reasons[0].text == "no conditions"
    assert decision.actions.queue == "general"


def test_business_hours_in_the_calendar_time_zone_and_holidays(tmp_path: Path) -> None:
    calendar = """\
        calendar:
          timezone: 'Europe/Berlin'
          hours: {mon-fri: '09:00-17:00'}
          holidays: ['2026-04-03']
    """
    rules = load(tmp_path, one_rule("business_hours: true"), files={"00-calendar.yaml": calendar})
    assert rules.calendar.timezone == "Europe/Berlin"
    early = evaluate(rules, facts(received_at=datetime(2026, 3, 25, 7, 30, tzinfo=UTC)))
    assert early.results[0].reasons[0].text == (
        "business_hours true: received Wed 2026-03-25 08:30 CET, outside business hours"
    )
    after_dst = evaluate(rules, facts(received_at=datetime(2026, 3, 30, 7, 30, tzinfo=UTC)))
    assert after_dst.results[0].reasons[0].text == (
        "business_hours true: received Mon 2026-03-30 09:30 CEST, within business hours"
    )
    good_friday = evaluate(rules, facts(received_at=datetime(2026, 4, 3, 10, 0, tzinfo=UTC)))
    assert not good_friday.results[0].matched


def test_body_is_matched_only_up_to_the_limit(tmp_path: Path) -> None:
    rules = load(tmp_path, one_rule("body_matches: needle"))
    assert evaluate(rules, facts(body="x" * 10 + "needle")).hits
    assert not evaluate(rules, facts(body="x" * 100_000 + "needle")).hits


def test_facts_refuse_naive_times() -> None:
    with pytest.raises(ValueError, match="received_at must be timezone-aware"):
        Facts(received_at=datetime(2026, 3, 25, 10, 0))


# --- decisions -------------------------------------------------------------------------------


def test_describe_and_json(tmp_path: Path) -> None:
    text = """\
        - name: billing
          when:
            subject_matches: '(?i)invoice'
          then:
            - queue: billing
            - tags: [+billing]
          stop: true
        - name: premium
          when: {plan: premium}
          then: [{priority: high}]
    """
    decision = evaluate(load(tmp_path, text), facts(subject="Invoice 7"))
    lines = decision.describe()
    assert lines[0].startswith("HIT   billing  (")
    assert lines[0].endswith("10-rules.yaml:1)")
    assert lines[1:] == [
        "        yes  subject_matches '(?i)invoice' matched 'Invoice'",
        "        ->   queue: billing; tags: +billing; stop",
        "SKIP  premium  (not evaluated: billing stops)",
        "result: queue billing, tags +billing",
    ]
    data = json.loads(json.dumps(decision.as_json()))
    assert data["actions"]["queue"] == "billing"
    assert data["hits"][0]["rule"] == "billing"
    assert data["hits"][0]["reasons"] == [
        {"ok": True, "text": "subject_matches '(?i)invoice' matched 'Invoice'"}
    ]
    assert data["misses"] == []
    assert data["skipped"] == ["premium"]
    assert data["applied"][0] == {
        "action": "queue",
        "value": "billing",
        "rule": "billing",
        "file": data["hits"][0]["file"],
        "line": 5,
    }
    miss = evaluate(load(tmp_path, text), facts(subject="Hello")).describe()
    assert "        no   subject_matches '(?i)invoice' did not match 'Hello'" in miss
    assert miss[-1] == "result: no actions (defaults apply)"
