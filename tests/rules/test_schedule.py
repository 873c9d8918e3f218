"""Scheduling maths (rules/README.md "Time rules", "SLAs", "Durations", "Calendar"): business
time across nights, weekends, holidays and Europe/Berlin's DST changes, due times of time rules,
SLA deadlines, and next_run — all with the clock passed in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from helpdeskd.rules.loader import load_rules
from helpdeskd.rules.model import Known
from helpdeskd.rules.schedule import (
    DAYS_KEPT,
    BusinessCalendar,
    Duration,
    Sla,
    SlaDeadline,
    TicketFacts,
    TicketFilter,
    TimeAction,
    TimeRule,
    due_time,
    next_run,
    parse_clock,
    parse_duration,
    parse_holiday,
    parse_hours,
    parse_weekdays,
    select_sla,
    sla_deadlines,
)

ROOT = Path(__file__).resolve().parents[2]
BERLIN = ZoneInfo("Europe/Berlin")
CAL = BusinessCalendar.from_spec(
    "Europe/Berlin", {"mon-fri": "09:00-17:00"}, ["2025-12-25", "2025-12-26", "2026-01-01"]
)
ALWAYS = BusinessCalendar.from_spec("Europe/Berlin", {"mon-sun": "00:00-24:00"})
NIGHTS = BusinessCalendar.from_spec("Europe/Berlin", {"mon-sun": "00:00-06:00"})
UTC_CAL = BusinessCalendar()
H = timedelta(hours=1)
M = timedelta(minutes=1)


def b(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """Return a wall-clock time in Berlin."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def u(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", Duration(30, "m")),
        ("4h", Duration(4, "h")),
        ("2d", Duration(2, "d")),
        ("1w", Duration(1, "w")),
        (" 90M ", Duration(90, "m")),
        ("12 h", Duration(12, "h")),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected
    assert str(expected) == f"{expected.amount}{expected.unit}"


@pytest.mark.parametrize("text", ["4", "h", "4 hours", "1.5h", "-2d", "0h", "4y", "1h30m", ""])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "end", "expected"),
    [("00:00", False, 0), ("09:30", False, 570), ("23:59", False, 1439), ("24:00", True, 1440)],
)
def test_parse_clock(text: str, end: bool, expected: int) -> None:
    assert parse_clock(text, end=end) == expected


@pytest.mark.parametrize(
    ("text", "end"),
    [("9:00", False), ("24:00", False), ("12:60", False), ("25:00", True), ("0900", False)],
)
def test_parse_clock_refuses(text: str, end: bool) -> None:
    with pytest.raises(ValueError):
        parse_clock(text, end=end)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("09:00-17:00", ((540, 1020),)),
        ("09:00 - 17:00", ((540, 1020),)),
        ("closed", ()),
        (["13:00-17:00", "09:00-12:00"], ((540, 720), (780, 1020))),
        (["09:00-12:00", "12:00-17:00"], ((540, 720), (720, 1020))),
        ("22:00-24:00", ((1320, 1440),)),
        ([], ()),
    ],
)
def test_parse_hours(spec: str | list[str], expected: tuple[tuple[int, int], ...]) -> None:
    assert parse_hours(spec) == expected


@pytest.mark.parametrize(
    "spec", ["09:00", "17:00-09:00", "09:00-09:00", ["09:00-12:00", "11:00-13:00"], "9-5"]
)
def test_parse_hours_refuses(spec: str | list[str]) -> None:
    with pytest.raises(ValueError):
        parse_hours(spec)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("mon", (0,)),
        ("Sunday", (6,)),
        ("mon-fri", (0, 1, 2, 3, 4)),
        ("sat-sun", (5, 6)),
        ("monday-wednesday", (0, 1, 2)),
    ],
)
def test_parse_weekdays(key: str, expected: tuple[int, ...]) -> None:
    assert parse_weekdays(key) == expected


@pytest.mark.parametrize("key", ["mo", "fri-mon", "weekdays", "mon-"])
def test_parse_weekdays_refuses(key: str) -> None:
    with pytest.raises(ValueError):
        parse_weekdays(key)


