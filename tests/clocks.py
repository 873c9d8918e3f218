"""A clock that a test sets and moves by hand, to drive what helpdeskd decides by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpdeskd.clock import system_clock


class ManualClock:
    """A :data:`helpdeskd.clock.Clock` that tells the time it was set to, until moved."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = (start or system_clock()).astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move the clock on by DELTA (timedelta's keywords); return the new time."""
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        """Move the clock to MOMENT, which must not be earlier than the time it tells."""
        assert moment >= self.now, "a clock that goes back hides bugs rather than finds them"
        self.now = moment.astimezone(UTC)
        return self.now
