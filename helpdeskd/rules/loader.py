"""Load ``rules/*.yaml`` into a RuleSet: strict YAML 1.2, validated, errors at ``file:line:``.

Pure: ``load_rules`` reads the folder and nothing else. Loading is strict, because a rule that
silently means something else routes mail wrongly for weeks: YAML 1.2 (``17:00`` and ``NO`` stay
strings), duplicate keys refused, and every unknown key, bad regex, unknown template, agent or
queue, bad time or date raises RulesError whose message starts with ``file:line:``.

This module reads the folder, its files and the calendar, tells the three kinds of rule apart
(routing rules, time rules with ``after``, SLAs with ``sla``) and checks what spans rules: unique
names, ``since`` references, one calendar. Single values, conditions and actions are read by
``helpdeskd.rules.syntax``. The schema and the error format are documented in rules/README.md.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from helpdeskd.config.settings import DEFAULT_TEMPLATES, Config
from helpdeskd.errors import ConfigError
from helpdeskd.rules.model import Action, Condition, Known, On, Rule, RuleSet
from helpdeskd.rules.schedule import (
    NINE_TO_FIVE,
    BusinessCalendar,
    Duration,
    Sla,
    TimeAction,
    TimeRule,
    duration_from_units,
    parse_duration,
    parse_holiday,
    parse_hours,
    parse_weekdays,
    zone,
)
from helpdeskd.rules.syntax import (
    ACTIONS,
    TIME_ACTIONS,
    RulesError,
    RulesFile,
    describe_type,
    did_you_mean,
    read_action_items,
    read_conditions,
    read_routing_action,
    read_ticket_filter,
    read_time_action,
)
from helpdeskd.vocab import STATES

RULE_KEYS = ("name", "description", "on", "when", "then", "stop", "after", "sla")
_TIME_KEYS = frozenset({"name", "description", "after", "when", "then"})
_SLA_KEYS = frozenset({"name", "description", "when", "sla"})
AFTER_KEYS = ("state", "minutes", "hours", "days", "weeks", "business_hours", "since")
SLA_KEYS = ("first_response", "resolution", "business_hours", "warn_at", "escalate")
CALENDAR_KEYS = ("timezone", "hours", "holidays")
KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_WEEKDAY_WORDS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def template_names(folder: Path) -> set[str]:
    """The names rules may use for templates: ``ack``, ``replies/thanks`` …"""
    names = set()
    for base in (folder, DEFAULT_TEMPLATES):
        if base.is_dir():
            for path in base.rglob("*.txt.j2"):
                names.add(str(path.relative_to(base))[: -len(".txt.j2")])
    return names


def known(config: Config) -> Known:
    """What CONFIG and its templates define that rules may name."""
    queues = {queue for agent in config.agents for queue in agent.queues}
    return Known(
        templates=template_names(config.paths.templates),
        agents={agent.email for agent in config.agents},
        queues=queues,
        mailboxes={m.name for m in config.mailboxes},
    )


def load(config: Config) -> RuleSet:
    """Load and validate CONFIG's rules folder; RulesError (a ConfigError) names file:line."""
    return load_rules(config.paths.rules, known=known(config), timezone=config.service.timezone)


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
    """Collect the rules of one folder file by file, checking what spans rules and files."""

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
        f = RulesFile(path, self.known)
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

    def load_calendar(self, f: RulesFile, document: dict[Any, Any]) -> None:
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
                    f.fail(item_at, f"holiday {describe_type(item)} is not a date 'YYYY-MM-DD'")
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
        self, f: RulesFile, raw: object, line: int
    ) -> tuple[tuple[tuple[int, int], ...], ...]:
        spec = f.mapping(raw, "calendar hours", line)
        days: list[tuple[tuple[int, int], ...] | None] = [None] * 7
        for key, value in spec.items():
            at = f.key_line(spec, key, line)
            if not isinstance(key, str):
                f.fail(at, f"calendar hours: {describe_type(key)} is not a weekday")
            try:
                numbers = parse_weekdays(key)
            except ValueError as exc:
                f.fail(at, f"calendar hours: {exc}{did_you_mean(key.lower(), _WEEKDAY_WORDS)}")
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if not isinstance(item, str):
                        f.fail(
                            f.item_line(value, i, at),
                            f"calendar hours {key}: write ranges as quoted strings like "
                            f"'09:00-17:00', got {describe_type(item)}",
                        )
            elif not isinstance(value, str):
                f.fail(
                    at,
                    f"calendar hours {key}: write '09:00-17:00' (quoted), a list of ranges "
                    f"or closed, got {describe_type(value)}",
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

    def load_rule(self, f: RulesFile, item: object, line: int) -> None:
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
        self, f: RulesFile, rule: dict[Any, Any], name: str, line: int, description: str
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
            conditions = read_conditions(f, rule["when"], at)
        stop_key: bool | None = None
        if "stop" in rule:
            stop_key = f.boolean(rule["stop"], "stop", f.key_line(rule, "stop", line))
        actions: list[Action] = []
        stop_action = False
        if "then" in rule:
            at = f.key_line(rule, "then", line)
            for action_name, value, action_line in read_action_items(f, rule["then"], ACTIONS, at):
                if action_name == "stop":
                    if not f.boolean(True if value is None else value, "stop", action_line):
                        f.fail(action_line, "stop: false as an action means nothing; remove it")
                    stop_action = True
                    continue
                actions.extend(read_routing_action(f, action_name, value, action_line))
        if stop_key is False and stop_action:
            f.fail(line, "stop: false contradicts the stop action")
        stop = bool(stop_key) or stop_action
        if not actions and not stop:
            f.fail(line, "a rule needs then (a list of actions) or stop: true")
        return Rule(name, f.name, line, conditions, tuple(actions), stop, on, description)

    def load_time_rule(
        self, f: RulesFile, rule: dict[Any, Any], name: str, line: int, description: str
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
                f"{units[0]} must be a positive whole number, got {describe_type(amount)}",
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
                    f"since: no earlier time rule named {since!r}{did_you_mean(since, earlier)}",
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
        for action_name, value, action_line in read_action_items(
            f, rule["then"], TIME_ACTIONS, then_line
        ):
            actions.extend(read_time_action(f, action_name, value, action_line))
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
            when=read_ticket_filter(f, rule, line),
            file=f.name,
            line=line,
            description=description,
        )
        self.time_rule_at[name] = (result, line)
        return result

    def load_sla(
        self, f: RulesFile, rule: dict[Any, Any], name: str, line: int, description: str
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
                        f"{key} must be a duration like '4h' or '2d', got {describe_type(raw)}",
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
                    f"warn_at must be a share between 0 and 1, like 0.8, got {describe_type(raw)}",
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
            when=read_ticket_filter(f, rule, line),
            file=f.name,
            line=line,
            description=description,
        )