def test_parse_holiday() -> None:
    assert parse_holiday("2025-12-25") == date(2025, 12, 25)
    assert parse_holiday(date(2025, 12, 25)) == date(2025, 12, 25)
    for bad in ("2025-2-3", "25.12.2025", "2025-13-01"):
        with pytest.raises(ValueError):
            parse_holiday(bad)
    with pytest.raises(ValueError, match="has a time"):
        parse_holiday(datetime(2025, 12, 25, 10, 0))


def test_calendar_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        BusinessCalendar("Europe/Nowhere")
    with pytest.raises(ValueError, match="never open"):
        BusinessCalendar("UTC", ((),) * 7)
    with pytest.raises(ValueError, match="seven weekdays"):
        BusinessCalendar("UTC", ((),) * 5)
    with pytest.raises(ValueError, match="given twice"):
        BusinessCalendar.from_spec("UTC", {"mon-fri": "09:00-17:00", "mon": "10:00-11:00"})


# --- the calendar -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (b(2026, 3, 25, 9, 0), True),  # opening minute
        (b(2026, 3, 25, 8, 59), False),
        (b(2026, 3, 25, 16, 59), True),
        (b(2026, 3, 25, 17, 0), False),  # closing is exclusive
        (u(2026, 3, 25, 8, 0), True),  # 09:00 CET, given in UTC
        (u(2026, 3, 30, 7, 0), True),  # 09:00 CEST, after spring-forward
        (u(2026, 3, 30, 6, 30), False),  # 08:30 CEST
        (u(2026, 10, 26, 8, 0), True),  # 09:00 CET, after fall-back
        (u(2026, 10, 26, 7, 30), False),  # 08:30 CET
        (b(2026, 3, 28, 12, 0), False),  # Saturday
        (b(2026, 3, 29, 12, 0), False),  # Sunday
        (b(2025, 12, 25, 10, 0), False),  # holiday
        (b(2025, 12, 24, 10, 0), True),
        (b(2026, 1, 1, 10, 0), False),
    ],
)
def test_is_open(moment: datetime, expected: bool) -> None:
    assert CAL.is_open(moment) is expected


def test_day_intervals_are_remembered_within_bounds() -> None:
    calendar = BusinessCalendar.from_spec("Europe/Berlin", {"mon-fri": "09:00-17:00"})
    monday = date(2026, 3, 30)  # the first Monday of summer time
    first = calendar.day_intervals(monday)
    assert first == ((datetime(2026, 3, 30, 7, tzinfo=UTC), datetime(2026, 3, 30, 15, tzinfo=UTC)),)
    assert calendar.day_intervals(monday) is first
    assert CAL.day_intervals(date(2025, 12, 25)) == ()  # a holiday
    days = [monday + timedelta(days=n) for n in range(DAYS_KEPT + 10)]
    for day in days:
        calendar.day_intervals(day)
    assert len(calendar._days) <= DAYS_KEPT
    fresh = BusinessCalendar.from_spec("Europe/Berlin", {"mon-fri": "09:00-17:00"})
    assert [calendar.day_intervals(d) for d in days[:20]] == [
        fresh.day_intervals(d) for d in days[:20]
    ]


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        (b(2026, 3, 25, 10), 2 * H, b(2026, 3, 25, 12)),
        (b(2026, 3, 25, 10), 7 * H, b(2026, 3, 25, 17)),  # ends at closing, not next morning
        (b(2026, 3, 25, 10), 8 * H, b(2026, 3, 26, 10)),
        (b(2026, 3, 25, 8), 30 * M, b(2026, 3, 25, 9, 30)),  # before opening
        (b(2026, 3, 25, 18), 1 * H, b(2026, 3, 26, 10)),  # after closing
        (b(2026, 3, 23, 9), 40 * H, b(2026, 3, 27, 17)),  # a full week
        (b(2026, 3, 28, 12), 1 * H, b(2026, 3, 30, 10)),  # Saturday
        # Spring-forward (Sun 29 March 2026) falls in the weekend: still Monday 10:00 local.
        (b(2026, 3, 27, 16), 2 * H, b(2026, 3, 30, 10)),
        (u(2026, 3, 27, 15), 2 * H, u(2026, 3, 30, 8)),
        # Fall-back (Sun 25 October 2026).
        (b(2026, 10, 23, 16), 2 * H, b(2026, 10, 26, 10)),
        (u(2026, 10, 23, 14), 2 * H, u(2026, 10, 26, 9)),
        # Christmas: 25 and 26 are holidays, then the weekend.
        (b(2025, 12, 24, 16), 2 * H, b(2025, 12, 29, 10)),
        (b(2025, 12, 31, 16), 2 * H, b(2026, 1, 2, 10)),  # New Year's Day
        (b(2026, 3, 28, 12), timedelta(0), b(2026, 3, 28, 12)),  # nothing to add
    ],
)
def test_add_business_time(start: datetime, duration: timedelta, expected: datetime) -> None:
    result = CAL.add_business_time(start, duration)
    assert result == expected
    assert result.tzinfo is start.tzinfo  # expressed in the start's time zone
    assert CAL.business_time_between(start, result) == duration


