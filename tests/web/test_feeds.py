"""The status page's feeds: /status.json against its schema, and the Atom feed."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import jsonschema

from helpdeskd.desk.status import StatusData
from helpdeskd.web import feeds
from helpdeskd.web.feeds import STATUS_JSON_SCHEMA
from tests.statusgen import ATOM, NOW, POSTMORTEM, at, quiet, sample


def test_json_matches_its_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(STATUS_JSON_SCHEMA)
    validator = jsonschema.Draft202012Validator(
        STATUS_JSON_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for data in (sample(), quiet(), quiet(components=())):
        document = json.loads(feeds.render_json(data))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []
    document = json.loads(feeds.render_json(sample()))
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
    text = feeds.render_atom(data)
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
        feed = ET.fromstring(feeds.render_atom(data))
        return {e.findtext(f"{ATOM}id", "") for e in feed.findall(f"{ATOM}entry")}

    before = ids(sample())
    later = sample(generated_at=NOW + timedelta(days=3))
    assert ids(later) == before
    moved = dataclasses.replace(
        sample().maintenances[0], start=at("2026-12-01 02:00"), end=at("2026-12-01 04:00")
    )
    assert ids(sample(maintenances=(moved, *sample().maintenances[1:]))) == before
