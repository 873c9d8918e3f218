"""Never lose, never duplicate, never loop: bounces, complaints, races, oversize, the corpus."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from helpdeskd.config.secrets import Secret
from helpdeskd.daemon.run import ProcessorSink
from helpdeskd.imap.watcher import MailboxWatcher
from tests.conftest import CORPUS, CORPUS_NOT_MAIL
from tests.desk.test_agents import AGENTS, ALICE, Scene, mails_to
from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail


def _report(kind: str, subject: str, sender: str, message_id: str, parts: list[str]) -> bytes:
    """A multipart/report (RFC 6522) with the given parts, each 'Content-Type: …\n\nbody'."""
    boundary = "report-boundary-1"
    lines = [
        f"From: {sender}",
        "To: support@acme.test",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="{kind}"; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain",
        "",
        "This is an automatically generated report.",
    ]
    for part in parts:
        lines += [f"--{boundary}", part]
    lines.append(f"--{boundary}--")
    return ("\r\n".join(lines) + "\r\n").replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode()


def dsn(original_id: str, recipient: str, status: str = "5.1.1") -> bytes:
    """An RFC 3464 delivery status notification about our mail ORIGINAL_ID."""
    tag = hashlib.sha1(original_id.encode()).hexdigest()[:12]
    return _report(
        "delivery-status",
        "Undelivered Mail Returned to Sender",
        "Mail Delivery System <MAILER-DAEMON@mx.example.org>",
        f"<dsn-{tag}@mx.example.org>",
        [
            "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
            f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: {status}\n"
            f"Diagnostic-Code: smtp; 550 {status} no such user\n",
            "Content-Type: text/rfc822-headers\n\nFrom: support@acme.test\n"
            f"To: {recipient}\nMessage-ID: {original_id}\n",
        ],
    )


def arf(original_id: str, complainant: str) -> bytes:
    """An ARF (RFC 5965) abuse report about our mail ORIGINAL_ID."""
    return _report(
        "feedback-report",
        "Abuse report",
        "abuse@isp.example",
        "<arf-1@isp.example>",
        [
            "Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
            f"User-Agent: isp/1.0\nVersion: 1\nOriginal-Rcpt-To: {complainant}\n",
            "Content-Type: text/rfc822-headers\n\nFrom: support@acme.test\n"
            f"To: {complainant}\nMessage-ID: {original_id}\n",
        ],
    )


@pytest.fixture
def config(make_config, smtp_sink):
    return make_config(smtp=smtp_sink, agents=AGENTS)


async def test_bounce_of_an_agent_reply(make_config, smtp_sink):
    # One hard bounce reaches the threshold here (five days of them by default).
    config = make_config(smtp=smtp_sink, agents=AGENTS, extra="[bounces]\nthreshold = 1\n")
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        await scene.answer("We fixed it.")
        [reply] = [
            m for m in mails_to(smtp_sink, "customer1@example.org") if m["Auto-Submitted"] is None
        ]
        [outcome] = await desk.ingest([dsn(reply["Message-ID"], "customer1@example.org")])
        await desk.send_all()
        # The contact is suspended now: a new ticket from it gets no acknowledgement.
        await desk.ingest([customer_mail(1, subject="another question")])
        await desk.send_all()
    assert outcome.outcome == "bounce" and outcome.ticket == ref
    assert "hard 5.1.1" in outcome.reason
    assert len(cli_json(config, "tickets", "list")) == 2
    detail = cli_json(config, "tickets", "show", ref)
    assert [e for e in detail["events"] if e["type"] == "bounce"]
    told = [m for m in mails_to(smtp_sink, ALICE) if "Undeliverable" in str(m["Subject"])]
    assert told and "customer1@example.org" in told[0].get_content()
    acks = [m for m in mails_to(smtp_sink, "customer1@example.org") if m["Auto-Submitted"]]
    assert len(acks) == 1  # the first ticket's only


async def test_arf_complaint_suppresses_the_complainant(config, smtp_sink):
    async with Desk(config) as desk:
        await desk.ingest([customer_mail(2)])
        await desk.send_all()
        [ack] = mails_to(smtp_sink, "customer2@example.org")
        [outcome] = await desk.ingest([arf(ack["Message-ID"], "customer2@example.org")])
        await desk.ingest([customer_mail(2, subject="again")])
        await desk.send_all()
    assert outcome.outcome == "report" and "suppressed" in outcome.reason
    assert len(mails_to(smtp_sink, "customer2@example.org")) == 1


async def test_cc_race_makes_one_ticket(config, smtp_sink):
    # Replies to all, as mail clients write them: each names the others. Remembered IDs join
    # only mail from the addresses on the mail that remembered them.
    original = customer_mail(
        1,
        sender="a@example.org",
        message_id="<orig@example.org>",
        cc=("b@example.org", "c@example.org"),
    )
    from_b = customer_mail(
        2,
        sender="b@example.org",
        subject="Re: outage",
        in_reply_to="<orig@example.org>",
        references=("<orig@example.org>",),
        message_id="<b@example.org>",
        cc=("a@example.org", "c@example.org"),
    )
    from_c = customer_mail(
        3,
        sender="c@example.org",
        subject="Re: outage",
        in_reply_to="<orig@example.org>",
        references=("<orig@example.org>",),
        message_id="<c@example.org>",
        cc=("a@example.org", "b@example.org"),
    )
    async with Desk(config) as desk:
        # Both replies arrive before the original they answer.
        outcomes = await desk.ingest([from_b, from_c, original])
    assert [o.outcome for o in outcomes] == ["new_ticket", "reply", "reply"]
    assert len({o.ticket for o in outcomes}) == 1


async def test_one_mail_to_two_mailboxes_is_one_ticket(config, smtp_sink):
    mail = customer_mail(4, cc=("billing@acme.test",))
    async with Desk(config) as desk:
        [first] = await desk.ingest([mail], source="support")
        [second] = await desk.ingest([mail], source="billing")
    assert first.outcome == "new_ticket"
    assert second.outcome == "duplicate" and second.ticket == first.ticket


async def test_oversize_file_is_kept_on_disk_with_a_ticket_and_one_notice(
    make_config, smtp_sink, tmp_path
):
    config = make_config(smtp=smtp_sink, service={"max_message_bytes": 50_000})
    big = customer_mail(5, attachment=True, body="x" * 60_000)
    path = tmp_path / "big.eml"
    path.write_bytes(big)
    [line] = cli(config, "ingest", "--json", str(path)).stdout.splitlines()
    outcome = json.loads(line)
    assert outcome["outcome"] == "new_ticket"
    detail = cli_json(config, "tickets", "show", outcome["ticket"])
    [message] = [m for m in detail["messages"] if m["direction"] == "in"]
    assert "over the 50 kB limit" in message["text"]
    kept = Path(message["text"].split("kept at ")[1].rstrip(".]"))
    assert kept.read_bytes() == big
    async with Desk(config) as desk:
        await desk.send_all()
    [notice] = mails_to(smtp_sink, "customer5@example.org")
    assert "larger than" in notice.get_content()
    assert "cannot reach the database" not in notice.get_content()


async def test_oversize_over_imap_is_spooled_in_pieces(make_config, smtp_sink, dovecot):
    mailbox = {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": "support@acme.test",
        "password": "secret",
        "processed_folder": "Processed",
        "max_message_bytes": 100_000,
    }
    config = make_config(smtp=smtp_sink, mailboxes=[mailbox])
    big = customer_mail(6, body="y" * 9_500_000)  # three 4 MiB pieces
    dovecot.append("support@acme.test", "secret", big)
    async with Desk(config) as desk:
        sink = ProcessorSink(desk.processor, desk.sessions)
        watcher = MailboxWatcher(
            config.mailboxes[0],
            sink,
            stop=asyncio.Event(),
            spool_dir=config.service.state_dir / "oversize",
        )
        assert await watcher.run_once() == 1
    [ticket] = cli_json(config, "tickets", "list")
    [spooled] = (config.service.state_dir / "oversize").glob("*.eml")
    assert spooled.read_bytes().replace(b"\r\n", b"\n") == big.replace(b"\r\n", b"\n")
    assert dovecot.list_uids("support@acme.test", "secret", "INBOX") == []
    assert ticket["requester"] == "customer6@example.org"


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not beside the checkout")
def test_every_corpus_file_is_ingested_and_nothing_is_lost(make_config, tmp_path):
    config = make_config()
    files = sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in CORPUS_NOT_MAIL and not p.name.startswith("body.")
    )
    proc = cli(config, "ingest", "--json", "--backfill", *map(str, files), timeout=600)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    by_file = Counter(row["source"].split(":", 1)[1] for row in rows)
    assert {str(p.resolve()) for p in files} <= set(by_file), "a file produced no outcome"
    outcomes = Counter(row["outcome"] for row in rows)
    quarantined = sorted(row["source"] for row in rows if row["outcome"] == "quarantined")
    print("corpus outcomes:", dict(outcomes), "quarantined:", quarantined)
    # Every quarantined mail is really kept: its bytes can be shown again.
    entries = cli_json(config, "quarantine", "list")
    assert len(entries) == len(quarantined)
    assert len(quarantined) <= 10, quarantined


async def test_flood_pauses_automatic_mail_and_tells_agents_once(make_config, smtp_sink):
    config = make_config(
        smtp=smtp_sink, agents=AGENTS, service={"flood_messages": 3, "autoreply_limit": 50}
    )
    mails = [customer_mail(n, sender="robot@loop.example", subject=f"loop {n}") for n in range(8)]
    async with Desk(config) as desk:
        outcomes = await desk.ingest(mails)
        await desk.send_all()
    assert [o.outcome for o in outcomes] == ["new_ticket"] * 8  # everything is stored
    acks = mails_to(smtp_sink, "robot@loop.example")
    assert len(acks) == 3
    alerts = [m for m in mails_to(smtp_sink, ALICE) if "Mail flood" in str(m["Subject"])]
    assert len(alerts) == 1


async def test_failing_mailbox_alerts_agents_once_then_all_clear(make_config, smtp_sink, dovecot):
    mailbox = {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": "support@acme.test",
        "password": "wrong-password",
        "processed_folder": "Processed",
    }
    config = make_config(
        smtp=smtp_sink, agents=AGENTS, mailboxes=[mailbox], service={"alert_after": 0}
    )
    async with Desk(config) as desk:
        sink = ProcessorSink(desk.processor, desk.sessions)
        stop = asyncio.Event()
        watcher = MailboxWatcher(config.mailboxes[0], sink, stop=stop)
        watcher.backoff_initial, watcher.backoff_max = 0.2, 0.3
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(3)  # failed polls: the first is already past alert_after
        stop.set()
        await asyncio.wait_for(task, 20)
        await desk.send_all()
        alerts = [m for m in mails_to(smtp_sink, ALICE) if "cannot be polled" in str(m["Subject"])]
        assert len(alerts) == 1 and "wrong" not in alerts[0].get_content()
        status = cli_json(config, "status")
        assert status["mailboxes"][0]["last_error"]

        good = MailboxWatcher(
            replace(config.mailboxes[0], password=Secret("secret")), sink, stop=asyncio.Event()
        )
        await good.run_once()
        await desk.send_all()
    clear = [m for m in mails_to(smtp_sink, ALICE) if "works again" in str(m["Subject"])]
    assert len(clear) == 1
    assert cli_json(config, "status")["mailboxes"][0]["last_error"] is None


async def test_outlook_thread_index_is_continued_and_joins_replies(config, smtp_sink):
    import base64

    root = base64.b64encode(bytes([1]) + b"\x01\xd9\x8a\x11\x22" + bytes(range(16))).decode()
    first = customer_mail(7, headers={"Thread-Index": root, "Thread-Topic": "sync"})
    async with Desk(config) as desk:
        [created] = await desk.ingest([first])
        await desk.send_all()
        [ack] = mails_to(smtp_sink, "customer7@example.org")
        continued = base64.b64decode(ack["Thread-Index"])
        assert continued[:22] == base64.b64decode(root) and len(continued) == 27
        # Outlook's reply lost In-Reply-To and References, and the subject changed.
        reply_index = base64.b64encode(continued + b"\x00\x00\x00\x10\x01").decode()
        lost = customer_mail(7, subject="new words", headers={"Thread-Index": reply_index})
        [joined] = await desk.ingest([lost])
    assert joined.outcome == "reply" and joined.ticket == created.ticket
    assert "Thread-Index" in joined.reason


def _tnef(files: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    """A minimal TNEF (winmail.dat) blob, as Outlook writes it."""
    import struct

    def attr(level: int, attribute: int, data: bytes) -> bytes:
        head = struct.pack("<BII", level, attribute, len(data))
        return head + data + struct.pack("<H", sum(data) & 0xFFFF)

    blob = struct.pack("<IH", 0x223E9F78, 0x1234) + attr(1, 0x9006, struct.pack("<I", 0x10000))
    if body:
        blob += attr(1, 0x800C, body + b"\x00")
    for name, data in files:
        blob += attr(2, 0x9002, b"\x00" * 14)
        blob += attr(2, 0x8010, name.encode() + b"\x00")
        blob += attr(2, 0x800F, data)
    return blob


async def test_winmail_dat_is_unpacked_and_attachments_kept_by_content(config, smtp_sink):
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage()
    msg["From"] = "Outlook User <outlook@example.org>"
    msg["To"] = "support@acme.test"
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = "<tnef-1@example.org>"
    msg.set_content("")
    msg.add_attachment(
        _tnef([("server.log", b"ERROR connection refused\n")], b"Please see the log."),
        maintype="application",
        subtype="ms-tnef",
        filename="winmail.dat",
    )
    async with Desk(config) as desk:
        [outcome] = await desk.ingest([msg.as_bytes(policy=SMTP)])
    detail = cli_json(config, "tickets", "show", outcome.ticket)
    [message] = [m for m in detail["messages"] if m["direction"] == "in"]
    assert message["attachments"] == [
        {"name": "server.log", "type": "application/octet-stream", "size": 25}
    ]
    assert "Please see the log." in message["full_text"]
    digest = hashlib.sha256(b"ERROR connection refused\n").hexdigest()
    kept = config.service.state_dir / "attachments" / digest[:2] / digest
    assert kept.read_bytes() == b"ERROR connection refused\n"