@pytest.mark.parametrize(
    ("calendar", "start", "duration", "expected"),
    [
        # 24 open hours are 24 real hours, even across the missing hour …
        (ALWAYS, b(2026, 3, 28, 12), 24 * H, b(2026, 3, 29, 13)),
        # … and the repeated one.
        (ALWAYS, b(2026, 10, 24, 12), 24 * H, b(2026, 10, 25, 11)),
        # Night shift 00:00-06:00: the spring-forward night has 5 open hours, fall-back 7.
        (NIGHTS, b(2026, 3, 29, 0), 5 * H, b(2026, 3, 29, 6)),
        (NIGHTS, b(2026, 3, 29, 0), 6 * H, b(2026, 3, 30, 1)),
        (NIGHTS, b(2026, 10, 25, 0), 7 * H, b(2026, 10, 25, 6)),
    ],
)
def test_add_business_time_across_dst(
    calendar: BusinessCalendar, start: datetime, duration: timedelta, expected: datetime
) -> None:
    assert calendar.add_business_time(start, duration) == expected


@pytest.mark.parametrize(
    ("calendar", "first", "second", "expected"),
    [
        (CAL, b(2026, 3, 25, 10), b(2026, 3, 25, 12), 2 * H),
        (CAL, b(2026, 3, 25, 12), b(2026, 3, 25, 10), -2 * H),
        (CAL, b(2026, 3, 25, 18), b(2026, 3, 26, 8), timedelta(0)),
        (CAL, b(2026, 3, 27, 16), b(2026, 3, 30, 10), 2 * H),
        (CAL, b(2026, 3, 23, 0), b(2026, 3, 30, 0), 40 * H),
        (CAL, b(2025, 12, 22, 0), b(2025, 12, 29, 0), 24 * H),  # Christmas week
        (ALWAYS, b(2026, 3, 29, 0), b(2026, 3, 30, 0), 23 * H),
        (ALWAYS, b(2026, 10, 25, 0), b(2026, 10, 26, 0), 25 * H),
        (ALWAYS, b(2026, 3, 28, 0), b(2026, 3, 29, 0), 24 * H),
        (NIGHTS, b(2026, 3, 29, 0), b(2026, 3, 29, 12), 5 * H),
        (NIGHTS, b(2026, 10, 25, 0), b(2026, 10, 25, 12), 7 * H),
    ],
)
def test_business_time_between(
    calendar: BusinessCalendar, first: datetime, second: datetime, expected: timedelta
) -> None:
    assert calendar.business_time_between(first, second) == expected


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (b(2026, 3, 24, 11), 2, b(2026, 3, 26, 11)),  # Tuesday → Thursday
        (b(2026, 3, 27, 11), 1, b(2026, 3, 30, 11)),  # Friday → Monday, across spring-forward
        (b(2026, 10, 23, 11), 1, b(2026, 10, 26, 11)),  # … and fall-back
        (b(2026, 3, 28, 10), 1, b(2026, 3, 31, 9)),  # Saturday counts from Monday's opening
        (b(2026, 3, 28, 10), 0, b(2026, 3, 30, 9)),
        (b(2026, 3, 25, 17), 1, b(2026, 3, 27, 9)),  # at closing: from the next opening
        (b(2025, 12, 24, 11), 1, b(2025, 12, 29, 11)),  # over Christmas
        (b(2026, 3, 23, 9), 5, b(2026, 3, 30, 9)),
    ],
)
def test_add_business_days(start: datetime, days: int, expected: datetime) -> None:
    assert CAL.add_business_days(start, days) == expected


