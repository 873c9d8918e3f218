"""Routing rules, time rules and SLAs from ``rules/*.yaml``: load, validate, evaluate, explain.

Pure: ``load_rules`` reads the folder and nothing else; ``evaluate`` is a function of a RuleSet and
the Facts of one message and returns a Decision — the merged actions plus every rule's verdict and
the reason for each condition — without touching a ticket. The processor applies the Decision and
writes an event per applied action naming its rule; ``helpdeskd rules test`` prints it.

Like a Mailman chain, a rule's conditions only answer yes or no and the walk over the rules is a
short loop over data. The schema, the evaluation order and the error format are documented in
rules/README.md; the time maths lives in ``helpdeskd.rules.schedule``.

Loading is strict, because a rule that silently means something else routes mail wrongly for
weeks: YAML 1.2 (``17:00`` and ``NO`` stay strings), duplicate keys refused, and every unknown key,
bad regex, unknown template, agent or queue, bad time or date raises RulesError whose message
starts with ``file:line:``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from helpdeskd.errors import ConfigError
from helpdeskd.rules.schedule import (
    NINE_TO_FIVE,
    STATES,
    BusinessCalendar,
    Duration,
    Sla,
    TicketFilter,
    TimeAction,
    TimeRule,
    aware,
    duration_from_units,
    parse_duration,
    parse_holiday,
    parse_hours,
    parse_weekdays,
    zone,
)

PRIORITIES = ("low", "normal", "high", "urgent")
CHANNELS = ("email", "heroku")
KINDS = (
    "customer",
    "agent_reply",
    "heroku_forward",
    "auto_reply",
    "bounce",
    "report",
    "unsubscribe",
    "spam",
    "ignored",
    "blocked",
)
ASSIGN_MODES = ("round-robin", "least-loaded")
On = Literal["new", "reply", "any"]

RULE_KEYS = ("name", "description", "on", "when", "then", "stop", "after", "sla")
_ROUTING_KEYS = frozenset({"name", "description", "on", "when", "then", "stop"})
_TIME_KEYS = frozenset({"name", "description", "after", "when", "then"})
_SLA_KEYS = frozenset({"name", "description", "when", "sla"})
CONDITIONS = (
    "mailbox",
    "from",
    "to",
    "cc",
    "from_domain",
    "subject_matches",
    "body_matches",
    "header",
    "channel",
    "plan",
    "business_hours",
    "state",
    "priority",
    "queue",
    "tags",
    "kind",
    "new_ticket",
)
TICKET_CONDITIONS = ("channel", "plan", "priority", "queue", "tags")
ACTIONS = ("queue", "assign", "priority", "tags", "auto_reply", "notify", "spam", "stop")
TIME_ACTIONS = ("close", "solve", "remind", "escalate", "tags", "priority")
AFTER_KEYS = ("state", "minutes", "hours", "days", "weeks", "business_hours", "since")
SLA_KEYS = ("first_response", "resolution", "business_hours", "warn_at", "escalate")
CALENDAR_KEYS = ("timezone", "hours", "holidays")

KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
WORD = re.compile(r"[^\W_][\w.:-]*")  # a tag or queue name, as helpdeskd.triage.commands reads them
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DOMAIN = re.compile(r"[^@\s]+\.[^@\s]+")
# Match bodies up to here: an admin's regex must not meet a megabyte of hostile text.
BODY_LIMIT = 100_000


class RulesError(ConfigError):
    """A rules file is invalid; the message starts with ``file:line:``."""

    def __init__(self, file: str, line: int | None, problem: str) -> None:
        super().__init__(f"{file}:{line}: {problem}" if line is not None else f"{file}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class Known:
    """Names the rules may refer to. An empty ``queues`` or ``mailboxes`` allows any name."""

    templates: AbstractSet[str] = frozenset()  # 'ack', 'replies/thanks', …
    agents: AbstractSet[str] = frozenset()  # agents' addresses
    queues: AbstractSet[str] = frozenset()
    mailboxes: AbstractSet[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", frozenset(self.templates))
        for name in ("agents", "queues", "mailboxes"):
            values = getattr(self, name)
            object.__setattr__(self, name, frozenset(v.lower() for v in values))


# --- facts and conditions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the rules may look at for one message: the mail, its kind, and the ticket before it."""

    received_at: datetime  # aware: business_hours is judged at this moment
    mailbox: str = ""
    from_addr: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    subject: str = ""
    body: str = ""  # the decoded text
    headers: tuple[tuple[str, str], ...] = ()  # (name, value); names compare case-insensitively
    channel: str = "email"
    kind: str = "customer"
    plan: str | None = None  # the requester's plan, from the customers table
    new_ticket: bool = True
    state: str = "new"  # the ticket's state before this message
    priority: str = "normal"
    queue: str | None = None
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        aware(self.received_at, "received_at")
        object.__setattr__(self, "tags", frozenset(self.tags))


@dataclass(frozen=True)
class Reason:
    """One condition's verdict and why, in words."""

    ok: bool
    text: str


def _q(text: str, limit: int = 60) -> str:
    """Quote TEXT for a reason, shortened."""
    text = re.sub(r"[\r\n\t\v\f]+", " ", text)  # one line; spaces kept, they can matter
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "'" + text + "'"


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(values) + "]"


@dataclass(frozen=True)
class ValueCondition:
    """The fact named ``key`` is one of ``values``."""

    key: str
    values: tuple[str, ...]
    line: int

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        actual = _fact(facts, self.key)
        shown = "none" if actual is None else actual
        if len(self.values) == 1:
            ok = actual == self.values[0]
            return Reason(ok, f"{self.key} {shown} {'==' if ok else '!='} {self.values[0]}")
        ok = actual in self.values
        return Reason(ok, f"{self.key} {shown} {'in' if ok else 'not in'} {_list(self.values)}")


