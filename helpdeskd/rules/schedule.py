"""Business time and scheduling maths for time rules and SLAs: pure functions, injected clock.

Nothing here reads a clock, a file or the database. The scheduler task passes ``now`` and the
tickets' facts in and gets due times out, like arq's cron maths; the processor acts on them.

Time is counted two ways (rules/README.md, "Durations"):

- **Calendar time** (``business_hours: false``, the default): minutes and hours are elapsed time;
  days and weeks are wall-clock days in the calendar's time zone, so "4 days after Saturday 10:00"
  is Wednesday 10:00 even when a DST change falls between (95 or 97 hours, not 96).
- **Business time** (``business_hours: true``): minutes and hours count only open time, each open
  interval as long as it really lasts (a 00:00-24:00 day is 23 hours on a spring-forward Sunday);
  days count open days — Tuesday 11:00 plus 2 business days is Thursday 11:00, a Saturday mail
  plus 1 business day is Tuesday 09:00 — and a week is as many open days as the calendar opens in
  a week.

Every datetime in and out is timezone-aware; a naive one is refused with ValueError. Results are
expressed in the time zone of the datetime they were computed from.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Unit = Literal["m", "h", "d", "w"]
SlaTarget = Literal["first_response", "resolution"]
TimeActionName = Literal["close", "solve", "remind", "escalate", "tags", "priority"]
TIME_ACTIONS: tuple[str, ...] = get_args(TimeActionName)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LONG_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKDAY_NUMBERS: Mapping[str, int] = MappingProxyType(
    {name: i for names in (WEEKDAYS, _LONG_WEEKDAYS) for i, name in enumerate(names)}
)
DAY_MINUTES = 24 * 60
# A calendar that needs more than ten years to supply the open time asked for is broken, not slow.
MAX_DAYS = 3660
DAYS_KEPT = 4096  # days whose open intervals a calendar remembers (more than MAX_DAYS)

Interval = tuple[int, int]  # [start, end) in minutes after local midnight; end may be 1440
NINE_TO_FIVE: tuple[tuple[Interval, ...], ...] = ((((9 * 60, 17 * 60),),) * 5) + ((), ())

_DURATION = re.compile(r"\s*(\d+)\s*([mhdw])\s*", re.IGNORECASE)
_CLOCK = re.compile(r"(\d\d):(\d\d)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_UNIT_NAMES = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_UNITS: Mapping[str, Unit] = {"m": "m", "h": "h", "d": "d", "w": "w"}


def aware(value: datetime, what: str = "datetime") -> datetime:
    """Return VALUE if it carries a time zone; raise ValueError for a naive datetime."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value


def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone NAME; raise ValueError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name like 'Europe/Berlin')"
        ) from None


# --- durations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    """A rule's duration as written: an amount and a unit (m, h, d or w)."""

    amount: int
    unit: Unit

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError(f"a duration must be positive, got {self.amount}{self.unit}")
        if self.unit not in _UNIT_NAMES:
            raise ValueError(f"unknown duration unit {self.unit!r}")

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"

    @property
    def elapsed(self) -> timedelta:
        """Return the duration as elapsed time (a day as 24 hours: for display and estimates)."""
        minutes = {"m": 1, "h": 60, "d": DAY_MINUTES, "w": 7 * DAY_MINUTES}[self.unit]
        return timedelta(minutes=self.amount * minutes)


