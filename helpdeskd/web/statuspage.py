"""The public status page: pure renderers from plain data to HTML, JSON and Atom.

Nothing here reads a clock or the database; the caller builds a :class:`StatusData` (its
``generated_at`` is "now") and serves what comes out:

=========================  =====================  =========================================
URL (under ``public_url``)  renderer               content type (:data:`CONTENT_TYPES`)
=========================  =====================  =========================================
``/status``                 :func:`render_html`    ``text/html; charset=utf-8``
``/status/status.css``      :func:`render_css`     ``text/css; charset=utf-8``
``/status.json``            :func:`render_json`    ``application/json``
``/status/feed.atom``       :func:`render_atom`    ``application/atom+xml; charset=utf-8``
=========================  =====================  =========================================

:func:`export` writes the same as static files (``index.html``, ``status/index.html``,
``status.json``, ``status/feed.atom``, ``status/status.css``) whose relative links work from any
static host or straight from disk, since the page matters most when the daemon's host is in trouble.

The page has no JavaScript at all (a Content-Security-Policy forbids scripts even if some got in),
states every status in words (colour and icon only repeat it), puts every time in a ``<time
datetime=…>`` element and shows it in the configured zone with its name and offset, as in
``2026-11-27 14:00 CET (UTC+01:00)``. Templates live in ``templates/status/`` (a deployment's
templates folder may override them) and are always autoescaped. Post-mortems are Markdown,
rendered by markdown-it-py with raw HTML off and then sanitised by nh3 (ammonia).

Overall state (:func:`overall`): the worst of the components' statuses, of the impact of open
incidents (minor → degraded, major → partial outage, critical → major outage) and of maintenance in
progress, ranked operational < maintenance < degraded < partial outage < major outage.

JSON shape (:func:`render_json`; :data:`STATUS_JSON_SCHEMA` is the JSON Schema)::

    {
      "schema_version": 1,
      "service": {"name": str, "url": str, "page_url": str, "feed_url": str, "json_url": str,
                  "timezone": str},                       # IANA zone the HTML shows times in
      "generated_at": "2026-11-27T13:00:00Z",             # every timestamp: ISO 8601, UTC, "Z"
      "overall": {"status": COMPONENT_STATUS, "description": "All systems operational"},
      "components": [{"key": str, "name": str, "status": COMPONENT_STATUS,
                      "status_label": str}],
      "incidents": [{                                      # newest first, open and resolved
          "id": int, "title": str, "impact": "minor" | "major" | "critical",
          "status": INCIDENT_STATUS,                       # that of its latest update
          "open": bool, "components": [component key], "url": str,
          "started_at": ts, "resolved_at": ts | null,
          "updates": [{"status": INCIDENT_STATUS, "message": str, "at": ts}],   # oldest first
          "postmortem": null | {"markdown": str, "html": str}}],   # html: sanitised
      "maintenances": [{                                   # by start, soonest first
          "id": int, "title": str, "message": str, "status": MAINTENANCE_STATUS,
          "components": [component key], "url": str, "start": ts, "end": ts}]
    }

with COMPONENT_STATUS one of operational, degraded, partial_outage, major_outage, maintenance;
INCIDENT_STATUS one of investigating, identified, monitoring, resolved; MAINTENANCE_STATUS one of
scheduled, in_progress, completed, cancelled.

Atom (RFC 4287): one entry per incident update, per maintenance, and per published post-mortem
(when its ``postmortem_at`` is known), each with a ``tag:`` URI id (RFC 4151) that never changes,
``updated``, ``title``, ``content`` and a link to the entry's place on the page.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import markupsafe
import nh3
from markdown_it import MarkdownIt

from helpdeskd.config.settings import DEFAULT_TEMPLATES

__all__ = [
    "COMPONENT_STATUSES",
    "CONTENT_TYPES",
    "IMPACTS",
    "INCIDENT_STATUSES",
    "MAINTENANCE_STATUSES",
    "STATUS_JSON_SCHEMA",
    "Component",
    "Incident",
    "IncidentUpdate",
    "Maintenance",
    "StatusData",
    "export",
    "format_time",
    "overall",
    "overall_status",
    "render_atom",
    "render_css",
    "render_html",
    "render_json",
    "render_markdown",
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
_IMPACT_STATUS: Final = {"minor": "degraded", "major": "partial_outage", "critical": "major_outage"}

CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "atom": "application/atom+xml; charset=utf-8",
}
HISTORY_DAYS: Final = 90
CSS_NAME: Final = "status.css"
_ATOM_NS: Final = "http://www.w3.org/2005/Atom"

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
# Characters XML 1.0 cannot carry (and that have no business on a web page either).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


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
        """The status of the latest update (``resolved`` once resolved_at is set)."""
        if self.resolved_at is not None:
            return "resolved"
        return self.updates[-1].status if self.updates else "investigating"

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"

    @property
    def ended_at(self) -> datetime | None:
        """resolved_at, or the time of a final ``resolved`` update if resolved_at is missing."""
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


# -------------------------------------------------------------------------------- time, words


def _offset(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{text}:{seconds:02d}" if seconds else text


def zone_label(moment: datetime, zone: ZoneInfo) -> str:
    """The zone's name and offset at MOMENT: ``CET (UTC+01:00)``, ``UTC``, ``UTC-03:00``."""
    local = moment.astimezone(zone)
    offset = local.utcoffset() or timedelta(0)
    name = local.tzname() or ""
    if name == "UTC" and not offset:
        return "UTC"
    if name and name[0] not in "+-":  # a real abbreviation, not tzdata's "-03"
        return f"{name} (UTC{_offset(offset)})"
    return f"UTC{_offset(offset)}"


