"""The status page renderers (HTML, JSON, Atom, static export) and the page in real Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http.server
import itertools
import json
import re
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urlsplit
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from helpdeskd.web import statuspage as sp
from helpdeskd.web.statuspage import (
    STATUS_JSON_SCHEMA,
    Component,
    Incident,
    IncidentUpdate,
    Maintenance,
    StatusData,
)
from tests.servers import browser


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; the test is skipped without it (fails when CI=true)."""
    return browser.require_chromium()


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
        for n, s in enumerate(sp.INCIDENT_STATUSES[: sp.INCIDENT_STATUSES.index(status) + 1])
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


class Page(HTMLParser):
    """The parts of a page the tests look at: elements, headings, times, links, text by id."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.headings: list[tuple[int, str]] = []
        self.times: list[tuple[str, str]] = []
        self._open: list[list[str]] = []  # text collectors for h1-h6 and time
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if re.fullmatch(r"h[1-6]|time", tag):
            self._open.append([tag, values.get("datetime", ""), ""])

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            name, stamp, text = self._open.pop()
            if name == "time":
                self.times.append((stamp, " ".join(text.split())))
            else:
                self.headings.append((int(name[1]), " ".join(text.split())))
            if self._open:
                self._open[-1][2] += text

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open:
            self._open[-1][2] += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def section(html: str, heading_id: str) -> str:
    """The HTML of the <section> labelled by HEADING_ID (up to the next top-level section)."""
    start = html.index(f'aria-labelledby="{heading_id}"')
    end = html.find('<section class="section"', start)
    return html[start : end if end != -1 else len(html)]


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
    assert sp.overall(data) == expected
    html = sp.render_html(data)
    banner = html[html.index('class="banner') : html.index("</section>")]
    assert f'<h2 id="overall">{expected}</h2>' in banner
    assert f"banner-{sp.overall_status(data)}" in banner
    assert json.loads(sp.render_json(data))["overall"] == {
        "status": sp.overall_status(data),
        "description": expected,
    }


@pytest.mark.parametrize("status", sp.INCIDENT_STATUSES)
def test_each_incident_status(status: str) -> None:
    data = quiet(incidents=(incident(status),))
    html = sp.render_html(data)
    steps = sp.INCIDENT_STATUSES[: sp.INCIDENT_STATUSES.index(status) + 1]
    if status == "resolved":
        assert 'id="current-h"' not in html  # nothing open
        where = section(html, "history-h")
        assert "Resolved" in where and "All 4 updates" in where
    else:
        where = section(html, "current-h")
        assert f'<span class="tag tag-step-{status}">{status.capitalize()}</span>' in where
    # every step is on the page, newest first
    found = [m for m in re.findall(r'class="step step-(\w+)"', where)]
    assert found == list(reversed(steps))
    for step in steps:
        assert f"Step {step}." in where
    document = json.loads(sp.render_json(data))["incidents"][0]
    assert document["status"] == status
    assert document["open"] is (status != "resolved")
    assert [u["status"] for u in document["updates"]] == list(steps)  # oldest first


def test_incident_without_resolved_at_but_resolved_update_is_resolved() -> None:
    item = incident("resolved", resolved_at=None)
    assert not item.is_open and item.ended_at == item.updates[-1].at
    assert json.loads(sp.render_json(quiet(incidents=(item,))))["incidents"][0]["resolved_at"]


@pytest.mark.parametrize(
    ("status", "where", "label"),
    [
        ("scheduled", "maintenance-h", "Scheduled"),
        ("in_progress", "maintenance-h", "In progress"),
        ("completed", "history-h", "Maintenance completed"),
        ("cancelled", "history-h", "Maintenance cancelled"),
    ],
)
def test_maintenance_states(status: str, where: str, label: str) -> None:
    item = maintenance(status)
    data = quiet(maintenances=(item,))
    html = sp.render_html(data)
    part = section(html, where)
    assert 'id="maintenance-3"' in part and "Network upgrade" in part and label in part
    assert sp.format_time(item.start, BERLIN) in part
    assert sp.format_time(item.end, BERLIN) in part
    if where == "history-h":
        assert "No maintenance is scheduled." in section(html, "maintenance-h")
    (entry,) = ET.fromstring(sp.render_atom(data)).findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}title", "").startswith("Maintenance (")
    assert sp.format_time(item.start, BERLIN) in entry.findtext(f"{ATOM}content", "")


def test_empty_page() -> None:
    data = quiet(components=())
    html = sp.render_html(data)
    assert "All systems operational" in html
    assert "No maintenance is scheduled." in html
    assert "No incidents or maintenance since" in html
    assert "No components are listed." in html
    jsonschema.validate(json.loads(sp.render_json(data)), STATUS_JSON_SCHEMA)
    feed = ET.fromstring(sp.render_atom(data))
    assert feed.findall(f"{ATOM}entry") == []
    assert feed.findtext(f"{ATOM}updated") == "2026-11-27T13:00:00Z"


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
    assert sp.format_time(moment, ZoneInfo(zone)) == expected
    # the moment's own zone does not matter, only the configured one
    elsewhere = moment.astimezone(ZoneInfo("Pacific/Auckland"))
    assert sp.format_time(elsewhere, ZoneInfo(zone)) == expected


def test_every_time_on_the_page_names_its_zone_across_dst() -> None:
    # The incident began in summer time and ended in winter time (Berlin, 25 October 2026).
    item = incident(
        "resolved",
        started_at=datetime(2026, 10, 24, 23, 30, tzinfo=UTC),
        resolved_at=datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        updates=(
            IncidentUpdate("investigating", "Looking.", datetime(2026, 10, 24, 23, 30, tzinfo=UTC)),
            IncidentUpdate("resolved", "Fixed.", datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
        ),
    )
    data = quiet(incidents=(item,), maintenances=(maintenance("scheduled"),))
    page = Page(sp.render_html(data))
    assert page.times, "no <time> elements"
    for stamp, text in page.times:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", stamp):  # a day heading: a date, no time of day
            continue
        moment = datetime.fromisoformat(stamp)
        assert moment.utcoffset() is not None, stamp
        assert text == sp.format_time(moment, BERLIN), (stamp, text)
        assert stamp.endswith(("+01:00", "+02:00"))
    texts = [t for _, t in page.times]
    assert "2026-10-25 01:30 CEST (UTC+02:00)" in texts
    assert "2026-10-25 02:30 CET (UTC+01:00)" in texts
    assert '<time datetime="2026-10-25T01:30:00+02:00">' in sp.render_html(data)
    # the 90-day history groups by the local day: 23:30 UTC on the 24th is the 25th in Berlin
    assert (3, "Sunday 25 October 2026") in page.headings
    assert "Times are shown in Europe/Berlin, currently CET (UTC+01:00)." in page.all_text


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


# ----------------------------------------------------------------------------- HTML quality

HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>&amp;'


def test_hostile_text_is_escaped_everywhere() -> None:
    evil_incident = incident(
        title=HOSTILE,
        components=("evil",),
        updates=(IncidentUpdate("investigating", HOSTILE + "\n\x1b[31mred\x00", NOW),),
    )
    data = quiet(
        service_name=HOSTILE,
        components=(Component("evil", HOSTILE, "major_outage"),),
        incidents=(evil_incident, incident("resolved", id=2, title=HOSTILE, postmortem=HOSTILE)),
        maintenances=(maintenance("scheduled", title=HOSTILE, message=HOSTILE),),
    )
    html = sp.render_html(data)
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "\x00" not in html and "\x1b" not in html
    page = Page(html)
    assert (3, HOSTILE) in page.headings  # shown as the text it is
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    # JSON keeps the text exactly; the Atom feed escapes it and still parses
    document = json.loads(sp.render_json(data))
    assert document["incidents"][0]["title"] == HOSTILE
    assert document["service"]["name"] == HOSTILE
    feed = ET.fromstring(sp.render_atom(data))
    titles = [e.findtext(f"{ATOM}title") for e in feed.findall(f"{ATOM}entry")]
    assert f"Investigating: {HOSTILE}" in titles
    assert feed.findtext(f"{ATOM}title") == f"{HOSTILE} status"


def test_postmortem_markdown_is_rendered_and_sanitised() -> None:
    html = str(sp.render_markdown(POSTMORTEM, 5))
    assert "<h5>What happened</h5>" in html and "<h6>What we are changing</h6>" in html
    assert "<strong>primary</strong>" in html and "<code>eu-west-1</code>" in html
    assert "<ol>" in html and "<table>" in html and 'style="text-align:right"' in html
    assert "<script" not in html and "<img" not in html and "href=" not in html
    assert "&lt;script&gt;" in html  # raw HTML in the Markdown is shown as text
    link = str(sp.render_markdown("[docs](https://acme.test/x) <https://acme.test/y>"))
    assert 'href="https://acme.test/x"' in link and 'rel="noopener noreferrer nofollow"' in link
    for hostile in ("[a](javascript:alert(1))", "[a](JaVaScRiPt:x)", "[a](data:text/html,x)"):
        assert "href" not in str(sp.render_markdown(hostile)), hostile
    image = str(sp.render_markdown("![graph](https://acme.test/g.png) ![x](javascript:y)"))
    assert image.count("<img") == 1 and 'src="https://acme.test/g.png"' in image
    deep = str(sp.render_markdown("#### four\n\n###### six", 5))
    assert "<h6>four</h6>" in deep and "<h6>six</h6>" in deep  # never past h6
    page = sp.render_html(sample())
    assert '<details class="postmortem" id="postmortem-41">' in page
    assert "<h5>What happened</h5>" in page


def test_page_structure_is_accessible_and_script_free() -> None:
    html = sp.render_html(sample())
    page = Page(html)
    assert html.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert len(page.find("main")) == 1
    # one h1, and headings never skip a level on the way down
    sequence = [int(n) for n in re.findall(r"<h([1-6])[\s>]", html)]
    assert sequence[0] == 1 and sequence.count(1) == 1
    assert all(b <= a + 1 for a, b in itertools.pairwise(sequence)), sequence
    # no JavaScript, and a policy that would refuse any that got in
    assert "<script" not in html.lower()
    assert not re.search(r"(href|src)\s*=\s*[\"']?\s*javascript:", html, re.I)
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    assert page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"].startswith(
        "script-src 'none'"
    )
    # status in words next to every pill, icons hidden from screen readers
    for c in sample().components:
        assert re.search(
            rf'<li class="component" id="component-{c.key}">\s*<span class="component-name">'
            rf"{re.escape(c.name)}</span>\s*<span class=\"pill pill-{c.status}\">.*?"
            rf"<span>{sp.COMPONENT_LABELS[c.status]}</span>",
            html,
            re.S,
        ), c
    assert all(a.get("aria-hidden") == "true" for a in page.find("svg"))
    assert page.find("link", rel="alternate", type="application/atom+xml")


def _hex(value: str) -> tuple[float, float, float]:
    value = value.lstrip("#")
    if len(value) == 3:
        value = "".join(ch * 2 for ch in value)
    rgb = [int(value[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return lin[0], lin[1], lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = (0.2126 * r + 0.7152 * g + 0.0722 * b_ for r, g, b_ in (_hex(a), _hex(b)))
    hi, lo = max(la, lb), min(la, lb)
    return (hi + 0.05) / (lo + 0.05)


def test_colours_have_sufficient_contrast() -> None:
    css = sp.render_css()
    light_part, dark_part = css.split("@media (prefers-color-scheme: dark)", 1)
    light = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", light_part))
    dark = {
        **light,
        **dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", dark_part.split("}\n}")[0])),
    }
    statuses = [*sp.COMPONENT_STATUSES, "neutral"]
    for scheme in (light, dark):
        pairs = [(f"{s}-fg", f"{s}-bg") for s in statuses]
        pairs += [(f"{s}-fg", "surface") for s in statuses]
        pairs += [("on-solid", f"{s}-solid") for s in sp.COMPONENT_STATUSES]
        pairs += [("text", "surface"), ("text", "page"), ("muted", "surface"), ("muted", "page")]
        pairs += [("link", "surface"), ("link", "page")]
        for fg, bg in pairs:
            ratio = contrast(scheme[fg], scheme[bg])
            assert ratio >= 4.5, f"--{fg} on --{bg}: {ratio:.2f} < 4.5"


# -------------------------------------------------------------------------- JSON and Atom


def test_json_matches_its_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(STATUS_JSON_SCHEMA)
    validator = jsonschema.Draft202012Validator(
        STATUS_JSON_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for data in (sample(), quiet(), quiet(components=())):
        document = json.loads(sp.render_json(data))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []
    document = json.loads(sp.render_json(sample()))
    assert document["service"] == {
        "name": "Acme Postgres add-on",
        "url": "https://support.acme.test",
        "page_url": "https://support.acme.test/status",
        "feed_url": "https://support.acme.test/status/feed.atom",
        "json_url": "https://support.acme.test/status.json",
        "timezone": "Europe/Berlin",
    }
    assert document["generated_at"] == "2026-11-27T13:00:00Z"
    assert [i["id"] for i in document["incidents"]] == [42, 41, 38]
    open_one = document["incidents"][0]
    assert open_one["started_at"] == "2026-11-27T11:02:00Z" and open_one["resolved_at"] is None
    assert open_one["url"] == "https://support.acme.test/status#incident-42"
    assert document["incidents"][1]["postmortem"]["markdown"] == POSTMORTEM
    assert "<script" not in document["incidents"][1]["postmortem"]["html"]
    assert [m["id"] for m in document["maintenances"]] == [5, 6, 7]
    # the schema really constrains: a wrong status or a local timestamp fails
    document["components"][0]["status"] = "on_fire"
    document["maintenances"][0]["start"] = "2026-11-02T06:00:00+01:00"
    assert len(list(validator.iter_errors(document))) == 2


def test_atom_feed() -> None:
    data = sample()
    text = sp.render_atom(data)
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    feed = ET.fromstring(text)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}id") == "https://support.acme.test/status/feed.atom"
    assert feed.findtext(f"{ATOM}title") == "Acme Postgres add-on status"
    assert feed.findtext(f"{ATOM}author/{ATOM}name") == "Acme Postgres add-on"
    links = {link.get("rel"): link.get("href") for link in feed.findall(f"{ATOM}link")}
    assert links == {
        "self": "https://support.acme.test/status/feed.atom",
        "alternate": "https://support.acme.test/status",
    }
    entries = feed.findall(f"{ATOM}entry")
    # 3 + 3 + 1 incident updates, one post-mortem, three maintenances
    assert len(entries) == 11
    ids = [e.findtext(f"{ATOM}id", "") for e in entries]
    assert len(set(ids)) == len(ids)
    assert all(
        re.fullmatch(r"tag:support\.acme\.test,\d{4}-\d{2}-\d{2}:status/[\w/-]+", i) for i in ids
    )
    updated = [e.findtext(f"{ATOM}updated", "") for e in entries]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", u) for u in updated)
    assert updated == sorted(updated, reverse=True)  # newest first
    assert feed.findtext(f"{ATOM}updated") == updated[0]
    for entry in entries:
        assert entry.findtext(f"{ATOM}title")
        assert entry.find(f"{ATOM}content") is not None
        link = entry.find(f"{ATOM}link")
        assert link is not None and link.get("href", "").startswith(
            "https://support.acme.test/status#"
        )
    by_id = {e.findtext(f"{ATOM}id"): e for e in entries}
    steps = [
        by_id[f"tag:support.acme.test,2026-11-27:status/incident-42/update-{n}"] for n in (1, 2, 3)
    ]
    assert [s.findtext(f"{ATOM}title") for s in steps] == [
        f"{label}: Connection errors on eu-west-1 databases"
        for label in ("Investigating", "Identified", "Monitoring")
    ]
    assert steps[2].findtext(f"{ATOM}updated") == "2026-11-27T12:25:00Z"
    assert "error rates are back to normal" in steps[2].findtext(f"{ATOM}content", "")
    assert "Affected: Databases (eu-west-1), Provisioning API" in steps[2].findtext(
        f"{ATOM}content", ""
    )
    post = by_id["tag:support.acme.test,2026-11-12:status/incident-41/postmortem"]
    content = post.find(f"{ATOM}content")
    assert content is not None and content.get("type") == "html"
    assert "<h2>What happened</h2>" in (content.text or "") and "<script" not in (
        content.text or ""
    )
    planned = by_id["tag:support.acme.test,2026-11-25:status/maintenance-7"]
    assert planned.findtext(f"{ATOM}title") == (
        "Maintenance (scheduled): PostgreSQL minor version upgrade (eu-west-1)"
    )
    assert "From 2026-11-29 02:00 CET (UTC+01:00) to 2026-11-29 04:00 CET (UTC+01:00)" in (
        planned.findtext(f"{ATOM}content", "")
    )


def test_atom_ids_do_not_change_as_things_move_on() -> None:
    def ids(data: StatusData) -> set[str]:
        feed = ET.fromstring(sp.render_atom(data))
        return {e.findtext(f"{ATOM}id", "") for e in feed.findall(f"{ATOM}entry")}

    before = ids(sample())
    later = sample(generated_at=NOW + timedelta(days=3))
    assert ids(later) == before
    moved = dataclasses.replace(
        sample().maintenances[0], start=at("2026-12-01 02:00"), end=at("2026-12-01 04:00")
    )
    assert ids(sample(maintenances=(moved, *sample().maintenances[1:]))) == before


# ----------------------------------------------------------------------------------- export

_HREF_TAGS = {"link": "href", "a": "href", "img": "src"}


def local_links(page: Path) -> list[str]:
    parsed = Page(page.read_text())
    hrefs = [a[attr] for tag, attr in _HREF_TAGS.items() for a in parsed.find(tag) if attr in a]
    return [h for h in hrefs if not urlsplit(h).scheme and not h.startswith("#")]


def test_export_writes_static_files_whose_links_work(tmp_path: Path) -> None:
    data = sample()
    written = sp.export(data, tmp_path / "site")
    site = tmp_path / "site"
    assert sorted(p.relative_to(site).as_posix() for p in written) == [
        "index.html", "status.json", "status/feed.atom", "status/index.html", "status/status.css",
    ]  # fmt: skip
    assert not [p for p in site.rglob(".*")]  # no temp files left behind
    for page in (site / "index.html", site / "status" / "index.html"):
        links = local_links(page)
        assert len(links) >= 5, links
        for href in links:
            target = (page.parent / urldefrag(href).url).resolve()
            assert target.is_file(), f"{page.relative_to(site)}: {href} -> {target}"
    assert (site / "status.json").read_text() == sp.render_json(data)
    ET.fromstring((site / "status" / "feed.atom").read_text())
    assert (site / "status" / "status.css").read_text() == sp.render_css()
    # exporting again replaces the files
    sp.export(sample(generated_at=NOW + timedelta(minutes=5)), site)
    assert "14:05 CET" in (site / "status" / "index.html").read_text()


def test_served_links_are_rooted_at_public_url() -> None:
    html = sp.render_html(sample())
    assert 'href="/status/status.css"' in html and 'href="/status.json"' in html
    behind = sp.render_html(sample(public_url="https://acme.test/helpdesk/"))
    assert 'href="/helpdesk/status/status.css"' in behind
    assert 'href="/helpdesk/status/feed.atom"' in behind


def test_templates_folder_overrides(tmp_path: Path) -> None:
    (tmp_path / "status").mkdir()
    (tmp_path / "status" / "status.css").write_text("body { color: black; }\n")
    assert sp.render_css(templates=tmp_path) == "body { color: black; }\n"
    assert "Scheduled maintenance" in sp.render_html(sample(), templates=tmp_path)


# ---------------------------------------------------------------------------------- browser


def status_app(data: StatusData, hits: list[str]) -> web.Application:
    """What the daemon serves, the way it would serve it."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        hits.append(request.path)
        return await handler(request)

    def respond(kind: str, render: functools.partial[str]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=render(), content_type=sp.CONTENT_TYPES[kind].split(";")[0])

        return handler

    app = web.Application(middlewares=[record])
    app.router.add_get("/status", respond("html", functools.partial(sp.render_html, data)))
    app.router.add_get("/status.json", respond("json", functools.partial(sp.render_json, data)))
    app.router.add_get(
        "/status/feed.atom", respond("atom", functools.partial(sp.render_atom, data))
    )
    app.router.add_get("/status/status.css", respond("css", functools.partial(sp.render_css)))
    return app


