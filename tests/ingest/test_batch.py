"""A run of mail stored at once writes what the same mail stored one at a time writes, row for row.

The same mail goes through two processors, one storing runs and one storing single mail
(``fast_lane = False``), each into its own database (SQLite, and PostgreSQL); the outcomes, and
every contact, agent, ticket, participant, raw mail, message, event, thread reference, opt-out,
quarantine entry, automatic-answer record and outbox mail, must be the same.

The generated mix holds what ends a run in the middle of a batch — a duplicate, an auto-reply, a
subject-tag reply from a stranger, a flood, a reply that arrives before its original, a reply to
a solved ticket, an agent's answer to a notification, an agent's forward, mail to an unsubscribe
address — and every other outcome: bounces and an abuse report of our own sent mail, an upstream
spam verdict, our own mail coming back, a blocked sender, Heroku's desk. The real corpus goes
through both shapes too.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from helpdeskd.config.load import load_config
from helpdeskd.config.settings import DEFAULT_RULES, Config
from helpdeskd.desk.notices import unsubscribe_mailto
from helpdeskd.ingest.sources import read_sources
from helpdeskd.store.models import (
    Agent,
    AutoReplyLog,
    Contact,
    Event,
    Message,
    OptOut,
    Outbox,
    OutboxRecipient,
    Participant,
    Quarantine,
    RawMessage,
    ThreadRef,
    Ticket,
    columns,
)
from helpdeskd.triage.received import Incoming, Outcome
from helpdeskd.vocab import OUTCOMES
from tests.clocks import ManualClock
from tests.conftest import (
    CORPUS,
    CORPUS_NOT_MAIL,
    _pg_database,
    config_factory,
    need,
    sqlite_database,
)
from tests.desk.test_agents import AGENTS, ALICE, BOB, FIXTURES, HEROKU, reply_to
from tests.harness import Desk
from tests.mailgen import abuse_report, customer_mail, delivery_report, realistic_mix
from tests.servers.smtp import SmtpSink

# Our own random Message-IDs (and token addresses): numbered in the order the dump meets them.
OUR_ID = re.compile(r"<[^<>@\s]+@acme\.test>")
CLOCK = "<clock>"  # what a timestamp is dumped as: runs differ in when, never in whether
# The name mail-parser makes up for an unnamed attachment: ten random letters, new every parse.
MADE_UP_NAME = re.compile(r"(?<![\w.-])[a-z]{10}\.(txt|rtf)(?![\w.-])")
BLOCKED = "@blocked.example"
UNSUBSCRIBER = "customer2@example.org"
BATCH = 50  # mail per batch for the corpus, as `helpdeskd ingest` reads files


Stored = tuple[list[Outcome], dict[str, list[Any]], dict[str, int]]  # outcomes, rows, lanes


@contextmanager
def two_databases(
    request: pytest.FixtureRequest, kind: str, folder: Path
) -> Iterator[tuple[str, str]]:
    """Two empty, migrated databases of KIND: one for runs, one for single mail."""
    if kind == "sqlite":
        yield (
            sqlite_database(request, folder / "runs.db"),
            sqlite_database(request, folder / "single.db"),
        )
        return
    database = contextmanager(_pg_database)
    with database(request) as first, database(request) as second:
        yield first, second


@pytest.fixture(params=["sqlite", "postgresql"])
def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with two_databases(request, request.param, tmp_path) as urls:
        yield urls


# One hard bounce suspends here, so that a run's later mail sees an address its earlier
# mail suspended (the default needs five days of bounces).
BOUNCES = "\n[bounces]\nthreshold = 1\n"


def configure(folder: Path, url: str, smtp: Any) -> Config:
    """A config with two agents, the shipped rules, a blocked domain, Heroku's desk, and a
    bounce threshold of 1."""
    folder.mkdir()
    base = config_factory(folder, url)(smtp=smtp, rules=DEFAULT_RULES, agents=AGENTS)
    assert base.source is not None
    text = base.source.read_text()
    # The config helper writes scalars only: the list goes in by hand.
    text = text.replace(
        "[service]\n",
        f'[service]\nblocked_senders = ["{BLOCKED}"]\nauthserv_id = "mx.acme.test"\n',
        1,
    )
    base.source.write_text(text + HEROKU + BOUNCES)
    return load_config(base.source)


def sender_of(raw: bytes) -> str:
    found = re.search(rb"^From: (?:.*<)?([^<>\s]+@[^<>\s]+?)>?\r?$", raw, re.MULTILINE)
    assert found is not None
    return found.group(1).decode()


def message_id_of(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", raw, re.MULTILINE | re.IGNORECASE)
    assert found is not None
    return found.group(1).decode()


def mix() -> list[list[bytes]]:
    """Batches of mail whose runs must end at the right places."""
    plain = realistic_mix(60)
    original = customer_mail(
        900, sender="olga@example.net", message_id="<original-900@example.net>"
    )
    early_reply = customer_mail(
        901,
        sender="piet@example.net",
        subject="Re: ours too",
        in_reply_to="<original-900@example.net>",
        references=("<original-900@example.net>",),
        cc=("olga@example.net", "quentin@example.net"),
    )
    auto = customer_mail(902, sender="away@example.net", headers={"Auto-Submitted": "auto-replied"})
    stranger = customer_mail(903, sender="stranger@example.net", subject="Re: [HD-2] me too")
    participant = customer_mail(904, sender="customer1@example.org", subject="Re: [HD-2] more")
    first = message_id_of(plain[1])
    cc_reply = customer_mail(
        905,
        sender=sender_of(plain[1]),
        subject="Re: cc my colleague",
        in_reply_to=first,
        references=(first,),
        cc=("rosa@example.net",),
    )
    # Knowing a Message-ID is no key: a stranger's reply opens a ticket linked to it.
    strangers_reply = customer_mail(
        906, sender="eve@example.net", in_reply_to=first, references=(first,)
    )
    flood = [
        customer_mail(950 + i, sender="flood@example.net", subject=f"Down again {i}")
        for i in range(14)
    ]
    return [
        plain[:25],
        [*plain[25:40], plain[30], auto, *plain[40:50]],  # a duplicate, an auto-reply
        [early_reply, stranger, participant, original, cc_reply, strangers_reply, *plain[50:]],
        flood,
    ]


MIX = mix()


def solved_reply() -> bytes:
    """A reply to HD-1's first mail, once HD-1 is solved: it reopens HD-1."""
    parent = message_id_of(MIX[0][0])
    return customer_mail(990, subject="Re: still broken", in_reply_to=parent, references=(parent,))


