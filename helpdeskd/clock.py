"""Times people type and read: an explicit offset, or the configured time zone; always shown
with the zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from helpdeskd.errors import UserError


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
    """Return MOMENT in TIMEZONE with the zone's name and offset: 2026-12-01 22:00 CET (+01:00)."""
    local = moment.astimezone(ZoneInfo(timezone))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({offset[:3]}:{offset[3:]})"