@pytest.mark.parametrize(
    ("start", "duration", "business", "expected"),
    [
        # Calendar days are wall-clock days in the calendar's zone: 95 real hours here …
        (b(2026, 3, 28, 10), Duration(4, "d"), False, b(2026, 4, 1, 10)),
        (u(2026, 3, 28, 9), Duration(4, "d"), False, u(2026, 4, 1, 8)),
        # … and 25 here.
        (b(2026, 10, 24, 10), Duration(1, "d"), False, b(2026, 10, 25, 10)),
        (b(2026, 3, 28, 10), Duration(1, "w"), False, b(2026, 4, 4, 10)),
        # Hours and minutes are elapsed time.
        (b(2026, 3, 29, 1), Duration(3, "h"), False, b(2026, 3, 29, 5)),
        (b(2026, 10, 25, 1), Duration(3, "h"), False, u(2026, 10, 25, 2)),
        (b(2026, 3, 25, 10), Duration(90, "m"), False, b(2026, 3, 25, 11, 30)),
        # Business time.
        (b(2026, 3, 27, 15), Duration(4, "h"), True, b(2026, 3, 30, 11)),
        (b(2026, 3, 24, 11), Duration(2, "d"), True, b(2026, 3, 26, 11)),
        (b(2026, 3, 24, 11), Duration(1, "w"), True, b(2026, 3, 31, 11)),
        (b(2026, 3, 25, 16, 30), Duration(45, "m"), True, b(2026, 3, 26, 9, 15)),
    ],
)
def test_calendar_add(
    start: datetime, duration: Duration, business: bool, expected: datetime
) -> None:
    assert CAL.add(start, duration, business=business) == expected


def test_next_open() -> None:
    assert CAL.next_open(b(2026, 3, 28, 12)) == b(2026, 3, 30, 9)
    assert CAL.next_open(b(2026, 3, 25, 12)) == b(2026, 3, 25, 12)
    assert CAL.next_open(b(2025, 12, 24, 17)) == b(2025, 12, 29, 9)


NAIVE = datetime(2026, 3, 25, 10, 0)
AWARE = u(2026, 3, 25, 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda: CAL.is_open(NAIVE),
        lambda: CAL.add_business_time(NAIVE, H),
        lambda: CAL.business_time_between(NAIVE, AWARE),
        lambda: CAL.business_time_between(AWARE, NAIVE),
        lambda: CAL.add_business_days(NAIVE, 1),
        lambda: CAL.add(NAIVE, Duration(1, "d")),
        lambda: CAL.next_open(NAIVE),
        lambda: TicketFacts("solved", NAIVE),
        lambda: TicketFacts("solved", AWARE, fired={"x": NAIVE}),
        lambda: sla_deadlines(Sla("s", resolution=Duration(1, "h")), NAIVE, None, CAL),
        lambda: sla_deadlines(Sla("s", resolution=Duration(1, "h")), AWARE, NAIVE, CAL),
        lambda: next_run(NAIVE, []),
        lambda: next_run(AWARE, [NAIVE]),
    ],
)
def test_naive_datetimes_are_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call()


# --- time rules -------------------------------------------------------------------------------

CLOSE = TimeRule("close", "solved", Duration(4, "d"), (TimeAction("close"),))
REMIND = TimeRule(
    "remind",
    "pending",
    Duration(3, "d"),
    (TimeAction("remind", "replies/pending-reminder"),),
    when=TicketFilter(channel=frozenset({"email"})),
)
SOLVE = TimeRule("solve", "pending", Duration(4, "d"), (TimeAction("solve"),), since="remind")
BUSINESS = TimeRule(
    "nudge", "open", Duration(2, "d"), (TimeAction("escalate", "agents"),), business_hours=True
)
T = u(2026, 3, 2, 12)  # a Monday


