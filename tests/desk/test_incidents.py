"""Maintenance and incidents: notice duties, steps by command and by time, the status data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpdeskd.desk.housekeeping import tick_operations
from helpdeskd.desk.incidents import schedule_maintenance, status_data
from helpdeskd.mail.render import Renderer
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.web import feeds
from tests.clocks import ManualClock
from tests.desk.test_notices import CSV, sent_to
from tests.harness import Desk, cli, cli_json


@pytest.fixture
def config(make_config, smtp_sink, tmp_path):
    config = make_config(smtp=smtp_sink)
    source = Path(config.source)
    source.write_text(
        source.read_text() + '\n[status_page.components]\napi = "API"\ndatabases = "Databases"\n'
    )
    customers = tmp_path / "customers.csv"
    customers.write_text(CSV)
    cli(config, "customers", "import", str(customers))
    from helpdeskd.config.load import load_config

    return load_config(source)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="minutes")


def test_maintenance_needs_24_hours_notice_unless_forced(config):
    soon = datetime.now(UTC) + timedelta(hours=3)
    args = [
        "maintenance",
        "schedule",
        "--start",
        _iso(soon),
        "--end",
        _iso(soon + timedelta(hours=1)),
        "--title",
        "Postgres 17 upgrade",
    ]
    refused = cli(config, *args, check=False)
    assert refused.returncode == 1 and "at least 24 h ahead" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert cli(config, *args, "--force", check=False).returncode == 1  # a reason is required
    forced = cli(config, *args, "--force", "--reason", "security fix")
    assert forced.stdout.startswith("maintenance 1:") and "2 mails queued" in forced.stdout
    assert " UTC – " in forced.stdout and "(+00:00)" not in forced.stdout  # the zone once


async def test_maintenance_is_announced_reminded_started_and_completed(config, smtp_sink):
    later = datetime.now(UTC) + timedelta(days=2)
    out = cli(
        config,
        "maintenance",
        "schedule",
        "--start",
        _iso(later),
        "--end",
        _iso(later + timedelta(hours=2)),
        "--title",
        "Storage move",
        "--components",
        "databases",
        "--message",
        "Expect 5 minutes of read-only mode.",
    )
    assert "2 mails queued" in out.stdout  # Cy is deprovisioned
    async with Desk(config) as desk:
        await desk.send_all()
        [announcement] = sent_to(smtp_sink, "ada@customer.example")
        assert "Scheduled maintenance: Storage move" in announcement["Subject"]
        assert announcement["List-Unsubscribe"] is None  # critical
        body = announcement.get_content()
        assert "read-only mode" in body and " UTC" in body  # the zone, said once

        # A maintenance whose time has come moves on by itself: reminded, started, completed
        # as the clock passes each moment (forced: it starts in less than a day).
        clock = ManualClock()
        start, end = clock() + timedelta(hours=3), clock() + timedelta(hours=4)
        async with desk.sessions() as session, session.begin():
            await schedule_maintenance(
                session,
                config,
                Renderer(config.paths.templates),
                title="Quick restart",
                start=start,
                end=end,
                components=["api"],
                force_reason="urgent",
                notify=False,
                now=clock(),
            )
        sender = OutboxSender(desk.sessions, config.smtp, clock=clock)

        async def tick() -> int:
            steps = await tick_operations(desk.runtime, desk.sessions, clock=clock)
            await sender.drain(10)
            return steps

        def told() -> list[str]:
            return [m["Subject"] for m in sent_to(smtp_sink, "ada@customer.example")]

        assert await tick() == 0  # three hours ahead: nothing to do yet
        clock.set(start - timedelta(hours=2))
        assert await tick() == 1  # reminded (reminder_hours = 2)
        assert any("Reminder: Quick restart" in s for s in told())
        assert await tick() == 0  # once
        clock.set(start - timedelta(seconds=1))
        assert await tick() == 0
        clock.set(start)
        assert await tick() == 1  # started
        async with desk.sessions() as session:
            data = await status_data(session, config, now=clock())
        assert {c.key: c.status for c in data.components}["api"] == "maintenance"
        assert any("Maintenance started: Quick restart" in s for s in told())
        clock.set(end)
        assert await tick() == 1  # completed
        async with desk.sessions() as session:
            data = await status_data(session, config, now=clock())
        assert {c.key: c.status for c in data.components}["api"] == "operational"
    subjects = [m["Subject"] for m in sent_to(smtp_sink, "ada@customer.example")]
    assert any("Maintenance completed: Quick restart" in s for s in subjects)


async def test_incident_steps_notices_postmortem_and_reminders(config, smtp_sink, tmp_path):
    opened = cli(
        config,
        "incident",
        "open",
        "--title",
        "Connection errors",
        "--impact",
        "major",
        "--components",
        "databases",
        "--message",
        "Investigating errors.",
        "--notify",
    )
    assert opened.stdout.startswith("incident 1: investigating; notice")
    cli(
        config,
        "incident",
        "update",
        "1",
        "--status",
        "identified",
        "--message",
        "A failed disk.",
        "--notify",
    )
    back = cli(
        config, "incident", "update", "1", "--status", "identified", "--message", "x", check=False
    )
    assert back.returncode == 0  # the same step again is a further update
    early = tmp_path / "pm.md"
    early.write_text("# What happened\n\nA disk failed.\n")
    refused = cli(config, "incident", "postmortem", "1", "--file", str(early), check=False)
    assert refused.returncode == 1 and "not resolved" in refused.stderr
    cli(config, "incident", "resolve", "1", "--message", "Replaced.", "--notify")
    async with Desk(config) as desk:
        clock = ManualClock()
        async with desk.sessions() as session:
            data = await status_data(session, config, now=clock())
        [incident] = data.incidents
        assert [u.status for u in incident.updates] == [
            "investigating",
            "identified",
            "identified",
            "resolved",
        ]
        document = json.loads(feeds.render_json(data))
        assert document["incidents"][0]["title"] == "Connection errors"
        assert await tick_operations(desk.runtime, desk.sessions, clock=clock) == 1  # a reminder
        clock.advance(hours=23, minutes=59)
        assert await tick_operations(desk.runtime, desk.sessions, clock=clock) == 0  # once a day
        await desk.send_all()
        reminders = [
            m for m in sent_to(smtp_sink, "alice@acme.test") if "Post-mortem" in m["Subject"]
        ]
        assert len(reminders) == 1
        clock.advance(minutes=1)
        assert await tick_operations(desk.runtime, desk.sessions, clock=clock) == 1  # next day
        await desk.send_all()
    reminders = [m for m in sent_to(smtp_sink, "alice@acme.test") if "Post-mortem" in m["Subject"]]
    assert len(reminders) == 2
    subjects = [m["Subject"] for m in sent_to(smtp_sink, "bob@customer.example")]
    assert [s.split("]")[1].split(":")[0].strip() for s in subjects] == [
        "Investigating",
        "Identified",
        "Resolved",
    ]
    cli(config, "incident", "postmortem", "1", "--file", str(early))
    [row] = cli_json(config, "incident", "list")
    assert row["postmortem"] and row["status"] == "resolved"


def test_status_and_unsubscribe_pages_served_by_the_daemon_in_chromium(config, smtp_sink, tmp_path):
    from tests.servers import browser
    from tests.servers.smtp import free_port
    from tests.system.test_daemon import start_daemon
    from tests.web.test_app import get, wait_until

    browser.require_chromium()
    port = free_port()
    source = Path(config.source)
    source.write_text(source.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    base = f"http://127.0.0.1:{port}"
    later = datetime.now(UTC) + timedelta(days=3)
    cli(
        config,
        "maintenance",
        "schedule",
        "--start",
        _iso(later),
        "--end",
        _iso(later + timedelta(hours=1)),
        "--title",
        "Storage move",
        "--components",
        "databases",
        "--no-notify",
    )
    cli(
        config,
        "incident",
        "open",
        "--title",
        "Connection errors",
        "--impact",
        "major",
        "--components",
        "databases",
        "--message",
        "Looking into connection timeouts.",
    )
    cli(
        config,
        "incident",
        "update",
        "1",
        "--status",
        "identified",
        "--message",
        "A faulty switch drops connections.",
    )
    cli(config, "notice", "send", "survey", "--template", "survey")
    proc = start_daemon(config)
    try:
        wait_until(lambda: get(base + "/status.json")[0] == 200)
        dom = browser.dump_dom(base + "/status")
        for text in (
            "Connection errors",
            "Identified",
            "A faulty switch drops connections.",
            "Investigating",
            "Storage move",
            "Partial outage",
            "UTC",
        ):
            assert text in dom, text
        shot = tmp_path / "status.png"
        browser.screenshot(base + "/status", shot)
        assert shot.stat().st_size > 10_000
        print("status page screenshot:", shot)
        document = json.loads(get(base + "/status.json")[1])
        assert document["incidents"][0]["status"] == "identified"
        assert b"<feed" in get(base + "/status/feed.atom")[1]

        # The unsubscribe link of the survey, opened in a browser: a confirm page, no change.
        wait_until(
            lambda: any("ada@customer.example" in d.recipients for d in smtp_sink.deliveries)
        )
        [mail] = [d.message for d in smtp_sink.deliveries if "ada@customer.example" in d.recipients]
        url = mail["List-Unsubscribe"].split("<")[1].split(">")[0]
        url = url.replace(config.service.public_url, base)
        page = browser.dump_dom(url)
        assert "Unsubscribe from survey?" in page and "<form" in page
        browser.screenshot(url, tmp_path / "unsubscribe.png")
        prefs = cli_json(config, "contacts", "show", "ada@customer.example")["preferences"]
        assert prefs["survey"] == "subscribed"
    finally:
        proc.terminate()
        proc.wait(30)