def format_time(moment: datetime, zone: ZoneInfo) -> str:
    """MOMENT in ZONE with the zone's name and offset: ``2026-11-27 14:00 CET (UTC+01:00)``."""
    _aware(moment, "time")
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {zone_label(moment, zone)}"


def _long_date(day: date) -> str:
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]} {day.year}"


def _short_date(day: date) -> str:
    return f"{day.day} {_MONTHS[day.month - 1][:3]} {day.year}"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    return " ".join(parts) or "under a minute"


def _clean(text: str) -> str:
    return _BAD_CHARS.sub("", text)


def _severity(status: str) -> int:
    return COMPONENT_STATUSES.index(status)


def overall_status(data: StatusData) -> str:
    """The worst current status, as a component status key (``operational`` … ``major_outage``)."""
    levels = [c.status for c in data.components]
    levels += [_IMPACT_STATUS[i.impact] for i in data.incidents if i.is_open]
    levels += ["maintenance" for m in data.maintenances if m.status == "in_progress"]
    return max(levels, key=_severity, default="operational")


def overall(data: StatusData) -> str:
    """``All systems operational``, or the worst current status in words (``Major outage``)."""
    return OVERALL_LABELS[overall_status(data)]


# ----------------------------------------------------------------------------------- markdown

_MD_TAGS: Final = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "img", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr",
    "ul",
}  # fmt: skip
_MD_ATTRIBUTES: Final = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}


@functools.lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    # CommonMark with raw HTML off (it is shown as text); tables and strikethrough from GFM.
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def render_markdown(text: str, top_heading: int = 1) -> markupsafe.Markup:
    """Render Markdown TEXT to sanitised HTML, its ``#`` headings becoming ``<hTOP_HEADING>``.

    Raw HTML in the source comes out as text; nh3 then removes anything outside a small list of
    tags and attributes, every URL scheme but http, https and mailto, and adds rel=noopener.
    """
    md = _markdown()
    tokens = md.parse(_clean(text))
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1:]) + top_heading - 1)}"
    html = md.renderer.render(tokens, md.options, {})
    cleaned = nh3.clean(
        html,
        tags=set(_MD_TAGS),
        attributes={tag: set(names) for tag, names in _MD_ATTRIBUTES.items()},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
        strip_comments=True,
    )
    return markupsafe.Markup(cleaned)  # sanitised by nh3 just above


# ---------------------------------------------------------------------------------- templates


def _autoescape(name: str | None) -> bool:
    """Every status template is HTML, whatever its suffix (select_autoescape(['html']) would
    miss ``.html.j2``): always escape."""
    return True


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return _clean(value)
    return value


@functools.lru_cache(maxsize=8)
def _environment(templates: Path | None) -> jinja2.Environment:
    folders = [str(templates / "status")] if templates is not None else []
    default = str(DEFAULT_TEMPLATES / "status")
    if default not in folders:
        folders.append(default)
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders),
        undefined=jinja2.StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )


def render_css(*, templates: Path | None = None) -> str:
    """The page's style sheet, served at ``/status/status.css`` (a deployment may override it)."""
    env = _environment(templates)
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, CSS_NAME)
    return source


@dataclass(frozen=True)
class _Stamp:
    """A moment for the templates: ``<time datetime="{{ iso }}">{{ text }}</time>``."""

    iso: str  # in the configured zone, with its offset
    text: str


@dataclass(frozen=True)
class _Links:
    root: str  # prefix that reaches the site root from the page ("/", "../", "")

    @property
    def css(self) -> str:
        return f"{self.root}status/{CSS_NAME}"

    @property
    def json(self) -> str:
        return f"{self.root}status.json"

    @property
    def feed(self) -> str:
        return f"{self.root}status/feed.atom"


class _View:
    """What the HTML template shows, computed here so the template only lays it out."""

    def __init__(self, data: StatusData, links: _Links, *, heading_base: int = 5) -> None:
        self.data = data
        self.links = links
        self.zone = data.zone
        self._heading_base = heading_base
        self.names = {c.key: c.name for c in data.components}
        now = data.generated_at
        self.status = overall_status(data)
        self.label = OVERALL_LABELS[self.status]
        self.generated = self.stamp(now)
        today = now.astimezone(self.zone).date()
        self.first_day = today - timedelta(days=HISTORY_DAYS - 1)
        self.today = today
        self.zone_now = zone_label(now, self.zone)

    def stamp(self, moment: datetime) -> _Stamp:
        local = moment.astimezone(self.zone)
        return _Stamp(local.isoformat(timespec="seconds"), format_time(moment, self.zone))

    def component_names(self, keys: Iterable[str]) -> list[str]:
        return [self.names.get(key, key) for key in keys]

    def affected(self) -> list[Component]:
        return [c for c in self.data.components if c.status != "operational"]

    def open_incidents(self) -> list[Incident]:
        found = [i for i in self.data.incidents if i.is_open]
        return sorted(found, key=lambda i: i.started_at, reverse=True)

    def upcoming_maintenance(self) -> list[Maintenance]:
        found = [m for m in self.data.maintenances if m.status in ("scheduled", "in_progress")]
        return sorted(found, key=lambda m: (m.status != "in_progress", m.start))

    def local_day(self, moment: datetime) -> date:
        return moment.astimezone(self.zone).date()

    def history(self) -> list[tuple[date, list[Incident | Maintenance]]]:
        """Resolved incidents and past maintenance of the last 90 days by local day, newest
        first."""
        days: dict[date, list[Incident | Maintenance]] = {}
        for incident in self.data.incidents:
            if not incident.is_open:
                days.setdefault(self.local_day(incident.started_at), []).append(incident)
        for m in self.data.maintenances:
            if m.status in ("completed", "cancelled"):
                days.setdefault(self.local_day(m.start), []).append(m)

        def started(item: Incident | Maintenance) -> datetime:
            return item.started_at if isinstance(item, Incident) else item.start

        return [
            (day, sorted(days[day], key=started, reverse=True))
            for day in sorted(days, reverse=True)
            if self.first_day <= day <= self.today
        ]

    def day_bars(self) -> list[dict[str, str]]:
        """The 90-day strip: each day's worst state, for the picture above the history."""
        worst: dict[date, str] = {}

        def mark(first: datetime, last: datetime, status: str) -> None:
            day = max(self.local_day(first), self.first_day)
            end = min(self.local_day(last), self.today)
            while day <= end:
                if _severity(status) > _severity(worst.get(day, "operational")):
                    worst[day] = status
                day += timedelta(days=1)

        now = self.data.generated_at
        for incident in self.data.incidents:
            mark(incident.started_at, incident.ended_at or now, _IMPACT_STATUS[incident.impact])
        for m in self.data.maintenances:
            if m.status in ("in_progress", "completed"):
                mark(
                    m.start, min(m.end, now) if m.status == "in_progress" else m.end, "maintenance"
                )
        bars = []
        for n in range(HISTORY_DAYS):
            day = self.first_day + timedelta(days=n)
            status = worst.get(day, "operational")
            word = "No incidents" if status == "operational" else COMPONENT_LABELS[status]
            bars.append({"status": status, "title": f"{_short_date(day)}: {word}"})
        return bars

    def history_counts(self) -> tuple[int, int]:
        incidents = sum(1 for _, items in self.history() for i in items if isinstance(i, Incident))
        windows = sum(1 for _, items in self.history() for i in items if isinstance(i, Maintenance))
        return incidents, windows

    def postmortem(self, incident: Incident) -> markupsafe.Markup:
        return render_markdown(incident.postmortem or "", self._heading_base)

    # Words for keys, used by the template.
    component_label = staticmethod(COMPONENT_LABELS.__getitem__)
    incident_label = staticmethod(INCIDENT_LABELS.__getitem__)
    impact_label = staticmethod(IMPACT_LABELS.__getitem__)
    maintenance_label = staticmethod(MAINTENANCE_LABELS.__getitem__)
    long_date = staticmethod(_long_date)
    duration = staticmethod(_duration)

    @staticmethod
    def is_incident(item: object) -> bool:
        return isinstance(item, Incident)


