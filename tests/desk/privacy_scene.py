"""A desk with personal data in it, and ways to look for traces of one person.

Ada (the person who asks for her data, or for its erasure) has two tickets with attachments,
an agent's reply quoting her, her answer to it, an agent's internal note naming her, a notice
opt-out and a notice still waiting to be sent to her. Bob, another customer, has a ticket of
his own. Their words carry phrases found nowhere else, so that a test can look for them.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import random
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from helpdeskd.clock import system_clock
from helpdeskd.config.load import load_config
from helpdeskd.config.settings import Config
from helpdeskd.desk.customers import import_csv
from helpdeskd.desk.noticequeue import queue_notice
from helpdeskd.desk.notices import Audience, opt_out
from helpdeskd.mail.render import Renderer
from helpdeskd.store.models import Base, Contact
from tests.desk.test_agents import agent_mail
from tests.harness import Desk
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink

ADA = "ada.lovelace@customer.example"
ADA_NAME = "Ada Lovelace"
BOB = "bob.stone@customer.example"
ALICE = "alice@acme.test"
PHRASE = "zebra-crossing-4711 keeps timing out"  # Ada's first mail
PHRASE2 = "purple-walrus-8812 backup went missing"  # Ada's answer to the agent
PHRASE3 = "velvet-otter-5150 invoice is wrong"  # Ada's second ticket
BOB_PHRASE = "orange-heron-2219 needs more storage"
AGENT_WORDS = "We restarted the primary and raised the connection limit"
NOTE_WORDS = "called about this; escalate to the database team"

CSV = f"""email,name,plan,app,addon_id,status
{ADA},{ADA_NAME},premium,ada-api,addon-1,active
{BOB},Bob Stone,basic,bob-web,addon-2,active
"""

NOTICES = '\n[notices]\npostal_address = "Acme Inc., 1 Main St, Springfield"\n'


def with_sections(config: Config, extra: str) -> Config:
    """CONFIG with EXTRA (TOML sections) added to its file, loaded again."""
    source = Path(str(config.source))
    source.write_text(source.read_text() + extra)
    return load_config(source)


def attachment(seed: int, size: int = 3000) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.getrandbits(8) for _ in range(size))


def mail_with_file(n: int, sender: str, name: str, subject: str, body: str, data: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = "support@acme.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<scene{n}.{sender}>"
    msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
    msg.set_content(body)
    msg.add_attachment(
        data, maintype="application", subtype="octet-stream", filename=f"{name.split()[0]}-{n}.log"
    )
    return msg.as_bytes(policy=email.policy.SMTP)


@dataclass
class Scene:
    config: Config
    ada_tickets: list[str]
    bob_ticket: str
    ada_files: list[bytes]  # her attachments' bytes
    bob_file: bytes


def reply_address(message: EmailMessage) -> str:
    [(_, address)] = getaddresses([message["Reply-To"]])
    return address


async def build(config: Config, sink: SmtpSink, tmp_path: Path) -> Scene:
    """Fill CONFIG's desk (with [notices]) as the module docstring says."""
    customers = tmp_path / "customers.csv"
    customers.write_text(CSV)
    ada_files = [attachment(1), attachment(2)]
    bob_file = attachment(3)
    async with Desk(config) as desk:
        async with desk.sessions.begin() as session:
            await import_csv(session, customers)
        first = mail_with_file(
            1,
            ADA,
            ADA_NAME,
            "Zebra database slow",
            f"Hello,\n\nour app {PHRASE} since this morning.\n\nThanks,\nAda Lovelace\n"
            "+44 20 7946 0018\n",
            ada_files[0],
        )
        second = mail_with_file(
            2,
            ADA,
            ADA_NAME,
            "Invoice for November",
            f"Hi,\n\nthe {PHRASE3} this month.\n\nAda\n",
            ada_files[1],
        )
        bobs = mail_with_file(
            3, BOB, "Bob Stone", "Storage", f"Hello,\n\nour {BOB_PHRASE}.\n\nBob\n", bob_file
        )
        outcomes = await desk.ingest([first, second, bobs])
        ada_tickets = [o.ticket for o in outcomes[:2]]
        bob_ticket = outcomes[2].ticket
        assert all(ada_tickets) and bob_ticket
        await desk.send_all()
        [note] = [
            d.message
            for d in sink.deliveries
            if ALICE in d.recipients and f"[{ada_tickets[0]}]" in str(d.message["Subject"])
        ]
        quoting = agent_mail(
            reply_address(note),
            f"{AGENT_WORDS}.\n\nOn Mon, Nov 2, 2026 at 09:00 {ADA_NAME} <{ADA}> wrote:\n"
            f"> our app {PHRASE} since this morning.\n",
            subject=f"Re: {note['Subject']}",
            in_reply_to=note["Message-ID"],
        )
        [outcome] = await desk.ingest([quoting])
        assert outcome.outcome == "reply", outcome
        await desk.send_all()
        [answer] = [
            d.message
            for d in sink.deliveries
            if ADA in d.recipients and "restarted" in d.message.get_body(("plain",)).get_content()
        ]
        [outcome] = await desk.ingest(
            [
                customer_mail(
                    4,
                    sender=ADA,
                    name=ADA_NAME,
                    subject=f"Re: {answer['Subject']}",
                    in_reply_to=answer["Message-ID"],
                    references=(answer["Message-ID"],),
                    body=f"Thank you. Now the {PHRASE2}.\n\nAda\n",
                )
            ]
        )
        assert outcome.outcome == "reply" and outcome.ticket == ada_tickets[0], outcome
        await desk.send_all()
        notes = [
            d.message
            for d in sink.deliveries
            if ALICE in d.recipients and f"[{ada_tickets[0]}]" in str(d.message["Subject"])
        ]
        [outcome] = await desk.ingest(
            [
                agent_mail(
                    reply_address(notes[-1]),
                    f"#note\nAda {NOTE_WORDS}.\n",
                    subject=f"Re: {notes[-1]['Subject']}",
                    in_reply_to=notes[-1]["Message-ID"],
                )
            ]
        )
        assert outcome.outcome == "reply", outcome
        await desk.send_all()
        async with desk.sessions.begin() as session:
            ada = await session.scalar(select(Contact).where(Contact.email == ADA))
            assert ada is not None
            await opt_out(session, ada, "feature_update", "web")
            # A notice still waiting in the outbox, to Ada and Bob.
            await queue_notice(
                session,
                config,
                Renderer(config.paths.templates),
                category="incident",
                template="incident",
                audience=Audience(),
                now=system_clock(),
                extra={
                    "title": "Outage",
                    "status": "investigating",
                    "message": "We are on it.",
                    "status_url": "https://support.acme.test/status",
                },
            )
    return Scene(config, ada_tickets, bob_ticket, ada_files, bob_file)


