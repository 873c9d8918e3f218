"""Time rules and SLAs, run by the scheduler: each due step acts once, even with several daemons.

Each pass first reads every ticket a rule could act on, with what already fired, in a few
queries and one read-only transaction, and works out from those which have a step due. Only a
ticket with a step due is then handled in its own transaction with its row locked (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL; SQLite serialises writers), where what already fired is read back
inside the lock from the ticket's events, so a step is never taken twice. A pass reads its
clock once: every step it takes, and every event and mail they leave, carries that moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.desk.agents import AgentDesk
from helpdeskd.mail.compose import compose_mail, customer_envelope
from helpdeskd.outbox.queue import store_mail
from helpdeskd.rules.model import RuleSet
from helpdeskd.rules.schedule import (
    BusinessCalendar,
    Sla,
    SlaDeadline,
    TicketFacts,
    TimeAction,
    TimeRule,
    due_time,
    next_run,
    select_sla,
    sla_deadlines,
)
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.models import Agent, Contact, Event, Ticket
from helpdeskd.triage.facts import Policy, Runtime
from helpdeskd.triage.lifecycle import Status, change_state, edit_tags, signed
from helpdeskd.triage.loops import automatic_headers
from helpdeskd.triage.received import ticket_ref
from helpdeskd.triage.threading import tag_subject
from helpdeskd.vocab import OPEN_STATES, as_priority

log = structlog.get_logger(__name__)

IDLE = timedelta(seconds=60)
SCAN_CHUNK = 1000  # open tickets read at a time by a pass
MAX_CACHED = 100_000  # SLA deadlines kept between passes: one or two a ticket


STEP_EVENTS = ("time_rule_fired", "sla_warned", "sla_breached")


# What the steps are worked out from: a Ticket, or a row of the same columns (the scan).
_TicketColumns = Ticket | Row[Any]


@dataclass
class _Fired:
    """What already fired on a ticket: time rules by name (the latest), and SLA steps."""

    rules: dict[str, datetime] = field(default_factory=dict)
    steps: set[str] = field(default_factory=set)

    def add(self, type_: str, detail: Mapping[str, Any] | None, created_at: datetime) -> None:
        detail = detail or {}
        if type_ == "time_rule_fired":
            name = str(detail.get("rule"))
            if name not in self.rules or created_at > self.rules[name]:
                self.rules[name] = created_at
        else:
            self.steps.add(f"{type_}:{detail.get('sla')}:{detail.get('target')}")


async def _fired(session: AsyncSession, ticket_id: int) -> _Fired:
    fired = _Fired()
    events = await session.execute(
        select(Event.type, Event.detail, Event.created_at).where(
            Event.ticket_id == ticket_id, Event.type.in_(STEP_EVENTS)
        )
    )
    for type_, detail, created_at in events:
        fired.add(type_, detail, created_at)
    return fired


Deadlines = Callable[[Sla, datetime, datetime | None, BusinessCalendar], tuple[SlaDeadline, ...]]


@dataclass(frozen=True)
class _SlaStep:
    sla: Sla
    deadline: SlaDeadline
    kind: str  # "sla_warned" or "sla_breached"
    key: str  # as _Fired.steps holds it


def _steps(
    rules: RuleSet,
    ticket: _TicketColumns,
    plan: str | None,
    fired: _Fired,
    now: datetime,
    upcoming: list[datetime | None],
    deadlines: Deadlines = sla_deadlines,
) -> Iterator[TimeRule | _SlaStep]:
    """Yield each step due on TICKET at NOW, in order; add the later ones to UPCOMING.

    The caller takes each step before asking for the next, recording it in FIRED (a rule that
    acted, an SLA step sent); a step may change TICKET, which the steps after it then see.
    """
    calendar = rules.calendar
    for rule in rules.time_rules:
        due = due_time(rule, _facts(ticket, plan, fired.rules), calendar)
        if due is None:
            continue
        if due > now:
            upcoming.append(due)
            continue
        yield rule
    facts = _facts(ticket, plan, fired.rules)
    sla = select_sla(rules.slas, facts) if ticket.state in OPEN_STATES else None
    if sla is None:
        return
    for deadline in deadlines(sla, ticket.created_at, ticket.first_response_at, calendar):
        for kind, moment in (
            ("sla_breached", deadline.breach_at),
            ("sla_warned", deadline.warn_at),
        ):
            key = f"{kind}:{sla.name}:{deadline.target}"
            if key in fired.steps:
                continue
            if moment > now:
                upcoming.append(moment)
                continue
            yield _SlaStep(sla, deadline, kind, key)
            break  # a breach makes the warning for the same target moot


def _facts(ticket: _TicketColumns, plan: str | None, fired: dict[str, datetime]) -> TicketFacts:
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
    """The scheduler's passes over the time rules and SLAs, at the time CLOCK tells."""

    def __init__(
        self, runtime: Runtime, sessions: SessionMaker, *, clock: Clock = system_clock
    ) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.clock = clock
        # A ticket's SLA deadlines, worked out once (business hours take ~150 us a ticket).
        self._deadlines: dict[
            tuple[Sla, BusinessCalendar, datetime, bool], tuple[SlaDeadline, ...]
        ] = {}

    def deadlines(
        self,
        sla: Sla,
        created_at: datetime,
        first_response_at: datetime | None,
        calendar: BusinessCalendar,
    ) -> tuple[SlaDeadline, ...]:
        """sla_deadlines, remembered: the same SLA, calendar and ticket give the same ones."""
        key = (sla, calendar, created_at, first_response_at is None)
        found = self._deadlines.get(key)
        if found is None:
            if len(self._deadlines) >= MAX_CACHED:
                self._deadlines.clear()
            found = self._deadlines[key] = sla_deadlines(
                sla, created_at, first_response_at, calendar
            )
        return found

    async def run_due(self, now: datetime | None = None) -> tuple[int, datetime]:
        """Take every step due at NOW (default: the clock's now) once; return (steps taken,
        when to look again)."""
        now = now or self.clock()
        policy = self.runtime.policy  # the rules of this pass, whatever a reload does meanwhile
        rules = policy.rules
        if not rules.time_rules and not rules.slas:
            return 0, now + IDLE
        jobs: list[datetime | None] = []
        due = await self._due(rules, now, jobs)
        taken = 0
        for ticket_id in due:
            steps, upcoming = await self._ticket(policy, ticket_id, now)
            taken += steps
            jobs.extend(upcoming)
        return taken, next_run(now, jobs, idle=IDLE)

    async def _due(
        self, rules: RuleSet, now: datetime, upcoming: list[datetime | None]
    ) -> Sequence[int]:
        """The tickets with a step due at NOW, from one read; the later steps go to UPCOMING.

        Nothing is locked or written here: each due ticket is looked at again in _ticket.
        """
        states = {rule.state for rule in rules.time_rules} | (
            set(OPEN_STATES) if rules.slas else set()
        )
        candidate = (Ticket.state.in_(states), Ticket.merged_into_id.is_(None))
        async with reading(self.sessions) as session:  # beside a batch's commit
            fired: dict[int, _Fired] = {}
            events = await session.execute(
                select(Event.ticket_id, Event.type, Event.detail, Event.created_at)
                .join(Ticket, Ticket.id == Event.ticket_id)
                .where(Event.type.in_(STEP_EVENTS), *candidate)
            )
            for ticket_id, type_, detail, created_at in events:
                fired.setdefault(ticket_id, _Fired()).add(type_, detail, created_at)
            query = (
                select(
                    Ticket.id,
                    Ticket.state,
                    Ticket.state_since,
                    Ticket.updated_at,
                    Ticket.created_at,
                    Ticket.first_response_at,
                    Ticket.priority,
                    Ticket.channel,
                    Ticket.queue,
                    Ticket.tags,
                    Contact.plan,
                )
                .join(Contact, Contact.id == Ticket.requester_id)
                .where(*candidate)
                .order_by(Ticket.id)
                .limit(SCAN_CHUNK)
            )
            due = []
            last = 0
            # By SCAN_CHUNK tickets in id order, in the one snapshot: the driver buffers a
            # result whole, and 17,000 open tickets at once cost the daemon 21 MiB of peak.
            while tickets := (await session.execute(query.where(Ticket.id > last))).all():
                for row in tickets:
                    done = fired.get(row.id) or _Fired()
                    steps = _steps(rules, row, row.plan, done, now, upcoming, self.deadlines)
                    if next(steps, None) is not None:
                        due.append(row.id)
                last = tickets[-1].id
        return due

    async def _ticket(
        self, policy: Policy, ticket_id: int, now: datetime
    ) -> tuple[int, list[datetime | None]]:
        rules = policy.rules
        async with self.sessions() as session, session.begin():
            ticket = await session.scalar(
                select(Ticket).where(Ticket.id == ticket_id).with_for_update(skip_locked=True)
            )
            if ticket is None:
                return 0, []  # another daemon holds it now
            requester = await session.get_one(Contact, ticket.requester_id)
            fired = await _fired(session, ticket.id)
            taken = 0
            upcoming: list[datetime | None] = []
            steps = _steps(rules, ticket, requester.plan, fired, now, upcoming, self.deadlines)
            for step in steps:
                if isinstance(step, _SlaStep):
                    await self._sla(
                        policy,
                        session,
                        ticket,
                        step.sla.escalate,
                        step.kind,
                        step.deadline.target,
                        step.sla.name,
                        step.deadline.breach_at,
                        now,
                    )
                    fired.steps.add(step.key)
                else:
                    await self._act(policy, session, ticket, requester, step, now)
                    fired.rules[step.name] = now
                taken += 1
            return taken, upcoming

    async def _act(
        self,
        policy: Policy,
        session: AsyncSession,
        ticket: Ticket,
        requester: Contact,
        rule: TimeRule,
        now: datetime,
    ) -> None:
        for action in rule.actions:
            await self._action(policy, session, ticket, requester, rule, action, now)
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
                created_at=now,  # a rule's "since" counts from this
            )
        )
        ticket.updated_at = now
        log.info("time_rule_fired", rule=rule.name, ticket=ticket.id)

    async def _action(
        self,
        policy: Policy,
        session: AsyncSession,
        ticket: Ticket,
        requester: Contact,
        rule: TimeRule,
        action: TimeAction,
        now: datetime,
    ) -> None:
        if action.name in ("close", "solve"):
            before = Status(ticket.state, ticket.solved_at, ticket.closed_at)
            after = change_state(before, "closed" if action.name == "close" else "solved", now)
            changed = after.state != ticket.state
            ticket.state = after.state
            if changed:  # the pass's moment, not the wall clock the model's listener stamps
                ticket.state_since = now
            ticket.solved_at, ticket.closed_at = after.solved_at, after.closed_at
        elif action.name == "priority":
            ticket.priority = as_priority(action.value)
        elif action.name == "tags":
            ticket.tags = edit_tags(ticket.tags or [], *signed([action.value]))
        elif action.name == "remind":
            await self._remind(policy, session, ticket, requester, action.value, now)
        elif action.name == "escalate":
            await self._tell(
                policy,
                session,
                ticket,
                action.value,
                f"Escalated by rule {rule.name}: " + ticket.subject,
                f"Rule {rule.name} ({rule.file}:{rule.line}) escalated "
                f"{ticket_ref(policy.config, ticket.id)}: it is {ticket.state} "
                f"since {(ticket.state_since or ticket.updated_at):%Y-%m-%d %H:%M} UTC.\n",
            )

    async def _remind(
        self,
        policy: Policy,
        session: AsyncSession,
        ticket: Ticket,
        requester: Contact,
        template: str,
        now: datetime,
    ) -> None:
        """Mail the requester a reminder (never to the Heroku desk, never when suppressed)."""
        if ticket.channel != "email" or requester.undeliverable or requester.suppressed:
            return
        service = policy.config.service
        ref = ticket_ref(policy.config, ticket.id)
        rendered = policy.renderer.render(
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
                now=now,
            ),
        )

    async def _sla(
        self,
        policy: Policy,
        session: AsyncSession,
        ticket: Ticket,
        escalate: str,
        kind: str,
        target: str,
        sla: str,
        breach_at: datetime,
        now: datetime,
    ) -> None:
        ref = ticket_ref(policy.config, ticket.id)
        what = target.replace("_", " ")
        if kind == "sla_breached":
            subject = f"SLA breached ({what}): {ticket.subject}"
            text = f"{ref} missed its {what} target ({sla}) at {breach_at:%Y-%m-%d %H:%M} UTC.\n"
            who = escalate
        else:
            subject = f"SLA warning ({what}): {ticket.subject}"
            text = f"{ref} reaches its {what} target ({sla}) at {breach_at:%Y-%m-%d %H:%M} UTC.\n"
            who = "assignee"
        await self._tell(policy, session, ticket, who, subject, text)
        session.add(
            Event(
                ticket_id=ticket.id,
                type=kind,
                actor=f"sla:{sla}",
                detail={"sla": sla, "target": target, "breach_at": breach_at.isoformat()},
                created_at=now,
            )
        )
        log.warning(kind, ticket=ticket.id, sla=sla, target=target)

    async def _tell(
        self,
        policy: Policy,
        session: AsyncSession,
        ticket: Ticket,
        who: str,
        subject: str,
        text: str,
    ) -> None:
        """Mail the assignee ('assignee', falling back to the agents), the agents or an address."""
        agents = AgentDesk.of(policy)
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