def parse_duration(text: str) -> Duration:
    """Parse '30m', '4h', '2d' or '1w'; raise ValueError saying what is wrong."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a whole number and a unit, "
            "like '30m', '4h', '2d' or '1w'"
        )
    return Duration(int(match.group(1)), _UNITS[match.group(2).lower()])


def duration_from_units(amount: int, unit_name: str) -> Duration:
    """Build a Duration from ``days: 4`` style keys (minutes, hours, days, weeks)."""
    for unit, name in _UNIT_NAMES.items():
        if name == unit_name:
            return Duration(amount, _UNITS[unit])
    raise ValueError(f"unknown unit {unit_name!r}")


# --- calendar specs ----------------------------------------------------------------------------


def parse_clock(text: str, *, end: bool = False) -> int:
    """Parse 'HH:MM' into minutes after midnight; '24:00' is allowed as an end."""
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time HH:MM (two digits each, like '09:00')")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if end and hours == 24 and minutes == 0:
        return DAY_MINUTES
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def parse_hours(spec: str | Sequence[str]) -> tuple[Interval, ...]:
    """Parse one day's hours: 'closed', '09:00-17:00' or a list of such ranges."""
    ranges = [spec] if isinstance(spec, str) else list(spec)
    intervals: list[Interval] = []
    for text in ranges:
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a range like '09:00-17:00'")
        if text.strip().lower() == "closed":
            if len(ranges) > 1:
                raise ValueError("'closed' cannot be combined with opening hours")
            continue
        start_text, dash, end_text = text.partition("-")
        if not dash:
            raise ValueError(f"{text!r} is not a range like '09:00-17:00' (or 'closed')")
        start, stop = parse_clock(start_text.strip()), parse_clock(end_text.strip(), end=True)
        if stop <= start:
            raise ValueError(
                f"{text!r}: the end must be after the start (split hours across midnight "
                "into '22:00-24:00' and '00:00-06:00' on the next day)"
            )
        intervals.append((start, stop))
    intervals.sort()
    for (_, first_end), (second_start, _) in itertools.pairwise(intervals):
        if second_start < first_end:
            raise ValueError(f"ranges {ranges!r} overlap")
    return tuple(intervals)


def parse_weekdays(key: str) -> tuple[int, ...]:
    """Parse 'mon', 'monday' or a range 'mon-fri' into weekday numbers (Monday is 0)."""
    first, dash, last = key.strip().lower().partition("-")
    names = [first, last] if dash else [first]
    for name in names:
        if name not in WEEKDAY_NUMBERS:
            raise ValueError(f"unknown weekday {name!r} (mon, tue, wed, thu, fri, sat, sun)")
    start = WEEKDAY_NUMBERS[first]
    stop = WEEKDAY_NUMBERS[last] if dash else start
    if stop < start:
        raise ValueError(f"weekday range {key!r} runs backwards (write 'mon-fri')")
    return tuple(range(start, stop + 1))


def parse_holiday(value: str | date) -> date:
    """Parse a holiday 'YYYY-MM-DD' (a date from unquoted YAML is accepted as it is)."""
    if isinstance(value, datetime):
        raise ValueError(f"holiday {value.isoformat()!r} has a time: write the date 'YYYY-MM-DD'")
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _DATE.fullmatch(value.strip()):
        raise ValueError(f"holiday {value!r} is not a date 'YYYY-MM-DD'")
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValueError(f"holiday {value!r} is not a date: {exc}") from None


