"""Erasure on request, end to end on SQLite and PostgreSQL: no trace left, history kept."""

from __future__ import annotations

import email
import email.policy

import pytest
from sqlalchemy import func, select

from helpdeskd.clock import system_clock
from helpdeskd.desk import erasure as erasure_module
from helpdeskd.desk import privacy
from helpdeskd.desk.customers import customer_rows, import_csv
from helpdeskd.desk.erasure import erase, finish_held
from helpdeskd.desk.noticequeue import Spool, queue_notice, render_notice, store_notice
from helpdeskd.desk.notices import Audience, plan_notice, recheck
from helpdeskd.errors import UserError
from helpdeskd.mail.render import Renderer
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.models import (
    Contact,
    Outbox,
    OutboxRecipient,
    PendingDeletion,
    Quarantine,
    RawMessage,
    Ticket,
)
from helpdeskd.store.views import ticket_detail
from tests.conftest import config_factory, sqlite_database
from tests.desk import privacy_scene as scene_
from tests.desk.privacy_scene import (
    ADA,
    ADA_NAME,
    AGENT_WORDS,
    BOB,
    BOB_PHRASE,
    NOTE_WORDS,
    NOTICES,
    PHRASE,
    PHRASE2,
    PHRASE3,
    blob,
    build,
    build_light,
    file_traces,
    reply_address,
    table_traces,
    with_sections,
)
from tests.desk.test_agents import agent_mail
from tests.harness import Desk
from tests.mailgen import delivery_report

HERS = [ADA, ADA_NAME, PHRASE, PHRASE2, PHRASE3, "7946 0018"]


@pytest.fixture
def config(make_config, smtp_sink):
    return with_sections(make_config(smtp=smtp_sink), NOTICES)


def db_files(config):
    path = privacy.sqlite_path(config.database.url)
    return [] if path is None else [path.parent]


async def notice_to_all(desk, config):
    async with desk.sessions.begin() as session:
        return await queue_notice(
            session,
            config,
            Renderer(config.paths.templates),
            category="incident",
            template="incident",
            audience=Audience(),
            now=system_clock(),
            extra={"title": "Again", "status": "identified", "message": "-", "status_url": "-"},
        )


