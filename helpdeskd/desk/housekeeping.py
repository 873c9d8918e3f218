"""Periodic duties of the daemon that are not tied to one message."""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import func, select

from helpdeskd.clock import Clock, system_clock
from helpdeskd.desk.agents import AgentDesk
from helpdeskd.desk.incidents import due_postmortems, maintenance_tick
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import Event, Quarantine
from helpdeskd.triage.facts import Runtime

log = structlog.get_logger(__name__)

REMIND_EVERY = timedelta(hours=24)


async def remind_quarantine(
    runtime: Runtime, sessions: SessionMaker, *, clock: Clock = system_clock
) -> bool:
    """Tell the agents, at most once a day, that quarantine holds mail; True when told."""
    agents = AgentDesk.of(runtime.policy)
    now = clock()
    async with sessions() as session, session.begin():
        entries = list(
            await session.scalars(
                select(Quarantine).where(Quarantine.resolved_at.is_(None)).order_by(Quarantine.id)
            )
        )
        if not entries:
            return False
        last = await session.scalar(
            select(func.max(Event.created_at)).where(Event.type == "quarantine_reminder")
        )
        if last is not None and now - last < REMIND_EVERY:
            return False
        session.add(
            Event(
                ticket_id=None,
                type="quarantine_reminder",
                actor="system",
                detail={"open": len(entries)},
                created_at=now,  # the next reminder counts a day from this
            )
        )
        lines = [
            f"{len(entries)} message(s) could not be processed and wait in quarantine. "
            "Nothing is lost: each keeps its raw bytes.",
            "",
            *(f"  #{q.id}  {q.source}  {q.error[:100]}" for q in entries[:20]),
            *(["  …"] if len(entries) > 20 else []),
            "",
            "See one:   helpdeskd quarantine show ID --raw",
            "Retry one: helpdeskd quarantine retry ID   (after fixing the cause)",
        ]
        await agents.tell_all(
            session, None, f"{len(entries)} message(s) in quarantine", "\n".join(lines) + "\n"
        )
        log.warning("quarantine_reminder", open=len(entries))
        return True


async def tick_operations(
    runtime: Runtime, sessions: SessionMaker, *, clock: Clock = system_clock
) -> int:
    """Move maintenance along by time and remind agents of owed post-mortems; return steps."""
    policy = runtime.policy
    agents = AgentDesk.of(policy)
    now = clock()
    async with sessions() as session, session.begin():
        steps = await maintenance_tick(session, policy.config, policy.renderer, now=now)
        for incident in await due_postmortems(session, now=now):
            await agents.tell_all(
                session,
                None,
                f"Post-mortem owed: {incident.title}",
                f"Incident {incident.id} ({incident.title}) was resolved on "
                f"{incident.resolved_at:%Y-%m-%d}. Customers are owed a post-mortem: what went "
                "wrong and what prevents it next time. Publish it with\n\n"
                f"  helpdeskd incident postmortem {incident.id} --file PM.md\n\n"
                "This reminder comes daily until then.\n",
            )
            steps += 1
        return steps