async def sent(desk: Desk, kind: str, to: str | None = None) -> list[EmailMessage]:
    """Our queued outgoing mail of KIND (to TO), oldest first."""
    found = []
    async with desk.sessions() as session:
        for row in await session.scalars(
            select(Outbox).where(Outbox.kind == kind).order_by(Outbox.id)
        ):
            if to is None or to in {r.address for r in row.recipients}:
                mail = message_from_bytes(row.data, policy=policy.default)
                assert isinstance(mail, EmailMessage)
                found.append(mail)
    return found


def copy_of(mail: EmailMessage) -> bytes:
    """Our sent MAIL coming back to us (a list or a forwarder sends it on), date fixed."""
    copy = EmailMessage()
    for name in ("From", "To", "Subject", "Message-ID", "In-Reply-To", "References"):
        if mail[name] is not None:
            copy[name] = str(mail[name])
    copy["Date"] = "Sun, 01 Nov 2026 12:00:00 +0000"
    body = mail.get_body(("plain",))
    assert body is not None
    copy.set_content(body.get_content())
    return copy.as_bytes(policy=SMTP)


async def desk_batch(desk: Desk) -> list[bytes]:
    """Mail that goes alone (agents', unsubscribes) among mail classification stops early."""
    note = (await sent(desk, "agent_notification", ALICE))[0]
    answer = customer_mail(
        1001,
        sender=ALICE,
        name="Alice",
        to=reply_to(note),
        subject=f"Re: {note['Subject']}",
        in_reply_to=note["Message-ID"],
        references=(note["Message-ID"],),
        body="#priority high\n#tags +limits\n\nWe raised your role's connection limit.\n",
        message_id="<answer-1001@mail.acme.example>",
    )
    forward = customer_mail(
        1002,
        sender=BOB,
        name="Bob",
        subject="Fwd: Replica lag",
        body=(
            "Grace wrote to me directly.\n\n---------- Forwarded message ---------\n"
            "From: Grace Hopper <grace@navy.example>\nDate: Sun, 1 Nov 2026 at 09:12\n"
            "Subject: Replica lag\nTo: Bob <bob@acme.test>\n\n"
            "Our read replica is twenty minutes behind. Can you look?\n"
        ),
        message_id="<forward-1002@mail.acme.example>",
        # our MTA's verdict: the forward is Bob's own (a forward must authenticate)
        headers={"Authentication-Results": "mx.acme.test; dkim=pass header.d=acme.test"},
    )
    unsubscribe = unsubscribe_mail(1003, await unsubscribe_address(desk))
    return [
        customer_mail(1004, sender="bulk@spam.example", headers={"X-Spam-Flag": "YES"}),
        answer,
        customer_mail(1005, sender="relay@example.net", headers={"X-Loop": "support@acme.test"}),
        customer_mail(1006, sender="mallory@blocked.example"),
        (FIXTURES / "01-new-ticket.eml").read_bytes(),
        *(customer_mail(n) for n in range(1010, 1014)),
        forward,
        unsubscribe,
        *(customer_mail(n) for n in range(1014, 1018)),
    ]