async def test_erasure_leaves_no_trace_keeps_the_history_and_never_mails_again(
    config, smtp_sink, tmp_path
):
    scene = await build(config, smtp_sink, tmp_path)
    ref = scene.ada_tickets[0]
    async with Desk(config) as desk:
        before = await table_traces(desk, HERS)
        assert any(PHRASE in t for t in before) and any("outbox.data" in t for t in before)
        assert blob(config, scene.ada_files[0]).exists()

        dry = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock(), dry_run=True)
        assert dry.tickets == scene.ada_tickets and dry.held == []
        assert dry.messages == 3 and dry.outbox_cancelled == 1 and len(dry.blobs) == 2
        assert await table_traces(desk, HERS) == before  # a dry run changes nothing

        report = await erase(desk.sessions, config, ADA, by="dpo@acme.test", now=system_clock())
        assert {**report.as_json(), "dry_run": True} == dry.as_json()
        assert report.pseudonym.startswith("erased-") and report.pseudonym.endswith(".invalid")

        # No trace: not in any table, not in any file, not in the bytes of the SQLite file.
        assert await table_traces(desk, HERS) == []
        needles = [n.encode() for n in HERS]
        assert file_traces(config.service.state_dir, needles) == []
        for folder in db_files(config):
            assert file_traces(folder, needles, glob="helpdeskd.db*") == []
        assert not blob(config, scene.ada_files[0]).exists()
        assert not blob(config, scene.ada_files[1]).exists()
        async with desk.sessions() as session:
            assert await session.scalar(select(func.count(PendingDeletion.id))) == 0

        # Bob is untouched.
        assert len(await table_traces(desk, [BOB_PHRASE])) >= 2
        assert blob(config, scene.bob_file).exists()

        # The history stays readable for agents.
        async with desk.sessions() as session:
            detail = await ticket_detail(session, config, ref)
        assert detail is not None
        assert detail["requester"] == report.pseudonym
        assert "erased" in detail["tags"] and detail["subject"] == "[erased]"
        texts = [m["text"] for m in detail["messages"]]
        assert any(AGENT_WORDS in t for t in texts)  # the agent's reply
        assert any(NOTE_WORDS in t for t in texts)  # the internal note, her name taken out
        assert sum(t == "[erased]" for t in texts) == 2  # her two mails on it
        [event] = [e for e in detail["events"] if e["type"] == "erasure"]
        assert event["actor"] == "dpo@acme.test" and event["detail"] == {
            "pseudonym": report.pseudonym
        }

        # Her pending notice is cancelled, Bob's is not.
        async with desk.sessions() as session:
            rows = (
                await session.execute(
                    select(
                        OutboxRecipient.address, OutboxRecipient.state, OutboxRecipient.last_error
                    )
                    .join(Outbox, Outbox.id == OutboxRecipient.outbox_id)
                    .where(Outbox.notice_id.is_not(None))
                    .order_by(OutboxRecipient.address)
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            (BOB, "pending", None),
            (report.pseudonym, "skipped", "erased on request"),
        ]

        # Never mailed again: a re-import leaves her out, a new notice skips her.
        async with desk.sessions.begin() as session:
            imported = await import_csv(session, tmp_path / "customers.csv")
        assert (imported.created, imported.updated) == (0, 1)
        assert [p.text for p in imported.bad] == ["an address erased on request: not imported"]
        async with desk.sessions() as session:
            assert [r["email"] for r in await customer_rows(session)] == [BOB]
        sent = await notice_to_all(desk, config)
        assert sent.queued == 1
        before_send = len(smtp_sink.deliveries)
        await desk.send_all()
        delivered = smtp_sink.deliveries[before_send:]
        assert delivered and all(ADA not in d.recipients for d in delivered)

        # Erasing again finds nothing more and gives the same pseudonym.
        again = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        assert again.pseudonym == report.pseudonym
        assert (again.contact, again.messages, again.raw) == (False, 0, 0)


async def test_she_writes_again_after_erasure_and_is_erased_again(make_config, tmp_path):
    config = make_config()
    await build_light(config, tmp_path)
    async with Desk(config) as desk:
        first = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        [outcome] = await desk.ingest(
            [scene_.mail_with_file(9, ADA, ADA_NAME, "Me again", f"{PHRASE} again", b"x" * 50)],
            source="later",
        )
        assert outcome.outcome == "new_ticket"
        second = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        assert second.pseudonym == first.pseudonym and second.tickets == [outcome.ticket]
        assert await table_traces(desk, HERS) == []
        async with desk.sessions() as session:
            contacts = list(await session.scalars(select(Contact.email).order_by(Contact.id)))
            requesters = set(await session.scalars(select(Ticket.requester_id)))
        assert ADA not in contacts and contacts.count(first.pseudonym) == 1
        assert len(requesters) == 2  # hers (one pseudonym) and Bob's


async def test_a_ticket_under_hold_is_kept_until_the_hold_is_lifted(config, tmp_path):
    scene = await build_light(config, tmp_path)
    held = scene.ada_tickets[1]
    async with Desk(config) as desk:

        async def command(line: str) -> None:
            """Alice answers the notification about the held ticket (still in the outbox)."""
            async with desk.sessions() as session:
                data = await session.scalar(
                    select(Outbox.data)
                    .where(Outbox.kind == "agent_notification", Outbox.ticket_id == int(held[3:]))
                    .order_by(Outbox.id.desc())
                    .limit(1)
                )
            note = email.message_from_bytes(data, policy=email.policy.default)
            [outcome] = await desk.ingest(
                [
                    agent_mail(
                        reply_address(note),
                        f"{line}\nKeep this one.\n",
                        subject=f"Re: {note['Subject']}",
                        in_reply_to=note["Message-ID"],
                    )
                ],
                source=f"agent {line}",  # a UID of its own (this Desk counts from 1 again)
            )
            assert outcome.outcome == "reply", outcome

        await command("#hold\n#note")
        async with desk.sessions() as session:
            tags = await session.scalar(select(Ticket.tags).where(Ticket.id == int(held[3:])))
        assert "hold" in tags

        report = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        assert report.held == [held] and report.tickets == [scene.ada_tickets[0]]
        left = await table_traces(desk, [PHRASE, PHRASE3, ADA])
        assert any(PHRASE3 in t for t in left)  # the held ticket keeps her words
        assert not any(PHRASE in t for t in left)  # the other one does not
        assert (
            blob(config, scene.ada_files[1]).exists()
            and not blob(config, scene.ada_files[0]).exists()
        )
        # Until the hold is lifted she is no customer and gets no notice.
        async with desk.sessions() as session:
            assert [r["email"] for r in await customer_rows(session)] == [BOB]
        assert (await notice_to_all(desk, config)).queued == 1  # Bob's
        assert await finish_held(desk.sessions, config, system_clock()) == []

        await command("#tags -hold\n#note")
        assert await finish_held(desk.sessions, config, system_clock()) == [report.pseudonym]
        assert await table_traces(desk, HERS) == []
        assert not blob(config, scene.ada_files[1]).exists()


async def test_a_crash_during_erasure_leaves_all_or_nothing(make_config, tmp_path, monkeypatch):
    config = make_config()
    scene = await build_light(config, tmp_path)
    async with Desk(config) as desk:
        before = await table_traces(desk, HERS)
        assert before

        # A crash in the transaction, after most of the rows were changed: nothing changed.
        original = erasure_module._Eraser._contact

        async def crash(self, *args):
            await original(self, *args)
            raise RuntimeError("power cut")

        monkeypatch.setattr(erasure_module._Eraser, "_contact", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        monkeypatch.undo()
        assert await table_traces(desk, HERS) == before
        assert blob(config, scene.ada_files[0]).exists()

        # A crash after the commit, before the files went: the database is erased, and the
        # files are recorded; housekeeping (or erasing again) removes them.
        async def crash_after(*args, **kwargs):
            raise RuntimeError("power cut")

        monkeypatch.setattr(privacy, "finish_deletions", crash_after)
        with pytest.raises(RuntimeError, match="power cut"):
            await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        monkeypatch.undo()
        assert await table_traces(desk, HERS) == []
        assert blob(config, scene.ada_files[0]).exists()
        async with desk.sessions() as session:
            assert await session.scalar(select(func.count(PendingDeletion.id))) == 2
        done = await privacy.finish_deletions(desk.sessions, config.service.state_dir)
        assert (done.blobs, done.files) == (2, 0)
        assert not blob(config, scene.ada_files[0]).exists()
        again = await privacy.finish_deletions(desk.sessions, config.service.state_dir)
        assert (again.blobs, again.files) == (0, 0)
        assert blob(config, scene.bob_file).exists()


@pytest.mark.parametrize(
    "address", ["support@acme.test", "Alice@acme.test", "not-an-address", "x@erased.invalid"]
)
async def test_the_desk_its_agents_and_pseudonyms_cannot_be_erased(tmp_path, address):
    config = config_factory(tmp_path, f"sqlite:///{tmp_path / 'none' / 'x.db'}")()
    with pytest.raises(UserError):
        await erase(None, config, address, by="dpo", now=system_clock())  # type: ignore[arg-type]


@pytest.fixture
def sqlite_config(request, tmp_path, smtp_sink):
    """On SQLite only, for what does not depend on the database (the send-time check)."""
    url = sqlite_database(request, tmp_path / "helpdeskd.db")
    return with_sections(config_factory(tmp_path, url)(smtp=smtp_sink), NOTICES)


async def test_a_notice_rendered_while_she_was_erased_does_not_reach_her(
    sqlite_config, smtp_sink, tmp_path
):
    config = sqlite_config
    await build_light(config, tmp_path)
    renderer = Renderer(config.paths.templates)
    extra = {"title": "Race", "status": "identified", "message": "-", "status_url": "-"}
    async with Desk(config) as desk:
        # send_notice's two steps, with the erasure between rendering and storing.
        plan = plan_notice(
            config, renderer, category="incident", template="incident", audience=Audience()
        )
        now = system_clock()
        with Spool() as spool:
            async with desk.sessions() as session:
                tally = await render_notice(
                    session, config, renderer, plan, send_at=now, extra=extra, spool=spool
                )
            assert tally.queued == 2
            await erase(desk.sessions, config, ADA, by="dpo", now=now)
            async with desk.sessions.begin() as session:
                await store_notice(
                    session,
                    config,
                    plan,
                    spool.replay(),
                    tally,
                    now=now,
                    send_at=now,
                    expires_at=None,
                )
        await OutboxSender(desk.sessions, config.smtp, recheck=recheck).drain(30)
    notices = [d for d in smtp_sink.deliveries if "incident" in str(d.message["List-Id"])]
    assert [d.recipients for d in notices] == [[BOB]]
    assert all(ADA not in d.recipients for d in smtp_sink.deliveries)


async def test_her_bounces_quarantined_and_spooled_mail_go_too(make_config, tmp_path):
    config = make_config(service={"max_message_bytes": 7000})
    await build_light(config, tmp_path)
    async with Desk(config) as desk:
        big = scene_.mail_with_file(7, ADA, ADA_NAME, "Big", f"{PHRASE}\n", b"z" * 9000)
        bounce = delivery_report(8, "<ack@acme.test>", ADA)
        outcomes = await desk.ingest([big, bounce], source="more")
        assert [o.outcome for o in outcomes] == ["new_ticket", "bounce"]
        spooled = list((config.service.state_dir / "oversize").glob("*.eml"))
        assert len(spooled) == 1 and ADA.encode() in spooled[0].read_bytes()
        async with desk.sessions.begin() as session:
            raw = RawMessage(
                source="more",
                uid=99,
                sha256="x",
                size=40,
                outcome="quarantined",
                data=f"From: {ADA}\r\n\r\nbroken {PHRASE}".encode(),
            )
            session.add(raw)
            await session.flush()
            session.add(
                Quarantine(raw_id=raw.id, source="more", error="parse failed", traceback="")
            )

        report = await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        assert report.quarantine == 1 and report.files == [str(spooled[0])]
        assert await table_traces(desk, HERS) == []
        assert file_traces(config.service.state_dir, [n.encode() for n in HERS]) == []
        assert not spooled[0].exists()
        async with desk.sessions() as session:
            assert await session.scalar(select(func.count(Quarantine.id))) == 0
