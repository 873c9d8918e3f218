"""Knowing a Message-ID is not a key to a ticket; a stored Message-ID cannot hide mail.

Each attack is real mail through the store (the test harness, SQLite and PostgreSQL), with the
agents' answers going out through a real SMTP sink: a stranger who names another customer's
mail in In-Reply-To/References, or continues their Outlook Thread-Index, gets a ticket of their
own and nothing of the victim's; one who plants a victim's future Message-ID in References, or
sends first under it, neither captures nor hides the victim's mail.
"""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from helpdeskd.store.models import Contact, Event, Message, Participant, Ticket
from tests.desk.test_agents import AGENTS, Scene, agent_mail, mails_to, reply_to
from tests.harness import Desk
from tests.mailgen import customer_mail

VICTIM = "victim@example.org"
STRANGER = "mallory@evil.test"


def participants(rows: list[tuple[str, int]], ticket: int) -> set[str]:
    return {email for email, tid in rows if tid == ticket}


async def who_is_on(desk: Desk) -> list[tuple[str, int]]:
    async with desk.sessions() as session:
        rows = await session.execute(
            select(Contact.email, Participant.ticket_id).join(
                Contact, Contact.id == Participant.contact_id
            )
        )
        return [(email, tid) for email, tid in rows]


async def test_a_strangers_reply_by_references_opens_its_own_linked_ticket(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, agents=AGENTS)
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1, sender=VICTIM, message_id="<victim-1@example.org>")
        victims_notification = scene.notification()
        attack = customer_mail(
            2,
            sender=STRANGER,
            subject="Re: your question",
            in_reply_to="<victim-1@example.org>",
            references=("<victim-1@example.org>",),
        )
        [outcome] = await desk.ingest([attack])
        await desk.send_all()
        assert outcome.outcome == "new_ticket"
        assert outcome.ticket != ref
        rows = await who_is_on(desk)
        assert STRANGER not in participants(rows, int(ref.split("-")[1]))
        async with desk.sessions() as session:
            linked = await session.scalar(
                select(Ticket).where(Ticket.id == int(outcome.ticket.split("-")[1]))
            )
            assert linked is not None and linked.parent_id == int(ref.split("-")[1])
            told = await session.scalar(select(Event).where(Event.type == "stranger_reference"))
            assert told is not None and told.ticket_id == int(ref.split("-")[1])
        # the agent's next answer on the victim's ticket goes to the victim alone
        before = len(smtp_sink.deliveries)
        raw = agent_mail(
            reply_to(victims_notification),
            "Here are your credentials: hunter2",
            sender=AGENTS[0][0],
            subject=f"Re: {victims_notification['Subject']}",
            in_reply_to=victims_notification["Message-ID"],
        )
        [answered] = await desk.ingest([raw])
        assert answered.reason == "reply sent", answered
        await desk.send_all()
        agents = {email for email, _ in AGENTS}
        answers = [d for d in smtp_sink.deliveries[before:] if "hunter2" in str(d.message)]
        outside = {r for d in answers for r in d.recipients} - agents
        assert outside == {VICTIM}
        assert not any(STRANGER in d.recipients for d in smtp_sink.deliveries[before:])


async def test_a_strangers_thread_index_continuation_does_not_join(make_config, smtp_sink):
    config = make_config(smtp=smtp_sink, agents=AGENTS)
    root = base64.b64encode(bytes(range(1, 23))).decode()
    child = base64.b64encode(bytes(range(1, 23)) + bytes(5)).decode()
    async with Desk(config) as desk:
        [first] = await desk.ingest(
            [customer_mail(1, sender=VICTIM, headers={"Thread-Index": root})]
        )
        [attack] = await desk.ingest(
            [customer_mail(2, sender=STRANGER, headers={"Thread-Index": child})]
        )
        assert attack.outcome == "new_ticket" and attack.ticket != first.ticket
        rows = await who_is_on(desk)
        assert STRANGER not in participants(rows, int(first.ticket.split("-")[1]))


async def test_a_planted_future_message_id_captures_nothing(make_config, smtp_sink):
    """Mallory refers to the Message-ID Victor's next mail will have; Victor's mail still opens
    Victor's own ticket, not Mallory's."""
    config = make_config(smtp=smtp_sink, agents=AGENTS)
    async with Desk(config) as desk:
        [planted] = await desk.ingest(
            [
                customer_mail(
                    1,
                    sender=STRANGER,
                    subject="Re: invoice",
                    in_reply_to="<victim-next@example.org>",
                    references=("<victim-next@example.org>",),
                )
            ]
        )
        [real] = await desk.ingest(
            [customer_mail(2, sender=VICTIM, message_id="<victim-next@example.org>")]
        )
        assert real.outcome == "new_ticket"
        assert real.ticket != planted.ticket
        rows = await who_is_on(desk)
        assert VICTIM not in participants(rows, int(planted.ticket.split("-")[1]))
        assert STRANGER not in participants(rows, int(real.ticket.split("-")[1]))