# --- looking for traces ------------------------------------------------------------------------


def _mail_text(data: bytes) -> str:
    """The decoded headers and text parts of stored mail DATA."""
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
    except Exception:
        return ""
    parts = [f"{k}: {v}" for k, v in msg.items()]
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            try:
                parts.append(part.get_content())
            except Exception:
                pass
    return "\n".join(parts)


async def table_traces(desk: Desk, needles: list[str]) -> list[str]:
    """Where in the database (table.column #id) any of NEEDLES appears, in any case."""
    lowered = [n.lower() for n in needles]
    found = []
    async with desk.sessions() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    if isinstance(value, bytes):
                        texts = [value.decode("utf-8", "replace"), _mail_text(value)]
                    elif isinstance(value, (dict, list)):
                        texts = [json.dumps(value, ensure_ascii=False)]
                    else:
                        texts = [str(value)]
                    for needle in lowered:
                        if any(needle in t.lower() for t in texts):
                            found.append(f"{table.name}.{column} {dict(row).get('id')}: {needle}")
    return found


def file_traces(folder: Path, needles: list[bytes], glob: str = "*") -> list[str]:
    """The files under FOLDER (matching GLOB) whose bytes hold any of NEEDLES, in any case."""
    found = []
    for path in folder.rglob(glob):
        if path.is_file():
            data = path.read_bytes()
            lowered = data.lower()
            for needle in needles:
                if needle.lower() in lowered or needle in data:
                    found.append(f"{path}: {needle!r}")
    return found


async def sql(desk: Desk, query: str) -> list[Any]:
    async with desk.sessions() as session:
        return list((await session.execute(text(query))).all())


async def build_light(config: Config, tmp_path: Path) -> Scene:
    """Ada's two tickets and Bob's, with attachments and customer records; nothing sent."""
    customers = tmp_path / "customers.csv"
    customers.write_text(CSV)
    ada_files = [attachment(1), attachment(2)]
    bob_file = attachment(3)
    async with Desk(config) as desk:
        async with desk.sessions.begin() as session:
            await import_csv(session, customers)
        outcomes = await desk.ingest(
            [
                mail_with_file(
                    1, ADA, ADA_NAME, "Zebra database slow", f"Our app {PHRASE}.\n", ada_files[0]
                ),
                mail_with_file(
                    2, ADA, ADA_NAME, "Invoice for November", f"The {PHRASE3}.\n", ada_files[1]
                ),
                mail_with_file(3, BOB, "Bob Stone", "Storage", f"Our {BOB_PHRASE}.\n", bob_file),
            ]
        )
    tickets = [o.ticket for o in outcomes]
    assert all(tickets), outcomes
    return Scene(config, [str(t) for t in tickets[:2]], str(tickets[2]), ada_files, bob_file)


def blob(config: Config, data: bytes) -> Path:
    """Where the attachment DATA is kept."""
    digest = hashlib.sha256(data).hexdigest()
    return config.service.state_dir / "attachments" / digest[:2] / digest
