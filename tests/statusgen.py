"""Build status page data for tests: a busy page, a quiet one, incidents and maintenance.

Everything happens around a fixed NOW (14:00 in Berlin, the page's zone).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from helpdeskd.desk.status import (
    INCIDENT_STATUSES,
    Component,
    Incident,
    IncidentUpdate,
    Maintenance,
    StatusData,
)

ATOM = "{http://www.w3.org/2005/Atom}"
NOW = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)  # 14:00 CET
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    """A moment given in Berlin wall time: at("2026-11-27 09:12")."""
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN)


POSTMORTEM = """\
# What happened

On 12 November a failover of the **primary** in `eu-west-1` left 8% of databases read-only
for 47 minutes.

## What we are changing

1. Fence the old primary before promoting a replica.
2. Alert on read-only transitions within one minute.

| Metric | Value |
|:--|--:|
| Databases affected | 8% |
| Duration | 47 min |

<script>alert("pm")</script> [click me](javascript:alert(1)) <img src=x onerror=alert(2)>
"""


def sample(**changes: object) -> StatusData:
    """The page of the browser test: an open incident with three updates, a resolved one with a
    post-mortem, a scheduled maintenance, past maintenance, components in mixed states."""
    data = StatusData(
        service_name="Acme Postgres add-on",
        public_url="https://support.acme.test",
        timezone="Europe/Berlin",
        generated_at=NOW,
        components=(
            Component("api", "Provisioning API", "degraded"),
            Component("db-eu", "Databases (eu-west-1)", "partial_outage"),
            Component("db-us", "Databases (us-east-1)", "operational"),
            Component("backups", "Backups", "maintenance"),
            Component("dashboard", "Dashboard", "operational"),
        ),
        incidents=(
            Incident(
                id=42,
                title="Connection errors on eu-west-1 databases",
                impact="major",
                components=("db-eu", "api"),
                updates=(
                    IncidentUpdate(
                        "investigating",
                        "We are investigating connection timeouts to databases in eu-west-1.",
                        at("2026-11-27 12:05"),
                    ),
                    IncidentUpdate(
                        "identified",
                        "A faulty network switch in one availability zone drops connections. "
                        "Traffic is being moved away from it.",
                        at("2026-11-27 12:40"),
                    ),
                    IncidentUpdate(
                        "monitoring",
                        "Traffic is off the faulty switch and error rates are back to normal. "
                        "We are watching closely.",
                        at("2026-11-27 13:25"),
                    ),
                ),
                started_at=at("2026-11-27 12:02"),
                resolved_at=None,
                postmortem=None,
            ),
            Incident(
                id=41,
                title="Read-only databases after a failover",
                impact="critical",
                components=("db-eu",),
                updates=(
                    IncidentUpdate(
                        "investigating", "Some databases are read-only.", at("2026-11-12 09:12")
                    ),
                    IncidentUpdate(
                        "identified",
                        "A failover left an old primary fenced.",
                        at("2026-11-12 09:31"),
                    ),
                    IncidentUpdate(
                        "resolved", "All databases accept writes again.", at("2026-11-12 09:59")
                    ),
                ),
                started_at=at("2026-11-12 09:12"),
                resolved_at=at("2026-11-12 09:59"),
                postmortem=POSTMORTEM,
                postmortem_at=at("2026-11-14 16:00"),
            ),
            Incident(
                id=38,
                title="Slow dashboard",
                impact="minor",
                components=("dashboard",),
                updates=(
                    IncidentUpdate("resolved", "A slow query was fixed.", at("2026-10-03 11:30")),
                ),
                started_at=at("2026-10-03 10:50"),
                resolved_at=at("2026-10-03 11:30"),
                postmortem=None,
            ),
        ),
        maintenances=(
            Maintenance(
                id=7,
                title="PostgreSQL minor version upgrade (eu-west-1)",
                message="Databases restart once, with about 30 seconds of downtime each.",
                components=("db-eu",),
                start=at("2026-11-29 02:00"),
                end=at("2026-11-29 04:00"),
                status="scheduled",
                announced_at=at("2026-11-25 10:00"),
            ),
            Maintenance(
                id=6,
                title="Backup storage migration",
                message="Backups are paused while storage moves; none are lost.",
                components=("backups",),
                start=at("2026-11-27 10:00"),
                end=at("2026-11-27 16:00"),
                status="in_progress",
            ),
            Maintenance(
                id=5,
                title="Dashboard host upgrade",
                message="Done as planned.",
                components=("dashboard",),
                start=at("2026-11-02 06:00"),
                end=at("2026-11-02 06:30"),
                status="completed",
            ),
        ),
    )
    return dataclasses.replace(data, **changes) if changes else data  # type: ignore[arg-type]


def quiet(**changes: object) -> StatusData:
    """Nothing going on: every component operational, no incidents, no maintenance."""
    data = StatusData(
        service_name="Acme Postgres add-on",
        public_url="https://support.acme.test",
        timezone="Europe/Berlin",
        generated_at=NOW,
        components=(Component("api", "API", "operational"),),
        incidents=(),
        maintenances=(),
    )
    return dataclasses.replace(data, **changes) if changes else data  # type: ignore[arg-type]


def incident(status: str = "investigating", impact: str = "major", **changes: object) -> Incident:
    updates = tuple(
        IncidentUpdate(s, f"Step {s}.", NOW - timedelta(minutes=40 - 10 * n))
        for n, s in enumerate(INCIDENT_STATUSES[: INCIDENT_STATUSES.index(status) + 1])
    )
    fields: dict[str, object] = {
        "id": 1,
        "title": "Something broke",
        "impact": impact,
        "components": ("api",),
        "updates": updates,
        "started_at": NOW - timedelta(minutes=45),
        "resolved_at": updates[-1].at if status == "resolved" else None,
        "postmortem": None,
    }
    fields.update(changes)
    return Incident(**fields)  # type: ignore[arg-type]


def maintenance(status: str, **changes: object) -> Maintenance:
    fields: dict[str, object] = {
        "id": 3,
        "title": "Network upgrade",
        "message": "Brief interruptions.",
        "components": ("api",),
        "start": NOW + timedelta(days=2),
        "end": NOW + timedelta(days=2, hours=2),
        "status": status,
    }
    if status in ("in_progress",):
        fields.update(start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=1))
    if status in ("completed", "cancelled"):
        fields.update(
            start=NOW - timedelta(days=3), end=NOW - timedelta(days=3) + timedelta(hours=1)
        )
    fields.update(changes)
    return Maintenance(**fields)  # type: ignore[arg-type]
