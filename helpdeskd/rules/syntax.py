"""Read the values, conditions and actions of a rules file, or fail with ``file:line:``.

``RulesFile`` reads one typed value at a time from ruamel's round-trip data and knows the line of
each; every problem raises ``RulesError`` naming the file, the line and the rule, with a "did you
mean" where a near name exists. The ``read_*`` functions turn a rule's ``when`` mapping and the
items of its ``then`` list into the conditions and actions of ``helpdeskd.rules.model``. They
look at one value at a time; what spans a file or the folder (rule kinds, unique names, ``since``
references, the one calendar) is ``helpdeskd.rules.loader``'s.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from helpdeskd.errors import ConfigError
from helpdeskd.rules.model import (
    ASSIGN_MODES,
    Action,
    AddressCondition,
    Condition,
    FlagCondition,
    HeaderCondition,
    Known,
    RegexCondition,
    TagsCondition,
    ValueCondition,
)
from helpdeskd.rules.schedule import TicketFilter, TimeAction
from helpdeskd.vocab import CHANNELS, KINDS, PRIORITIES, STATES

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

WORD = re.compile(r"[^\W_][\w.:-]*")  # a tag or queue name, as helpdeskd.triage.commands reads them
ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DOMAIN = re.compile(r"[^@\s]+\.[^@\s]+")


class RulesError(ConfigError):
    """A rules file is invalid; the message starts with ``file:line:``."""

    def __init__(self, file: str, line: int | None, problem: str) -> None:
        super().__init__(f"{file}:{line}: {problem}" if line is not None else f"{file}: {problem}")
        self.file = file
        self.line = line
        self.problem = problem


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the choice nearest WORD, or '' if none is near."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_type(value: object) -> str:
    """Return VALUE as an error message shows what was written instead."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class RulesFile:
    """Read typed values of one rules file, failing at their line (ruamel's ``.lc`` is 0-based)."""

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
            self.fail(line, f"{what} must be a mapping, got {describe_type(value)}")
        return value

    def keys(self, mapping: dict[Any, Any], allowed: Iterable[str], what: str, line: int) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if key not in allowed:
                at = self.key_line(mapping, key, line)
                if not isinstance(key, str):
                    self.fail(at, f"{what}: keys must be words, got {describe_type(key)}")
                self.fail(at, f"unknown {what} {key!r}{did_you_mean(key, allowed)}")

    def string(self, value: object, what: str, line: int) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(line, f"{what} must be a non-empty string, got {describe_type(value)}")
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
            self.fail(line, f"{what} must be true or false, got {describe_type(value)}{hint}")
        return value

    def choice(self, value: object, choices: tuple[str, ...], what: str, line: int) -> str:
        text = self.string(value, what, line).lower()
        if text not in choices:
            self.fail(
                line,
                f"{what}: unknown value {text!r}{did_you_mean(text, choices)} "
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
            self.fail(line, f"{what} must be a regex in single quotes, got {describe_type(value)}")
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
            hint = did_you_mean(name, self.known.templates)
            if not hint and f"replies/{name}" in self.known.templates:
                hint = f" (did you mean 'replies/{name}'?)"
            self.fail(line, f"{what}: unknown template {name!r}{hint}")
        return name

    def agent(self, value: str, what: str, line: int) -> str:
        address = value.lower()
        if address not in self.known.agents:
            known = ", ".join(sorted(self.known.agents)) or "none configured"
            hint = did_you_mean(address, self.known.agents)
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
            hint = did_you_mean(name, self.known.queues)
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


# --- conditions and actions ----------------------------------------------------------------


def read_conditions(
    f: RulesFile, raw: object, line: int, *, ticket_only: bool = False
) -> tuple[Condition, ...]:
    """Return the conditions of a ``when`` mapping; TICKET_ONLY for time rules and SLAs."""
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
            f.fail(at, f"unknown condition {key!r}{did_you_mean(key, allowed)}")
        result.extend(_read_condition(f, key, value, at))
    return tuple(result)


def _read_condition(f: RulesFile, key: str, value: object, line: int) -> list[Condition]:
    """Return the condition(s) one ``when`` key makes; a header mapping makes one per header."""
    match key:
        case "from" | "to" | "cc":
            patterns = []
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                at = f.item_line(value, i, line)
                text = f.string(item, key, at).lower()
                if not (ADDRESS.fullmatch(text) or (text[0] == "@" and DOMAIN.fullmatch(text[1:]))):
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
                if f.known.mailboxes and mailbox not in f.known.mailboxes:
                    hint = did_you_mean(mailbox, f.known.mailboxes)
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
                result.append(HeaderCondition(header, f.regex(pattern, f"header {header}", at), at))
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


def read_ticket_filter(f: RulesFile, rule: dict[Any, Any], line: int) -> TicketFilter:
    """Return the TicketFilter of a time rule's or SLA's ``when`` (ticket conditions only)."""
    if "when" not in rule:
        return TicketFilter()
    conditions = read_conditions(f, rule["when"], f.key_line(rule, "when", line), ticket_only=True)
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


def read_action_items(
    f: RulesFile, raw: object, allowed: tuple[str, ...], line: int
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
            f.fail(at, f"an action must be '- name: value', got {describe_type(item)}")
        if name not in allowed:
            f.fail(
                at,
                f"unknown action {name!r}{did_you_mean(name, allowed)} "
                f"(actions here: {', '.join(allowed)})",
            )
        if value is None and name not in ("stop", "spam", "close", "solve", "auto_reply"):
            f.fail(at, f"action {name} needs a value ('- {name}: …')")
        items.append((str(name), value, at))
    return items


def read_routing_action(f: RulesFile, name: str, value: object, line: int) -> list[Action]:
    """Return the routing action(s) one ``then`` item makes; a tags list makes one per tag."""
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
                        f"got {text!r}{did_you_mean(text, ASSIGN_MODES)}",
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
            return [Action(name, f.address_or_agents(item, "notify", line), line) for item in items]
        case "spam":
            flag = True if value is None else f.boolean(value, "spam", line)
            return [Action(name, "true" if flag else "false", line)]
    raise AssertionError(f"action {name} not handled")  # pragma: no cover


def read_time_action(f: RulesFile, name: str, value: object, line: int) -> list[TimeAction]:
    """Return the time rule action(s) one ``then`` item makes; a tags list makes one per tag."""
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
