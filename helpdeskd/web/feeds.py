"""The status page's feeds: ``/status.json`` and the Atom feed ``/status/feed.atom``.

Pure renderers from a :class:`~helpdeskd.desk.status.StatusData` to text, like the HTML page of
:mod:`helpdeskd.web.statuspage` (whose sanitised Markdown the post-mortems reuse).

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

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from helpdeskd.desk.status import (
    COMPONENT_LABELS,
    COMPONENT_STATUSES,
    IMPACT_LABELS,
    IMPACTS,
    INCIDENT_LABELS,
    INCIDENT_STATUSES,
    MAINTENANCE_LABELS,
    MAINTENANCE_STATUSES,
    OVERALL_LABELS,
    Maintenance,
    StatusData,
    format_time,
    overall_status,
)
from helpdeskd.web.statuspage import clean_text, render_markdown

__all__ = [
    "STATUS_JSON_SCHEMA",
    "render_atom",
    "render_json",
    "status_document",
]

_ATOM_NS: Final = "http://www.w3.org/2005/Atom"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
    """Build the ``/status.json`` document as a dict (shape: module docstring, schema)."""
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
    """Render ``/status.json``: the document of :func:`status_document` as JSON text.

    It validates against STATUS_JSON_SCHEMA.
    """
    return json.dumps(status_document(data), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------- Atom


def _tag(data: StatusData, moment: datetime, specific: str) -> str:
    """Mint an RFC 4151 tag URI in the status page host's name on MOMENT's (UTC) date."""
    host = (urlsplit(data.public_url).hostname or "").lower()
    return f"tag:{host},{moment.astimezone(UTC):%Y-%m-%d}:status/{specific}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = clean_text(text)
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
    """Render ``/status/feed.atom``: an Atom feed, newest entry first.

    It has an entry per incident update, per maintenance and per post-mortem whose publication
    time is known.
    """
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