def _default_root(public_url: str) -> str:
    path = urlsplit(public_url).path.rstrip("/")
    return f"{path}/"


def render_html(data: StatusData, *, templates: Path | None = None, root: str | None = None) -> str:
    """The status page, as served at ``{public_url}/status``.

    Its links to the style sheet, the JSON and the feed start with ROOT, the way from the page to
    the site root: by default the path of ``public_url`` (``/``), so the page works at ``/status``
    and ``/status/`` alike; :func:`export` passes relative ones. TEMPLATES is a deployment's
    templates folder whose ``status/`` may override the shipped templates.
    """
    view = _View(data, _Links(_default_root(data.public_url) if root is None else root))
    html = _environment(templates).get_template("index.html.j2").render(v=view, data=data)
    return html if html.endswith("\n") else html + "\n"


# ------------------------------------------------------------------------------------- JSON


def _ts(ref: str = "timestamp") -> dict[str, str]:
    return {"$ref": f"#/$defs/{ref}"}


STATUS_JSON_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "helpdeskd status page (/status.json)",
    "type": "object",
    "required": [
        "schema_version",
        "service",
        "generated_at",
        "overall",
        "components",
        "incidents",
        "maintenances",
    ],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": 1},
        "service": {
            "type": "object",
            "required": ["name", "url", "page_url", "feed_url", "json_url", "timezone"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "url": {"type": "string", "format": "uri"},
                "page_url": {"type": "string", "format": "uri"},
                "feed_url": {"type": "string", "format": "uri"},
                "json_url": {"type": "string", "format": "uri"},
                "timezone": {"type": "string", "description": "IANA time zone of the HTML page"},
            },
        },
        "generated_at": _ts(),
        "overall": {
            "type": "object",
            "required": ["status", "description"],
            "additionalProperties": False,
            "properties": {
                "status": _ts("component_status"),
                "description": {"type": "string"},
            },
        },
        "components": {"type": "array", "items": _ts("component")},
        "incidents": {"type": "array", "items": _ts("incident")},
        "maintenances": {"type": "array", "items": _ts("maintenance")},
    },
    "$defs": {
        "timestamp": {
            "type": "string",
            "format": "date-time",
            "description": "ISO 8601 in UTC",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
        },
        "component_status": {"enum": list(COMPONENT_STATUSES)},
        "incident_status": {"enum": list(INCIDENT_STATUSES)},
        "component_keys": {"type": "array", "items": {"type": "string"}},
        "component": {
            "type": "object",
            "required": ["key", "name", "status", "status_label"],
            "additionalProperties": False,
            "properties": {
                "key": {"type": "string"},
                "name": {"type": "string"},
                "status": _ts("component_status"),
                "status_label": {"type": "string"},
            },
        },
        "incident": {
            "type": "object",
            "required": [
                "id",
                "title",
                "impact",
                "status",
                "open",
                "components",
                "url",
                "started_at",
                "resolved_at",
                "updates",
                "postmortem",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer"},
                "title": {"type": "string"},
                "impact": {"enum": list(IMPACTS)},
                "status": _ts("incident_status"),
                "open": {"type": "boolean"},
                "components": _ts("component_keys"),
                "url": {"type": "string", "format": "uri"},
                "started_at": _ts(),
                "resolved_at": {"oneOf": [_ts(), {"type": "null"}]},
                "updates": {
                    "type": "array",
                    "description": "oldest first",
                    "items": {
                        "type": "object",
                        "required": ["status", "message", "at"],
                        "additionalProperties": False,
                        "properties": {
                            "status": _ts("incident_status"),
                            "message": {"type": "string"},
                            "at": _ts(),
                        },
                    },
                },
                "postmortem": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["markdown", "html"],
                            "additionalProperties": False,
                            "properties": {
                                "markdown": {"type": "string"},
                                "html": {"type": "string", "description": "sanitised HTML"},
                            },
                        },
                    ]
                },
            },
        },
        "maintenance": {
            "type": "object",
            "required": [
                "id",
                "title",
                "message",
                "status",
                "components",
                "url",
                "start",
                "end",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "integer"},
                "title": {"type": "string"},
                "message": {"type": "string"},
                "status": {"enum": list(MAINTENANCE_STATUSES)},
                "components": _ts("component_keys"),
                "url": {"type": "string", "format": "uri"},
                "start": _ts(),
                "end": _ts(),
            },
        },
    },
}


