"""``retention report`` says what goes and when; ``retention run`` removes what is due now."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from helpdeskd.cli.retention import _print_report
from helpdeskd.clock import system_clock
from helpdeskd.desk.retention import Due, report
from helpdeskd.store.db import reading
from tests.conftest import config_factory, sqlite_database
from tests.desk.privacy_scene import build_light
from tests.desk.test_retention import age
from tests.harness import Desk, cli, cli_json


@pytest.fixture
def sqlite_config(request, tmp_path):
    """SQLite only: the commands print what helpdeskd.desk.retention returns, which is tested
    on both databases."""
    url = sqlite_database(request, tmp_path / "helpdeskd.db")
    return config_factory(tmp_path, url)()


async def test_report_then_run(sqlite_config, tmp_path):
    config = sqlite_config
    scene = await build_light(config, tmp_path)
    async with Desk(config) as desk:
        ids = await age(desk, scene)
    said = cli_json(config, "retention", "report", "--days", "700")
    assert said["rules"]["raw_mail"] == 90 and said["rules"]["processed_mail"] is None
    items = said["items"]
    held = [(i["category"], i["ticket"]) for i in items if i["held"]]
    assert ("closed_ticket", scene.ada_tickets[1]) in held
    due = {(i["category"], i["id"]) for i in items if not i["held"] and i["due_at"] <= said["now"]}
    assert ("closed_ticket", ids["bob"]) in due

    ran = cli(config, "retention", "run").stdout
    counts = Counter(category for category, _ in due)
    order = ("raw_mail", "quarantine", "sent_mail", "events", "closed_ticket")
    assert ran == (
        "removed: "
        + ", ".join(f"{c} {counts[c]}" for c in order)
        + "; files: 1\n"  # Bob's attachment, with his closed ticket's bodies
    )
    async with Desk(config) as desk, reading(desk.sessions) as session:
        assert [d for d in await report(session, config, system_clock()) if not d.held] == []


def test_the_report_in_words(sqlite_config, capsys):
    config = sqlite_config
    now = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    items = [
        Due("raw_mail", 1, "HD-1", now - timedelta(days=1)),
        Due("raw_mail", 2, None, now),
        Due("events", 3, "HD-3", now + timedelta(days=2), count=5),
        Due("closed_ticket", 4, "HD-4", now, held=True),
    ]
    _print_report(config, items, now, 30)
    assert capsys.readouterr().out.splitlines() == [
        "retention at 2026-12-06 09:30 UTC, looking 30 day(s) ahead",
        "  raw_mail: raw mail, after its ticket closed (no ticket: after arrival): 90 days",
        "  quarantine: quarantined mail, after it was resolved: 30 days",
        "  sent_mail: copies of sent mail in the outbox: 90 days",
        "  events: events (a ticket's: after it closed): 730 days",
        "  closed_ticket: a closed ticket's bodies and attachments: 730 days",
        "  processed_mail: mail in the processed folders, after arrival: kept for ever",
        "due now: raw_mail 2",
        "  2026-12-08  events         5",
        "kept under legal hold: closed_ticket of HD-4",
    ]
