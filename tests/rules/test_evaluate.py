"""Evaluation (rules/README.md "Evaluation"): each action merged into the result, later rules
overriding single values, tags and notify accumulating, stop, the rule behind every applied
action, and the shipped rules routing sample mail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpdeskd.rules.evaluate import evaluate
from helpdeskd.rules.model import Actions, RuleSet
from tests.rules.rulefiles import SATURDAY, facts, load, one_rule

# --- actions and merging ----------------------------------------------------------------------

ACTION_CASES = [
    ("- queue: Billing", {"queue": "billing"}),
    ("- assign: Alice@acme.test", {"assign": "alice@acme.test"}),
    ("- assign: bob@acme.test", {"assign": "bob@acme.test"}),
    ("- assign: Round-Robin", {"assign": "round-robin"}),
    ("- assign: least-loaded", {"assign": "least-loaded"}),
    ("- priority: urgent", {"priority": "urgent"}),
    (
        "- tags: [+billing, -refund, vip]",
        {"tags_add": ("billing", "vip"), "tags_remove": ("refund",)},
    ),
    ("- tags: +Billing", {"tags_add": ("billing",)}),
    ("- tags: ['- spaced']", {"tags_remove": ("spaced",)}),
    ("- auto_reply: replies/thanks", {"auto_reply": "replies/thanks"}),
    ("- auto_reply: none", {"auto_reply": "none"}),
    ("- auto_reply:", {"auto_reply": "none"}),
    ("- notify: agents", {"notify": ("agents",)}),
    ("- notify: [agents, Boss@Example.org]", {"notify": ("agents", "boss@example.org")}),
    ("- spam: true", {"spam": True}),
    ("- spam", {"spam": True}),
    ("- spam: false", {}),
    (
        "- queue: billing\n- priority: high\n- tags: [+billing]",
        {"queue": "billing", "priority": "high", "tags_add": ("billing",)},
    ),
]


@pytest.mark.parametrize(("then", "expected"), ACTION_CASES)
def test_action(tmp_path: Path, then: str, expected: dict[str, Any]) -> None:
    rules = load(tmp_path, one_rule("channel: email", then))
    assert evaluate(rules, facts()).actions == Actions(**expected)


def test_stop_as_action_or_key(tmp_path: Path) -> None:
    text = """\
        - name: first
          then:
            - tags: [+one]
            - stop
        - name: second
          then: [{tags: [+two]}]
          stop: true
        - name: third
          then: [{tags: [+three]}]
    """
    rules = load(tmp_path, text)
    assert [r.stop for r in rules.rules] == [True, True, False]
    decision = evaluate(rules, facts())
    assert decision.actions.tags_add == ("one",)
    assert [r.rule for r in decision.results] == ["first"]
    assert decision.skipped == ("second", "third")
    assert decision.stopped_by == "first"


def test_stop_only_when_the_rule_matches(tmp_path: Path) -> None:
    text = """\
        - name: heroku-only
          when: {channel: heroku}
          then: [{queue: heroku}]
          stop: true
        - name: everyone
          then: [{queue: general}]
    """
    decision = evaluate(load(tmp_path, text), facts())
    assert decision.stopped_by is None
    assert decision.actions.queue == "general"


def test_later_rules_override_single_values_and_tags_accumulate(tmp_path: Path) -> None:
    text = """\
        - name: first
          then:
            - queue: billing
            - priority: high
            - assign: round-robin
            - auto_reply: replies/thanks
            - tags: [+billing, +vip]
            - notify: agents
            - spam
        - name: not-matching
          when: {channel: heroku}
          then: [{queue: heroku}]
        - name: second
          then:
            - priority: urgent
            - tags: [-vip, +late]
            - notify: [boss@example.org, agents]
            - spam: false
            - auto_reply: none
    """
    decision = evaluate(load(tmp_path, text), facts())
    assert decision.actions == Actions(
        queue="billing",
        assign="round-robin",
        priority="urgent",
        tags_add=("billing", "late"),
        tags_remove=("vip",),
        auto_reply="none",
        notify=("boss@example.org", "agents"),
        spam=False,
    )
    assert [(a.name, a.value, a.rule) for a in decision.applied] == [
        ("queue", "billing", "first"),
        ("assign", "round-robin", "first"),
        ("tags", "+billing", "first"),
        ("priority", "urgent", "second"),
        ("tags", "-vip", "second"),
        ("tags", "+late", "second"),
        ("notify", "boss@example.org", "second"),
        ("notify", "agents", "second"),
        ("auto_reply", "none", "second"),
    ]
    assert [r.rule for r in decision.hits] == ["first", "second"]
    assert [r.rule for r in decision.misses] == ["not-matching"]


def test_applied_actions_name_their_rule_file_and_line(tmp_path: Path) -> None:
    rules = load(tmp_path, one_rule("channel: email", "- queue: billing\n- priority: high"))
    decision = evaluate(rules, facts())
    priority = decision.applied[1]
    assert (priority.rule, priority.file.endswith("10-rules.yaml"), priority.line) == (
        "r",
        True,
        6,
    )


# --- the shipped rules ------------------------------------------------------------------------

SHIPPED_CASES = [
    (
        "billing mail in business hours",
        {"subject": "Invoice 2026-03 is wrong"},
        Actions(queue="billing", priority="high", tags_add=("billing",)),
    ),
    (
        "premium customer out of hours",
        {"subject": "Question", "plan": "enterprise", "received_at": SATURDAY},
        Actions(priority="high", tags_add=("premium", "out-of-hours")),
    ),
    (
        "heroku forward",
        {"channel": "heroku", "kind": "heroku_forward", "subject": "Billing question"},
        Actions(queue="heroku", tags_add=("heroku",)),
    ),
    (
        "outage from a customer",
        {"subject": "Database down!"},
        Actions(priority="urgent", tags_add=("outage",), notify=("agents",)),
    ),
    (
        "a reply changes nothing",
        {"subject": "Re: Question", "new_ticket": False, "plan": "premium", "state": "open"},
        Actions(),
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [case[1:] for case in SHIPPED_CASES],
    ids=[case[0] for case in SHIPPED_CASES],
)
def test_shipped_routing(shipped: RuleSet, overrides: dict[str, Any], expected: Actions) -> None:
    assert evaluate(shipped, facts(**overrides)).actions == expected


@pytest.mark.parametrize(
    "overrides",
    [case[1] for case in SHIPPED_CASES],
    ids=[case[0] for case in SHIPPED_CASES],
)
def test_the_walk_without_reasons_decides_the_same(
    shipped: RuleSet, overrides: dict[str, Any]
) -> None:
    explained = evaluate(shipped, facts(**overrides))
    decided = evaluate(shipped, facts(**overrides), explain=False)
    assert decided.actions == explained.actions
    assert decided.applied == explained.applied
    assert [(r.rule, r.matched) for r in decided.results] == [
        (r.rule, r.matched) for r in explained.results
    ]
    assert all(not r.reasons for r in decided.results)