def _fact(facts: Facts, key: str) -> str | None:
    if key == "from_domain":
        return facts.from_addr.rpartition("@")[2].lower() or None
    value = getattr(facts, key)
    assert value is None or isinstance(value, str)
    return value.lower() if value is not None else None


@dataclass(frozen=True)
class AddressCondition:
    """An address in ``from``, ``to`` or ``cc`` is one of ``patterns`` (an address or @domain)."""

    key: Literal["from", "to", "cc"]
    patterns: tuple[str, ...]
    line: int

    def _matches(self, address: str) -> str | None:
        address = address.lower()
        for pattern in self.patterns:
            if address == pattern or (pattern.startswith("@") and address.endswith(pattern)):
                return pattern
        return None

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        addresses = (facts.from_addr,) if self.key == "from" else getattr(facts, self.key)
        wanted = self.patterns[0] if len(self.patterns) == 1 else _list(self.patterns)
        for address in addresses:
            pattern = self._matches(address)
            if pattern is not None:
                return Reason(True, f"{self.key} {address.lower()} matches {pattern}")
        shown = ", ".join(a.lower() for a in addresses) or "none"
        return Reason(False, f"{self.key} {shown} does not match {wanted}")


@dataclass(frozen=True)
class RegexCondition:
    """``subject_matches`` / ``body_matches``: ``re.search`` finds the pattern."""

    key: Literal["subject_matches", "body_matches"]
    pattern: re.Pattern[str]
    line: int

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        is_subject = self.key == "subject_matches"
        text = facts.subject if is_subject else facts.body[:BODY_LIMIT]
        found = self.pattern.search(text)
        shown = f"{self.key} {_q(self.pattern.pattern)}"
        if found is not None:
            return Reason(True, f"{shown} matched {_q(found.group(0))}")
        if is_subject:
            return Reason(False, f"{shown} did not match {_q(text)}")
        return Reason(False, f"{shown} did not match the body ({len(text)} characters)")


@dataclass(frozen=True)
class HeaderCondition:
    """A header ``name`` is present and one of its values matches ``pattern``."""

    name: str
    pattern: re.Pattern[str]
    line: int
    key: str = "header"

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        lower = self.name.lower()
        values = [value for name, value in facts.headers if name.lower() == lower]
        shown = f"header {self.name} {_q(self.pattern.pattern)}"
        if not values:
            return Reason(False, f"header {self.name} is absent")
        for value in values:
            found = self.pattern.search(value)
            if found is not None:
                return Reason(True, f"{shown} matched {_q(found.group(0))}")
        return Reason(False, f"{shown} did not match {_q(values[0])}")


@dataclass(frozen=True)
class FlagCondition:
    """``business_hours`` or ``new_ticket`` is ``expected``."""

    key: Literal["business_hours", "new_ticket"]
    expected: bool
    line: int

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        wanted = "true" if self.expected else "false"
        if self.key == "new_ticket":
            actual = facts.new_ticket
            what = "a new ticket" if actual else "a reply"
        else:
            actual = calendar.is_open(facts.received_at)
            local = facts.received_at.astimezone(calendar.tz)
            when = local.strftime("%a %Y-%m-%d %H:%M %Z")
            what = f"received {when}, {'within' if actual else 'outside'} business hours"
        return Reason(actual == self.expected, f"{self.key} {wanted}: {what}")


@dataclass(frozen=True)
class TagsCondition:
    """The ticket has all of ``tags``."""

    tags: tuple[str, ...]
    line: int
    key: str = "tags"

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        missing = [tag for tag in self.tags if tag not in facts.tags]
        if not missing:
            return Reason(True, f"tags has {', '.join(self.tags)}")
        has = ", ".join(sorted(facts.tags)) or "no tags"
        return Reason(False, f"tags lacks {', '.join(missing)} (has {has})")


Condition = (
    ValueCondition
    | AddressCondition
    | RegexCondition
    | HeaderCondition
    | FlagCondition
    | TagsCondition
)


# --- rules and decisions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One routing action as written. ``value``: '+tag'/'-tag' for tags, 'true'/'false' for spam."""

    name: str
    value: str
    line: int

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass(frozen=True)
class Rule:
    """A routing rule: when all conditions hold, its actions apply; ``stop`` ends the walk."""

    name: str
    file: str
    line: int
    conditions: tuple[Condition, ...]
    actions: tuple[Action, ...]
    stop: bool = False
    on: On = "any"
    description: str = ""

    def check(self, facts: Facts, calendar: BusinessCalendar) -> tuple[bool, tuple[Reason, ...]]:
        """Return whether the rule matches FACTS and every condition's reason (all are checked)."""
        reasons: list[Reason] = []
        if self.on != "any":
            what = "a new ticket" if facts.new_ticket else "a reply"
            reasons.append(Reason(facts.new_ticket == (self.on == "new"), f"on {self.on}: {what}"))
        reasons.extend(condition.check(facts, calendar) for condition in self.conditions)
        if not reasons:
            reasons.append(Reason(True, "no conditions"))
        return all(r.ok for r in reasons), tuple(reasons)


@dataclass(frozen=True)
class RuleSet:
    """Everything loaded from the rules folder, in evaluation order."""

    rules: tuple[Rule, ...] = ()
    time_rules: tuple[TimeRule, ...] = ()
    slas: tuple[Sla, ...] = ()
    calendar: BusinessCalendar = field(default_factory=BusinessCalendar)
    files: tuple[str, ...] = ()

    def summary(self) -> str:
        """Return one line for ``helpdeskd check``."""
        return (
            f"{len(self.rules)} routing rules, {len(self.time_rules)} time rules, "
            f"{len(self.slas)} SLAs in {len(self.files)} files; "
            f"calendar {self.calendar.timezone}"
        )


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict: matched or not, each condition's reason, and its actions."""

    rule: str
    file: str
    line: int
    matched: bool
    reasons: tuple[Reason, ...]
    actions: tuple[Action, ...]
    stop: bool = False

    @property
    def failed(self) -> tuple[str, ...]:
        """Return the reasons of the conditions that did not hold."""
        return tuple(r.text for r in self.reasons if not r.ok)

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "file": self.file,
            "line": self.line,
            "matched": self.matched,
            "reasons": [{"ok": r.ok, "text": r.text} for r in self.reasons],
            "failed": list(self.failed),
            "actions": [str(a) for a in self.actions],
            "stop": self.stop,
        }


