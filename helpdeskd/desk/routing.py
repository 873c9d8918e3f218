"""Apply the routing rules' Decision to a ticket, leaving an event per action that names its rule.

The rules themselves are pure (:mod:`helpdeskd.rules.engine`); this module loads them against
what the config and templates know, builds the facts of a message, and carries the decision out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import DEFAULT_TEMPLATES, Config
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.rules.engine import Decision, Facts, Known, RuleSet, load_rules
from helpdeskd.store.models import Agent, Contact, Event, Ticket

OPEN_STATES = ("new", "open", "pending")


def template_names(folder: Path) -> set[str]:
    """The names rules may use for templates: ``ack``, ``replies/thanks`` …"""
    names = set()
    for base in (folder, DEFAULT_TEMPLATES):
        if base.is_dir():
            for path in base.rglob("*.txt.j2"):
                names.add(str(path.relative_to(base))[: -len(".txt.j2")])
    return names


def known(config: Config) -> Known:
    queues = {queue for agent in config.agents for queue in agent.queues}
    return Known(
        templates=template_names(config.paths.templates),
        agents={agent.email for agent in config.agents},
        queues=queues,
        mailboxes={m.name for m in config.mailboxes},
    )


def load(config: Config) -> RuleSet:
    """Load and validate the rules folder; RulesError (a ConfigError) names file:line."""
    return load_rules(config.paths.rules, known=known(config), timezone=config.service.timezone)


def facts(
    parsed: ParsedMessage,
    *,
    mailbox: str,
    kind: str,
    plan: str | None,
    ticket: Mapping[str, Any] | None,
    channel: str = "email",
    received_at: datetime | None = None,
) -> Facts:
    return Facts(
        received_at=received_at or parsed.date or datetime.now(UTC),
        mailbox=mailbox,
        from_addr=parsed.sender,
        to=parsed.to,
        cc=parsed.cc,
        subject=parsed.subject,
        body=parsed.full_text,
        headers=parsed.headers,
        channel=ticket["channel"] if ticket is not None else channel,
        kind=kind,
        plan=plan,
        new_ticket=ticket is None,
        state=ticket["state"] if ticket is not None else "new",
        priority=ticket["priority"] if ticket is not None else "normal",
        queue=ticket["queue"] if ticket is not None else None,
        tags=frozenset(ticket["tags"] or ()) if ticket is not None else frozenset(),
    )


async def pick_agent(
    session: AsyncSession, config: Config, mode: str, queue: str | None
) -> Agent | None:
    """Pick an agent of QUEUE: 'round-robin' (the longest since an assignment) or
    'least-loaded' (the fewest open tickets); a plain address names the agent."""
    candidates = [a.email for a in config.agents if not queue or not a.queues or queue in a.queues]
    if mode not in ("round-robin", "least-loaded"):
        candidates = [mode] if mode in candidates or config.agent(mode) else []
    rows = list(
        await session.scalars(
            select(Agent).where(Agent.email.in_(candidates), Agent.active.is_(True))
        )
    )
    for email in set(candidates) - {a.email for a in rows}:
        configured = config.agent(email)
        if configured is not None:  # the daemon syncs agents at start; the CLI may not have
            row = Agent(email=configured.email, name=configured.name, active=True)
            session.add(row)
            rows.append(row)
    await session.flush()
    if not rows:
        return None
    if mode == "least-loaded":
        load: dict[int, int] = dict.fromkeys((a.id for a in rows), 0)
        counts = await session.execute(
            select(Ticket.assignee_id, func.count(Ticket.id))
            .where(Ticket.assignee_id.in_(load), Ticket.state.in_(OPEN_STATES))
            .group_by(Ticket.assignee_id)
        )
        for agent_id, count in counts:
            if agent_id is not None:
                load[agent_id] = count
        return min(rows, key=lambda a: (load[a.id], a.email))
    if mode == "round-robin":
        last: dict[int, int] = dict.fromkeys((a.id for a in rows), 0)
        latest = await session.execute(
            select(Ticket.assignee_id, func.max(Ticket.id))
            .where(Ticket.assignee_id.in_(last))
            .group_by(Ticket.assignee_id)
        )
        for agent_id, ticket_id in latest:
            if agent_id is not None:
                last[agent_id] = ticket_id
        return min(rows, key=lambda a: (last[a.id], a.email))
    return rows[0]


def ticket_updates(tags: Sequence[str], decision: Decision) -> dict[str, Any]:
    """The ticket columns DECISION sets (queue, priority, tags), for a ticket with TAGS."""
    actions = decision.actions
    updates: dict[str, Any] = {}
    if actions.queue is not None:
        updates["queue"] = actions.queue
    if actions.priority is not None:
        updates["priority"] = actions.priority
    if actions.tags_add or actions.tags_remove:
        kept = [t for t in tags if t not in actions.tags_remove]
        updates["tags"] = kept + [t for t in actions.tags_add if t not in kept]
    return updates


def rule_events(decision: Decision) -> list[dict[str, Any]]:
    """One ``rule_applied`` event (type, actor, detail) per action DECISION carries out."""
    return [
        {
            "type": "rule_applied",
            "actor": f"rule:{applied.rule}",
            "detail": {
                "action": applied.name,
                "value": applied.value,
                "where": f"{applied.file}:{applied.line}",
            },
        }
        for applied in decision.applied
    ]


async def apply(
    session: AsyncSession, config: Config, ticket: Ticket, decision: Decision
) -> list[str]:
    """Carry out DECISION's ticket actions on TICKET; return the notify targets it named."""
    for name, value in ticket_updates(ticket.tags or [], decision).items():
        setattr(ticket, name, value)
    if decision.actions.assign is not None:
        agent = await pick_agent(session, config, decision.actions.assign, ticket.queue)
        if agent is not None:
            ticket.assignee_id = agent.id
    for event in rule_events(decision):
        session.add(Event(ticket_id=ticket.id, **event))
    return list(decision.actions.notify)


async def plan_of(session: AsyncSession, email: str) -> str | None:
    return await session.scalar(select(Contact.plan).where(Contact.email == email.lower()))
