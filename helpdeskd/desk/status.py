"""The status page's data: components, incidents and maintenance, and the overall state.

Plain frozen dataclasses that refuse what the page could not show (an unknown status, a naive
time, an unknown time zone), the words for every state, and the pure functions that compute from
them. Nothing here reads a clock or the database: :func:`helpdeskd.desk.incidents.status_data`
builds a :class:`StatusData` (its ``generated_at`` is "now"), and the web layer renders it as the
HTML page (``web/statuspage.py``) and its JSON and Atom feeds (``web/feeds.py``).

Overall state (:func:`overall`): the worst of the components' statuses, of the impact of open
incidents (minor → degraded, major → partial outage, critical → major outage) and of maintenance in
progress, ranked operational < maintenance < degraded < partial outage < major outage.

Every time a person reads is shown in the configured zone with its name and offset
(:func:`format_time`), as in ``2026-11-27 14:00 CET (UTC+01:00)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "COMPONENT_LABELS",
    "COMPONENT_STATUSES",
    "IMPACTS",
    "IMPACT_LABELS",
    "IMPACT_STATUS",
    "INCIDENT_LABELS",
    "INCIDENT_STATUSES",
    "MAINTENANCE_LABELS",
    "MAINTENANCE_STATUSES",
    "OVERALL_LABELS",
    "Component",
    "Incident",
    "IncidentUpdate",
    "Maintenance",
    "StatusData",
    "format_time",
    "overall",
    "overall_status",
    "severity",
    "zone_label",
]

# Worst last: the order ranks them for the overall state.
COMPONENT_STATUSES: Final = (
    "operational",
    "maintenance",
    "degraded",
    "partial_outage",
    "major_outage",
)
INCIDENT_STATUSES: Final = ("investigating", "identified", "monitoring", "resolved")
IMPACTS: Final = ("minor", "major", "critical")
MAINTENANCE_STATUSES: Final = ("scheduled", "in_progress", "completed", "cancelled")

COMPONENT_LABELS: Final = {
    "operational": "Operational",
    "maintenance": "Under maintenance",
    "degraded": "Degraded performance",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
}
OVERALL_LABELS: Final = {
    "operational": "All systems operational",
    "maintenance": "Maintenance in progress",
    "degraded": "Degraded performance",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
}
INCIDENT_LABELS: Final = {
    "investigating": "Investigating",
    "identified": "Identified",
    "monitoring": "Monitoring",
    "resolved": "Resolved",
}
IMPACT_LABELS: Final = {"minor": "Minor", "major": "Major", "critical": "Critical"}
MAINTENANCE_LABELS: Final = {
    "scheduled": "Scheduled",
    "in_progress": "In progress",
    "completed": "Completed",
    "cancelled": "Cancelled",
}
# What an open incident of each impact counts as, among the component statuses.
IMPACT_STATUS: Final = {"minor": "degraded", "major": "partial_outage", "critical": "major_outage"}


# --------------------------------------------------------------------------------------- data


def _choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, not {value!r}")


def _aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")


def _tuple(obj: object, name: str) -> None:
    """Store attribute NAME of a frozen dataclass as a tuple (lists are accepted too)."""
    object.__setattr__(obj, name, tuple(getattr(obj, name)))


@dataclass(frozen=True)
class Component:
    key: str
    name: str
    status: str  # operational | degraded | partial_outage | major_outage | maintenance

    def __post_init__(self) -> None:
        _choice(self.status, COMPONENT_STATUSES, f"component {self.key!r} status")


@dataclass(frozen=True)
class IncidentUpdate:
    status: str  # investigating | identified | monitoring | resolved
    message: str
    at: datetime

    def __post_init__(self) -> None:
        _choice(self.status, INCIDENT_STATUSES, "incident update status")
        _aware(self.at, "incident update time")


@dataclass(frozen=True)
class Incident:
    id: int
    title: str
    impact: str  # minor | major | critical
    components: tuple[str, ...]  # component keys
    updates: tuple[IncidentUpdate, ...]  # oldest first
    started_at: datetime
    resolved_at: datetime | None
    postmortem: str | None  # Markdown
    postmortem_at: datetime | None = None  # when the post-mortem was published (Atom entry)

    def __post_init__(self) -> None:
        _choice(self.impact, IMPACTS, f"incident {self.id} impact")
        _tuple(self, "components")
        _tuple(self, "updates")
        _aware(self.started_at, f"incident {self.id} started_at")
        if self.resolved_at is not None:
            _aware(self.resolved_at, f"incident {self.id} resolved_at")
        if self.postmortem_at is not None:
            _aware(self.postmortem_at, f"incident {self.id} postmortem_at")

    @property
    def status(self) -> str:
        """Return the status of the latest update (``resolved`` once resolved_at is set)."""
        if self.resolved_at is not None:
            return "resolved"
        return self.updates[-1].status if self.updates else "investigating"

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"

    @property
    def ended_at(self) -> datetime | None:
        """Return when it ended: resolved_at, or the time of a final ``resolved`` update."""
        if self.resolved_at is not None:
            return self.resolved_at
        if self.updates and self.updates[-1].status == "resolved":
            return self.updates[-1].at
        return None


@dataclass(frozen=True)
class Maintenance:
    id: int
    title: str
    message: str
    components: tuple[str, ...]
    start: datetime
    end: datetime
    status: str  # scheduled | in_progress | completed | cancelled
    # Optional, from the database row: when it was announced (keeps the Atom id stable if the
    # window moves) and last changed (the Atom entry's <updated>).
    announced_at: datetime | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _choice(self.status, MAINTENANCE_STATUSES, f"maintenance {self.id} status")
        _tuple(self, "components")
        _aware(self.start, f"maintenance {self.id} start")
        _aware(self.end, f"maintenance {self.id} end")
        if self.end < self.start:
            raise ValueError(f"maintenance {self.id} ends before it starts")
        if self.announced_at is not None:
            _aware(self.announced_at, f"maintenance {self.id} announced_at")
        if self.updated_at is not None:
            _aware(self.updated_at, f"maintenance {self.id} updated_at")


@dataclass(frozen=True)
class StatusData:
    service_name: str
    public_url: str  # e.g. https://support.acme.test — the page is {public_url}/status
    timezone: str  # IANA name, e.g. Europe/Berlin
    generated_at: datetime
    components: tuple[Component, ...]
    incidents: tuple[Incident, ...]  # the last 90 days, open ones included
    maintenances: tuple[Maintenance, ...]
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("components", "incidents", "maintenances"):
            _tuple(self, name)
        _aware(self.generated_at, "generated_at")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        object.__setattr__(self, "zone", zone)
        parts = urlsplit(self.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"public_url must be an http(s) URL, not {self.public_url!r}")

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def page_url(self) -> str:
        return f"{self.base_url}/status"

    @property
    def feed_url(self) -> str:
        return f"{self.base_url}/status/feed.atom"

    @property
    def json_url(self) -> str:
        return f"{self.base_url}/status.json"


# ------------------------------------------------------------------------------ overall state


def severity(status: str) -> int:
    """Rank a component status: 0 for ``operational`` up to 4 for ``major_outage``."""
    return COMPONENT_STATUSES.index(status)


def overall_status(data: StatusData) -> str:
    """Return the worst current status, as a component status key such as ``major_outage``."""
    levels = [c.status for c in data.components]
    levels += [IMPACT_STATUS[i.impact] for i in data.incidents if i.is_open]
    levels += ["maintenance" for m in data.maintenances if m.status == "in_progress"]
    return max(levels, key=severity, default="operational")


def overall(data: StatusData) -> str:
    """Return ``All systems operational``, or the worst status in words (``Major outage``)."""
    return OVERALL_LABELS[overall_status(data)]


# --------------------------------------------------------------------------------------- time


def _offset(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{text}:{seconds:02d}" if seconds else text


def zone_label(moment: datetime, zone: ZoneInfo) -> str:
    """Name ZONE and its offset at MOMENT: ``CET (UTC+01:00)``, ``UTC``, ``UTC-03:00``."""
    local = moment.astimezone(zone)
    offset = local.utcoffset() or timedelta(0)
    name = local.tzname() or ""
    if name == "UTC" and not offset:
        return "UTC"
    if name and name[0] not in "+-":  # a real abbreviation, not tzdata's "-03"
        return f"{name} (UTC{_offset(offset)})"
    return f"UTC{_offset(offset)}"


def format_time(moment: datetime, zone: ZoneInfo) -> str:
    """Show MOMENT in ZONE with the zone's name and offset: ``2026-11-27 14:00 CET (UTC+01:00)``."""
    _aware(moment, "time")
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {zone_label(moment, zone)}"