@pytest.mark.parametrize(
    ("rule", "ticket", "expected"),
    [
        (CLOSE, TicketFacts("solved", T), u(2026, 3, 6, 12)),
        (CLOSE, TicketFacts("open", T), None),
        (CLOSE, TicketFacts("solved", T, fired={"close": T + 4 * 24 * H}), None),
        # Fired in an earlier stay in solved: this stay counts afresh.
        (CLOSE, TicketFacts("solved", T, fired={"close": T - 24 * H}), u(2026, 3, 6, 12)),
        (REMIND, TicketFacts("pending", T), u(2026, 3, 5, 12)),
        (REMIND, TicketFacts("pending", T, channel="heroku"), None),
        (REMIND, TicketFacts("pending", T, channel="EMAIL"), u(2026, 3, 5, 12)),
        (SOLVE, TicketFacts("pending", T), None),  # no reminder yet
        (
            SOLVE,
            TicketFacts("pending", T, fired={"remind": T + 3 * 24 * H + 5 * M}),
            u(2026, 3, 9, 12, 5),
        ),
        (SOLVE, TicketFacts("pending", T, fired={"remind": T - H}), None),  # an old reminder
        (BUSINESS, TicketFacts("open", u(2026, 3, 27, 10)), u(2026, 3, 31, 10)),
        (
            dataclasses.replace(CLOSE, when=TicketFilter(tags=frozenset({"keep"}))),
            TicketFacts("solved", T, tags=frozenset({"Keep", "x"})),
            u(2026, 3, 6, 12),
        ),
        (
            dataclasses.replace(CLOSE, when=TicketFilter(plan=frozenset({"gold"}))),
            TicketFacts("solved", T),
            None,
        ),
    ],
)
def test_due_time(rule: TimeRule, ticket: TicketFacts, expected: datetime | None) -> None:
    assert due_time(rule, ticket, UTC_CAL) == expected


def test_due_time_counts_calendar_days_in_the_calendar_zone() -> None:
    berlin = BusinessCalendar("Europe/Berlin")
    solved = TicketFacts("solved", b(2026, 3, 27, 10))  # Friday before spring-forward
    assert due_time(CLOSE, solved, berlin) == b(2026, 3, 31, 10)
    assert due_time(CLOSE, solved, UTC_CAL) == b(2026, 3, 31, 11)  # 96 real hours


def test_ticket_filter_describe() -> None:
    assert TicketFilter().describe() == "any ticket"
    assert TicketFilter(
        priority=frozenset({"high", "urgent"}), tags=frozenset({"vip"})
    ).describe() == ("priority in [high, urgent] and tags has vip")


# --- SLAs -------------------------------------------------------------------------------------

URGENT = Sla(
    "sla-urgent",
    first_response=Duration(1, "h"),
    resolution=Duration(8, "h"),
    warn_at=0.5,
    when=TicketFilter(priority=frozenset({"urgent"})),
)
HIGH = Sla(
    "sla-high",
    first_response=Duration(4, "h"),
    resolution=Duration(2, "d"),
    business_hours=True,
    when=TicketFilter(priority=frozenset({"high"})),
)
ANY = Sla("sla-any", resolution=Duration(5, "d"))


@pytest.mark.parametrize(
    ("sla", "created", "responded", "expected"),
    [
        (
            URGENT,
            u(2026, 3, 25, 10),
            None,
            [
                ("first_response", u(2026, 3, 25, 10, 30), u(2026, 3, 25, 11)),
                ("resolution", u(2026, 3, 25, 14), u(2026, 3, 25, 18)),
            ],
        ),
        (
            URGENT,
            u(2026, 3, 25, 10),
            u(2026, 3, 25, 10, 20),
            [("resolution", u(2026, 3, 25, 14), u(2026, 3, 25, 18))],
        ),
        # Business time: Friday 15:00 + 4h is Monday 11:00 (after spring-forward); the warning at
        # 80% is 3h12m of business time in; resolution 2 business days is Tuesday 15:00 and its
        # span 16 open hours, so the warning comes 12h48m in.
        (
            HIGH,
            b(2026, 3, 27, 15),
            None,
            [
                ("first_response", b(2026, 3, 30, 10, 12), b(2026, 3, 30, 11)),
                ("resolution", b(2026, 3, 31, 11, 48), b(2026, 3, 31, 15)),
            ],
        ),
        # Created on a Saturday: clocks start at Monday's opening.
        (
            HIGH,
            b(2026, 3, 28, 11),
            None,
            [
                ("first_response", b(2026, 3, 30, 12, 12), b(2026, 3, 30, 13)),
                # Two open days after Monday's opening: Wednesday 09:00 (= Tuesday 17:00).
                ("resolution", b(2026, 3, 31, 13, 48), b(2026, 4, 1, 9)),
            ],
        ),
        # Calendar days in Berlin: 5 days from Wednesday 11:00 CET is Monday 11:00 CEST, 119
        # real hours; 80% of them is 95h12m.
        (ANY, u(2026, 3, 25, 10), None, [("resolution", u(2026, 3, 29, 9, 12), u(2026, 3, 30, 9))]),
    ],
)
def test_sla_deadlines(
    sla: Sla,
    created: datetime,
    responded: datetime | None,
    expected: list[tuple[str, datetime, datetime]],
) -> None:
    deadlines = sla_deadlines(sla, created, responded, CAL)
    assert [(d.target, d.warn_at, d.breach_at) for d in deadlines] == expected
    assert all(isinstance(d, SlaDeadline) and d.sla == sla.name for d in deadlines)


