"""``outbox retry``: a failed mail goes out again once the reason is gone; others are refused."""

from __future__ import annotations

from helpdeskd.outbox.sender import OutboxSender
from tests.harness import Desk, cli, cli_json
from tests.outbox.test_sender import _queue


async def test_retry_sends_a_failed_row_again(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    smtp_sink.handler.refuse["gone@example.org"] = "550 5.1.1 no such user"
    async with Desk(config) as desk:
        await _queue(desk, ["gone@example.org"])
        await OutboxSender(desk.sessions, config.smtp).drain(5)
        [row] = cli_json(config, "outbox", "list")
        assert row["state"] == "failed"

        smtp_sink.handler.refuse.clear()  # the mailbox exists again
        proc = cli(config, "outbox", "retry", str(row["id"]))
        assert proc.stdout == f"outbox row {row['id']} queued again\n"
        [queued] = cli_json(config, "outbox", "list")
        assert queued["state"] == "pending" and queued["next_attempt_at"] is not None
        assert [(r["state"], r["attempts"]) for r in queued["recipients"]] == [("pending", 0)]

        await OutboxSender(desk.sessions, config.smtp).drain(5)
    [sent] = cli_json(config, "outbox", "list")
    assert sent["state"] == "sent"
    assert [d.recipients for d in smtp_sink.deliveries] == [["gone@example.org"]]


async def test_retry_refuses_a_sent_row_and_an_unknown_one(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        await _queue(desk, ["a@example.org"])
        await OutboxSender(desk.sessions, config.smtp).drain(5)
    [row] = cli_json(config, "outbox", "list")
    assert row["state"] == "sent"
    sent = cli(config, "outbox", "retry", str(row["id"]), check=False)
    assert sent.returncode == 1
    assert sent.stderr == f"helpdeskd: outbox row {row['id']} is sent; only failed rows retry\n"
    unknown = cli(config, "outbox", "retry", "99", check=False)
    assert (unknown.returncode, unknown.stderr) == (1, "helpdeskd: no outbox row 99\n")
    assert cli_json(config, "outbox", "list") == [row]  # nothing changed
