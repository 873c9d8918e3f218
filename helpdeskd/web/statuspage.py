"""The public status page as HTML: the page, its style sheet and the Markdown of post-mortems.

Nothing here reads a clock or the database; the caller builds a
:class:`~helpdeskd.desk.status.StatusData` (its ``generated_at`` is "now") and serves what comes
out of this module and of :mod:`helpdeskd.web.feeds`:

=========================  ===========================  ========================================
URL (under ``public_url``)  renderer                     content type (:data:`CONTENT_TYPES`)
=========================  ===========================  ========================================
``/status``                 :func:`render_html`          ``text/html; charset=utf-8``
``/status/status.css``      :func:`render_css`           ``text/css; charset=utf-8``
``/status.json``            :func:`feeds.render_json`    ``application/json``
``/status/feed.atom``       :func:`feeds.render_atom`    ``application/atom+xml; charset=utf-8``
=========================  ===========================  ========================================

:func:`helpdeskd.web.export.export` writes the same as static files.

The page has no JavaScript at all (a Content-Security-Policy forbids scripts even if some got in),
states every status in words (colour and icon only repeat it), puts every time in a ``<time
datetime=…>`` element and shows it in the configured zone with its name and offset, as in
``2026-11-27 14:00 CET (UTC+01:00)``. Templates live in ``templates/status/`` (a deployment's
templates folder may override them) and are always autoescaped. Post-mortems are Markdown,
rendered by markdown-it-py with raw HTML off and then sanitised by nh3 (ammonia).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jinja2
import markupsafe
import nh3
from markdown_it import MarkdownIt

from helpdeskd.config.settings import DEFAULT_TEMPLATES
from helpdeskd.desk.status import (
    COMPONENT_LABELS,
    IMPACT_LABELS,
    IMPACT_STATUS,
    INCIDENT_LABELS,
    MAINTENANCE_LABELS,
    OVERALL_LABELS,
    Component,
    Incident,
    Maintenance,
    StatusData,
    format_time,
    overall_status,
    severity,
    zone_label,
)

__all__ = [
    "CONTENT_TYPES",
    "CSS_NAME",
    "clean_text",
    "render_css",
    "render_html",
    "render_markdown",
]

CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "json": "application/json",
    "atom": "application/atom+xml; charset=utf-8",
}
HISTORY_DAYS: Final = 90
CSS_NAME: Final = "status.css"

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
# Characters XML 1.0 cannot carry (and that have no business on a web page either).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


# -------------------------------------------------------------------------------------- words


def clean_text(text: str) -> str:
    """Drop the characters XML 1.0 cannot carry from TEXT (the page, the feed and Markdown)."""
    return _BAD_CHARS.sub("", text)


def _long_date(day: date) -> str:
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]} {day.year}"


def _short_date(day: date) -> str:
    return f"{day.day} {_MONTHS[day.month - 1][:3]} {day.year}"


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
    tokens = md.parse(clean_text(text))
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
    """Escape every status template: all are HTML, whatever their suffix.

    select_autoescape(['html']) would miss ``.html.j2``.
    """
    return True


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return clean_text(value)
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
    """Return the page's style sheet, served at ``/status/status.css``.

    A deployment's templates folder may override it.
    """
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

    def under_way(self) -> int:
        """How many incidents are open and maintenance windows in progress: the bars show
        them today, the history below does not (it holds what is over)."""
        running = sum(1 for m in self.data.maintenances if m.status == "in_progress")
        return len(self.open_incidents()) + running

    def upcoming_maintenance(self) -> list[Maintenance]:
        found = [m for m in self.data.maintenances if m.status in ("scheduled", "in_progress")]
        return sorted(found, key=lambda m: (m.status != "in_progress", m.start))

    def local_day(self, moment: datetime) -> date:
        return moment.astimezone(self.zone).date()

    def history(self) -> list[tuple[date, list[Incident | Maintenance]]]:
        """Group resolved incidents and past maintenance of the last 90 days by local day.

        The newest day comes first, and within a day the latest start.
        """
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
        """Return the 90-day strip: each day's worst state, for the picture above the history."""
        worst: dict[date, str] = {}

        def mark(first: datetime, last: datetime, status: str) -> None:
            day = max(self.local_day(first), self.first_day)
            end = min(self.local_day(last), self.today)
            while day <= end:
                if severity(status) > severity(worst.get(day, "operational")):
                    worst[day] = status
                day += timedelta(days=1)

        now = self.data.generated_at
        for incident in self.data.incidents:
            mark(incident.started_at, incident.ended_at or now, IMPACT_STATUS[incident.impact])
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
    """Render the status page, as served at ``{public_url}/status``.

    Its links to the style sheet, the JSON and the feed start with ROOT, the way from the page to
    the site root: by default the path of ``public_url`` (``/``), so the page works at ``/status``
    and ``/status/`` alike; :func:`helpdeskd.web.export.export` passes relative ones. TEMPLATES
    is a deployment's templates folder whose ``status/`` may override the shipped templates.
    """
    view = _View(data, _Links(_default_root(data.public_url) if root is None else root))
    html = _environment(templates).get_template("index.html.j2").render(v=view, data=data)
    return html if html.endswith("\n") else html + "\n"