def status_document(data: StatusData) -> dict[str, Any]:
    """The ``/status.json`` document as a dict (see the module docstring and STATUS_JSON_SCHEMA)."""
    status = overall_status(data)
    incidents = sorted(data.incidents, key=lambda i: i.started_at, reverse=True)
    maintenances = sorted(data.maintenances, key=lambda m: m.start)
    return {
        "schema_version": 1,
        "service": {
            "name": data.service_name,
            "url": data.public_url,
            "page_url": data.page_url,
            "feed_url": data.feed_url,
            "json_url": data.json_url,
            "timezone": data.timezone,
        },
        "generated_at": _utc(data.generated_at),
        "overall": {"status": status, "description": OVERALL_LABELS[status]},
        "components": [
            {
                "key": c.key,
                "name": c.name,
                "status": c.status,
                "status_label": COMPONENT_LABELS[c.status],
            }
            for c in data.components
        ],
        "incidents": [
            {
                "id": i.id,
                "title": i.title,
                "impact": i.impact,
                "status": i.status,
                "open": i.is_open,
                "components": list(i.components),
                "url": f"{data.page_url}#incident-{i.id}",
                "started_at": _utc(i.started_at),
                "resolved_at": _utc(i.ended_at) if i.ended_at else None,
                "updates": [
                    {"status": u.status, "message": u.message, "at": _utc(u.at)} for u in i.updates
                ],
                "postmortem": (
                    {"markdown": i.postmortem, "html": str(render_markdown(i.postmortem))}
                    if i.postmortem
                    else None
                ),
            }
            for i in incidents
        ],
        "maintenances": [
            {
                "id": m.id,
                "title": m.title,
                "message": m.message,
                "status": m.status,
                "components": list(m.components),
                "url": f"{data.page_url}#maintenance-{m.id}",
                "start": _utc(m.start),
                "end": _utc(m.end),
            }
            for m in maintenances
        ],
    }