# --- the calendar ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessCalendar:
    """Opening hours per weekday (Monday first) and holidays, in one time zone."""

    timezone: str = "UTC"
    hours: tuple[tuple[Interval, ...], ...] = NINE_TO_FIVE
    holidays: frozenset[date] = frozenset()
    tz: ZoneInfo = field(init=False, repr=False, compare=False)
    # day -> its open intervals: every rule with business_hours asks for today's, per message
    _days: dict[date, tuple[tuple[datetime, datetime], ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "tz", zone(self.timezone))
        if len(self.hours) != 7:
            raise ValueError("hours must give seven weekdays, Monday first")
        for day in self.hours:
            last = 0
            for start, stop in day:
                if not (last <= start < stop <= DAY_MINUTES):
                    raise ValueError(f"bad opening hours {day!r}")
                last = stop
        if not any(self.hours):
            raise ValueError("the calendar is never open: give at least one weekday hours")

    @classmethod
    def from_spec(
        cls,
        timezone: str = "UTC",
        hours: Mapping[str, str | Sequence[str]] | None = None,
        holidays: Iterable[str | date] = (),
    ) -> BusinessCalendar:
        """Build a calendar from the strings of a rules file: {'mon-fri': '09:00-17:00'}."""
        week: tuple[tuple[Interval, ...], ...] = NINE_TO_FIVE
        if hours is not None:
            days: list[tuple[Interval, ...] | None] = [None] * 7
            for key, spec in hours.items():
                for number in parse_weekdays(key):
                    if days[number] is not None:
                        raise ValueError(f"{_LONG_WEEKDAYS[number]} is given twice")
                    days[number] = parse_hours(spec)
            week = tuple(day or () for day in days)
        return cls(timezone, week, frozenset(parse_holiday(h) for h in holidays))

    @property
    def open_days_per_week(self) -> int:
        """Return how many weekdays have opening hours (a business week, in days)."""
        return sum(1 for day in self.hours if day)

    def _at(self, day: date, minutes: int) -> datetime:
        # Wall-clock arithmetic on purpose: midnight + 24h is the next midnight, not 24 real
        # hours later. A wall time in a DST gap or overlap resolves with fold=0, deterministically.
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        return (midnight + timedelta(minutes=minutes)).astimezone(UTC)

    def day_intervals(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """Return DAY's open intervals as UTC [start, end) pairs; none on a holiday."""
        found = self._days.get(day)
        if found is not None:
            return found
        intervals = []
        if day not in self.holidays:
            for start, stop in self.hours[day.weekday()]:
                begin, end = self._at(day, start), self._at(day, stop)
                if end > begin:  # a range inside a spring-forward gap has no length
                    intervals.append((begin, end))
        if len(self._days) >= DAYS_KEPT:
            self._days.clear()
        found = self._days[day] = tuple(intervals)
        return found

    def _intervals_from(self, moment: datetime) -> Iterator[tuple[date, datetime, datetime]]:
        """Yield (day, start, end) of the open intervals that end after MOMENT, clipped to it."""
        first = moment.astimezone(self.tz).date() - timedelta(days=1)
        for offset in range(MAX_DAYS):
            day = first + timedelta(days=offset)
            for begin, end in self.day_intervals(day):
                if end > moment:
                    yield day, max(begin, moment), end
        raise ValueError(f"no opening hours within {MAX_DAYS} days of {moment.isoformat()}")

    def is_open(self, moment: datetime) -> bool:
        """Return whether MOMENT falls within opening hours (not on a holiday)."""
        utc = aware(moment).astimezone(UTC)
        day = utc.astimezone(self.tz).date()
        return any(begin <= utc < end for begin, end in self.day_intervals(day))

    def next_open(self, moment: datetime) -> datetime:
        """Return the first open moment at or after MOMENT."""
        utc = aware(moment).astimezone(UTC)
        _, begin, _ = next(self._intervals_from(utc))
        return begin.astimezone(moment.tzinfo)

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """Return the moment DURATION of open time after START (nights, weekends, holidays skipped).

        Ending exactly at closing time returns the closing time, not the next opening.
        """
        utc = aware(start, "start").astimezone(UTC)
        if duration < timedelta(0):
            raise ValueError("duration must not be negative")
        if not duration:
            return start
        remaining = duration
        for _, begin, end in self._intervals_from(utc):
            if remaining <= end - begin:
                return (begin + remaining).astimezone(start.tzinfo)
            remaining -= end - begin
        raise AssertionError("unreachable: _intervals_from raises when it runs out")

    def business_time_between(self, first: datetime, second: datetime) -> timedelta:
        """Return the open time from FIRST to SECOND (negative when SECOND is earlier)."""
        a = aware(first, "first").astimezone(UTC)
        b = aware(second, "second").astimezone(UTC)
        if b < a:
            return -self.business_time_between(second, first)
        total = timedelta(0)
        for _, begin, end in self._intervals_from(a):
            if begin >= b:
                break
            total += min(end, b) - begin
        return total

    def add_business_days(self, start: datetime, days: int) -> datetime:
        """Return the same point of the business day DAYS open days after START's.

        START outside opening hours counts from the next opening.
        """
        if days < 0:
            raise ValueError("days must not be negative")
        utc = aware(start, "start").astimezone(UTC)
        day, begin, _ = next(self._intervals_from(utc))
        opening = self.day_intervals(day)[0][0]
        into_day = self.business_time_between(opening, begin)
        target = day
        for _ in range(days):
            target += timedelta(days=1)
            for _ in range(MAX_DAYS):
                if self.day_intervals(target):
                    break
                target += timedelta(days=1)
            else:
                raise ValueError(f"no open day within {MAX_DAYS} days of {target.isoformat()}")
        target_opening = self.day_intervals(target)[0][0]
        return self.add_business_time(target_opening, into_day).astimezone(start.tzinfo)

    def add(self, start: datetime, duration: Duration, *, business: bool = False) -> datetime:
        """Return START plus DURATION, in business or calendar time (see the module docstring)."""
        aware(start, "start")
        if business:
            if duration.unit in ("m", "h"):
                return self.add_business_time(start, duration.elapsed)
            days = duration.amount * (self.open_days_per_week if duration.unit == "w" else 1)
            return self.add_business_days(start, days)
        if duration.unit in ("m", "h"):
            return (start.astimezone(UTC) + duration.elapsed).astimezone(start.tzinfo)
        local = start.astimezone(self.tz)
        return (local + duration.elapsed).astimezone(UTC).astimezone(start.tzinfo)

    def between(self, first: datetime, second: datetime, *, business: bool = False) -> timedelta:
        """Return the time from FIRST to SECOND: open time only when BUSINESS."""
        if business:
            return self.business_time_between(first, second)
        return aware(second, "second").astimezone(UTC) - aware(first, "first").astimezone(UTC)


# --- tickets, time rules and SLAs --------------------------------------------------------------


@dataclass(frozen=True)
class TicketFacts:
    """What the scheduler knows about a ticket: its state, since when, and what already fired.

    ``fired`` maps a time rule's name to when it last acted on this ticket; the processor records
    it (as an event) when it acts. A firing before ``state_since`` belongs to an earlier stay in
    the state and is ignored, so a ticket that goes pending again is reminded again.
    """

    state: str
    state_since: datetime
    priority: str = "normal"
    channel: str = "email"
    plan: str | None = None
    queue: str | None = None
    tags: frozenset[str] = frozenset()
    fired: Mapping[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        aware(self.state_since, "state_since")
        for name, when in self.fired.items():
            aware(when, f"fired[{name!r}]")
        object.__setattr__(self, "fired", MappingProxyType(dict(self.fired)))
        object.__setattr__(self, "tags", frozenset(self.tags))


@dataclass(frozen=True)
class TicketFilter:
    """The ticket conditions a time rule or SLA may have in ``when``: all must hold."""

    channel: frozenset[str] | None = None
    plan: frozenset[str] | None = None
    priority: frozenset[str] | None = None
    queue: frozenset[str] | None = None
    tags: frozenset[str] = frozenset()  # the ticket has all of them

    def matches(self, ticket: TicketFacts) -> bool:
        """Return whether TICKET passes every condition."""
        pairs = (
            (self.channel, ticket.channel),
            (self.plan, ticket.plan),
            (self.priority, ticket.priority),
            (self.queue, ticket.queue),
        )
        for wanted, value in pairs:
            if wanted is not None and (value is None or value.lower() not in wanted):
                return False
        return self.tags <= {tag.lower() for tag in ticket.tags}

    def describe(self) -> str:
        """Return the conditions as one line, 'any ticket' when there are none."""
        parts = [
            f"{key} in [{', '.join(sorted(values))}]"
            for key, values in (
                ("channel", self.channel),
                ("plan", self.plan),
                ("priority", self.priority),
                ("queue", self.queue),
            )
            if values is not None
        ]
        if self.tags:
            parts.append(f"tags has {', '.join(sorted(self.tags))}")
        return " and ".join(parts) or "any ticket"


@dataclass(frozen=True)
class TimeAction:
    """One action of a time rule. ``value`` is '' for close and solve, '+tag'/'-tag' for tags."""

    name: TimeActionName
    value: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.value}" if self.value else self.name


@dataclass(frozen=True)
class TimeRule:
    """Act on a ticket that has been in ``state`` for ``delay`` (or since rule ``since`` fired)."""

    name: str
    state: str
    delay: Duration
    actions: tuple[TimeAction, ...]
    business_hours: bool = False
    since: str | None = None
    when: TicketFilter = TicketFilter()
    file: str = ""
    line: int = 0
    description: str = ""


@dataclass(frozen=True)
class Sla:
    """First-response and resolution targets for the tickets ``when`` selects (first SLA wins)."""

    name: str
    first_response: Duration | None = None
    resolution: Duration | None = None
    business_hours: bool = False
    warn_at: float = 0.8  # share of the target at which the warning goes out
    escalate: str = "agents"  # who gets the breach mail: 'agents' or an address
    when: TicketFilter = TicketFilter()
    file: str = ""
    line: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.first_response is None and self.resolution is None:
            raise ValueError("an SLA needs first_response, resolution or both")
        if not 0 < self.warn_at < 1:
            raise ValueError(f"warn_at must be between 0 and 1, got {self.warn_at}")


@dataclass(frozen=True)
class SlaDeadline:
    """When one SLA target warns and breaches for one ticket."""

    sla: str
    target: SlaTarget
    warn_at: datetime
    breach_at: datetime


def due_time(rule: TimeRule, ticket: TicketFacts, calendar: BusinessCalendar) -> datetime | None:
    """Return when RULE fires for TICKET, or None when it does not apply (now or any more).

    None when the ticket is in another state, fails the rule's ``when``, was already acted on by
    this rule since it entered its state, or (for a ``since`` rule) the earlier rule has not fired
    in this stay. A due time in the past means: act now.
    """
    if ticket.state != rule.state or not rule.when.matches(ticket):
        return None
    fired = ticket.fired.get(rule.name)
    if fired is not None and fired >= ticket.state_since:
        return None
    start = ticket.state_since
    if rule.since is not None:
        previous = ticket.fired.get(rule.since)
        if previous is None or previous < ticket.state_since:
            return None
        start = previous
    return calendar.add(start, rule.delay, business=rule.business_hours)


def select_sla(slas: Iterable[Sla], ticket: TicketFacts) -> Sla | None:
    """Return the first SLA whose ``when`` holds for TICKET, or None."""
    return next((sla for sla in slas if sla.when.matches(ticket)), None)


def sla_deadlines(
    sla: Sla,
    created_at: datetime,
    first_response_at: datetime | None,
    calendar: BusinessCalendar,
) -> tuple[SlaDeadline, ...]:
    """Return the running targets' deadlines, both clocks counted from CREATED_AT.

    First response runs until FIRST_RESPONSE_AT (then it is left out); resolution always runs —
    the caller stops it when the ticket is solved. The warning comes at ``warn_at`` of the
    target's span, in the same kind of time (business or calendar).
    """
    aware(created_at, "created_at")
    if first_response_at is not None:
        aware(first_response_at, "first_response_at")
    business = sla.business_hours
    deadlines = []
    targets: tuple[tuple[SlaTarget, Duration | None], ...] = (
        ("first_response", sla.first_response if first_response_at is None else None),
        ("resolution", sla.resolution),
    )
    for target, duration in targets:
        if duration is None:
            continue
        breach = calendar.add(created_at, duration, business=business)
        span = calendar.between(created_at, breach, business=business)
        share = timedelta(seconds=round(span.total_seconds() * sla.warn_at))
        if business:
            warn = calendar.add_business_time(created_at, share)
        else:
            warn = (created_at.astimezone(UTC) + share).astimezone(created_at.tzinfo)
        deadlines.append(SlaDeadline(sla.name, target, warn, breach))
    return tuple(deadlines)


def next_run(
    now: datetime,
    jobs: Iterable[datetime | None],
    *,
    idle: timedelta = timedelta(minutes=5),
) -> datetime:
    """Return when the scheduler should wake: the soonest due job, NOW if one is overdue.

    Never later than NOW + IDLE, so tickets changed since the last look and reloaded rules are
    picked up without a wake-up call. None entries (rules that do not apply) are skipped.
    """
    aware(now, "now")
    wake = now + idle
    for due in jobs:
        if due is None:
            continue
        if aware(due, "job due time") < wake:
            wake = due
    return max(wake, now).astimezone(now.tzinfo)