@dataclass(frozen=True)
class Applied:
    """An action in the final result, with the rule that set it (for the event row)."""

    name: str
    value: str
    rule: str
    file: str
    line: int


@dataclass(frozen=True)
class Actions:
    """The merged result. None or empty: the rules said nothing, the defaults apply.

    ``auto_reply`` is a template name or 'none' (send no acknowledgement); ``assign`` is an agent's
    address or 'round-robin' / 'least-loaded' (the processor picks among the queue's agents);
    ``notify`` holds 'agents' and/or addresses.
    """

    queue: str | None = None
    assign: str | None = None
    priority: str | None = None
    tags_add: tuple[str, ...] = ()
    tags_remove: tuple[str, ...] = ()
    auto_reply: str | None = None
    notify: tuple[str, ...] = ()
    spam: bool = False

    def describe(self) -> str:
        parts = [
            f"{name} {value}"
            for name, value in (
                ("queue", self.queue),
                ("assign", self.assign),
                ("priority", self.priority),
                ("auto_reply", self.auto_reply),
            )
            if value is not None
        ]
        tags = [f"+{t}" for t in self.tags_add] + [f"-{t}" for t in self.tags_remove]
        if tags:
            parts.append("tags " + " ".join(tags))
        if self.notify:
            parts.append("notify " + ", ".join(self.notify))
        if self.spam:
            parts.append("spam")
        return ", ".join(parts) or "no actions (defaults apply)"

    def as_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "assign": self.assign,
            "priority": self.priority,
            "tags_add": list(self.tags_add),
            "tags_remove": list(self.tags_remove),
            "auto_reply": self.auto_reply,
            "notify": list(self.notify),
            "spam": self.spam,
        }


@dataclass(frozen=True)
class Decision:
    """What the rules decided for one message and why: data, applied by the processor."""

    actions: Actions
    applied: tuple[Applied, ...]  # the final actions, each with the rule that set it
    results: tuple[RuleResult, ...]  # every evaluated rule, in order
    skipped: tuple[str, ...] = ()  # rules not evaluated because one stopped the walk
    stopped_by: str | None = None

    @property
    def hits(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if r.matched)

    @property
    def misses(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.results if not r.matched)

    def describe(self) -> list[str]:
        """Return the lines ``helpdeskd rules test`` prints: each rule, why, and the result."""
        lines = []
        for result in self.results:
            verdict = "HIT " if result.matched else "MISS"
            lines.append(f"{verdict}  {result.rule}  ({result.file}:{result.line})")
            lines.extend(f"        {'yes' if r.ok else 'no '}  {r.text}" for r in result.reasons)
            if result.matched:
                done = "; ".join(str(a) for a in result.actions)
                if result.stop:
                    done = f"{done}; stop" if done else "stop"
                lines.append(f"        ->   {done}")
        lines.extend(
            f"SKIP  {name}  (not evaluated: {self.stopped_by} stops)" for name in self.skipped
        )
        lines.append(f"result: {self.actions.describe()}")
        return lines

    def as_json(self) -> dict[str, Any]:
        """Return the decision as JSON-ready data (``rules test --json``)."""
        return {
            "actions": self.actions.as_json(),
            "applied": [
                {"action": a.name, "value": a.value, "rule": a.rule, "file": a.file, "line": a.line}
                for a in self.applied
            ],
            "hits": [r.as_json() for r in self.hits],
            "misses": [r.as_json() for r in self.misses],
            "skipped": list(self.skipped),
            "stopped_by": self.stopped_by,
        }


def evaluate(rules: RuleSet, facts: Facts) -> Decision:
    """Walk the routing rules in order and merge the actions of those that match.

    Single-valued actions (queue, assign, priority, auto_reply, spam): the last matching rule wins.
    Tags accumulate, a later rule's sign winning for the same tag; notify accumulates. A matching
    rule with ``stop`` ends the walk.
    """
    results: list[RuleResult] = []
    chosen: dict[str, tuple[str, Rule, Action]] = {}  # slot -> (value, rule, action)
    stopped_by: str | None = None
    skipped: list[str] = []
    for rule in rules.rules:
        if stopped_by is not None:
            skipped.append(rule.name)
            continue
        matched, reasons = rule.check(facts, rules.calendar)
        results.append(
            RuleResult(rule.name, rule.file, rule.line, matched, reasons, rule.actions, rule.stop)
        )
        if not matched:
            continue
        for action in rule.actions:
            if action.name == "tags":
                slot = "tags:" + action.value[1:]
            elif action.name == "notify":
                slot = "notify:" + action.value
            else:
                slot = action.name
            chosen.pop(slot, None)  # re-insert: the result lists actions in the order set
            chosen[slot] = (action.value, rule, action)
        if rule.stop:
            stopped_by = rule.name
    values = {slot: value for slot, (value, _, _) in chosen.items()}
    actions = Actions(
        queue=values.get("queue"),
        assign=values.get("assign"),
        priority=values.get("priority"),
        tags_add=tuple(v[1:] for s, v in values.items() if s.startswith("tags:") and v[0] == "+"),
        tags_remove=tuple(
            v[1:] for s, v in values.items() if s.startswith("tags:") and v[0] == "-"
        ),
        auto_reply=values.get("auto_reply"),
        notify=tuple(v for s, v in values.items() if s.startswith("notify:")),
        spam=values.get("spam") == "true",
    )
    applied = tuple(
        Applied(action.name, value, rule.name, rule.file, action.line)
        for value, rule, action in chosen.values()
        if not (action.name == "spam" and value == "false")
    )
    return Decision(actions, applied, tuple(results), tuple(skipped), stopped_by)


