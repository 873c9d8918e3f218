"""The status page's data: the overall state, incidents' states, refused values, time words."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from helpdeskd.desk.status import (
    Component,
    Incident,
    IncidentUpdate,
    Maintenance,
    format_time,
    overall,
    overall_status,
)
from helpdeskd.web import feeds
from helpdeskd.web import statuspage as sp
from tests.statusgen import NOW, incident, maintenance, quiet

# ------------------------------------------------------------------------ overall and states


@pytest.mark.parametrize(
    ("components", "incidents", "maintenances", "expected"),
    [
        (("operational", "operational"), (), (), "All systems operational"),
        ((), (), (), "All systems operational"),
        (("operational", "degraded"), (), (), "Degraded performance"),
        (("degraded", "partial_outage"), (), (), "Partial outage"),
        (("major_outage", "partial_outage", "maintenance"), (), (), "Major outage"),
        (("operational", "maintenance"), (), (), "Maintenance in progress"),
        (("maintenance", "degraded"), (), (), "Degraded performance"),
        # an open incident counts by its impact even while every component looks fine
        (("operational",), (incident(impact="minor"),), (), "Degraded performance"),
        (("operational",), (incident(impact="major"),), (), "Partial outage"),
        (("operational",), (incident("monitoring", impact="critical"),), (), "Major outage"),
        # a resolved one does not
        (
            ("operational",),
            (incident("resolved", impact="critical"),),
            (),
            "All systems operational",
        ),
        (("operational",), (), (maintenance("in_progress"),), "Maintenance in progress"),
        (("operational",), (), (maintenance("scheduled"),), "All systems operational"),
        (("operational",), (), (maintenance("completed"),), "All systems operational"),
        (("degraded",), (), (maintenance("in_progress"),), "Degraded performance"),
    ],
)
def test_overall(
    components: tuple[str, ...],
    incidents: tuple[Incident, ...],
    maintenances: tuple[Maintenance, ...],
    expected: str,
) -> None:
    data = quiet(
        components=tuple(Component(f"c{n}", f"C{n}", s) for n, s in enumerate(components)),
        incidents=incidents,
        maintenances=maintenances,
    )
    assert overall(data) == expected
    html = sp.render_html(data)
    banner = html[html.index('class="banner') : html.index("</section>")]
    assert f'<h2 id="overall">{expected}</h2>' in banner
    assert f"banner-{overall_status(data)}" in banner
    assert json.loads(feeds.render_json(data))["overall"] == {
        "status": overall_status(data),
        "description": expected,
    }


def test_incident_without_resolved_at_but_resolved_update_is_resolved() -> None:
    item = incident("resolved", resolved_at=None)
    assert not item.is_open and item.ended_at == item.updates[-1].at
    assert json.loads(feeds.render_json(quiet(incidents=(item,))))["incidents"][0]["resolved_at"]


def test_naive_times_and_unknown_values_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        IncidentUpdate("investigating", "x", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        quiet(generated_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown time zone"):
        quiet(timezone="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="status must be one of"):
        Component("api", "API", "on fire")
    with pytest.raises(ValueError, match="impact must be one of"):
        incident(impact="apocalyptic")
    with pytest.raises(ValueError, match="ends before it starts"):
        maintenance("scheduled", end=NOW)
    with pytest.raises(ValueError, match="public_url"):
        quiet(public_url="support.acme.test")


# ------------------------------------------------------------------------------ time zones


@pytest.mark.parametrize(
    ("zone", "utc", "expected"),
    [
        ("UTC", "2026-11-27 13:00", "2026-11-27 13:00 UTC"),
        ("Europe/Berlin", "2026-11-27 13:00", "2026-11-27 14:00 CET (UTC+01:00)"),
        ("Europe/Berlin", "2026-07-01 12:00", "2026-07-01 14:00 CEST (UTC+02:00)"),
        # spring forward: 02:00 CET becomes 03:00 CEST on 29 March 2026
        ("Europe/Berlin", "2026-03-29 00:59", "2026-03-29 01:59 CET (UTC+01:00)"),
        ("Europe/Berlin", "2026-03-29 01:00", "2026-03-29 03:00 CEST (UTC+02:00)"),
        # fall back: 02:30 happens twice on 25 October 2026, and the zone tells which
        ("Europe/Berlin", "2026-10-25 00:30", "2026-10-25 02:30 CEST (UTC+02:00)"),
        ("Europe/Berlin", "2026-10-25 01:30", "2026-10-25 02:30 CET (UTC+01:00)"),
        ("Europe/London", "2026-01-05 09:00", "2026-01-05 09:00 GMT (UTC+00:00)"),
        ("America/New_York", "2026-03-08 06:59", "2026-03-08 01:59 EST (UTC-05:00)"),
        ("America/New_York", "2026-03-08 07:00", "2026-03-08 03:00 EDT (UTC-04:00)"),
        ("Asia/Kolkata", "2026-11-27 13:00", "2026-11-27 18:30 IST (UTC+05:30)"),
        # tzdata has no abbreviation for São Paulo: the offset alone, not "-03 (UTC-03:00)"
        ("America/Sao_Paulo", "2026-11-27 13:00", "2026-11-27 10:00 UTC-03:00"),
    ],
)
def test_format_time(zone: str, utc: str, expected: str) -> None:
    moment = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert format_time(moment, ZoneInfo(zone)) == expected
    # the moment's own zone does not matter, only the configured one
    elsewhere = moment.astimezone(ZoneInfo("Pacific/Auckland"))
    assert format_time(elsewhere, ZoneInfo(zone)) == expected