def render_json(data: StatusData) -> str:
    """``/status.json``: the document of :func:`status_document`, validating against
    STATUS_JSON_SCHEMA."""
    return json.dumps(status_document(data), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------- Atom


def _tag(data: StatusData, moment: datetime, specific: str) -> str:
    """An RFC 4151 tag URI minted by the status page's host on MOMENT's (UTC) date."""
    host = (urlsplit(data.public_url).hostname or "").lower()
    return f"tag:{host},{moment.astimezone(UTC):%Y-%m-%d}:status/{specific}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = _clean(text)
    return element


def _maintenance_updated(m: Maintenance, now: datetime) -> datetime:
    if m.updated_at is not None:
        return m.updated_at
    if m.status == "completed":
        return m.end
    if m.status == "in_progress":
        return m.start
    return m.announced_at or min(m.start, now)


def render_atom(data: StatusData) -> str:
    """``/status/feed.atom``: an Atom feed with an entry per incident update, per maintenance and
    per post-mortem whose publication time is known, newest first."""
    zone = data.zone
    names = {c.key: c.name for c in data.components}
    entries: list[tuple[datetime, ET.Element]] = []

    def entry(
        id_: str, title: str, updated: datetime, link: str, content: str, category: str
    ) -> ET.Element:
        element = ET.Element("entry")
        _sub(element, "id", id_)
        _sub(element, "title", title, type="text")
        _sub(element, "updated", _utc(updated))
        _sub(element, "link", rel="alternate", type="text/html", href=link)
        _sub(element, "category", term=category)
        entries.append((updated, element))
        return element

    def affected(keys: Sequence[str]) -> str:
        return ", ".join(names.get(k, k) for k in keys) or "none named"

    for incident in data.incidents:
        link = f"{data.page_url}#incident-{incident.id}"
        for n, update in enumerate(incident.updates, start=1):
            content = (
                f"{update.message}\n\n"
                f"Status: {INCIDENT_LABELS[update.status]} at {format_time(update.at, zone)}\n"
                f"Impact: {IMPACT_LABELS[incident.impact]}\n"
                f"Affected: {affected(incident.components)}"
            )
            element = entry(
                _tag(data, incident.started_at, f"incident-{incident.id}/update-{n}"),
                f"{INCIDENT_LABELS[update.status]}: {incident.title}",
                update.at,
                link,
                content,
                update.status,
            )
            _sub(element, "published", _utc(update.at))
            _sub(element, "content", content, type="text")
        if incident.postmortem and incident.postmortem_at is not None:
            element = entry(
                _tag(data, incident.started_at, f"incident-{incident.id}/postmortem"),
                f"Post-mortem: {incident.title}",
                incident.postmortem_at,
                f"{data.page_url}#postmortem-{incident.id}",
                incident.postmortem,
                "postmortem",
            )
            _sub(element, "published", _utc(incident.postmortem_at))
            _sub(element, "content", str(render_markdown(incident.postmortem, 2)), type="html")

    for m in data.maintenances:
        content = (
            f"{m.message}\n\n"
            f"Status: {MAINTENANCE_LABELS[m.status]}\n"
            f"From {format_time(m.start, zone)} to {format_time(m.end, zone)}\n"
            f"Affected: {affected(m.components)}"
        )
        element = entry(
            _tag(data, m.announced_at or m.start, f"maintenance-{m.id}"),
            f"Maintenance ({MAINTENANCE_LABELS[m.status].lower()}): {m.title}",
            _maintenance_updated(m, data.generated_at),
            f"{data.page_url}#maintenance-{m.id}",
            content,
            f"maintenance-{m.status}",
        )
        if m.announced_at is not None:
            _sub(element, "published", _utc(m.announced_at))
        _sub(element, "content", content, type="text")

    feed = ET.Element("feed", {"xmlns": _ATOM_NS, "xml:lang": "en"})
    _sub(feed, "id", data.feed_url)
    _sub(feed, "title", f"{data.service_name} status", type="text")
    updated = max((when for when, _ in entries), default=data.generated_at)
    _sub(feed, "updated", _utc(updated))
    _sub(feed, "link", rel="self", type="application/atom+xml", href=data.feed_url)
    _sub(feed, "link", rel="alternate", type="text/html", href=data.page_url)
    author = _sub(feed, "author")
    _sub(author, "name", data.service_name)
    _sub(author, "uri", data.page_url)
    _sub(feed, "generator", "helpdeskd")
    entries.sort(key=lambda pair: pair[0], reverse=True)
    feed.extend(element for _, element in entries)
    ET.indent(feed)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, "unicode") + "\n"


# ----------------------------------------------------------------------------------- export


def _write(path: Path, text: str) -> None:
    """Write TEXT to PATH atomically, so a static host syncing the folder never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(data: StatusData, folder: Path, *, templates: Path | None = None) -> list[Path]:
    """Write the status page as static files under FOLDER and return their paths.

    ``status/index.html`` (the page at ``/status/``), ``index.html`` (the same page for hosting
    FOLDER as a site of its own), ``status.json``, ``status/feed.atom`` and
    ``status/status.css``. Links between them are relative, so they work from any static host and
    from disk; the feed and JSON name the canonical ``public_url`` addresses.
    """
    folder = Path(folder)
    files = [
        (folder / "status" / "index.html", render_html(data, templates=templates, root="../")),
        (folder / "index.html", render_html(data, templates=templates, root="")),
        (folder / "status.json", render_json(data)),
        (folder / "status" / "feed.atom", render_atom(data)),
        (folder / "status" / CSS_NAME, render_css(templates=templates)),
    ]
    for path, text in files:
        _write(path, text)
    return [path for path, _ in files]