# --- loading -----------------------------------------------------------------------------------


def _did_you_mean(word: object, choices: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe_type(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _File:
    """Errors and line numbers for one rules file (ruamel's ``.lc`` positions are 0-based)."""

    def __init__(self, path: Path, known: Known) -> None:
        self.name = str(path)
        self.known = known
        self.rule = ""  # the rule being read, named in errors

    def fail(self, line: int, problem: str) -> NoReturn:
        prefix = f"rule {self.rule!r}: " if self.rule else ""
        raise RulesError(self.name, line, prefix + problem)

    @staticmethod
    def key_line(mapping: Any, key: str, default: int) -> int:
        try:
            return int(mapping.lc.key(key)[0]) + 1
        except (AttributeError, KeyError, TypeError):
            return default

    @staticmethod
    def item_line(seq: Any, index: int, default: int) -> int:
        try:
            return int(seq.lc.item(index)[0]) + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return default

    @staticmethod
    def node_line(node: Any, default: int) -> int:
        try:
            return int(node.lc.line) + 1
        except (AttributeError, TypeError):
            return default

    # --- typed values ---

    def mapping(self, value: object, what: str, line: int) -> dict[Any, Any]:
        if not isinstance(value, dict):
            self.fail(line, f"{what} must be a mapping, got {_describe_type(value)}")
        return value

    def keys(self, mapping: dict[Any, Any], allowed: Iterable[str], what: str, line: int) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if key not in allowed:
                at = self.key_line(mapping, key, line)
                if not isinstance(key, str):
                    self.fail(at, f"{what}: keys must be words, got {_describe_type(key)}")
                self.fail(at, f"unknown {what} {key!r}{_did_you_mean(key, allowed)}")

    def string(self, value: object, what: str, line: int) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(line, f"{what} must be a non-empty string, got {_describe_type(value)}")
        return value.strip()

    def strings(self, value: object, what: str, line: int) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(line, f"{what} must not be an empty list")
        return tuple(
            self.string(item, what, self.item_line(value, i, line)) for i, item in enumerate(items)
        )

    def boolean(self, value: object, what: str, line: int) -> bool:
        if not isinstance(value, bool):
            hint = " (YAML 1.2 reads only true and false as booleans)"
            self.fail(line, f"{what} must be true or false, got {_describe_type(value)}{hint}")
        return value

    def choice(self, value: object, choices: tuple[str, ...], what: str, line: int) -> str:
        text = self.string(value, what, line).lower()
        if text not in choices:
            self.fail(
                line,
                f"{what}: unknown value {text!r}{_did_you_mean(text, choices)} "
                f"(one of {', '.join(choices)})",
            )
        return text

    def choices(
        self, value: object, choices: tuple[str, ...], what: str, line: int
    ) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(line, f"{what} must not be an empty list")
        return tuple(
            self.choice(item, choices, what, self.item_line(value, i, line))
            for i, item in enumerate(items)
        )

    def regex(self, value: object, what: str, line: int) -> re.Pattern[str]:
        if isinstance(value, list):
            self.fail(line, f"{what} takes one regex; join alternatives with |")
        if not isinstance(value, str) or not value:
            self.fail(line, f"{what} must be a regex in single quotes, got {_describe_type(value)}")
        pattern = value  # not stripped: a space can be part of a pattern
        if any(ord(c) < 32 for c in pattern):
            self.fail(
                line,
                f"{what}: the regex holds a control character — a double-quoted YAML string "
                "turned \\b or \\t into one; write regexes in single quotes",
            )
        try:
            return re.compile(pattern)
        except re.error as exc:
            self.fail(line, f"{what}: bad regex {pattern!r}: {exc}")

    def template(self, value: object, what: str, line: int) -> str:
        name = self.string(value, what, line)
        if name not in self.known.templates:
            hint = _did_you_mean(name, self.known.templates)
            if not hint and f"replies/{name}" in self.known.templates:
                hint = f" (did you mean 'replies/{name}'?)"
            self.fail(line, f"{what}: unknown template {name!r}{hint}")
        return name

    def agent(self, value: str, what: str, line: int) -> str:
        address = value.lower()
        if address not in self.known.agents:
            known = ", ".join(sorted(self.known.agents)) or "none configured"
            hint = _did_you_mean(address, self.known.agents)
            self.fail(line, f"{what}: unknown agent {address!r}{hint} (agents: {known})")
        return address

    def address_or_agents(self, value: object, what: str, line: int) -> str:
        text = self.string(value, what, line).lower()
        if text != "agents" and not ADDRESS.fullmatch(text):
            self.fail(line, f"{what} takes 'agents' or an address, got {text!r}")
        return text

    def word(self, value: object, what: str, line: int) -> str:
        text = self.string(value, what, line).lower()
        if not WORD.fullmatch(text):
            self.fail(line, f"{what}: {text!r} is not a name (letters, digits, - _ . :)")
        return text

    def queue(self, value: object, what: str, line: int) -> str:
        name = self.word(value, what, line)
        if self.known.queues and name not in self.known.queues:
            hint = _did_you_mean(name, self.known.queues)
            self.fail(
                line,
                f"{what}: unknown queue {name!r}{hint} "
                f"(queues: {', '.join(sorted(self.known.queues))})",
            )
        return name

    def signed_tags(self, value: object, what: str, line: int) -> list[str]:
        entries = []
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            at = self.item_line(value, i, line)
            text = self.string(item, what, at).lower()
            sign, tag = ("+", text) if text[0] not in "+-" else (text[0], text[1:].strip())
            if not WORD.fullmatch(tag):
                self.fail(at, f"{what}: {text!r} is not a tag: write +name or -name")
            entries.append(sign + tag)
        if not entries:
            self.fail(line, f"{what} must not be an empty list")
        return entries


def load_rules(folder: Path, *, known: Known, timezone: str = "UTC") -> RuleSet:
    """Read FOLDER/*.yaml in name order and return the validated RuleSet.

    TIMEZONE (the configured ``service.timezone``) is the calendar's when the folder's calendar
    names none, or when there is no calendar (then Monday to Friday 09:00-17:00, no holidays).
    Raises RulesError (a ConfigError) at the first problem, its message starting ``file:line:``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RulesError(str(folder), None, "not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in paths:
        if path.suffix == ".yml":
            raise RulesError(str(path), 1, "rules files must end in .yaml, not .yml")
    paths = [p for p in paths if p.suffix == ".yaml"]
    loader = _Loader(known, timezone)
    for path in paths:
        loader.load_file(path)
    return loader.finish(tuple(str(p) for p in paths))


class _Loader:
    def __init__(self, known: Known, timezone: str) -> None:
        self.known = known
        self.timezone = timezone
        self.rules: list[Rule] = []
        self.time_rules: list[TimeRule] = []
        self.slas: list[Sla] = []
        self.names: dict[str, str] = {}  # rule name -> "file:line" where first defined
        self.calendar: BusinessCalendar | None = None
        self.calendar_at = ""
        self.time_rule_at: dict[str, tuple[TimeRule, int]] = {}

    def finish(self, files: tuple[str, ...]) -> RuleSet:
        if self.calendar is None:
            try:
                calendar = BusinessCalendar(self.timezone)
            except ValueError as exc:
                raise ConfigError(f"service.timezone: {exc}") from None
        else:
            calendar = self.calendar
        return RuleSet(tuple(self.rules), tuple(self.time_rules), tuple(self.slas), calendar, files)

    def load_file(self, path: Path) -> None:
        f = _File(path, self.known)
        yaml = YAML(typ="rt")
        yaml.allow_duplicate_keys = False
        yaml.version = (1, 2)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            f.fail(1, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
        except OSError as exc:
            f.fail(1, f"cannot read: {exc.strerror}")
        try:
            document = yaml.load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = str(exc.problem or exc.context or "invalid YAML")
            duplicate = re.match(r'found duplicate key "(.*)" with value', problem)
            if duplicate:
                problem = f"duplicate key {duplicate.group(1)!r}: each key may appear once"
            f.fail(line, f"YAML: {problem}")
        except YAMLError as exc:
            f.fail(1, f"YAML: {exc}")
        if document is None:
            return
        if isinstance(document, dict):
            self.load_calendar(f, document)
            return
        if not isinstance(document, list):
            f.fail(1, "a rules file is a list of rules ('- name: …'), or a calendar: mapping")
        for index, item in enumerate(document):
            line = f.item_line(document, index, 1)
            f.rule = ""
            self.load_rule(f, item, line)

    # --- calendar ---

    def load_calendar(self, f: _File, document: dict[Any, Any]) -> None:
        f.keys(document, ("calendar",), "top-level key", 1)
        line = f.key_line(document, "calendar", 1)
        if self.calendar is not None:
            f.fail(line, f"a calendar is already defined at {self.calendar_at}")
        spec = f.mapping(document["calendar"], "calendar", line)
        f.keys(spec, CALENDAR_KEYS, "calendar key", line)
        timezone = self.timezone
        if "timezone" in spec:
            at = f.key_line(spec, "timezone", line)
            timezone = f.string(spec["timezone"], "calendar timezone", at)
            try:
                zone(timezone)
            except ValueError as exc:
                f.fail(at, f"calendar timezone: {exc}")
        hours = NINE_TO_FIVE
        if "hours" in spec:
            hours = self.calendar_hours(f, spec["hours"], f.key_line(spec, "hours", line))
        holidays: list[date] = []
        if "holidays" in spec:
            at = f.key_line(spec, "holidays", line)
            raw = spec["holidays"]
            if not isinstance(raw, list):
                f.fail(at, "calendar holidays must be a list of 'YYYY-MM-DD' dates")
            for i, item in enumerate(raw):
                item_at = f.item_line(raw, i, at)
                if not isinstance(item, str | date):
                    f.fail(item_at, f"holiday {_describe_type(item)} is not a date 'YYYY-MM-DD'")
                try:
                    holidays.append(parse_holiday(item))
                except ValueError as exc:
                    f.fail(item_at, str(exc))
        try:
            self.calendar = BusinessCalendar(timezone, hours, frozenset(holidays))
        except ValueError as exc:
            f.fail(line, f"calendar: {exc}")
        self.calendar_at = f"{f.name}:{line}"

    def calendar_hours(
        self, f: _File, raw: object, line: int
    ) -> tuple[tuple[tuple[int, int], ...], ...]:
        spec = f.mapping(raw, "calendar hours", line)
        days: list[tuple[tuple[int, int], ...] | None] = [None] * 7
        for key, value in spec.items():
            at = f.key_line(spec, key, line)
            if not isinstance(key, str):
                f.fail(at, f"calendar hours: {_describe_type(key)} is not a weekday")
            try:
                numbers = parse_weekdays(key)
            except ValueError as exc:
                f.fail(at, f"calendar hours: {exc}{_did_you_mean(key.lower(), _WEEKDAY_WORDS)}")
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if not isinstance(item, str):
                        f.fail(
                            f.item_line(value, i, at),
                            f"calendar hours {key}: write ranges as quoted strings like "
                            f"'09:00-17:00', got {_describe_type(item)}",
                        )
            elif not isinstance(value, str):
                f.fail(
                    at,
                    f"calendar hours {key}: write '09:00-17:00' (quoted), a list of ranges "
                    f"or closed, got {_describe_type(value)}",
                )
            try:
                intervals = parse_hours(value)
            except ValueError as exc:
                f.fail(at, f"calendar hours {key}: {exc}")
            for number in numbers:
                if days[number] is not None:
                    f.fail(at, f"calendar hours: {_WEEKDAY_WORDS[number]} is given twice")
                days[number] = intervals
        week = tuple(day or () for day in days)
        if not any(week):
            f.fail(line, "calendar hours: the calendar is never open")
        return week

    # --- rules ---

    def load_rule(self, f: _File, item: object, line: int) -> None:
        rule = f.mapping(item, "each rule", line)
        line = f.node_line(rule, line)
        f.keys(rule, RULE_KEYS, "rule key", line)
        if "name" not in rule:
            f.fail(line, "a rule needs a name (kebab-case, like billing-to-billing-queue)")
        name_line = f.key_line(rule, "name", line)
        name = f.string(rule["name"], "name", name_line)
        if not KEBAB.fullmatch(name):
            f.fail(
                name_line, f"rule name {name!r} is not kebab-case (like billing-to-billing-queue)"
            )
        if name in self.names:
            f.fail(name_line, f"duplicate rule name {name!r} (first at {self.names[name]})")
        self.names[name] = f"{f.name}:{line}"
        f.rule = name
        description = ""
        if "description" in rule:
            at = f.key_line(rule, "description", line)
            description = f.string(rule["description"], "description", at)
        if "after" in rule and "sla" in rule:
            f.fail(line, "a rule has either after (a time rule) or sla, not both")
        if "after" in rule:
            extra = set(rule) - _TIME_KEYS
            if extra:
                key = sorted(extra)[0]
                f.fail(f.key_line(rule, key, line), f"a time rule (after) cannot have {key!r}")
            self.time_rules.append(self.load_time_rule(f, rule, name, line, description))
        elif "sla" in rule:
            extra = set(rule) - _SLA_KEYS
            if extra:
                key = sorted(extra)[0]
                f.fail(f.key_line(rule, key, line), f"an SLA rule cannot have {key!r}")
            self.slas.append(self.load_sla(f, rule, name, line, description))
        else:
            self.rules.append(self.load_routing(f, rule, name, line, description))

    def load_routing(
        self, f: _File, rule: dict[Any, Any], name: str, line: int, description: str
    ) -> Rule:
        on: On = "any"
        if "on" in rule:
            spelled = f.choice(
                rule["on"], ("new", "reply", "any"), "on", f.key_line(rule, "on", line)
            )
            on = "new" if spelled == "new" else "reply" if spelled == "reply" else "any"
        conditions: tuple[Condition, ...] = ()
        if "when" in rule:
            at = f.key_line(rule, "when", line)
            conditions = self.conditions(f, rule["when"], at)
        stop_key: bool | None = None
        if "stop" in rule:
            stop_key = f.boolean(rule["stop"], "stop", f.key_line(rule, "stop", line))
        actions: list[Action] = []
        stop_action = False
        if "then" in rule:
            at = f.key_line(rule, "then", line)
            for action_name, value, action_line in _action_items(f, rule["then"], ACTIONS, at):
                if action_name == "stop":
                    if not f.boolean(True if value is None else value, "stop", action_line):
                        f.fail(action_line, "stop: false as an action means nothing; remove it")
                    stop_action = True
                    continue
                actions.extend(self.routing_action(f, action_name, value, action_line))
        if stop_key is False and stop_action:
            f.fail(line, "stop: false contradicts the stop action")
        stop = bool(stop_key) or stop_action
        if not actions and not stop:
            f.fail(line, "a rule needs then (a list of actions) or stop: true")
        return Rule(name, f.name, line, conditions, tuple(actions), stop, on, description)

    def conditions(
        self, f: _File, raw: object, line: int, *, ticket_only: bool = False
    ) -> tuple[Condition, ...]:
        if raw is None:
            return ()
        when = f.mapping(raw, "when", line)
        allowed = TICKET_CONDITIONS if ticket_only else CONDITIONS
        result: list[Condition] = []
        for key, value in when.items():
            at = f.key_line(when, key, line)
            if ticket_only and key in CONDITIONS and key not in TICKET_CONDITIONS:
                f.fail(
                    at,
                    f"{key!r} looks at a message; a time rule or SLA's when takes ticket "
                    f"conditions only: {', '.join(TICKET_CONDITIONS)}",
                )
            if key not in allowed:
                f.fail(at, f"unknown condition {key!r}{_did_you_mean(key, allowed)}")
            result.extend(self.condition(f, key, value, at))
        return tuple(result)

    def condition(self, f: _File, key: str, value: object, line: int) -> list[Condition]:
        match key:
            case "from" | "to" | "cc":
                patterns = []
                for i, item in enumerate(value if isinstance(value, list) else [value]):
                    at = f.item_line(value, i, line)
                    text = f.string(item, key, at).lower()
                    if not (
                        ADDRESS.fullmatch(text) or (text[0] == "@" and DOMAIN.fullmatch(text[1:]))
                    ):
                        f.fail(at, f"{key}: {text!r} is neither an address nor '@domain'")
                    patterns.append(text)
                if not patterns:
                    f.fail(line, f"{key} must not be an empty list")
                return [AddressCondition(key, tuple(patterns), line)]
            case "from_domain":
                domains = tuple(d.lower().lstrip("@") for d in f.strings(value, key, line))
                for domain in domains:
                    if not DOMAIN.fullmatch(domain):
                        f.fail(line, f"from_domain: {domain!r} is not a domain")
                return [ValueCondition(key, domains, line)]
            case "mailbox":
                names = tuple(n.lower() for n in f.strings(value, key, line))
                for mailbox in names:
                    if self.known.mailboxes and mailbox not in self.known.mailboxes:
                        hint = _did_you_mean(mailbox, self.known.mailboxes)
                        f.fail(line, f"mailbox: unknown mailbox {mailbox!r}{hint}")
                return [ValueCondition(key, names, line)]
            case "subject_matches" | "body_matches":
                return [RegexCondition(key, f.regex(value, key, line), line)]
            case "header":
                headers = f.mapping(value, "header", line)
                if not headers:
                    f.fail(line, "header must name at least one header")
                result: list[Condition] = []
                for name, pattern in headers.items():
                    at = f.key_line(headers, name, line)
                    header = f.string(name, "header name", at)
                    result.append(
                        HeaderCondition(header, f.regex(pattern, f"header {header}", at), at)
                    )
                return result
            case "channel":
                return [ValueCondition(key, f.choices(value, CHANNELS, key, line), line)]
            case "state":
                return [ValueCondition(key, f.choices(value, STATES, key, line), line)]
            case "priority":
                return [ValueCondition(key, f.choices(value, PRIORITIES, key, line), line)]
            case "kind":
                return [ValueCondition(key, f.choices(value, KINDS, key, line), line)]
            case "plan":
                plans = tuple(p.lower() for p in f.strings(value, key, line))
                return [ValueCondition(key, plans, line)]
            case "queue":
                items = value if isinstance(value, list) else [value]
                queues = tuple(
                    f.queue(q, key, f.item_line(value, i, line)) for i, q in enumerate(items)
                )
                if not queues:
                    f.fail(line, "queue must not be an empty list")
                return [ValueCondition(key, queues, line)]
            case "tags":
                tags = []
                for i, item in enumerate(value if isinstance(value, list) else [value]):
                    at = f.item_line(value, i, line)
                    text = f.string(item, key, at)
                    if text[0] in "+-":
                        f.fail(at, f"tags condition takes plain tag names, not {text!r}")
                    tags.append(f.word(text, key, at))
                if not tags:
                    f.fail(line, "tags must not be an empty list")
                return [TagsCondition(tuple(tags), line)]
            case "business_hours" | "new_ticket":
                return [FlagCondition(key, f.boolean(value, key, line), line)]
        raise AssertionError(f"condition {key} not handled")  # pragma: no cover

    def routing_action(self, f: _File, name: str, value: object, line: int) -> list[Action]:
        match name:
            case "queue":
                return [Action(name, f.queue(value, "queue", line), line)]
            case "assign":
                text = f.string(value, "assign", line).lower()
                if text not in ASSIGN_MODES:
                    if not ADDRESS.fullmatch(text):
                        f.fail(
                            line,
                            f"assign takes an agent's address, round-robin or least-loaded, "
                            f"got {text!r}{_did_you_mean(text, ASSIGN_MODES)}",
                        )
                    text = f.agent(text, "assign", line)
                return [Action(name, text, line)]
            case "priority":
                return [Action(name, f.choice(value, PRIORITIES, "priority", line), line)]
            case "tags":
                return [Action(name, tag, line) for tag in f.signed_tags(value, "tags", line)]
            case "auto_reply":
                if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
                    return [Action(name, "none", line)]
                return [Action(name, f.template(value, "auto_reply", line), line)]
            case "notify":
                items = value if isinstance(value, list) else [value]
                return [
                    Action(name, f.address_or_agents(item, "notify", line), line) for item in items
                ]
            case "spam":
                flag = True if value is None else f.boolean(value, "spam", line)
                return [Action(name, "true" if flag else "false", line)]
        raise AssertionError(f"action {name} not handled")  # pragma: no cover

    # --- time rules and SLAs ---

    def ticket_filter(self, f: _File, rule: dict[Any, Any], line: int) -> TicketFilter:
        if "when" not in rule:
            return TicketFilter()
        conditions = self.conditions(
            f, rule["when"], f.key_line(rule, "when", line), ticket_only=True
        )
        values: dict[str, frozenset[str] | None] = {}
        tags: frozenset[str] = frozenset()
        for condition in conditions:
            if isinstance(condition, TagsCondition):
                tags = frozenset(condition.tags)
            elif isinstance(condition, ValueCondition):
                values[condition.key] = frozenset(condition.values)
        return TicketFilter(
            channel=values.get("channel"),
            plan=values.get("plan"),
            priority=values.get("priority"),
            queue=values.get("queue"),
            tags=tags,
        )

    def load_time_rule(
        self, f: _File, rule: dict[Any, Any], name: str, line: int, description: str
    ) -> TimeRule:
        at = f.key_line(rule, "after", line)
        after = f.mapping(rule["after"], "after", at)
        f.keys(after, AFTER_KEYS, "after key", at)
        if "state" not in after:
            f.fail(at, "after needs a state (new, open, pending, solved or closed)")
        state = f.choice(after["state"], STATES, "after state", f.key_line(after, "state", at))
        units = [key for key in ("minutes", "hours", "days", "weeks") if key in after]
        if len(units) != 1:
            f.fail(at, "after needs exactly one of minutes, hours, days or weeks")
        unit_line = f.key_line(after, units[0], at)
        amount = after[units[0]]
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            f.fail(
                unit_line,
                f"{units[0]} must be a positive whole number, got {_describe_type(amount)}",
            )
        delay = duration_from_units(amount, units[0])
        business = False
        if "business_hours" in after:
            business = f.boolean(
                after["business_hours"], "business_hours", f.key_line(after, "business_hours", at)
            )
        since: str | None = None
        if "since" in after:
            since_line = f.key_line(after, "since", at)
            since = f.string(after["since"], "since", since_line)
            if since not in self.time_rule_at:
                earlier = list(self.time_rule_at)
                f.fail(
                    since_line,
                    f"since: no earlier time rule named {since!r}{_did_you_mean(since, earlier)}",
                )
            other, _ = self.time_rule_at[since]
            if other.state != state:
                f.fail(
                    since_line,
                    f"since: rule {since!r} acts on {other.state} tickets, this one on {state}",
                )
        if "then" not in rule:
            f.fail(line, "a time rule needs then (close, solve, remind, escalate, tags, priority)")
        then_line = f.key_line(rule, "then", line)
        actions: list[TimeAction] = []
        for action_name, value, action_line in _action_items(
            f, rule["then"], TIME_ACTIONS, then_line
        ):
            actions.extend(self.time_action(f, action_name, value, action_line))
        names = {a.name for a in actions}
        if {"close", "solve"} <= names:
            f.fail(then_line, "close and solve in one rule contradict each other")
        result = TimeRule(
            name=name,
            state=state,
            delay=delay,
            actions=tuple(actions),
            business_hours=business,
            since=since,
            when=self.ticket_filter(f, rule, line),
            file=f.name,
            line=line,
            description=description,
        )
        self.time_rule_at[name] = (result, line)
        return result

    def time_action(self, f: _File, name: str, value: object, line: int) -> list[TimeAction]:
        match name:
            case "close" | "solve":
                if value is not None and f.boolean(value, name, line) is not True:
                    f.fail(line, f"{name}: false means nothing; remove the action")
                return [TimeAction(name)]
            case "remind":
                return [TimeAction("remind", f.template(value, "remind", line))]
            case "escalate":
                return [TimeAction("escalate", f.address_or_agents(value, "escalate", line))]
            case "priority":
                return [TimeAction("priority", f.choice(value, PRIORITIES, "priority", line))]
            case "tags":
                return [TimeAction("tags", tag) for tag in f.signed_tags(value, "tags", line)]
        raise AssertionError(f"time action {name} not handled")  # pragma: no cover

    def load_sla(
        self, f: _File, rule: dict[Any, Any], name: str, line: int, description: str
    ) -> Sla:
        at = f.key_line(rule, "sla", line)
        spec = f.mapping(rule["sla"], "sla", at)
        f.keys(spec, SLA_KEYS, "sla key", at)
        durations: dict[str, Duration | None] = {"first_response": None, "resolution": None}
        for key in durations:
            if key in spec:
                key_line = f.key_line(spec, key, at)
                raw = spec[key]
                if isinstance(raw, bool) or not isinstance(raw, str):
                    f.fail(
                        key_line,
                        f"{key} must be a duration like '4h' or '2d', got {_describe_type(raw)}",
                    )
                try:
                    durations[key] = parse_duration(raw)
                except ValueError as exc:
                    f.fail(key_line, f"{key}: {exc}")
        if durations["first_response"] is None and durations["resolution"] is None:
            f.fail(at, "sla needs first_response, resolution or both")
        business = False
        if "business_hours" in spec:
            business = f.boolean(
                spec["business_hours"], "business_hours", f.key_line(spec, "business_hours", at)
            )
        warn_at = 0.8
        if "warn_at" in spec:
            warn_line = f.key_line(spec, "warn_at", at)
            raw = spec["warn_at"]
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < 1:
                f.fail(
                    warn_line,
                    f"warn_at must be a share between 0 and 1, like 0.8, got {_describe_type(raw)}",
                )
            warn_at = float(raw)
        escalate = "agents"
        if "escalate" in spec:
            escalate = f.address_or_agents(
                spec["escalate"], "escalate", f.key_line(spec, "escalate", at)
            )
        return Sla(
            name=name,
            first_response=durations["first_response"],
            resolution=durations["resolution"],
            business_hours=business,
            warn_at=warn_at,
            escalate=escalate,
            when=self.ticket_filter(f, rule, line),
            file=f.name,
            line=line,
            description=description,
        )


_WEEKDAY_WORDS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _action_items(
    f: _File, raw: object, allowed: tuple[str, ...], line: int
) -> list[tuple[str, object, int]]:
    """Return the (name, value, line) of each action in a ``then`` list."""
    if not isinstance(raw, list):
        f.fail(
            line, "then must be a list of actions, each '- name: value' (like '- queue: billing')"
        )
    if not raw:
        f.fail(line, "then must not be empty")
    items = []
    for index, item in enumerate(raw):
        at = f.item_line(raw, index, line)
        name: object
        value: object
        if isinstance(item, str):
            name, value = item.strip(), None
        elif isinstance(item, dict) and len(item) == 1:
            name, value = next(iter(item.items()))
        elif isinstance(item, dict):
            f.fail(at, "each action is its own list item: write '- queue: x' and '- priority: y'")
        else:
            f.fail(at, f"an action must be '- name: value', got {_describe_type(item)}")
        if name not in allowed:
            f.fail(
                at,
                f"unknown action {name!r}{_did_you_mean(name, allowed)} "
                f"(actions here: {', '.join(allowed)})",
            )
        if value is None and name not in ("stop", "spam", "close", "solve", "auto_reply"):
            f.fail(at, f"action {name} needs a value ('- {name}: …')")
        items.append((str(name), value, at))
    return items


__all__ = [
    "ACTIONS",
    "CONDITIONS",
    "Action",
    "Actions",
    "Applied",
    "BusinessCalendar",
    "Decision",
    "Facts",
    "Known",
    "Reason",
    "Rule",
    "RuleResult",
    "RuleSet",
    "RulesError",
    "Sla",
    "TicketFilter",
    "TimeAction",
    "TimeRule",
    "evaluate",
    "load_rules",
]