async def test_a_cc_race_still_makes_one_ticket(make_config, smtp_sink):
    """The colleague's reply that arrives before the original (whose author it names) still
    meets it: remembered IDs join mail from the addresses that were on the referring mail."""
    config = make_config(smtp=smtp_sink, agents=AGENTS)
    async with Desk(config) as desk:
        [reply] = await desk.ingest(
            [
                customer_mail(
                    1,
                    sender="piet@example.net",
                    subject="Re: ours too",
                    in_reply_to="<original@example.net>",
                    references=("<original@example.net>",),
                    cc=("olga@example.net",),
                )
            ]
        )
        [original] = await desk.ingest(
            [customer_mail(2, sender="olga@example.net", message_id="<original@example.net>")]
        )
        assert original.ticket == reply.ticket


async def test_a_stored_message_id_does_not_hide_the_victims_mail(make_config, smtp_sink):
    """Mallory sends first under Victor's future Message-ID; Victor's real mail is stored as
    its own (under a derived ID), gets its own ticket and answer, and the clash is recorded."""
    config = make_config(smtp=smtp_sink, agents=AGENTS)
    async with Desk(config) as desk:
        [first] = await desk.ingest(
            [customer_mail(1, sender=STRANGER, message_id="<victim-next@example.org>")]
        )
        [real] = await desk.ingest(
            [
                customer_mail(
                    2,
                    sender=VICTIM,
                    subject="My database is down",
                    message_id="<victim-next@example.org>",
                )
            ]
        )
        assert real.outcome == "new_ticket", real
        assert real.ticket != first.ticket
        [again] = await desk.ingest(
            [
                customer_mail(
                    2,
                    sender=VICTIM,
                    subject="My database is down",
                    message_id="<victim-next@example.org>",
                )
            ]
        )
        assert again.outcome == "duplicate" and again.ticket == real.ticket
        await desk.send_all()
        assert mails_to(smtp_sink, VICTIM), "the victim is acknowledged"
        async with desk.sessions() as session:
            stored = list(await session.scalars(select(Message.message_id)))
            assert "<victim-next@example.org>" in stored
            assert any(m.endswith(".derived@acme.test>") for m in stored)
            clash = await session.scalar(
                select(Event).where(Event.type == "security_event", Event.actor == VICTIM)
            )
            assert clash is not None
            assert clash.detail["message_id"] == "<victim-next@example.org>"


async def test_one_mail_cannot_make_a_mass_mailing(make_config, smtp_sink):
    """A mail naming 200 addresses adds at most 50 to its ticket; the rest stay in its record,
    the agents are told, and the agent's answer copies no more than 50."""
    config = make_config(smtp=smtp_sink, agents=AGENTS)
    crowd = tuple(f"person{n}@crowd.example" for n in range(200))
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1, sender=VICTIM, cc=crowd)
        ticket_id = int(ref.split("-")[1])
        rows = await who_is_on(desk)
        assert len(participants(rows, ticket_id)) == 51  # the requester and 50
        async with desk.sessions() as session:
            capped = await session.scalar(select(Event).where(Event.type == "participants_capped"))
            assert capped is not None and capped.detail["left_out"] == 150
            stored = await session.scalar(select(Message).where(Message.ticket_id == ticket_id))
            assert stored is not None and len(stored.cc) == 200  # kept in the record
        told = [d for d in smtp_sink.deliveries if "Recipients capped" in str(d.message)]
        assert told
        before = len(smtp_sink.deliveries)
        await scene.answer("We are on it.")
        answers = [d for d in smtp_sink.deliveries[before:] if VICTIM in d.recipients]
        assert answers and all(len(d.recipients) <= 51 for d in answers)


@pytest.mark.parametrize(
    ("results", "verified"),
    [
        ("mx.acme.test; spf=fail smtp.mailfrom=example.org; dkim=none", False),
        ("mx.acme.test; dmarc=pass header.from=example.org", True),
    ],
)
async def test_no_backscatter_with_our_name_on_it(make_config, smtp_sink, results, verified):
    """An acknowledgement to a sender our MTA could not verify carries no link and only a plain
    cut of what they wrote; a verified sender gets the usual one."""
    config = make_config(smtp=smtp_sink, agents=AGENTS, service={"authserv_id": "mx.acme.test"})
    spam = customer_mail(
        1,
        sender="victim@example.org",
        subject="Claim your prize at http://evil.example/win now, visit www.evil.example",
        headers={"Authentication-Results": results},
    )
    async with Desk(config) as desk:
        await desk.ingest([spam])
        await desk.send_all()
    [ack] = [d.message for d in smtp_sink.deliveries if "victim@example.org" in d.recipients]
    text = ack.get_body(("plain",)).get_content()
    whole = str(ack["Subject"]) + text
    if verified:
        assert "http://evil.example" in whole  # the usual acknowledgement, subject and all
    else:
        assert "evil.example" not in whole and "http" not in whole
        assert "Claim your prize" in str(ack["Subject"])
        assert ack.get_body(("html",)) is None