async def unsubscribe_address(desk: Desk) -> str:
    """The mailto: address of UNSUBSCRIBER's unsubscribe link for surveys."""
    async with desk.sessions() as session:
        contact_id = await session.scalar(select(Contact.id).where(Contact.email == UNSUBSCRIBER))
    assert contact_id is not None
    return unsubscribe_mailto(desk.config, contact_id, "survey")


def unsubscribe_mail(n: int, address: str) -> bytes:
    """What a mail client sends for a List-Unsubscribe mailto: link."""
    return customer_mail(n, sender=UNSUBSCRIBER, to=address, subject="unsubscribe")


async def returns_batch(desk: Desk) -> list[bytes]:
    """Our sent mail coming back — bounced, complained of, copied — and what follows from it."""
    [answer] = await sent(desk, "reply")  # Alice's answer, gone to her ticket's customer
    [customer] = answer["To"].addresses
    acks = [
        ack
        for ack in await sent(desk, "ack")
        if ack["To"].addresses[0].addr_spec not in (customer.addr_spec, UNSUBSCRIBER)
    ]
    delayed, complained = acks[0], acks[1]
    complainant = complained["To"].addresses[0].addr_spec
    forged = "unsubscribe+999-survey.k1.aaaaaaaaaa@acme.test"
    return [
        delivery_report(1100, answer["Message-ID"], customer.addr_spec),
        customer_mail(1101, sender=customer.addr_spec, subject="New database, same trouble"),
        delivery_report(
            1102,
            delayed["Message-ID"],
            delayed["To"].addresses[0].addr_spec,
            action="delayed",
            status="4.2.2",
        ),
        abuse_report(1103, complained["Message-ID"], complainant),
        customer_mail(1104, sender=complainant, subject="Please close my account"),
        copy_of(acks[2]),
        customer_mail(
            1105,
            sender=customer.addr_spec,
            subject=f"Re: {answer['Subject']}",
            in_reply_to=answer["Message-ID"],
            references=(answer["Message-ID"],),
            message_id="<c1105@example.org>",  # not made from our random ID
        ),
        (FIXTURES / "02-customer-update.eml").read_bytes(),
        unsubscribe_mail(1106, forged),
        unsubscribe_mail(1107, await unsubscribe_address(desk)),  # again: nothing new
        *(customer_mail(n) for n in range(1110, 1114)),
    ]


async def store(config: Config, runs: bool) -> Stored:
    async with Desk(config) as desk:
        desk.processor.fast_lane = runs
        outcomes = []
        for batch in MIX:
            outcomes += await desk.ingest(batch, source="support")
        async with desk.sessions() as session, session.begin():
            await session.execute(update(Ticket).where(Ticket.id == 1).values(state="solved"))
        outcomes += await desk.ingest([solved_reply()], source="support")
        outcomes += await desk.ingest(await desk_batch(desk), source="support")
        outcomes += await desk.ingest(await returns_batch(desk), source="support")
        return outcomes, await dump(desk), dict(desk.processor.lanes)


class Plain:
    """Make values comparable between runs: clocks as CLOCK, our random IDs numbered in order,
    made-up attachment names alike."""

    def __init__(self) -> None:
        self.ours: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return MADE_UP_NAME.sub(r"<made-up>.\1", OUR_ID.sub(self._number, value))
        if isinstance(value, datetime):
            return CLOCK
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value

    def _number(self, match: re.Match[str]) -> str:
        return self.ours.setdefault(match.group(0), f"<ours-{len(self.ours)}>")


