"""Time rules and SLAs, run by the scheduler: each due step acts once, even with several daemons.

Every ticket is handled in its own transaction with its row locked (``FOR UPDATE SKIP LOCKED``
on PostgreSQL; SQLite serialises writers), and what already fired is read back inside the lock
from the ticket's events, so a step is never taken twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.loops import automatic_headers
from helpdeskd.mailer import compose_mail, customer_envelope, store_mail
from helpdeskd.models import Agent, Contact, Event, Ticket, utcnow
from helpdeskd.processor import Processor
from helpdeskd.received import ticket_ref
from helpdeskd.schedule import (
    TicketFacts,
    TimeAction,
    TimeRule,
    due_time,
    next_run,
    select_sla,
    sla_deadlines,
)
from helpdeskd.threading import tag_subject

log = structlog.get_logger(__name__)

OPEN_STATES = ("new", "open", "pending")
IDLE = timedelta(seconds=60)


async def _fired(session: AsyncSession, ticket_id: int) -> tuple[dict[str, datetime], set[str]]:
    """What already fired on a ticket: time rules by name (latest), and SLA steps."""
    rules: dict[str, datetime] = {}
    steps: set[str] = set()
    events = await session.scalars(
        select(Event).where(
            Event.ticket_id == ticket_id,
            Event.type.in_(("time_rule_fired", "sla_warned", "sla_breached")),
        )
    )
    for event in events:
        detail = event.detail or {}
        if event.type == "time_rule_fired":
            name = str(detail.get("rule"))
            if name not in rules or event.created_at > rules[name]:
                rules[name] = event.created_at
        else:
            steps.add(f"{event.type}:{detail.get('sla')}:{detail.get('target')}")
    return rules, steps


def _facts(ticket: Ticket, plan: str | None, fired: dict[str, datetime]) -> TicketFacts:
    return TicketFacts(
        state=ticket.state,
        state_since=ticket.state_since or ticket.updated_at,
        priority=ticket.priority,
        channel=ticket.channel,
        plan=plan,
        queue=ticket.queue,
        tags=frozenset(ticket.tags or ()),
        fired=fired,
    )


class Automation:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def run_due(self, now: datetime | None = None) -> tuple[int, datetime]:
        """Take every due step once; return (steps taken, when to look again)."""
        now = now or utcnow()
        rules = self.processor.rules
        if not rules.time_rules and not rules.slas:
            return 0, now + IDLE
        states = {rule.state for rule in rules.time_rules} | (
            set(OPEN_STATES) if rules.slas else set()
        )
        async with self.processor.sessions() as session:
            ids = list(
                await session.scalars(
                    select(Ticket.id).where(
                        Ticket.state.in_(states), Ticket.merged_into_id.is_(None)
                    )
                )
            )
        taken, jobs = 0, []
        for ticket_id in ids:
            steps, upcoming = await self._ticket(ticket_id, now)
            taken += steps
            jobs.extend(upcoming)
        return taken, next_run(now, jobs, idle=IDLE)

    async def _ticket(self, ticket_id: int, now: datetime) -> tuple[int, list[datetime | None]]:
        rules = self.processor.rules
        calendar = rules.calendar
        async with self.processor.sessions() as session, session.begin():
            ticket = await session.scalar(
                select(Ticket).where(Ticket.id == ticket_id).with_for_update(skip_locked=True)
            )
            if ticket is None:
                return 0, []  # another daemon holds it now
            requester = await session.get_one(Contact, ticket.requester_id)
            fired, steps_done = await _fired(session, ticket.id)
            taken = 0
            upcoming: list[datetime | None] = []
            for rule in rules.time_rules:
                facts = _facts(ticket, requester.plan, fired)
                due = due_time(rule, facts, calendar)
                if due is None:
                    continue
                if due > now:
                    upcoming.append(due)
                    continue
                await self._act(session, ticket, requester, rule)
                fired[rule.name] = now
                taken += 1
            facts = _facts(ticket, requester.plan, fired)
            sla = select_sla(rules.slas, facts) if ticket.state in OPEN_STATES else None
            if sla is not None:
                for deadline in sla_deadlines(
                    sla, ticket.created_at, ticket.first_response_at, calendar
                ):
                    for kind, moment in (
                        ("sla_breached", deadline.breach_at),
                        ("sla_warned", deadline.warn_at),
                    ):
                        key = f"{kind}:{sla.name}:{deadline.target}"
                        if key in steps_done:
                            continue
                        if moment > now:
                            upcoming.append(moment)
                            continue
                        await self._sla(
                            session,
                            ticket,
                            sla.escalate,
                            kind,
                            deadline.target,
                            sla.name,
                            deadline.breach_at,
                        )
                        steps_done.add(key)
                        taken += 1
                        break  # a breach makes the warning for the same target moot
            return taken, upcoming

    async def _act(
        self, session: AsyncSession, ticket: Ticket, requester: Contact, rule: TimeRule
    ) -> None:
        now = utcnow()
        for action in rule.actions:
            await self._action(session, ticket, requester, rule, action, now)
        session.add(
            Event(
                ticket_id=ticket.id,
                type="time_rule_fired",
                actor=f"rule:{rule.name}",
                detail={
                    "rule": rule.name,
                    "actions": [str(a) for a in rule.actions],
                    "where": f"{rule.file}:{rule.line}",
                },
            )
        )
        ticket.updated_at = now
        log.info("time_rule_fired", rule=rule.name, ticket=ticket.id)

    async def _action(
        self,
        session: AsyncSession,
        ticket: Ticket,
        requester: Contact,
        rule: TimeRule,
        action: TimeAction,
        now: datetime,
    ) -> None:
        processor = self.processor
        if action.name == "close":
            ticket.state, ticket.closed_at = "closed", now
        elif action.name == "solve":
            ticket.state, ticket.solved_at = "solved", now
        elif action.name == "priority":
            ticket.priority = action.value
        elif action.name == "tags":
            tag = action.value[1:]
            tags = [t for t in (ticket.tags or []) if t != tag]
            ticket.tags = [*tags, tag] if action.value.startswith("+") else tags
        elif action.name == "remind":
            await self._remind(session, ticket, requester, action.value)
        elif action.name == "escalate":
            await self._tell(
                session,
                ticket,
                action.value,
                f"Escalated by rule {rule.name}: " + ticket.subject,
                f"Rule {rule.name} ({rule.file}:{rule.line}) escalated "
                f"{ticket_ref(processor.config, ticket.id)}: it is {ticket.state} "
                f"since {(ticket.state_since or ticket.updated_at):%Y-%m-%d %H:%M} UTC.\n",
            )

    async def _remind(
        self, session: AsyncSession, ticket: Ticket, requester: Contact, template: str
    ) -> None:
        """Mail the requester a reminder (never to the Heroku desk, never when suppressed)."""
        processor = self.processor
        if ticket.channel != "email" or requester.undeliverable or requester.suppressed:
            return
        service = processor.config.service
        ref = ticket_ref(processor.config, ticket.id)
        rendered = processor.renderer.render(
            f"{template}.txt.j2",
            {
                "service": {"name": service.name, "support_address": service.support_address},
                "ticket": {
                    "ref": ref,
                    "subject": ticket.subject,
                    "state": ticket.state,
                    "priority": ticket.priority,
                },
                "requester": {"name": requester.name or "", "email": requester.email},
            },
        )
        await store_mail(
            session,
            compose_mail(
                domain=service.support_domain,
                kind="reminder",
                envelope=customer_envelope(service, ref, (requester.email,)),
                subject=tag_subject(rendered.subject, ref, service.ticket_prefix),
                text=rendered.text,
                ticket_id=ticket.id,
                extra_headers=automatic_headers(service.support_address, "auto-generated"),
            ),
        )

    async def _sla(
        self,
        session: AsyncSession,
        ticket: Ticket,
        escalate: str,
        kind: str,
        target: str,
        sla: str,
        breach_at: datetime,
    ) -> None:
        ref = ticket_ref(self.processor.config, ticket.id)
        what = target.replace("_", " ")
        if kind == "sla_breached":
            subject = f"SLA breached ({what}): {ticket.subject}"
            text = f"{ref} missed its {what} target ({sla}) at {breach_at:%Y-%m-%d %H:%M} UTC.\n"
            who = escalate
        else:
            subject = f"SLA warning ({what}): {ticket.subject}"
            text = f"{ref} reaches its {what} target ({sla}) at {breach_at:%Y-%m-%d %H:%M} UTC.\n"
            who = "assignee"
        await self._tell(session, ticket, who, subject, text)
        session.add(
            Event(
                ticket_id=ticket.id,
                type=kind,
                actor=f"sla:{sla}",
                detail={"sla": sla, "target": target, "breach_at": breach_at.isoformat()},
            )
        )
        log.warning(kind, ticket=ticket.id, sla=sla, target=target)

    async def _tell(
        self, session: AsyncSession, ticket: Ticket, who: str, subject: str, text: str
    ) -> None:
        """Mail the assignee ('assignee', falling back to the agents), the agents or an address."""
        agents = self.processor.agents
        recipients: list[Agent] = []
        if who == "assignee" and ticket.assignee_id is not None:
            assignee = await session.get(Agent, ticket.assignee_id)
            recipients = [assignee] if assignee is not None else []
        if who in ("agents", "assignee") and not recipients:
            recipients = await agents.recipients_for(session, ticket, None)
        elif "@" in who:
            agent = await agents.agent(session, who)
            if agent is None:
                await agents.tell(session, who, ticket, subject, text)  # not an agent: no token
                return
            recipients = [agent]
        for agent in recipients:
            await agents.tell(session, agent, ticket, subject, text)
