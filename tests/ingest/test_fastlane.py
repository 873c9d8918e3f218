"""The store's fast lane writes what the per-message path writes, row for row.

The same mail goes through two processors, one with the fast lane and one without, each into
its own database (SQLite, and PostgreSQL); the outcomes, and every ticket, participant, contact,
message, event, thread reference, automatic-answer record and outbox mail, must be the same.
The mix holds what ends a fast run in the middle of a batch: a duplicate, an auto-reply, a
subject-tag reply from a stranger, a flood, a reply that arrives before its original, a reply
to a solved ticket.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from helpdeskd.config.settings import DEFAULT_RULES
from helpdeskd.store.db import upgrade
from helpdeskd.store.models import (
    AutoReplyLog,
    Contact,
    Event,
    Message,
    Outbox,
    OutboxRecipient,
    Participant,
    RawMessage,
    ThreadRef,
    Ticket,
    columns,
)
from tests.conftest import _pg_database, config_factory
from tests.harness import Desk
from tests.mailgen import customer_mail, realistic_mix

# Columns that differ between two runs of the same mail: clocks, and random Message-IDs.
VOLATILE = {"created_at", "updated_at", "state_since", "received_at", "sent_at", "next_attempt_at"}
OUR_ID = re.compile(r"<[^<>@\s]+@acme\.test>")


@pytest.fixture(params=["sqlite", "postgresql"])
def two_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        urls = (f"sqlite:///{tmp_path / 'fast.db'}", f"sqlite:///{tmp_path / 'slow.db'}")
        for url in urls:
            upgrade(url)
        yield urls
        return
    first, second = _pg_database(), _pg_database()
    try:
        yield next(first), next(second)
    finally:
        first.close()
        second.close()


def message_id_of(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", raw, re.MULTILINE | re.IGNORECASE)
    assert found is not None
    return found.group(1).decode()


def mix() -> list[list[bytes]]:
    """Batches of mail whose runs the fast lane must end at the right places."""
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
        subject="Re: cc my colleague",
        in_reply_to=first,
        references=(first,),
        cc=("rosa@example.net",),
    )
    flood = [
        customer_mail(950 + i, sender="flood@example.net", subject=f"Down again {i}")
        for i in range(14)
    ]
    return [
        plain[:25],
        [*plain[25:40], plain[30], auto, *plain[40:50]],  # a duplicate, an auto-reply
        [early_reply, stranger, participant, original, cc_reply, *plain[50:]],
        flood,
    ]


MIX = mix()


def solved_reply() -> bytes:
    """A reply to HD-1's first mail, once HD-1 is solved: it reopens HD-1."""
    parent = message_id_of(MIX[0][0])
    return customer_mail(990, subject="Re: still broken", in_reply_to=parent, references=(parent,))


async def store(config: Any, fast: bool) -> tuple[list[Any], dict[str, list[Any]], Any]:
    async with Desk(config) as desk:
        desk.processor.fast_lane = fast
        outcomes = []
        for batch in MIX:
            outcomes += await desk.ingest(batch, source="support")
        async with desk.sessions() as session, session.begin():
            await session.execute(update(Ticket).where(Ticket.id == 1).values(state="solved"))
        outcomes += await desk.ingest([solved_reply()], source="support")
        return outcomes, await dump(desk), dict(desk.processor.lanes)


async def dump(desk: Desk) -> dict[str, list[Any]]:
    """Every row the store writes, with clocks left out and our random IDs numbered."""
    ours: dict[str, str] = {}

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return OUR_ID.sub(lambda m: ours.setdefault(m.group(0), f"<ours-{len(ours)}>"), value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    tables: dict[str, list[Any]] = {}
    async with desk.sessions() as session:
        for model in (
            Contact,
            Ticket,
            Participant,
            RawMessage,
            Message,
            ThreadRef,
            Event,
            AutoReplyLog,
            Outbox,
            OutboxRecipient,
        ):
            key = model.message_id if model is ThreadRef else model.id  # type: ignore[attr-defined]
            rows = []
            for row in await session.scalars(select(model).order_by(key)):
                values = {k: v for k, v in columns(row).items() if k not in VOLATILE}
                if model is Outbox:
                    values["data"] = mail_summary(values["data"])
                if model is RawMessage:
                    values.pop("data")
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
    body = mail.get_body(("plain",))
    summary["text"] = body.get_content() if body is not None else ""
    return summary


def test_fast_lane_writes_what_the_message_path_writes(
    two_urls: tuple[str, str], tmp_path: Path, smtp_sink: Any
) -> None:
    fast_url, slow_url = two_urls
    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    fast_config = config_factory(tmp_path / "fast", fast_url)(smtp=smtp_sink, rules=DEFAULT_RULES)
    slow_config = config_factory(tmp_path / "slow", slow_url)(smtp=smtp_sink, rules=DEFAULT_RULES)

    fast_outcomes, fast_rows, lanes = asyncio.run(store(fast_config, fast=True))
    slow_outcomes, slow_rows, slow_lanes = asyncio.run(store(slow_config, fast=False))

    assert [o.as_json() for o in fast_outcomes] == [o.as_json() for o in slow_outcomes]
    for table in slow_rows:
        assert fast_rows[table] == slow_rows[table], table
    # the lane really carried most of it, and never fell back on an error
    assert lanes["fast"] > 0.8 * len(fast_outcomes), lanes
    assert lanes.get("failed", 0) == 0, lanes
    assert slow_lanes.get("fast", 0) == 0 and slow_lanes["message"] == len(slow_outcomes)
    outcomes = {o.outcome for o in fast_outcomes}
    assert {"new_ticket", "reply", "duplicate", "auto_reply"} <= outcomes
    kinds = {e["type"] for e in fast_rows["events"]}
    assert {"flood_detected", "rule_applied", "participant_added", "reopened"} <= kinds