async def dump(desk: Desk) -> dict[str, list[Any]]:
    """Every row the store writes, clocks as CLOCK and our random IDs numbered."""
    plain = Plain()
    tables: dict[str, list[Any]] = {}
    async with desk.sessions() as session:
        for model in (
            Contact,
            Agent,
            Ticket,
            Participant,
            RawMessage,
            Message,
            ThreadRef,
            Event,
            AutoReplyLog,
            Outbox,
            OutboxRecipient,
            OptOut,
            Quarantine,
        ):
            rows = []
            for row in await session.scalars(select(model).order_by(*model.__mapper__.primary_key)):
                values = columns(row)
                if model is Outbox:
                    values["data"] = mail_summary(values["data"])
                if model is RawMessage and values["data"] is not None:
                    # Mail made from our sent mail holds our random IDs: compare it numbered.
                    data = values["data"]
                    values["sha256"] = values["sha256"] == hashlib.sha256(data).hexdigest()
                    numbered = plain(data.decode("latin-1")).encode("latin-1")
                    values["data"] = hashlib.sha256(numbered).hexdigest()
                rows.append(plain(values))
            tables[model.__tablename__] = rows
    return tables


def mail_summary(data: bytes) -> dict[str, str]:
    """What an outgoing mail says; its Date, boundaries and Thread-Index bits differ per run."""
    mail = message_from_bytes(data, policy=policy.default)
    summary = {
        name: str(mail.get(name, ""))
        for name in ("From", "To", "Cc", "Reply-To", "Subject", "Message-ID", "In-Reply-To")
    }
    summary["References"] = str(mail.get("References", ""))
    summary["Auto-Submitted"] = str(mail.get("Auto-Submitted", ""))
    assert isinstance(mail, EmailMessage)
    body = mail.get_body(("plain",))
    summary["text"] = body.get_content() if body is not None else ""
    return summary


def assert_same(runs: Stored, single: Stored) -> None:
    """Assert that both shapes gave the same outcomes and wrote the same rows."""
    run_outcomes, run_rows, _ = runs
    single_outcomes, single_rows, single_lanes = single
    assert Plain()([o.as_json() for o in run_outcomes]) == Plain()(
        [o.as_json() for o in single_outcomes]
    )
    for table in single_rows:
        assert len(run_rows[table]) == len(single_rows[table]), table
        for run_row, single_row in zip(run_rows[table], single_rows[table], strict=True):
            assert run_row == single_row, table
    # single mail never went in a run
    assert single_lanes.get("fast", 0) == 0 and single_lanes["message"] == len(single_outcomes)


def test_runs_write_what_single_mail_writes(
    two_urls: tuple[str, str], tmp_path: Path, smtp_sink: Any
) -> None:
    runs_url, single_url = two_urls
    runs_config = configure(tmp_path / "runs", runs_url, smtp_sink)
    single_config = configure(tmp_path / "single", single_url, smtp_sink)

    runs = asyncio.run(store(runs_config, runs=True))
    single = asyncio.run(store(single_config, runs=False))

    assert_same(runs, single)
    outcomes, rows, lanes = runs
    # runs really carried most of it, and never fell back on an error
    assert lanes["fast"] > 0.8 * len(outcomes), lanes
    assert lanes.get("failed", 0) == 0, lanes
    assert {o.outcome for o in outcomes} == set(OUTCOMES) - {"quarantined"}
    kinds = {e["type"] for e in rows["events"]}
    assert {
        "flood_detected",
        "rule_applied",
        "participant_added",
        "reopened",
        "stranger_reference",
    } <= kinds
    assert {"bounce", "complaint", "opened_from_forward", "reply_sent", "opted_out"} <= kinds
    reasons = [o.reason for o in outcomes]
    assert any(r.startswith("RFC 3464") and "hard 5.1.1" in r for r in reasons), reasons
    assert any("delayed 4.2.2" in r for r in reasons), reasons
    assert any("abuse complaint" in r for r in reasons), reasons
    assert any(r.startswith("forwarded by bob@acme.test") for r in reasons), reasons
    assert f"{UNSUBSCRIBER} opted out of survey" in reasons
    assert f"{UNSUBSCRIBER} already opted out of survey" in reasons
    assert "no valid unsubscribe token: nothing changed" in reasons
    assert "our own outgoing mail came back" in reasons
    assert reasons.count("Heroku ticket #482913") == 2  # the ticket, and its update
    # what a run learnt from its earlier mail: an undeliverable and a suppressed requester
    suppressed = {e["detail"]["reason"] for e in rows["events"] if e["type"] == "ack_suppressed"}
    assert {"requester is undeliverable", "requester complained (ARF): suppressed"} <= suppressed
    assert [o["via"] for o in rows["optouts"]] == ["mail"]
    heroku = [t for t in rows["tickets"] if t["channel"] == "heroku"]
    assert [t["external_ref"] for t in heroku] == ["482913"]
    notes = [o for o in rows["outbox"] if "] Undeliverable: " in o["data"]["Subject"]]
    assert [n["data"]["To"] for n in notes] == [ALICE]