async def test_status_page_in_chromium(chromium: str, tmp_path: Path) -> None:
    data = sample()
    hits: list[str] = []
    runner = web.AppRunner(status_app(data, hits))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}/status"
        dom = await asyncio.to_thread(browser.dump_dom, url)
        shot = await asyncio.to_thread(browser.screenshot, url, tmp_path / "status.png", 1280, 2600)
    finally:
        await runner.cleanup()
    print(f"\nstatus page screenshot: {shot}")
    assert "/status/status.css" in hits  # the page pulled its style sheet
    page = Page(dom)
    text = page.all_text
    assert "Partial outage" in text  # the banner
    current = section(dom, "current-h")
    for message in (
        "We are investigating connection timeouts",
        "A faulty network switch",
        "error rates are back to normal",
    ):
        assert message in current
    assert re.findall(r'class="step step-(\w+)"', current) == [
        "monitoring",
        "identified",
        "investigating",
    ]
    planned = section(dom, "maintenance-h")
    assert "PostgreSQL minor version upgrade (eu-west-1)" in planned
    assert (
        "2026-11-29 02:00 CET (UTC+01:00)" in planned
        and "2026-11-29 04:00 CET (UTC+01:00)" in planned
    )
    assert "Backup storage migration" in planned
    history = section(dom, "history-h")
    assert "Read-only databases after a failover" in history and "What we are changing" in history
    assert "<script" not in dom.lower()
    assert shot.stat().st_size > 20_000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[tuple[str, int]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.hits.append((self.path, int(code)))


def test_exported_page_works_from_a_static_host(chromium: str, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    sp.export(sample(), folder)
    hits: list[tuple[str, int]] = []
    handler = type("Handler", (_QuietHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        dom = browser.dump_dom(f"http://{host!s}:{port}/status/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert ("/status/status.css", 200) in hits, hits
    assert "Connection errors on eu-west-1 databases" in dom


def test_browser_helper_reports_failures_clearly(chromium: str, tmp_path: Path) -> None:
    with pytest.raises(browser.BrowserError, match="did not finish"):
        browser.dump_dom("data:text/html,<title>x</title>", timeout=0.01)
