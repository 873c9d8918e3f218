"""Mail the desk sends agents outside the intake of a mail: alerts, reminders, escalations.

What an agent's mail does — authentication, commands, the answer to the customer, receipts —
is decided with every other received mail (:mod:`helpdeskd.triage.intake`). This module finds
the agents a ticket's news goes to and queues short notes to them, composed like every other
note (:func:`helpdeskd.triage.mails.compose`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.mail.build import new_message_id
from helpdeskd.mail.compose import Parent
from helpdeskd.mail.render import Renderer
from helpdeskd.outbox.queue import store_mail
from helpdeskd.store.models import Agent, Ticket, utcnow
from helpdeskd.triage.drafting import agents_for
from helpdeskd.triage.facts import Policy
from helpdeskd.triage.mails import Note, TicketCard, compose


class AgentDesk:
    """The agents as the desk's background work reaches them; used inside the caller's
    transaction."""

    @classmethod
    def of(cls, policy: Policy) -> AgentDesk:
        """The desk's agent side under POLICY (its config, templates and backfill flag)."""
        return cls(policy.config, policy.renderer, backfill=policy.backfill)

    def __init__(self, config: Config, renderer: Renderer, *, backfill: bool = False) -> None:
        self.config = config
        self.renderer = renderer
        self.backfill = backfill  # history being loaded: tell nobody

    async def agent(self, session: AsyncSession, email: str) -> Agent | None:
        """Return the active agent row for EMAIL, creating it from the config when missing."""
        configured = self.config.agent(email)
        if configured is None:
            return None
        row = await session.scalar(select(Agent).where(Agent.email == configured.email))
        if row is None:
            row = Agent(email=configured.email, name=configured.name, active=True)
            session.add(row)
            await session.flush()
        return row

    async def recipients_for(
        self, session: AsyncSession, ticket: Ticket, exclude: int | None
    ) -> list[Agent]:
        """The active assignee; else the agents of the ticket's queue (all agents without one):
        the intake's rule (:func:`helpdeskd.triage.drafting.agents_for`), over agents' rows."""
        rows: dict[str, Agent] = {}
        for configured in self.config.agents:
            row = await self.agent(session, configured.email)
            if row is not None:
                rows[row.email] = row
        assignee = await session.get(Agent, ticket.assignee_id) if ticket.assignee_id else None
        if assignee is not None:
            rows.setdefault(assignee.email, assignee)
        return agents_for(self.config, rows, ticket.assignee_id, ticket.queue, exclude)

    async def tell_all(
        self, session: AsyncSession, ticket: Ticket | None, subject: str, text: str
    ) -> None:
        """Send every configured agent the same short note (alerts, reminders)."""
        if self.backfill:
            return
        for configured in self.config.agents:
            agent = await self.agent(session, configured.email)
            if agent is not None:
                await self.tell(session, agent, ticket, subject, text)

    async def tell(
        self,
        session: AsyncSession,
        agent: Agent | str,
        ticket: Ticket | None,
        subject: str,
        text: str,
        *,
        parent: Parent | None = None,
        now: datetime | None = None,
    ) -> None:
        """Send AGENT (or a plain address) a short note from the desk, written at NOW (the
        caller's moment; the wall clock without one). Only an agent gets a reply address for
        the ticket."""
        note = Note(
            new_message_id(self.config.service.support_domain),
            agent.email if isinstance(agent, Agent) else agent,
            subject,
            text,
            agent_id=agent.id if isinstance(agent, Agent) else None,
            parent=parent,
            about_ticket=ticket is not None,
        )
        card = None
        if ticket is not None:
            card = TicketCard(
                ticket.id,
                ticket.subject,
                ticket.state,
                ticket.priority,
                ticket.queue,
                ticket.channel,
                ticket.external_ref,
                None,
            )
        await store_mail(session, compose(note, card, self.config, self.renderer, now or utcnow()))
