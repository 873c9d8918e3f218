"""Build realistic test mail: what customers' clients send (plain, alternative, attachments,
encoded subjects, replies). Used by the tests and by the benchmarks."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

SUBJECTS = [
    "Database connection refused since this morning",
    "Invoice question for March",
    "Wie kann ich den Plan wechseln?",
    "Problème de connexion à la base",
    "データベースに接続できません",
    "Backups not running",
    "Need help with connection pooling",
    "Refund for the duplicate charge",
]


def customer_mail(
    n: int,
    *,
    sender: str | None = None,
    name: str | None = None,
    subject: str | None = None,
    to: str = "support@acme.test",
    cc: tuple[str, ...] = (),
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    body: str | None = None,
    html: bool = False,
    attachment: bool = False,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{name or f'Customer {n}'} <{sender or f'customer{n}@example.org'}>"
    msg["To"] = to
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject if subject is not None else f"{SUBJECTS[n % len(SUBJECTS)]} #{n}"
    msg["Date"] = format_datetime(datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=n))
    if message_id is None:
        # Deterministic, so a test can build the same mail twice; distinct per content.
        seed = f"{n}|{sender}|{subject}|{to}|{cc}|{in_reply_to}|{body}|{headers}"
        message_id = f"<c{n}.{hashlib.sha1(seed.encode()).hexdigest()[:16]}@example.org>"
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for key, value in (headers or {}).items():
        msg[key] = value
    text = body or (
        f"Hello support,\n\nmy app number {n} cannot reach the database since 09:00.\n"
        "The error is: FATAL: too many connections for role.\n\nThanks,\nCustomer\n"
    )
    msg.set_content(text)
    if html:
        msg.add_alternative(
            f"<html><body><p>{text.replace(chr(10), '<br>')}</p></body></html>", subtype="html"
        )
    if attachment:
        rnd = random.Random(n)
        msg.add_attachment(
            bytes(rnd.getrandbits(8) for _ in range(20_000)),
            maintype="application",
            subtype="octet-stream",
            filename=f"log-{n}.bin",
        )
    return msg.as_bytes(policy=SMTP)


def realistic_mix(count: int, seed: int = 7) -> list[bytes]:
    """COUNT mails: plain, alternative, attachments, encoded subjects and replies."""
    rnd = random.Random(seed)
    out: list[bytes] = []
    ids: list[tuple[str, str]] = []  # (Message-ID, its sender)
    for n in range(count):
        kind = rnd.random()
        message_id = make_msgid(f"m{n}", domain="example.org")
        sender = f"customer{n}@example.org"
        if kind < 0.15 and ids:
            # a customer writing again on their own thread, as customers do
            parent, sender = rnd.choice(ids)
            raw = customer_mail(
                n,
                sender=sender,
                subject=f"Re: {SUBJECTS[n % 8]}",
                in_reply_to=parent,
                references=(parent,),
                message_id=message_id,
            )
        else:
            raw = customer_mail(
                n, html=kind < 0.55, attachment=0.55 <= kind < 0.65, message_id=message_id
            )
        ids.append((message_id, sender))
        out.append(raw)
    return out


def _report_mail(n: int, kind: str, sender: str, subject: str, parts: list[str]) -> bytes:
    """A multipart/report (RFC 6522) of report-type KIND, each part 'Content-Type: …\n\nbody'."""
    boundary = f"report-{n}"
    lines = [
        f"From: {sender}",
        "To: support@acme.test",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=n))}",
        f"Message-ID: <report-{n}@{sender.rpartition('@')[2].rstrip('>')}>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="{kind}"; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain",
        "",
        "This is an automatically generated report.",
    ]
    for part in parts:
        lines += [f"--{boundary}", *part.split("\n")]
    lines.append(f"--{boundary}--")
    return ("\r\n".join(lines) + "\r\n").encode()


def delivery_report(
    n: int, original_id: str, recipient: str, *, action: str = "failed", status: str = "5.1.1"
) -> bytes:
    """An RFC 3464 delivery status notification from a remote MTA about our mail ORIGINAL_ID."""
    return _report_mail(
        n,
        "delivery-status",
        "Mail Delivery System <MAILER-DAEMON@mx.example.org>",
        "Undelivered Mail Returned to Sender",
        [
            "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
            f"Final-Recipient: rfc822; {recipient}\nAction: {action}\nStatus: {status}\n"
            f"Diagnostic-Code: smtp; {status[0]}50 {status} mailbox unavailable\n",
            "Content-Type: text/rfc822-headers\n\nFrom: support@acme.test\n"
            f"To: {recipient}\nMessage-ID: {original_id}\n",
        ],
    )


def abuse_report(n: int, original_id: str, complainant: str) -> bytes:
    """An ARF (RFC 5965) abuse report from COMPLAINANT's provider about our mail ORIGINAL_ID."""
    return _report_mail(
        n,
        "feedback-report",
        "abuse@isp.example",
        "Abuse report",
        [
            "Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
            f"User-Agent: isp/1.0\nVersion: 1\nOriginal-Rcpt-To: {complainant}\n",
            "Content-Type: text/rfc822-headers\n\nFrom: support@acme.test\n"
            f"To: {complainant}\nMessage-ID: {original_id}\n",
        ],
    )