def test_sla_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="first_response, resolution or both"):
        Sla("empty")
    with pytest.raises(ValueError, match="warn_at"):
        Sla("late", resolution=Duration(1, "h"), warn_at=1.0)


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("urgent", "sla-urgent"), ("high", "sla-high"), ("normal", "sla-any"), ("low", "sla-any")],
)
def test_select_sla_first_match_wins(priority: str, expected: str) -> None:
    ticket = TicketFacts("open", T, priority=priority)
    sla = select_sla((URGENT, HIGH, ANY), ticket)
    assert sla is not None and sla.name == expected
    assert select_sla((URGENT, HIGH), TicketFacts("open", T)) is None


# --- next_run ---------------------------------------------------------------------------------

NOW = u(2026, 3, 25, 10)


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], NOW + 5 * M),  # nothing due: look again after the idle interval
        ([None, None], NOW + 5 * M),
        ([NOW + 2 * M, NOW + 1 * M, None], NOW + 1 * M),
        ([NOW + H], NOW + 5 * M),  # never sleep past the idle interval
        ([NOW - H, NOW + M], NOW),  # overdue: run now
        ([b(2026, 3, 25, 11, 3)], NOW + 3 * M),  # another zone, same instant maths
    ],
)
def test_next_run(jobs: list[datetime | None], expected: datetime) -> None:
    result = next_run(NOW, jobs)
    assert result == expected
    assert result.tzinfo is NOW.tzinfo


def test_next_run_idle_interval() -> None:
    assert next_run(NOW, [NOW + H], idle=timedelta(days=1)) == NOW + H
    assert next_run(NOW, iter([]), idle=timedelta(seconds=30)) == NOW + timedelta(seconds=30)


def test_shipped_time_rules_with_an_injected_clock() -> None:
    """Drive the shipped rules with a fake clock, as the scheduler task will."""
    known = Known(
        templates={"ack", "replies/thanks", "replies/restart-database", "replies/pending-reminder"}
    )
    rules = load_rules(ROOT / "rules", known=known)
    pending_since = u(2026, 3, 2, 12)
    ticket = TicketFacts("pending", pending_since)
    now = pending_since
    fired: list[tuple[datetime, str, str]] = []
    while now < pending_since + timedelta(days=30):
        dues = {rule.name: due_time(rule, ticket, rules.calendar) for rule in rules.time_rules}
        now = next_run(now, dues.values(), idle=timedelta(days=1))
        for rule in rules.time_rules:
            due = dues[rule.name]
            if due is None or due > now:
                continue
            fired.append((now, rule.name, ", ".join(str(a) for a in rule.actions)))
            record = {**ticket.fired, rule.name: now}
            names = {a.name for a in rule.actions}
            if "solve" in names or "close" in names:
                state = "closed" if "close" in names else "solved"
                ticket = dataclasses.replace(ticket, state=state, state_since=now, fired=record)
                break
            ticket = dataclasses.replace(ticket, fired=record)
    assert fired == [
        (u(2026, 3, 5, 12), "remind-pending-after-3-days", "remind: replies/pending-reminder"),
        (u(2026, 3, 9, 12), "solve-pending-after-reminder", "solve, tags: +auto-solved"),
        (u(2026, 3, 13, 12), "close-solved-after-4-days", "close, tags: +auto-closed"),
    ]
    assert ticket.state == "closed"
