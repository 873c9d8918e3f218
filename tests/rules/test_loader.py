"""Loading rules/*.yaml (rules/README.md "YAML notes", "Errors"): YAML 1.2, file order, the
calendar, time rules and SLAs, errors at the exact file:line, and the shipped rules folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.errors import ConfigError
from helpdeskd.rules.evaluate import evaluate
from helpdeskd.rules.loader import load_rules
from helpdeskd.rules.model import HeaderCondition, Known, RegexCondition, RuleSet, ValueCondition
from helpdeskd.rules.schedule import Duration, TicketFilter
from helpdeskd.rules.syntax import RulesError
from tests.rules.rulefiles import KNOWN, ROOT, facts, load, load_error, write

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

LOAD_ERROR_CASES = [
    (
        "unknown rule key",
        "- name: r\n  wen: {channel: email}\n  then: [{queue: billing}]\n",
        "10.yaml:2: unknown rule key 'wen' (did you mean 'when'?)",
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
        "no actions",
        "- name: r\n  when: {channel: email}\n",
        "10.yaml:1: rule 'r': a rule needs then (a list of actions) or stop: true",
    ),
    (
        "bad on",
        "- name: r\n  on: replies\n  then: [stop]\n",
        "10.yaml:2: rule 'r': on: unknown value 'replies' (did you mean 'reply'?) "
        "(one of new, reply, any)",
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
    ("text", "expected"),
    [case[1:] for case in LOAD_ERROR_CASES],
    ids=[case[0] for case in LOAD_ERROR_CASES],
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


# --- the shipped rules ------------------------------------------------------------------------


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
