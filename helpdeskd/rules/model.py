"""Model the routing rules: a message's facts, conditions that answer yes or no, decisions.

Pure data and pure matching: ``Facts`` is what the rules may look at for one message; a
condition's ``check`` returns a ``Reason`` (yes or no, and why in words) and never mutates a ticket
or sends mail; a ``Rule`` is conditions plus actions; a ``RuleSet`` is everything loaded from the
rules folder; a ``Decision`` is what the rules decided and why, applied later by the processor.
``helpdeskd.rules.loader`` builds a RuleSet from ``rules/*.yaml``, ``helpdeskd.rules.evaluate``
walks it for one message, and the time rules and SLAs live in ``helpdeskd.rules.schedule``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from helpdeskd.rules.schedule import BusinessCalendar, Sla, TimeRule, aware

ASSIGN_MODES = ("round-robin", "least-loaded")
On = Literal["new", "reply", "any"]
# Match bodies up to here: an admin's regex must not meet a megabyte of hostile text.
BODY_LIMIT = 100_000


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

    def holds(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        return _fact(facts, self.key) in self.values

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        actual = _fact(facts, self.key)
        shown = "none" if actual is None else actual
        ok = self.holds(facts, calendar)
        if len(self.values) == 1:
            return Reason(ok, f"{self.key} {shown} {'==' if ok else '!='} {self.values[0]}")
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

    def _addresses(self, facts: Facts) -> tuple[str, ...]:
        return (facts.from_addr,) if self.key == "from" else getattr(facts, self.key)

    def holds(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        return any(self._matches(address) is not None for address in self._addresses(facts))

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        addresses = self._addresses(facts)
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

    def _text(self, facts: Facts) -> str:
        return facts.subject if self.key == "subject_matches" else facts.body[:BODY_LIMIT]

    def holds(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        return self.pattern.search(self._text(facts)) is not None

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        is_subject = self.key == "subject_matches"
        text = self._text(facts)
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

    def _values(self, facts: Facts) -> list[str]:
        lower = self.name.lower()
        return [value for name, value in facts.headers if name.lower() == lower]

    def holds(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        return any(self.pattern.search(value) is not None for value in self._values(facts))

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        values = self._values(facts)
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

    def _actual(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        if self.key == "new_ticket":
            return facts.new_ticket
        return calendar.is_open(facts.received_at)

    def holds(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        return self._actual(facts, calendar) == self.expected

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        wanted = "true" if self.expected else "false"
        actual = self._actual(facts, calendar)
        if self.key == "new_ticket":
            what = "a new ticket" if actual else "a reply"
        else:
            local = facts.received_at.astimezone(calendar.tz)
            when = local.strftime("%a %Y-%m-%d %H:%M %Z")
            what = f"received {when}, {'within' if actual else 'outside'} business hours"
        return Reason(self.holds(facts, calendar), f"{self.key} {wanted}: {what}")


@dataclass(frozen=True)
class TagsCondition:
    """The ticket has all of ``tags``."""

    tags: tuple[str, ...]
    line: int
    key: str = "tags"

    def holds(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        return all(tag in facts.tags for tag in self.tags)

    def check(self, facts: Facts, calendar: BusinessCalendar) -> Reason:
        missing = [tag for tag in self.tags if tag not in facts.tags]
        if self.holds(facts, calendar):
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

    def _on_holds(self, facts: Facts) -> bool:
        return self.on == "any" or facts.new_ticket == (self.on == "new")

    def matches(self, facts: Facts, calendar: BusinessCalendar) -> bool:
        """Return whether the rule matches FACTS, as :meth:`check` does, without the reasons."""
        return self._on_holds(facts) and all(c.holds(facts, calendar) for c in self.conditions)

    def check(self, facts: Facts, calendar: BusinessCalendar) -> tuple[bool, tuple[Reason, ...]]:
        """Return whether the rule matches FACTS and every condition's reason (all are checked)."""
        reasons: list[Reason] = []
        if self.on != "any":
            what = "a new ticket" if facts.new_ticket else "a reply"
            reasons.append(Reason(self._on_holds(facts), f"on {self.on}: {what}"))
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