# --- the real corpus -----------------------------------------------------------------------


def corpus_files() -> list[Path]:
    """Every corpus file that holds mail (mbox files are split by the reader)."""
    return sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in CORPUS_NOT_MAIL and not p.name.startswith("body.")
    )


async def store_corpus(config: Config, items: list[Incoming], runs: bool) -> Stored:
    async with Desk(config) as desk:
        desk.processor.fast_lane = runs
        outcomes = []
        # Kept as data: a failed run logs its whole traceback, locals and all.
        with capture_logs():
            for start in range(0, len(items), BATCH):
                outcomes += await desk.processor.process_batch(items[start : start + BATCH])
        return outcomes, await dump(desk), dict(desk.processor.lanes)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Stored, Stored]]:
    """The whole corpus stored in runs and as single mail, in batches as `ingest` stores it."""
    if not CORPUS.is_dir():
        need(f"no corpus at {CORPUS}")
    with warnings.catch_warnings():
        # The reader leaves each mbox file for the garbage collector to close.
        warnings.simplefilter("ignore", ResourceWarning)
        items = list(read_sources(corpus_files()))
    folder = tmp_path_factory.mktemp("corpus")
    sink = SmtpSink()  # nothing is sent: with [smtp], acknowledgements are composed
    sink.start()
    try:
        with two_databases(request, request.param, folder) as (runs_url, single_url):
            runs_config = configure(folder / "runs", runs_url, sink)
            single_config = configure(folder / "single", single_url, sink)
            runs = asyncio.run(store_corpus(runs_config, items, runs=True))
            single = asyncio.run(store_corpus(single_config, items, runs=False))
            yield request.param, runs, single
    finally:
        sink.stop()


def test_runs_write_what_single_mail_writes_for_the_corpus(
    corpus: tuple[str, Stored, Stored],
) -> None:
    _, runs, single = corpus
    assert_same(runs, single)
    outcomes = runs[0]
    assert len(outcomes) > 250
    assert {"new_ticket", "bounce", "report", "auto_reply", "quarantined"} <= {
        o.outcome for o in outcomes
    }


def test_runs_carry_the_corpus_without_failing(corpus: tuple[str, Stored, Stored]) -> None:
    _, (outcomes, _, lanes), _ = corpus
    assert lanes.get("failed", 0) == 0, lanes
    assert lanes["fast"] > 0.8 * len(outcomes), lanes


async def test_the_store_decides_by_its_clock(make_config, smtp_sink) -> None:
    """The reopen window is judged by the processor's clock, not the wall's: a reply within 14
    days of the close reopens the ticket, a later one opens a follow-up."""
    clock = ManualClock(datetime(2031, 3, 2, 9, 0, tzinfo=UTC))
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        desk.processor.clock = clock
        [opened] = await desk.ingest([customer_mail(1, message_id="<first@example.org>")])
        async with desk.sessions() as session, session.begin():
            await session.execute(
                update(Ticket).values(state="closed", closed_at=clock.now, solved_at=clock.now)
            )

        def reply(n: int) -> bytes:
            return customer_mail(
                n,
                sender="customer1@example.org",
                subject="Re: again",
                in_reply_to="<first@example.org>",
                references=("<first@example.org>",),
            )

        clock.advance(days=13)
        [within] = await desk.ingest([reply(2)])
        async with desk.sessions() as session, session.begin():
            await session.execute(update(Ticket).values(state="closed", closed_at=clock.now))
        clock.advance(days=15)
        [later] = await desk.ingest([reply(3)])
    assert (within.outcome, within.ticket) == ("reply", opened.ticket)
    assert later.outcome == "new_ticket" and later.reason.startswith("follow-up to closed")
