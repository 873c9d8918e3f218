"""Retention removes exactly what its report says is due, and nothing under legal hold."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from helpdeskd.clock import system_clock
from helpdeskd.desk import retention
from helpdeskd.desk.housekeeping import keep_retention
from helpdeskd.desk.retention import enforce, lock_key, report
from helpdeskd.store.db import reading
from helpdeskd.store.models import (
    Event,
    Message,
    Outbox,
    Quarantine,
    RawMessage,
    Ticket,
)
from helpdeskd.triage.facts import Runtime
from tests.desk.privacy_scene import (
    BOB_PHRASE,
    PHRASE,
    PHRASE3,
    blob,
    build_light,
    table_traces,
    with_sections,
)
from tests.harness import Desk

NOW = system_clock()
DAY = timedelta(days=1)


async def age(desk: Desk, scene) -> dict[str, int]:
    """Make the scene old: Ada's first ticket closed 100 days ago, her second 800 days ago but
    under hold, Bob's closed 800 days ago; every mail sent 100 days ago; a bounce that made no
    ticket, a quarantined mail resolved 40 days ago and one still waiting; an old opt-out."""
    ids = {ref: int(ref.split("-")[1]) for ref in [*scene.ada_tickets, scene.bob_ticket]}
    first, held = (ids[r] for r in scene.ada_tickets)
    bob = ids[scene.bob_ticket]
    async with desk.sessions.begin() as session:
        for tid, days in ((first, 100), (held, 800), (bob, 800)):
            await session.execute(
                update(Ticket)
                .where(Ticket.id == tid)
                .values(state="closed", closed_at=NOW - days * DAY)
            )
        await session.execute(update(Ticket).where(Ticket.id == held).values(tags=["hold"]))
        await session.execute(
            update(Outbox).values(state="sent", sent_at=NOW - 100 * DAY, created_at=NOW - 101 * DAY)
        )
        await session.execute(update(Event).values(created_at=NOW - 800 * DAY))
        bounce = RawMessage(
            source="test",
            uid=900,
            sha256="b",
            size=9,
            data=b"bounce",
            outcome="bounce",
            received_at=NOW - 100 * DAY,
        )
        stuck = RawMessage(
            source="test",
            uid=901,
            sha256="q",
            size=9,
            data=b"broken",
            outcome="quarantined",
            received_at=NOW - 100 * DAY,
        )
        waiting = RawMessage(
            source="test",
            uid=902,
            sha256="w",
            size=9,
            data=b"waiting",
            outcome="quarantined",
            received_at=NOW - 100 * DAY,
        )
        session.add_all([bounce, stuck, waiting])
        await session.flush()
        done = Quarantine(
            raw_id=stuck.id, source="test", error="e", traceback="", resolved_at=NOW - 40 * DAY
        )
        open_ = Quarantine(raw_id=waiting.id, source="test", error="e", traceback="")
        session.add_all([done, open_])
        await session.flush()
        return {
            "first": first,
            "held": held,
            "bob": bob,
            "bounce": bounce.id,
            "stuck": stuck.id,
            "waiting": waiting.id,
            "quarantine": done.id,
            "open": open_.id,
        }


async def test_retention_removes_what_the_report_said_and_nothing_under_hold(make_config, tmp_path):
    config = make_config()
    scene = await build_light(config, tmp_path)
    async with Desk(config) as desk:
        ids = await age(desk, scene)
        async with reading(desk.sessions) as session:
            said = await report(session, config, NOW)
            ahead = await report(session, config, NOW, horizon=700 * DAY)
        due = {(d.category, d.id) for d in said if not d.held and d.due_at <= NOW}
        held = {(d.category, d.id) for d in said if d.held}
        assert ("closed_ticket", ids["bob"]) in due and ("closed_ticket", ids["held"]) in held
        assert ("events", ids["bob"]) in due and ("events", ids["held"]) in held
        assert ("raw_mail", ids["bounce"]) in due and ("quarantine", ids["quarantine"]) in due
        assert ("raw_mail", ids["waiting"]) not in due  # quarantine waits for a person
        assert ("closed_ticket", ids["first"]) not in due
        later = {(d.category, d.id): d.due_at for d in ahead}
        assert later[("closed_ticket", ids["first"])] == NOW - 100 * DAY + 730 * DAY

        removed = await enforce(desk.sessions, config, NOW)
        assert {(d.category, d.id) for d in removed.items} == due
        async with reading(desk.sessions) as session:
            assert [d for d in await report(session, config, NOW) if not d.held] == []

        async with desk.sessions() as session:
            raw = {
                r.id: (r.data is not None, r.ticket_id)
                for r in await session.scalars(select(RawMessage))
            }
            held_raw = [kept for kept, tid in raw.values() if tid == ids["held"]]
            assert held_raw and all(held_raw)  # under hold: kept
            assert not any(kept for kept, tid in raw.values() if tid in (ids["first"], ids["bob"]))
            assert raw[ids["waiting"]] == (True, None) and raw[ids["bounce"]] == (False, None)
            assert await session.get(Quarantine, ids["quarantine"]) is None
            assert await session.get(Quarantine, ids["open"]) is not None
            texts = {
                m.ticket_id: m.text
                for m in await session.scalars(select(Message).where(Message.direction == "in"))
            }
            assert texts[ids["bob"]] == "" and PHRASE in texts[ids["first"]]
            assert PHRASE3 in texts[ids["held"]]
            outbox = {(o.ticket_id, bool(o.data)) for o in await session.scalars(select(Outbox))}
            assert outbox == {(ids["first"], False), (ids["bob"], False), (ids["held"], True)}
            events = {(e.ticket_id, e.type) for e in await session.scalars(select(Event))}
            assert (ids["bob"], "retention") in events  # what went, without the data
            assert any(tid == ids["held"] and t != "retention" for tid, t in events)
            bob = await session.get(Ticket, ids["bob"])
            assert bob is not None and bob.purged_at is not None and bob.subject == "Storage"
        assert not blob(config, scene.bob_file).exists()
        assert blob(config, scene.ada_files[1]).exists()  # the held ticket's
        assert blob(config, scene.ada_files[0]).exists()  # the first ticket keeps its bodies
        assert not any(BOB_PHRASE in t for t in await table_traces(desk, [BOB_PHRASE]))

        # A second pass finds nothing; housekeeping's round marks the pass done.
        assert (await enforce(desk.sessions, config, NOW)).total == 0
        assert await keep_retention(Runtime.of(config), desk.sessions, clock=lambda: NOW) == 0


async def test_rules_kept_for_ever_remove_nothing(make_config, tmp_path):
    config = with_sections(
        make_config(),
        "\n[retention]\n"
        + "\n".join(
            f'{key} = "forever"'
            for key in (
                "raw_mail_days",
                "quarantine_days",
                "closed_ticket_days",
                "sent_mail_days",
                "event_days",
            )
        )
        + "\n",
    )
    scene = await build_light(config, tmp_path)
    async with Desk(config) as desk:
        await age(desk, scene)
        async with reading(desk.sessions) as session:
            assert await report(session, config, NOW, horizon=9999 * DAY) == []
        assert (await enforce(desk.sessions, config, NOW)).total == 0


async def test_a_fleet_runs_each_batch_once(make_pg_config, tmp_path):
    config = make_pg_config()
    scene = await build_light(config, tmp_path)
    async with Desk(config) as desk:
        await age(desk, scene)
        async with desk.sessions.begin() as other:  # another daemon, in the middle of a batch
            assert await other.scalar(
                select(func.pg_try_advisory_xact_lock(lock_key(retention.LOCK)))
            )
            skipped = await enforce(desk.sessions, config, NOW)
            assert skipped.skipped and skipped.total == 0
        done = await enforce(desk.sessions, config, NOW)
        assert not done.skipped and done.total > 0
