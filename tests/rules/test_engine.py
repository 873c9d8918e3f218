"""Routing rules (DESIGN.md "Rules", rules/README.md): every condition and action, the merge and
stop semantics, the Decision's reasons, loading errors with exact file:line, YAML 1.2, and the
shipped rules folder."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.errors import ConfigError
from helpdeskd.rules.engine import (
    Actions,
    Facts,
    HeaderCondition,
    Known,
    RegexCondition,
    RulesError,
    RuleSet,
    ValueCondition,
    evaluate,
    load_rules,
)
from helpdeskd.rules.schedule import Duration, TicketFilter

ROOT = Path(__file__).resolve().parents[2]
WEDNESDAY = datetime(2026, 3, 25, 10, 0, tzinfo=UTC)  # within the default 09:00-17:00 hours
SATURDAY = datetime(2026, 3, 28, 10, 0, tzinfo=UTC)

KNOWN = Known(
    templates={"ack", "replies/thanks", "replies/pending-reminder"},
    agents={"alice@acme.test", "Bob@acme.test"},
    queues={"billing", "heroku", "general"},
)
SHIPPED_KNOWN = Known(
    templates={"ack", "replies/thanks", "replies/restart-database", "replies/pending-reminder"},
    agents=set(),
    queues=set(),
)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return folder


def load(
    tmp_path: Path, text: str, *, known: Known = KNOWN, files: dict[str, str] | None = None
) -> RuleSet:
    folder = write(tmp_path / "rules", {"10-rules.yaml": text, **(files or {})})
    return load_rules(folder, known=known)


def one_rule(when: str, then: str = "- tags: [+hit]", head: str = "") -> str:
    """Return a rules file with one rule named r."""
    lines = ["- name: r"]
    lines += [f"  {line}" for line in head.splitlines()]
    lines += ["  when:"] + [f"    {line}" for line in textwrap.dedent(when).splitlines()]
    lines += ["  then:"] + [f"    {line}" for line in textwrap.dedent(then).splitlines()]
    return "\n".join(lines) + "\n"


def facts(**overrides: Any) -> Facts:
    values: dict[str, Any] = {"received_at": WEDNESDAY, "from_addr": "bob@example.org"}
    values.update(overrides)
    return Facts(**values)


def load_error(tmp_path: Path, files: dict[str, str], known: Known = KNOWN) -> str:
    folder = write(tmp_path / "rules", files)
    with pytest.raises(RulesError) as caught:
        load_rules(folder, known=known)
    message = str(caught.value)
    return message.replace(str(folder) + "/", "")


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


# --- loading: schema and YAML 1.2 ---------------------------------------------------------------


def test_yaml_12_keeps_times_and_no_as_strings(tmp_path: Path) -> None:
    text = """\
        - name: yaml-12
          when:
            plan: NO
            header: {X-Time: 17:00}
            subject_matches: 1:30
          then: [{tags: [+yes]}]
    """
    (rule,) = load(tmp_path, text).rules
    plan, header, subject = rule.conditions
    assert isinstance(plan, ValueCondition) and plan.values == ("no",)
    assert isinstance(header, HeaderCondition) and header.pattern.pattern == "17:00"
    assert isinstance(subject, RegexCondition) and subject.pattern.pattern == "1:30"
    assert evaluate(load(tmp_path, text), facts(plan="NO")).results[0].reasons[0].ok


def test_unquoted_hours_and_dates_are_read_as_written(tmp_path: Path) -> None:
    calendar = """\
        calendar:
          hours:
            mon: 09:00-17:00
            tue: [09:00-12:00, 13:00-17:00]
          holidays:
            - 2026-12-25
    """
    rules = load(tmp_path, "[]\n", files={"00-calendar.yaml": calendar})
    assert rules.calendar.hours[0] == ((540, 1020),)
    assert rules.calendar.hours[1] == ((540, 720), (780, 1020))
    assert rules.calendar.hours[2] == ()
    assert [d.isoformat() for d in rules.calendar.holidays] == ["2026-12-25"]


def test_files_load_in_name_order_and_skip_other_files(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "rules",
        {
            "20-b.yaml": "- name: b\n  then: [{queue: billing}]\n",
            "10-a.yaml": "- name: a\n  then: [{queue: heroku}]\n",
            "README.md": "not yaml: [",
            ".10-a.yaml.swp": "junk: [",
            "notes.yaml~": "junk: [",
        },
    )
    rules = load_rules(folder, known=KNOWN)
    assert [r.name for r in rules.rules] == ["a", "b"]
    assert evaluate(rules, facts()).actions.queue == "billing"
    assert [Path(f).name for f in rules.files] == ["10-a.yaml", "20-b.yaml"]


def test_empty_files_and_folder(tmp_path: Path) -> None:
    rules = load(tmp_path, "# nothing yet\n", files={"20-empty.yaml": ""})
    assert (rules.rules, rules.time_rules, rules.slas) == ((), (), ())
    assert rules.calendar.timezone == "UTC"
    assert rules.calendar.open_days_per_week == 5


def test_default_calendar_uses_the_configured_time_zone(tmp_path: Path) -> None:
    folder = write(tmp_path / "rules", {"10.yaml": "[]\n"})
    rules = load_rules(folder, known=KNOWN, timezone="Europe/Berlin")
    assert rules.calendar.timezone == "Europe/Berlin"
    calendar = "calendar:\n  hours: {sat: '10:00-14:00'}\n"
    folder = write(tmp_path / "rules", {"00-calendar.yaml": calendar})
    rules = load_rules(folder, known=KNOWN, timezone="America/New_York")
    assert rules.calendar.timezone == "America/New_York"
    assert rules.calendar.open_days_per_week == 1


def test_queues_and_mailboxes_are_free_when_none_are_known(tmp_path: Path) -> None:
    text = one_rule("mailbox: anything\nqueue: whatever", "- queue: brand-new")
    rules = load(tmp_path, text, known=Known(templates={"ack"}))
    assert rules.rules[0].actions[0].value == "brand-new"


def test_time_rules_and_slas_are_parsed(tmp_path: Path) -> None:
    text = """\
        - name: close-solved
          description: Close solved tickets.
          after: {state: solved, days: 4}
          then: [close, {tags: [+auto-closed]}]
        - name: remind
          after: {state: pending, hours: 72, business_hours: true}
          when: {channel: email, tags: [waiting], plan: [Gold]}
          then:
            - remind: replies/pending-reminder
            - escalate: Boss@Example.org
            - priority: low
        - name: solve
          after: {state: pending, weeks: 1, since: remind}
          then: [solve]
        - name: sla-high
          when: {priority: [high, urgent]}
          sla: {first_response: 4h, resolution: 2d, business_hours: true, warn_at: 0.75}
        - name: sla-rest
          sla: {resolution: 30m, escalate: lead@acme.test}
    """
    rules = load(tmp_path, text)
    close, remind, solve = rules.time_rules
    assert (close.state, close.delay, close.business_hours, close.since) == (
        "solved",
        Duration(4, "d"),
        False,
        None,
    )
    assert [str(a) for a in close.actions] == ["close", "tags: +auto-closed"]
    assert close.description == "Close solved tickets."
    assert (remind.delay, remind.business_hours) == (Duration(72, "h"), True)
    assert remind.when == TicketFilter(
        channel=frozenset({"email"}), plan=frozenset({"gold"}), tags=frozenset({"waiting"})
    )
    assert [str(a) for a in remind.actions] == [
        "remind: replies/pending-reminder",
        "escalate: boss@example.org",
        "priority: low",
    ]
    assert (solve.delay, solve.since, solve.line) == (Duration(1, "w"), "remind", 12)
    high, rest = rules.slas
    assert (high.first_response, high.resolution, high.business_hours, high.warn_at) == (
        Duration(4, "h"),
        Duration(2, "d"),
        True,
        0.75,
    )
    assert high.when == TicketFilter(priority=frozenset({"high", "urgent"}))
    assert (rest.first_response, rest.resolution, rest.warn_at, rest.escalate) == (
        None,
        Duration(30, "m"),
        0.8,
        "lead@acme.test",
    )
    assert rest.when == TicketFilter()
    # Time rules and SLAs are not routing rules.
    assert rules.rules == ()
    assert evaluate(rules, facts()).results == ()


# --- loading errors ---------------------------------------------------------------------------

ERROR_CASES = [
    (
        "unknown rule key",
        "- name: r\n  wen: {channel: email}\n  then: [{queue: billing}]\n",
        "10.yaml:2: unknown rule key 'wen' (did you mean 'when'?)",
    ),
    (
        "unknown condition",
        "- name: r\n  when:\n    channel: email\n    subjet_matches: x\n  then: [stop]\n",
        "10.yaml:4: rule 'r': unknown condition 'subjet_matches' (did you mean 'subject_matches'?)",
    ),
    (
        "unknown action",
        "- name: r\n  then:\n    - queue: billing\n    - priorty: high\n",
        "10.yaml:4: rule 'r': unknown action 'priorty' (did you mean 'priority'?) (actions here: "
        "queue, assign, priority, tags, auto_reply, notify, spam, stop)",
    ),
    (
        "bad regex",
        "- name: r\n  when:\n    subject_matches: '(?i(invoice'\n  then: [stop]\n",
        "10.yaml:3: rule 'r': subject_matches: bad regex '(?i(invoice': "
        "missing -, : or ) at position 3",
    ),
    (
        "bad header regex",
        "- name: r\n  when:\n    header:\n      X-A: ok\n      X-B: '[a-'\n  then: [stop]\n",
        "10.yaml:5: rule 'r': header X-B: bad regex '[a-': "
        "unterminated character set at position 0",
    ),
    (
        "double-quoted regex",
        '- name: r\n  when:\n    subject_matches: "\\binvoice"\n  then: [stop]\n',
        "10.yaml:3: rule 'r': subject_matches: the regex holds a control character — a "
        "double-quoted YAML string turned \\b or \\t into one; write regexes in single quotes",
    ),
    (
        "a list of regexes",
        "- name: r\n  when:\n    subject_matches: [a, b]\n  then: [stop]\n",
        "10.yaml:3: rule 'r': subject_matches takes one regex; join alternatives with |",
    ),
    (
        "unknown template",
        "- name: r\n  then:\n    - auto_reply: replies/thank\n",
        "10.yaml:3: rule 'r': auto_reply: unknown template 'replies/thank' "
        "(did you mean 'replies/thanks'?)",
    ),
    (
        "template without replies/",
        "- name: r\n  after: {state: pending, days: 3}\n  then:\n    - remind: pending-reminder\n",
        "10.yaml:4: rule 'r': remind: unknown template 'pending-reminder' "
        "(did you mean 'replies/pending-reminder'?)",
    ),
    (
        "unknown agent",
        "- name: r\n  then:\n    - assign: alise@acme.test\n",
        "10.yaml:3: rule 'r': assign: unknown agent 'alise@acme.test' "
        "(did you mean 'alice@acme.test'?) (agents: alice@acme.test, bob@acme.test)",
    ),
    (
        "unknown assign mode",
        "- name: r\n  then:\n    - assign: round-robbin\n",
        "10.yaml:3: rule 'r': assign takes an agent's address, round-robin or least-loaded, "
        "got 'round-robbin' (did you mean 'round-robin'?)",
    ),
    (
        "unknown queue",
        "- name: r\n  then:\n    - queue: biling\n",
        "10.yaml:3: rule 'r': queue: unknown queue 'biling' (did you mean 'billing'?) "
        "(queues: billing, general, heroku)",
    ),
    (
        "unknown queue condition",
        "- name: r\n  when:\n    queue: [billing, sales]\n  then: [stop]\n",
        "10.yaml:3: rule 'r': queue: unknown queue 'sales' (queues: billing, general, heroku)",
    ),
    (
        "name not kebab-case",
        "- name: r\n  then: [stop]\n- name: Out_Of_Hours\n  then: [stop]\n",
        "10.yaml:3: rule name 'Out_Of_Hours' is not kebab-case (like billing-to-billing-queue)",
    ),
    (
        "name missing",
        "- when: {channel: email}\n  then: [stop]\n",
        "10.yaml:1: a rule needs a name (kebab-case, like billing-to-billing-queue)",
    ),
    (
        "name not a string",
        "- name: 42\n  then: [stop]\n",
        "10.yaml:1: name must be a non-empty string, got 42",
    ),
    (
        "stop: yes",
        "- name: r\n  then: [{queue: billing}]\n  stop: yes\n",
        "10.yaml:3: rule 'r': stop must be true or false, got 'yes' "
        "(YAML 1.2 reads only true and false as booleans)",
    ),
    (
        "when is a list",
        "- name: r\n  when:\n    - channel: email\n  then: [stop]\n",
        "10.yaml:2: rule 'r': when must be a mapping, got a list",
    ),
    (
        "then is a mapping",
        "- name: r\n  then:\n    queue: billing\n",
        "10.yaml:2: rule 'r': then must be a list of actions, each '- name: value' "
        "(like '- queue: billing')",
    ),
    (
        "two actions in one item",
        "- name: r\n  then:\n    - queue: billing\n      priority: high\n",
        "10.yaml:3: rule 'r': each action is its own list item: "
        "write '- queue: x' and '- priority: y'",
    ),
    (
        "action without value",
        "- name: r\n  then:\n    - queue\n",
        "10.yaml:3: rule 'r': action queue needs a value ('- queue: …')",
    ),
    (
        "no actions",
        "- name: r\n  when: {channel: email}\n",
        "10.yaml:1: rule 'r': a rule needs then (a list of actions) or stop: true",
    ),
    (
        "bad priority",
        "- name: r\n  then:\n    - priority: hihg\n",
        "10.yaml:3: rule 'r': priority: unknown value 'hihg' (did you mean 'high'?) "
        "(one of low, normal, high, urgent)",
    ),
    (
        "bad channel",
        "- name: r\n  when:\n    channel: [email, phone]\n  then: [stop]\n",
        "10.yaml:3: rule 'r': channel: unknown value 'phone' (one of email, heroku)",
    ),
    (
        "bad kind",
        "- name: r\n  when:\n    kind: customers\n  then: [stop]\n",
        "10.yaml:3: rule 'r': kind: unknown value 'customers' (did you mean 'customer'?) "
        "(one of customer, agent_reply, heroku_forward, auto_reply, bounce, report, "
        "unsubscribe, spam, ignored, blocked)",
    ),
    (
        "bad on",
        "- name: r\n  on: replies\n  then: [stop]\n",
        "10.yaml:2: rule 'r': on: unknown value 'replies' (did you mean 'reply'?) "
        "(one of new, reply, any)",
    ),
    (
        "bad address",
        "- name: r\n  when:\n    from: example.org\n  then: [stop]\n",
        "10.yaml:3: rule 'r': from: 'example.org' is neither an address nor '@domain'",
    ),
    (
        "bad tag",
        "- name: r\n  then:\n    - tags: ['+two words']\n",
        "10.yaml:3: rule 'r': tags: '+two words' is not a tag: write +name or -name",
    ),
    (
        "signed tag in a condition",
        "- name: r\n  when:\n    tags: [+vip]\n  then: [stop]\n",
        "10.yaml:3: rule 'r': tags condition takes plain tag names, not '+vip'",
    ),
    (
        "business_hours not a boolean",
        "- name: r\n  when:\n    business_hours: 'no'\n  then: [stop]\n",
        "10.yaml:3: rule 'r': business_hours must be true or false, got 'no' "
        "(YAML 1.2 reads only true and false as booleans)",
    ),
    (
        "notify somebody",
        "- name: r\n  then:\n    - notify: somebody\n",
        "10.yaml:3: rule 'r': notify takes 'agents' or an address, got 'somebody'",
    ),
    (
        "stop false contradicts",
        "- name: r\n  then: [stop]\n  stop: false\n",
        "10.yaml:1: rule 'r': stop: false contradicts the stop action",
    ),
    (
        "a rule that is not a mapping",
        "- name: r\n  then: [stop]\n- just a string\n",
        "10.yaml:3: each rule must be a mapping, got 'just a string'",
    ),
    (
        "a scalar file",
        "hello\n",
        "10.yaml:1: a rules file is a list of rules ('- name: …'), or a calendar: mapping",
    ),
    (
        "YAML syntax",
        "- name: r\n  when: {channel: email\n  then: [stop]\n",
        "10.yaml:3: YAML: expected ',' or '}', but got ':'",
    ),
    (
        "unquoted @domain",
        "- name: r\n  when:\n    from: @example.org\n  then: [stop]\n",
        "10.yaml:3: YAML: found character '@' that cannot start any token",
    ),
    (
        "duplicate key",
        "- name: r\n  when:\n    channel: email\n  then: [stop]\n  when:\n    channel: heroku\n",
        "10.yaml:5: YAML: duplicate key 'when': each key may appear once",
    ),
    (
        "duplicate condition",
        "- name: r\n  when:\n    channel: email\n    plan: gold\n    channel: heroku\n"
        "  then: [stop]\n",
        "10.yaml:5: YAML: duplicate key 'channel': each key may appear once",
    ),
    # time rules
    (
        "after without state",
        "- name: r\n  after: {days: 4}\n  then: [close]\n",
        "10.yaml:2: rule 'r': after needs a state (new, open, pending, solved or closed)",
    ),
    (
        "after with two units",
        "- name: r\n  after: {state: solved, days: 4, hours: 2}\n  then: [close]\n",
        "10.yaml:2: rule 'r': after needs exactly one of minutes, hours, days or weeks",
    ),
    (
        "after days as a string",
        "- name: r\n  after:\n    state: solved\n    days: '4'\n  then: [close]\n",
        "10.yaml:4: rule 'r': days must be a positive whole number, got '4'",
    ),
    (
        "after unknown key",
        "- name: r\n  after: {state: solved, day: 4}\n  then: [close]\n",
        "10.yaml:2: rule 'r': unknown after key 'day' (did you mean 'days'?)",
    ),
    (
        "after unknown state",
        "- name: r\n  after:\n    state: resolved\n    days: 4\n  then: [close]\n",
        "10.yaml:3: rule 'r': after state: unknown value 'resolved' (did you mean 'solved'?) "
        "(one of new, open, pending, solved, closed)",
    ),
    (
        "time rule with a routing action",
        "- name: r\n  after: {state: solved, days: 4}\n  then:\n    - queue: billing\n",
        "10.yaml:4: rule 'r': unknown action 'queue' (actions here: close, solve, remind, "
        "escalate, tags, priority)",
    ),
    (
        "time rule with a message condition",
        "- name: r\n  after: {state: solved, days: 4}\n  when:\n    subject_matches: x\n"
        "  then: [close]\n",
        "10.yaml:4: rule 'r': 'subject_matches' looks at a message; a time rule or SLA's when "
        "takes ticket conditions only: channel, plan, priority, queue, tags",
    ),
    (
        "time rule with stop",
        "- name: r\n  after: {state: solved, days: 4}\n  then: [close]\n  stop: true\n",
        "10.yaml:4: rule 'r': a time rule (after) cannot have 'stop'",
    ),
    (
        "since an unknown rule",
        "- name: remind\n  after: {state: pending, days: 3}\n  then: [{remind: replies/thanks}]\n"
        "- name: solve\n  after:\n    state: pending\n    days: 4\n    since: remnd\n"
        "  then: [solve]\n",
        "10.yaml:8: rule 'solve': since: no earlier time rule named 'remnd' "
        "(did you mean 'remind'?)",
    ),
    (
        "since a rule for another state",
        "- name: remind\n  after: {state: open, days: 3}\n  then: [{remind: replies/thanks}]\n"
        "- name: solve\n  after: {state: pending, days: 4, since: remind}\n  then: [solve]\n",
        "10.yaml:5: rule 'solve': since: rule 'remind' acts on open tickets, this one on pending",
    ),
    (
        "close and solve",
        "- name: r\n  after: {state: pending, days: 4}\n  then: [close, solve]\n",
        "10.yaml:3: rule 'r': close and solve in one rule contradict each other",
    ),
    (
        "escalate somebody",
        "- name: r\n  after: {state: open, days: 4}\n  then:\n    - escalate: the boss\n",
        "10.yaml:4: rule 'r': escalate takes 'agents' or an address, got 'the boss'",
    ),
    # SLAs
    (
        "sla without targets",
        "- name: r\n  sla: {warn_at: 0.5}\n",
        "10.yaml:2: rule 'r': sla needs first_response, resolution or both",
    ),
    (
        "sla bad duration",
        "- name: r\n  sla:\n    first_response: 4 hours\n",
        "10.yaml:3: rule 'r': first_response: '4 hours' is not a duration: write a whole "
        "number and a unit, like '30m', '4h', '2d' or '1w'",
    ),
    (
        "sla number without unit",
        "- name: r\n  sla:\n    resolution: 4\n",
        "10.yaml:3: rule 'r': resolution must be a duration like '4h' or '2d', got 4",
    ),
    (
        "sla warn_at out of range",
        "- name: r\n  sla:\n    resolution: 4h\n    warn_at: 80%\n",
        "10.yaml:4: rule 'r': warn_at must be a share between 0 and 1, like 0.8, got '80%'",
    ),
    (
        "sla unknown key",
        "- name: r\n  sla:\n    resolution: 4h\n    first_reply: 1h\n",
        "10.yaml:4: rule 'r': unknown sla key 'first_reply' (did you mean 'first_response'?)",
    ),
    (
        "sla with then",
        "- name: r\n  sla: {resolution: 4h}\n  then: [close]\n",
        "10.yaml:3: rule 'r': an SLA rule cannot have 'then'",
    ),
    (
        "after and sla",
        "- name: r\n  after: {state: open, days: 1}\n  sla: {resolution: 4h}\n",
        "10.yaml:1: rule 'r': a rule has either after (a time rule) or sla, not both",
    ),
    # calendar
    (
        "time not HH:MM",
        "calendar:\n  hours:\n    mon-fri: '9:00-17:00'\n",
        "10.yaml:3: calendar hours mon-fri: '9:00' is not a time HH:MM "
        "(two digits each, like '09:00')",
    ),
    (
        "time out of range",
        "calendar:\n  hours:\n    mon: '09:00-17:60'\n",
        "10.yaml:3: calendar hours mon: '17:60' is not a time of day "
        "(00:00 to 23:59, or 24:00 as an end)",
    ),
    (
        "hours backwards",
        "calendar:\n  hours:\n    sat: '22:00-06:00'\n",
        "10.yaml:3: calendar hours sat: '22:00-06:00': the end must be after the start "
        "(split hours across midnight into '22:00-24:00' and '00:00-06:00' on the next day)",
    ),
    (
        "hours as a number",
        "calendar:\n  hours:\n    mon: 9\n",
        "10.yaml:3: calendar hours mon: write '09:00-17:00' (quoted), a list of ranges or "
        "closed, got 9",
    ),
    (
        "overlapping hours",
        "calendar:\n  hours:\n    mon: ['09:00-12:00', '11:00-17:00']\n",
        "10.yaml:3: calendar hours mon: ranges ['09:00-12:00', '11:00-17:00'] overlap",
    ),
    (
        "unknown weekday",
        "calendar:\n  hours:\n    mon-fri: '09:00-17:00'\n    saturdy: '10:00-12:00'\n",
        "10.yaml:4: calendar hours: unknown weekday 'saturdy' "
        "(mon, tue, wed, thu, fri, sat, sun) (did you mean 'saturday'?)",
    ),
    (
        "weekday twice",
        "calendar:\n  hours:\n    mon-fri: '09:00-17:00'\n    fri: '09:00-15:00'\n",
        "10.yaml:4: calendar hours: friday is given twice",
    ),
    (
        "never open",
        "calendar:\n  hours:\n    mon: closed\n",
        "10.yaml:2: calendar hours: the calendar is never open",
    ),
    (
        "holiday not a date",
        "calendar:\n  holidays:\n    - '2026-12-25'\n    - '25.12.2026'\n",
        "10.yaml:4: holiday '25.12.2026' is not a date 'YYYY-MM-DD'",
    ),
    (
        "holiday out of range",
        "calendar:\n  holidays:\n    - '2025-02-30'\n",
        "10.yaml:3: holiday '2025-02-30' is not a date: day is out of range for month",
    ),
    (
        "holidays not a list",
        "calendar:\n  holidays: '2026-12-25'\n",
        "10.yaml:2: calendar holidays must be a list of 'YYYY-MM-DD' dates",
    ),
    (
        "unknown time zone",
        "calendar:\n  hours: {mon-fri: '09:00-17:00'}\n  timezone: Europe/Berln\n",
        "10.yaml:3: calendar timezone: unknown time zone 'Europe/Berln' "
        "(an IANA name like 'Europe/Berlin')",
    ),
    (
        "unknown calendar key",
        "calendar:\n  hour: {mon: '09:00-17:00'}\n",
        "10.yaml:2: unknown calendar key 'hour' (did you mean 'hours'?)",
    ),
    (
        "unknown top-level key",
        "calender:\n  hours: {mon: '09:00-17:00'}\n",
        "10.yaml:1: unknown top-level key 'calender' (did you mean 'calendar'?)",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES]
)
def test_load_error(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, {"10.yaml": text}) == expected


def test_errors_name_the_right_file_and_are_config_errors(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "rules",
        {
            "10-a.yaml": "- name: billing\n  then: [{queue: billing}]\n",
            "20-b.yaml": "# comment\n\n- name: other\n  then: [stop]\n- name: billing\n"
            "  then: [stop]\n",
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_rules(folder, known=KNOWN)
    assert isinstance(caught.value, RulesError)
    assert str(caught.value) == (
        f"{folder}/20-b.yaml:5: duplicate rule name 'billing' (first at {folder}/10-a.yaml:1)"
    )
    assert (caught.value.file, caught.value.line) == (f"{folder}/20-b.yaml", 5)


def test_duplicate_name_across_kinds(tmp_path: Path) -> None:
    files = {
        "10.yaml": "- name: close\n  then: [stop]\n",
        "20.yaml": "- name: close\n  after: {state: solved, days: 4}\n  then: [close]\n",
    }
    assert (
        load_error(tmp_path, files) == "20.yaml:1: duplicate rule name 'close' (first at 10.yaml:1)"
    )


def test_second_calendar_is_refused(tmp_path: Path) -> None:
    files = {
        "00-calendar.yaml": "calendar:\n  timezone: UTC\n",
        "01-more.yaml": "# another\ncalendar:\n  timezone: UTC\n",
    }
    assert load_error(tmp_path, files) == (
        "01-more.yaml:2: a calendar is already defined at 00-calendar.yaml:1"
    )


def test_yml_files_are_refused(tmp_path: Path) -> None:
    assert (
        load_error(tmp_path, {"10.yml": "[]\n"})
        == "10.yml:1: rules files must end in .yaml, not .yml"
    )


def test_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10.yaml").write_bytes(b"- name: caf\xe9\n")
    with pytest.raises(RulesError, match=r"10\.yaml:1: not UTF-8 text"):
        load_rules(folder, known=KNOWN)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="nowhere: not a folder"):
        load_rules(tmp_path / "nowhere", known=KNOWN)


def test_unknown_default_time_zone(tmp_path: Path) -> None:
    folder = write(tmp_path / "rules", {"10.yaml": "[]\n"})
    with pytest.raises(ConfigError, match=r"service\.timezone: unknown time zone 'Mars/Base'"):
        load_rules(folder, known=KNOWN, timezone="Mars/Base")


def test_known_agents_with_no_agents_configured(tmp_path: Path) -> None:
    text = "- name: r\n  then:\n    - assign: alice@acme.test\n"
    message = load_error(tmp_path, {"10.yaml": text}, Known(templates={"ack"}))
    assert message == (
        "10.yaml:3: rule 'r': assign: unknown agent 'alice@acme.test' (agents: none configured)"
    )


# --- the shipped rules ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(ROOT / "rules", known=SHIPPED_KNOWN)


def test_shipped_rules_load(shipped: RuleSet) -> None:
    assert [r.name for r in shipped.rules] == [
        "heroku-to-heroku-queue",
        "billing-to-billing-queue",
        "premium-plans-high-priority",
        "outage-words-urgent",
        "out-of-hours-tag",
    ]
    assert [r.name for r in shipped.time_rules] == [
        "close-solved-after-4-days",
        "remind-pending-after-3-days",
        "solve-pending-after-reminder",
    ]
    assert [s.name for s in shipped.slas] == ["sla-urgent", "sla-high", "sla-normal", "sla-low"]
    assert shipped.calendar.open_days_per_week == 5
    assert len(shipped.calendar.holidays) >= 3
    assert shipped.summary().startswith("5 routing rules, 3 time rules, 4 SLAs in 3 files")


def test_shipped_rules_refuse_a_missing_reminder_template() -> None:
    known = Known(templates={"ack", "replies/thanks"})
    with pytest.raises(
        RulesError, match=r"20-solved-state\.yaml:\d+: .*'replies/pending-reminder'"
    ):
        load_rules(ROOT / "rules", known=known)


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
