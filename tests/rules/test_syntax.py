"""Reading values, conditions and actions (rules/README.md "Errors"): every bad condition or
action fails at its file:line with a suggestion, and names are checked against what is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.rules.model import Known
from tests.rules.rulefiles import load, load_error, one_rule

SYNTAX_ERROR_CASES = [
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
        "escalate somebody",
        "- name: r\n  after: {state: open, days: 4}\n  then:\n    - escalate: the boss\n",
        "10.yaml:4: rule 'r': escalate takes 'agents' or an address, got 'the boss'",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in SYNTAX_ERROR_CASES],
    ids=[case[0] for case in SYNTAX_ERROR_CASES],
)
def test_syntax_error(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, {"10.yaml": text}) == expected


def test_queues_and_mailboxes_are_free_when_none_are_known(tmp_path: Path) -> None:
    text = one_rule("mailbox: anything\nqueue: whatever", "- queue: brand-new")
    rules = load(tmp_path, text, known=Known(templates={"ack"}))
    assert rules.rules[0].actions[0].value == "brand-new"


def test_known_agents_with_no_agents_configured(tmp_path: Path) -> None:
    text = "- name: r\n  then:\n    - assign: alice@acme.test\n"
    message = load_error(tmp_path, {"10.yaml": text}, Known(templates={"ack"}))
    assert message == (
        "10.yaml:3: rule 'r': assign: unknown agent 'alice@acme.test' (agents: none configured)"
    )
