"""The clock: the system's, in UTC; times typed with or without an offset, shown with the zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from helpdeskd.clock import parse_time, show_time, system_clock
from helpdeskd.errors import UserError
from tests.clocks import ManualClock


def test_system_clock_is_aware_utc_and_current():
    before = datetime.now(UTC)
    moment = system_clock()
    assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
    assert before <= moment <= datetime.now(UTC)


def test_manual_clock_tells_what_it_is_set_to():
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock() == clock() == datetime(2030, 1, 1, tzinfo=UTC)
    assert clock.advance(hours=2) == datetime(2030, 1, 1, 2, tzinfo=UTC) == clock()


@pytest.mark.parametrize(
    ("text", "timezone", "expected"),
    [
        ("2026-12-01T22:00+01:00", "UTC", datetime(2026, 12, 1, 21, 0, tzinfo=UTC)),
        ("2026-12-01 22:00", "Europe/Berlin", datetime(2026, 12, 1, 21, 0, tzinfo=UTC)),
        ("2026-07-01 22:00", "Europe/Berlin", datetime(2026, 7, 1, 20, 0, tzinfo=UTC)),
        (" 2026-12-01T22:00Z ", "Europe/Berlin", datetime(2026, 12, 1, 22, 0, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, timezone: str, expected: datetime) -> None:
    assert parse_time(text, timezone) == expected


def test_parse_time_refuses_what_is_not_a_time():
    with pytest.raises(UserError, match="read in Europe/Berlin"):
        parse_time("next tuesday", "Europe/Berlin")


def test_show_time_names_the_zone_and_its_offset():
    moment = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    assert show_time(moment, "Europe/Berlin") == "2026-12-01 22:00 CET (+01:00)"
    assert show_time(moment, "UTC") == "2026-12-01 21:00 UTC"  # not "UTC (+00:00)"
    assert show_time(moment, "Etc/UTC") == "2026-12-01 21:00 UTC"
    assert show_time(moment, "Europe/London") == "2026-12-01 21:00 GMT (+00:00)"
    assert show_time(moment, "Europe/Istanbul") == "2026-12-02 00:00 +03:00"  # named "+03"
