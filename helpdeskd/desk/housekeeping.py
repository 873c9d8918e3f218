"""Periodic duties of the daemon that are not tied to one message.

Quarantine reminders, maintenance and post-mortem steps, and personal data: the files an
erasure or a retention pass left to remove, the retention pass itself (hourly, in small
batches, one daemon of a fleet at a time: helpdeskd.desk.retention) and the erasures that a
legal hold kept back.
"""

from __future__ import annotations

from datetime import timedelta

import structlog
from sqlalchemy import func, select

from helpdeskd.clock import Clock, system_clock
from helpdeskd.desk.agents import AgentDesk
from helpdeskd.desk.erasure import finish_held
from helpdeskd.desk.incidents import due_postmortems, maintenance_tick
from helpdeskd.desk.privacy import files_pending, finish_deletions
from helpdeskd.desk.retention import due_for_pass, enforce
from helpdeskd.store.db import SessionMaker, reading
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


RETENTION_BATCHES = 20  # batches of a retention pass per round: the rest waits for the next


async def keep_retention(
    runtime: Runtime, sessions: SessionMaker, *, clock: Clock = system_clock
) -> int:
    """Remove what is due under ``[retention]`` and what erasures left; return rows removed.

    Files left by a crash go every round; the retention pass runs hourly (and every round
    while a backlog remains), a few batches at a time. A failure is logged and tried again
    next round: it must not stop the other duties.
    """
    config = runtime.policy.config
    now = clock()
    try:
        async with reading(sessions) as session:
            files = await files_pending(session)
            due = await due_for_pass(session, now)
        if files:
            await finish_deletions(sessions, config.service.state_dir)
        if not due:
            return 0
        removed = await enforce(sessions, config, now, max_batches=RETENTION_BATCHES)
        await finish_held(sessions, config, now)
    except Exception as exc:  # the round's boundary
        log.error("retention_failed", error=f"{type(exc).__name__}: {exc}"[:300], exc_info=True)
        return 0
    return removed.total
