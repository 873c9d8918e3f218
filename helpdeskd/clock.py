"""Time: the clock that decisions read, and times people type and read.

Code that starts a unit of work — an outbox or scheduler pass, a housekeeping round, an HTTP
request, a command — takes a :data:`Clock` and reads it once; what it calls within that unit
takes the moment (``now``), so one unit sees one time and a test drives time by giving a clock.
Times people type carry an explicit offset or are read in the configured time zone; they are
always shown with the zone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from helpdeskd.errors import UserError

# Return the current moment, aware and in UTC.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Return the system's current time, aware, in UTC."""
    return datetime.now(UTC)


def parse_time(text: str, timezone: str) -> datetime:
    """Parse TEXT (ISO 8601, ``2026-12-01 22:00`` or ``2026-12-01T22:00+01:00``).

    Without an offset the time is read in TIMEZONE; the result is aware, in UTC.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"{text!r} is not a time; write e.g. 2026-12-01T22:00+01:00 or 2026-12-01 22:00 "
            f"(read in {timezone})"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return moment.astimezone(UTC)


def show_time(moment: datetime, timezone: str) -> str:
    """Return MOMENT in TIMEZONE with the zone's name and offset: 2026-12-01 22:00 CET (+01:00).

    A name that says the offset already is not followed by it again: ``13:00 UTC``, and
    ``13:00 +03:00`` for a zone whose only name is its offset.
    """
    local = moment.astimezone(ZoneInfo(timezone))
    raw = local.strftime("%z")
    offset = f"{raw[:3]}:{raw[3:]}"
    name = local.tzname() or ""
    if name == "UTC" and raw == "+0000":
        return f"{local:%Y-%m-%d %H:%M} UTC"
    if not name or name[0] in "+-":
        return f"{local:%Y-%m-%d %H:%M} {offset}"
    return f"{local:%Y-%m-%d %H:%M} {name} ({offset})"
