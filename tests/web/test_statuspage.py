"""The status page in HTML: states, times, escaping, accessibility, and the page in Chromium."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from helpdeskd.desk.status import (
    COMPONENT_LABELS,
    COMPONENT_STATUSES,
    INCIDENT_STATUSES,
    Component,
    IncidentUpdate,
    StatusData,
    format_time,
)
from helpdeskd.web import feeds
from helpdeskd.web import statuspage as sp
from helpdeskd.web.feeds import STATUS_JSON_SCHEMA
from tests.servers import browser
from tests.statusgen import ATOM, BERLIN, NOW, POSTMORTEM, incident, maintenance, quiet, sample


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


# ----------------------------------------------------------------------------------- states


@pytest.mark.parametrize("status", INCIDENT_STATUSES)
def test_each_incident_status(status: str) -> None:
    data = quiet(incidents=(incident(status),))
    html = sp.render_html(data)
    steps = INCIDENT_STATUSES[: INCIDENT_STATUSES.index(status) + 1]
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
    document = json.loads(feeds.render_json(data))["incidents"][0]
    assert document["status"] == status
    assert document["open"] is (status != "resolved")
    assert [u["status"] for u in document["updates"]] == list(steps)  # oldest first


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
    assert format_time(item.start, BERLIN) in part
    assert format_time(item.end, BERLIN) in part
    if where == "history-h":
        assert "No maintenance is scheduled." in section(html, "maintenance-h")
    (entry,) = ET.fromstring(feeds.render_atom(data)).findall(f"{ATOM}entry")
    assert entry.findtext(f"{ATOM}title", "").startswith("Maintenance (")
    assert format_time(item.start, BERLIN) in entry.findtext(f"{ATOM}content", "")


def test_empty_page() -> None:
    data = quiet(components=())
    html = sp.render_html(data)
    assert "All systems operational" in html
    assert "No maintenance is scheduled." in html
    assert "No incidents or maintenance since" in html
    assert "No components are listed." in html
    jsonschema.validate(json.loads(feeds.render_json(data)), STATUS_JSON_SCHEMA)
    feed = ET.fromstring(feeds.render_atom(data))
    assert feed.findall(f"{ATOM}entry") == []
    assert feed.findtext(f"{ATOM}updated") == "2026-11-27T13:00:00Z"


def test_history_summary_does_not_deny_what_the_bars_show_today() -> None:
    """An open incident colours today's bar; the summary under the bars must not say there
    were no incidents."""
    html = sp.render_html(quiet(incidents=(incident("identified"),)))
    summary = section(html, "history-h")
    assert 'class="bar bar-partial_outage"' in summary  # today, the last bar
    assert "No incidents" not in summary.split("history-summary", 1)[1]
    assert "what is under way now is shown above" in summary
    resolved = incident("resolved", id=2)
    html = sp.render_html(quiet(incidents=(incident("monitoring"), resolved)))
    assert "1 resolved incident and 0 maintenance windows since" in html
    assert "what is under way now is shown above" in html
    html = sp.render_html(quiet(incidents=(resolved,)))
    assert "what is under way" not in html


# ------------------------------------------------------------------------------------ times


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
        assert text == format_time(moment, BERLIN), (stamp, text)
        assert stamp.endswith(("+01:00", "+02:00"))
    texts = [t for _, t in page.times]
    assert "2026-10-25 01:30 CEST (UTC+02:00)" in texts
    assert "2026-10-25 02:30 CET (UTC+01:00)" in texts
    assert '<time datetime="2026-10-25T01:30:00+02:00">' in sp.render_html(data)
    # the 90-day history groups by the local day: 23:30 UTC on the 24th is the 25th in Berlin
    assert (3, "Sunday 25 October 2026") in page.headings
    assert "Times are shown in Europe/Berlin, currently CET (UTC+01:00)." in page.all_text


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
    document = json.loads(feeds.render_json(data))
    assert document["incidents"][0]["title"] == HOSTILE
    assert document["service"]["name"] == HOSTILE
    feed = ET.fromstring(feeds.render_atom(data))
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
            rf"<span>{COMPONENT_LABELS[c.status]}</span>",
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
    statuses = [*COMPONENT_STATUSES, "neutral"]
    for scheme in (light, dark):
        pairs = [(f"{s}-fg", f"{s}-bg") for s in statuses]
        pairs += [(f"{s}-fg", "surface") for s in statuses]
        pairs += [("on-solid", f"{s}-solid") for s in COMPONENT_STATUSES]
        pairs += [("text", "surface"), ("text", "page"), ("muted", "surface"), ("muted", "page")]
        pairs += [("link", "surface"), ("link", "page")]
        for fg, bg in pairs:
            ratio = contrast(scheme[fg], scheme[bg])
            assert ratio >= 4.5, f"--{fg} on --{bg}: {ratio:.2f} < 4.5"


# ----------------------------------------------------------------------------------- links


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
    app.router.add_get("/status.json", respond("json", functools.partial(feeds.render_json, data)))
    app.router.add_get(
        "/status/feed.atom", respond("atom", functools.partial(feeds.render_atom, data))
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


def test_browser_helper_reports_failures_clearly(chromium: str, tmp_path: Path) -> None:
    with pytest.raises(browser.BrowserError, match="did not finish"):
        browser.dump_dom("data:text/html,<title>x</title>", timeout=0.01)
