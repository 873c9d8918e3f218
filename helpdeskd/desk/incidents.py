"""Scheduled maintenance and incidents: the vendor's duties of addon-operations.md.

Maintenance is announced at least ``min_notice_hours`` ahead (or forced with a reason), reminded
before it starts, and marked started and completed by command or by time. An incident moves
investigating → identified → monitoring → resolved, each step optionally mailed to the customers
it affects; once resolved, the agents are reminded daily until its post-mortem is published.
Both feed the status page. Each step takes the moment it happens at (``now``) from its caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import show_time
from helpdeskd.config.settings import Config
from helpdeskd.desk import status as page
from helpdeskd.desk.noticequeue import queue_notice
from helpdeskd.desk.notices import Audience, NoticeReport
from helpdeskd.errors import UserError
from helpdeskd.mail.render import Renderer
from helpdeskd.store.models import Event, Incident, IncidentUpdate, Maintenance

log = structlog.get_logger(__name__)

IMPACTS = ("minor", "major", "critical")
STEPS = ("investigating", "identified", "monitoring", "resolved")
HISTORY = timedelta(days=90)
REMIND_EVERY = timedelta(hours=24)


def status_url(config: Config) -> str:
    return f"{config.service.public_url}/status"


def _components(config: Config, given: list[str] | None) -> list[str]:
    known = [key for key, _ in config.status_page.components]
    for key in given or []:
        if known and key not in known:
            raise UserError(f"no component {key!r} (configured: {', '.join(known)})")
    return list(given or [])


# --- maintenance ------------------------------------------------------------------------------


async def _maintenance_notice(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    row: Maintenance,
    phase: str,
    audience: Audience,
    expires_at: datetime | None,
    now: datetime,
) -> NoticeReport:
    tz = config.service.timezone
    return await queue_notice(
        session,
        config,
        renderer,
        category="maintenance",
        template="maintenance",
        audience=audience,
        now=now,
        expires_at=expires_at,
        extra={
            "phase": phase,
            "title": row.title,
            "message": row.message,
            "start": show_time(row.start, tz),
            "end": show_time(row.end, tz),
            "components": ", ".join(row.components or []),
            "status_url": status_url(config),
        },
    )


async def schedule_maintenance(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    *,
    title: str,
    start: datetime,
    end: datetime,
    message: str = "",
    components: list[str] | None = None,
    force_reason: str | None = None,
    notify: bool = True,
    audience: Audience | None = None,
    now: datetime,
) -> tuple[Maintenance, NoticeReport | None]:
    """Schedule maintenance at NOW and announce it; refuse less than min_notice ahead unless
    forced."""
    notices = config.notices
    assert notices is not None
    if end <= start:
        raise UserError("--end must be after --start")
    notice = timedelta(hours=notices.min_notice_hours)
    if start - now < notice and force_reason is None:
        raise UserError(
            f"maintenance must be announced at least {notices.min_notice_hours:g} h ahead; "
            f"the start is {show_time(start, config.service.timezone)} — use --force --reason "
            "to announce it later than that"
        )
    row = Maintenance(
        title=title,
        message=message,
        components=_components(config, components),
        start=start,
        end=end,
        status="scheduled",
        forced_reason=force_reason,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    session.add(
        Event(
            ticket_id=None,
            type="maintenance_scheduled",
            actor="cli",
            detail={"maintenance": row.id, "forced": force_reason},
            created_at=now,
        )
    )
    report = None
    if notify:
        # The announcement is worthless once the work has begun.
        phase, who = "Scheduled maintenance", audience or Audience()
        report = await _maintenance_notice(session, config, renderer, row, phase, who, start, now)
    return row, report


async def set_maintenance_status(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    maintenance_id: int,
    status: str,
    *,
    notify: bool = True,
    now: datetime,
) -> Maintenance:
    """Move maintenance MAINTENANCE_ID to STATUS at NOW, telling the customers if NOTIFY."""
    row = await session.get(Maintenance, maintenance_id)
    if row is None:
        raise UserError(f"no maintenance {maintenance_id}")
    allowed = {
        "in_progress": ("scheduled",),
        "completed": ("scheduled", "in_progress"),
        "cancelled": ("scheduled",),
    }
    if row.status not in allowed[status]:
        raise UserError(f"maintenance {maintenance_id} is {row.status}; cannot make it {status}")
    row.status = status
    session.add(
        Event(
            ticket_id=None,
            type=f"maintenance_{status}",
            actor="cli",
            detail={"maintenance": row.id},
            created_at=now,
        )
    )
    if notify and status in ("in_progress", "completed"):
        phase = "Maintenance started" if status == "in_progress" else "Maintenance completed"
        expiry = row.end if status == "in_progress" else None
        await _maintenance_notice(session, config, renderer, row, phase, Audience(), expiry, now)
    return row


async def maintenance_tick(
    session: AsyncSession, config: Config, renderer: Renderer, *, now: datetime
) -> int:
    """Do what time says at NOW: remind before the start, start and complete; return steps
    taken."""
    notices = config.notices
    assert notices is not None
    steps = 0
    # Several daemons on PostgreSQL: each row is moved by the one that locked it.
    rows = await session.scalars(
        select(Maintenance)
        .where(Maintenance.status.in_(("scheduled", "in_progress")))
        .with_for_update(skip_locked=True)
    )
    for row in rows:
        reminder = timedelta(hours=notices.reminder_hours)
        if (
            row.status == "scheduled"
            and notices.reminder_hours > 0
            and row.reminded_at is None
            and row.start - reminder <= now < row.start
        ):
            row.reminded_at = now
            await _maintenance_notice(
                session, config, renderer, row, "Reminder", Audience(), row.start, now
            )
            steps += 1
        if row.status == "scheduled" and now >= row.start:
            await set_maintenance_status(session, config, renderer, row.id, "in_progress", now=now)
            steps += 1
        if row.status == "in_progress" and now >= row.end:
            await set_maintenance_status(session, config, renderer, row.id, "completed", now=now)
            steps += 1
    return steps


# --- incidents --------------------------------------------------------------------------------


async def _incident_notice(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    row: Incident,
    message: str,
    audience: Audience,
    now: datetime,
) -> NoticeReport:
    return await queue_notice(
        session,
        config,
        renderer,
        category="incident",
        template="incident",
        audience=audience,
        now=now,
        extra={
            "title": row.title,
            "status": row.status,
            "message": message,
            "status_url": status_url(config),
        },
    )


async def open_incident(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    *,
    title: str,
    impact: str,
    components: list[str] | None,
    message: str,
    notify: bool,
    audience: Audience | None = None,
    now: datetime,
) -> tuple[Incident, NoticeReport | None]:
    """Open an incident at NOW, telling the customers if NOTIFY."""
    if impact not in IMPACTS:
        raise UserError(f"--impact must be one of {', '.join(IMPACTS)}")
    row = Incident(
        title=title,
        impact=impact,
        components=_components(config, components),
        status="investigating",
        started_at=now,
    )
    session.add(row)
    await session.flush()
    session.add(
        IncidentUpdate(incident_id=row.id, status="investigating", message=message, created_at=now)
    )
    session.add(
        Event(
            ticket_id=None,
            type="incident_opened",
            actor="cli",
            detail={"incident": row.id, "impact": impact},
            created_at=now,
        )
    )
    report = None
    if notify:
        report = await _incident_notice(
            session, config, renderer, row, message, audience or Audience(), now
        )
    return row, report


async def update_incident(
    session: AsyncSession,
    config: Config,
    renderer: Renderer,
    incident_id: int,
    *,
    status: str,
    message: str,
    notify: bool,
    audience: Audience | None = None,
    now: datetime,
) -> tuple[Incident, NoticeReport | None]:
    """Move incident INCIDENT_ID to STATUS at NOW, telling the customers if NOTIFY."""
    row = await session.get(Incident, incident_id)
    if row is None:
        raise UserError(f"no incident {incident_id}")
    if status not in STEPS:
        raise UserError(f"--status must be one of {', '.join(STEPS)}")
    if row.status == "resolved":
        raise UserError(f"incident {incident_id} is resolved already")
    if STEPS.index(status) < STEPS.index(row.status):
        raise UserError(f"incident {incident_id} is {row.status}; it cannot go back to {status}")
    row.status = status
    if status == "resolved":
        row.resolved_at = now
    session.add(IncidentUpdate(incident_id=row.id, status=status, message=message, created_at=now))
    session.add(
        Event(
            ticket_id=None,
            type=f"incident_{status}",
            actor="cli",
            detail={"incident": row.id},
            created_at=now,
        )
    )
    report = None
    if notify:
        report = await _incident_notice(
            session, config, renderer, row, message, audience or Audience(), now
        )
    return row, report


async def publish_postmortem(
    session: AsyncSession, incident_id: int, text: str, *, now: datetime
) -> Incident:
    """Publish TEXT as the post-mortem of resolved incident INCIDENT_ID at NOW."""
    row = await session.get(Incident, incident_id)
    if row is None:
        raise UserError(f"no incident {incident_id}")
    if row.status != "resolved":
        raise UserError(f"incident {incident_id} is not resolved yet")
    if not text.strip():
        raise UserError("the post-mortem is empty")
    row.postmortem, row.postmortem_at = text, now
    session.add(
        Event(
            ticket_id=None,
            type="postmortem_published",
            actor="cli",
            detail={"incident": row.id},
            created_at=now,
        )
    )
    return row


async def due_postmortems(session: AsyncSession, *, now: datetime) -> list[Incident]:
    """Resolved incidents still owing a post-mortem whose daily reminder is due at NOW; marks
    them."""
    rows = list(
        await session.scalars(
            select(Incident)
            .where(Incident.status == "resolved", Incident.postmortem.is_(None))
            .with_for_update(skip_locked=True)
        )
    )
    due = [r for r in rows if r.reminded_at is None or now - r.reminded_at >= REMIND_EVERY]
    for row in due:
        row.reminded_at = now
    return due


# --- the status page's data -------------------------------------------------------------------


async def status_data(session: AsyncSession, config: Config, *, now: datetime) -> page.StatusData:
    """Build the status page's data from the database, as at NOW."""
    since = now - HISTORY
    incidents = list(
        await session.scalars(
            select(Incident)
            .where((Incident.resolved_at.is_(None)) | (Incident.started_at >= since))
            .order_by(Incident.started_at)
        )
    )
    updates: dict[int, list[IncidentUpdate]] = {}
    if incidents:
        for update in await session.scalars(
            select(IncidentUpdate)
            .where(IncidentUpdate.incident_id.in_([i.id for i in incidents]))
            .order_by(IncidentUpdate.created_at, IncidentUpdate.id)
        ):
            updates.setdefault(update.incident_id, []).append(update)
    maintenances = list(
        await session.scalars(
            select(Maintenance)
            .where((Maintenance.end >= since) | (Maintenance.status == "scheduled"))
            .order_by(Maintenance.start)
        )
    )
    worst: dict[str, str] = {}
    rank = {
        "operational": 0,
        "maintenance": 1,
        "degraded": 2,
        "partial_outage": 3,
        "major_outage": 4,
    }
    impact_status = {"minor": "degraded", "major": "partial_outage", "critical": "major_outage"}

    def mark(key: str, status: str) -> None:
        if rank[status] > rank[worst.get(key, "operational")]:
            worst[key] = status

    for incident in incidents:
        if incident.resolved_at is None:
            for key in incident.components or []:
                mark(key, impact_status[incident.impact])
    for maintenance in maintenances:
        if maintenance.status == "in_progress":
            for key in maintenance.components or []:
                mark(key, "maintenance")
    return page.StatusData(
        service_name=config.service.name,
        public_url=config.service.public_url,
        timezone=config.service.timezone,
        generated_at=now,
        components=tuple(
            page.Component(key, name, worst.get(key, "operational"))
            for key, name in config.status_page.components
        ),
        incidents=tuple(
            page.Incident(
                id=i.id,
                title=i.title,
                impact=i.impact,
                components=tuple(i.components or ()),
                updates=tuple(
                    page.IncidentUpdate(u.status, u.message, u.created_at)
                    for u in updates.get(i.id, [])
                ),
                started_at=i.started_at,
                resolved_at=i.resolved_at,
                postmortem=i.postmortem,
                postmortem_at=i.postmortem_at,
            )
            for i in incidents
        ),
        maintenances=tuple(
            page.Maintenance(
                id=m.id,
                title=m.title,
                message=m.message,
                components=tuple(m.components or ()),
                start=m.start,
                end=m.end,
                status=m.status,
                announced_at=m.created_at,
            )
            for m in maintenances
        ),
    )


def incident_json(row: Incident, updates: list[IncidentUpdate], tz: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "impact": row.impact,
        "status": row.status,
        "components": list(row.components or []),
        "started_at": row.started_at.isoformat(),
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
        "postmortem": row.postmortem is not None,
        "updates": [
            {"status": u.status, "message": u.message, "at": show_time(u.created_at, tz)}
            for u in updates
        ],
    }


async def incident_rows(session: AsyncSession, config: Config) -> list[dict[str, Any]]:
    """List every incident, oldest first, with its updates, as incident_json shapes them."""
    rows = []
    for row in await session.scalars(select(Incident).order_by(Incident.id)):
        updates = await session.scalars(
            select(IncidentUpdate)
            .where(IncidentUpdate.incident_id == row.id)
            .order_by(IncidentUpdate.id)
        )
        rows.append(incident_json(row, list(updates), config.service.timezone))
    return rows
