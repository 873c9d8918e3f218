"""Issue 19, properties 10 and 6 (classification), end to end through the real processor on
SQLite and PostgreSQL.

Bounces: all of them recognised, none answered. 181 real bounces from more than 30 MTAs
(tests/fixtures/bounces) go through ingest; each is a ``bounce`` (but the one whose body the
parser cannot see, which is an ``auto_reply``) and not one acknowledgement is written. An NDR
that also says Auto-Submitted marks the address undeliverable.

Nothing addressed to us is swallowed by a side address: a customer's mail to support@ with a
valid ``unsubscribe+TOKEN@`` in Cc opens a ticket, is acknowledged, and opts nobody out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpdeskd.desk.notices import unsubscribe_mailto
from helpdeskd.mail.tokens import ALL_CATEGORIES
from helpdeskd.store.models import Contact, OptOut, Outbox
from tests.harness import Desk, cli
from tests.mailgen import customer_mail
from tests.servers.smtp import SmtpSink
from tests.triage import real_bounces

BATCH = 40


async def _acks(desk: Desk) -> int:
    async with desk.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Outbox).where(Outbox.kind == "ack")
        )
    return int(count or 0)


async def test_real_bounces_are_recognised_and_never_answered(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink)  # without a relay no acknowledgement is ever written
    files = real_bounces.FILES
    async with Desk(config) as desk:
        outcomes = []
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            outcomes += await desk.ingest([p.read_bytes() for p in chunk], source="support")
        acks = await _acks(desk)
        await desk.send_all()
    assert len(outcomes) == len(files) >= 150
    wrong = {
        real_bounces.name(path): f"{o.outcome}: {o.reason}"
        for path, o in zip(files, outcomes, strict=True)
        if o.outcome != real_bounces.UNRECOGNISED.get(real_bounces.name(path), "bounce")
    }
    assert not wrong, "\n".join(f"{name}: {why}" for name, why in sorted(wrong.items()))
    assert acks == 0
    assert smtp_sink.deliveries == []


async def test_auto_submitted_ndr_marks_the_address_undeliverable(make_config, smtp_sink):
    """Exim-style NDR robots say Auto-Submitted: the address still goes undeliverable."""
    config = make_config(smtp=smtp_sink)
    customer = "kijitora@nyaan.example.org"  # the address lhost-x6-01 reports as failed
    ndr = real_bounces.FIXTURES / "sisimai" / "rb-dos-lhost-x6-01.eml"
    assert b"Auto-Submitted: auto-replied" in ndr.read_bytes()
    async with Desk(config) as desk:
        [first] = await desk.ingest([customer_mail(1, sender=customer, subject="Hello")])
        await desk.send_all()
        [ack] = [d.message for d in smtp_sink.deliveries if customer in d.recipients]
        # The NDR returns our acknowledgement: anyone can send a bounce, and only one about
        # mail we sent to the address counts against it.
        returned = ndr.read_bytes().replace(
            b"<68b329da9893e34099c7d8ad5cb9c940@x6.example.co.jp>", ack["Message-ID"].encode()
        )
        [bounce] = await desk.ingest([returned])
        [second] = await desk.ingest([customer_mail(2, sender=customer, subject="Again")])
        await desk.send_all()
        async with desk.sessions() as session:
            contact = await session.scalar(select(Contact).where(Contact.email == customer))
    assert (first.outcome, bounce.outcome, second.outcome) == ("new_ticket", "bounce", "new_ticket")
    assert "hard 5.4.6" in bounce.reason
    assert contact is not None and contact.undeliverable
    # Only the first ticket was acknowledged: the address bounced before the second.
    assert len([d for d in smtp_sink.deliveries if customer in d.recipients]) == 1


CSV = "email,name,plan,app,addon_id,status\nbob@customer.example,Bob,basic,bob-web,addon-2,active\n"


@pytest.mark.parametrize("category", ["survey", ALL_CATEGORIES])
async def test_unsubscribe_address_beside_support_is_customer_mail(
    make_config, smtp_sink: SmtpSink, tmp_path: Path, category: str
):
    config = make_config(smtp=smtp_sink)
    customers = tmp_path / "customers.csv"
    customers.write_text(CSV)
    cli(config, "customers", "import", str(customers))
    async with Desk(config) as desk:
        async with desk.sessions() as session:
            bob = await session.scalar(
                select(Contact).where(Contact.email == "bob@customer.example")
            )
        assert bob is not None
        mailto = unsubscribe_mailto(config, bob.id, category)
        # The attack: a mail to support that carries a real unsubscribe address in Cc.
        attack = customer_mail(
            1,
            sender="bob@customer.example",
            to="support@acme.test",
            cc=(mailto,),
            subject="Our database is down",
        )
        [outcome] = await desk.ingest([attack])
        await desk.send_all()
        async with desk.sessions() as session:
            optouts = (await session.scalars(select(OptOut))).all()
        # The unsubscribe address alone still unsubscribes.
        [alone] = await desk.ingest(
            [customer_mail(2, sender="bob@customer.example", to=mailto, subject="unsubscribe")]
        )
        async with desk.sessions() as session:
            after = (await session.scalars(select(OptOut))).all()
    assert outcome.outcome == "new_ticket", outcome.reason
    assert optouts == []
    acks = [d.message for d in smtp_sink.deliveries if "bob@customer.example" in d.recipients]
    assert len(acks) == 1 and acks[0]["Auto-Submitted"] == "auto-replied"
    assert alone.outcome == "unsubscribe"
    assert [(o.contact_id, o.category) for o in after] == [(bob.id, category)]


async def test_a_forged_bounce_marks_nobody_undeliverable(make_config, smtp_sink):
    """A bounce about mail we never sent to the address (anyone can write one) is recorded
    and answered by nobody, but the customer's address stays deliverable."""
    config = make_config(smtp=smtp_sink)
    customer = "kijitora@nyaan.example.org"
    ndr = real_bounces.FIXTURES / "sisimai" / "rb-dos-lhost-x6-01.eml"
    async with Desk(config) as desk:
        [first] = await desk.ingest([customer_mail(1, sender=customer, subject="Hello")])
        [bounce] = await desk.ingest([ndr.read_bytes()])
        async with desk.sessions() as session:
            contact = await session.scalar(select(Contact).where(Contact.email == customer))
    assert (first.outcome, bounce.outcome) == ("new_ticket", "bounce")
    assert contact is not None and not contact.undeliverable and contact.bounce_count == 0
