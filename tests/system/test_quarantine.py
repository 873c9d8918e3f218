"""Quarantine keeps what could not be processed, and retry processes it after a fix."""

from __future__ import annotations

import json

from tests.harness import cli, cli_json
from tests.mailgen import customer_mail


def test_retry_after_fixing_the_cause(make_config, smtp_sink, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    ack = templates / "ack.txt.j2"
    ack.write_text("Subject: {{ no_such_variable }}\n\nhello\n")
    config = make_config(smtp=smtp_sink, templates=templates)
    mail = tmp_path / "mail.eml"
    mail.write_bytes(customer_mail(1))

    [line] = cli(config, "ingest", "--json", str(mail)).stdout.splitlines()
    assert json.loads(line)["outcome"] == "quarantined"
    [entry] = cli_json(config, "quarantine", "list")
    assert "no_such_variable" in entry["error"]
    shown = cli_json(config, "quarantine", "show", str(entry["id"]))
    assert "Traceback" in shown["traceback"] and "cannot reach the database" in shown["raw"]
    assert cli_json(config, "tickets", "list") == []

    failed = cli(config, "quarantine", "retry", str(entry["id"]), check=False)
    assert failed.returncode == 1 and cli_json(config, "quarantine", "list")[0]["retries"] == 1

    ack.write_text("Subject: Re: {{ ticket.subject }}\n\nWe have your mail.\n")
    outcome = json.loads(cli(config, "quarantine", "retry", str(entry["id"]), "--json").stdout)
    assert outcome["outcome"] == "new_ticket" and outcome["ticket"]
    assert cli_json(config, "quarantine", "list") == []
    [ticket] = cli_json(config, "tickets", "list")
    assert ticket["ref"] == outcome["ticket"]
    rows = cli_json(config, "outbox", "list")
    assert [(r["kind"], r["state"]) for r in rows] == [
        ("ack", "pending"),
        ("agent_notification", "pending"),
    ]
    # Ingesting the same file again is a duplicate, not a second ticket.
    [again] = cli(config, "ingest", "--json", str(mail)).stdout.splitlines()
    assert json.loads(again)["outcome"] == "duplicate"


def test_retry_of_unknown_entry_is_a_one_line_error(make_config):
    config = make_config()
    proc = cli(config, "quarantine", "retry", "99", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "helpdeskd: no open quarantine entry 99"


async def test_agents_are_reminded_of_quarantine_once_a_day(make_config, smtp_sink):
    from helpdeskd.desk.housekeeping import remind_quarantine
    from tests.harness import Desk

    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        assert not await remind_quarantine(desk.runtime, desk.sessions)  # empty: nothing to say
        await desk.ingest([b"not a mail\r\n"])
        assert await remind_quarantine(desk.runtime, desk.sessions)
        assert not await remind_quarantine(desk.runtime, desk.sessions)  # once a day
        await desk.send_all()
    [reminder] = [d.message for d in smtp_sink.deliveries]
    assert "1 message(s) in quarantine" in reminder["Subject"]
    assert "helpdeskd quarantine retry" in reminder.get_content()
