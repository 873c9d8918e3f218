"""Agents work by email: notifications out, authenticated replies and command tags in.

An agent's reply is taken only when it came to that agent's own signed token address for the
ticket (and, with ``agent_auth = "token+dkim"``, our trusted Authentication-Results shows an
aligned DKIM pass). Anything else from an agent address is kept as an internal draft, logged as
a ``security_event`` and the agent is told. What reaches the customer is built from the
extracted text only — never the agent's HTML, never a ``#note``. Commands are all-or-nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.compose import Composed, Envelope, Parent, compose_mail, customer_envelope
from helpdeskd.mail.parse import ParsedMessage, extract_reply
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import ReplyToken, reply_address, tokens_in, verify_reply
from helpdeskd.outbox.queue import store_mail
from helpdeskd.store.contacts import add_participant, ensure_contact, remove_participant
from helpdeskd.store.models import (
    Agent,
    Contact,
    Event,
    Message,
    Participant,
    RawMessage,
    Ticket,
    columns,
    utcnow,
)
from helpdeskd.triage.agent_reply import (
    AgentFacts,
    AgentReplyPlan,
    EventRow,
    ReplyFacts,
    TicketFacts,
    decide_agent_reply,
    refusals,
)
from helpdeskd.triage.commands import ParsedCommands, parse_commands
from helpdeskd.triage.facts import Policy
from helpdeskd.triage.lifecycle import MergeTarget, Status
from helpdeskd.triage.loops import automatic_headers
from helpdeskd.triage.received import ticket_ref
from helpdeskd.triage.threading import tag_subject
from helpdeskd.vocab import as_state

log = structlog.get_logger(__name__)

MAX_TICKET_ID = 2**31 - 1  # tickets.id is a 32-bit integer on PostgreSQL
_FORWARD_MARKER = re.compile(
    r"^-{2,}\s*(forwarded message|original message|weitergeleitete nachricht|"
    r"message transféré|mensaje reenviado)\s*-{2,}\s*$|^begin forwarded message:\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_FORWARD_FROM = re.compile(r"^\s*(?:from|von|de)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


def forwarded_sender(text: str) -> tuple[str, str] | None:
    """Return (name, address) of the original sender in a forwarded mail's text, if any."""
    marker = _FORWARD_MARKER.search(text)
    if marker is None:
        return None
    match = _FORWARD_FROM.search(text, marker.end())
    if match is None:
        return None
    value = match.group(1).strip()
    address = _ADDRESS.search(value)
    if address is None:
        return None
    name = value[: address.start()].strip(" <\"'[(*")
    return name.strip(), address.group(0).lower()


def attachments_of(raw: bytes | None) -> list[tuple[str, str, bytes]]:
    """Return the attachments of RAW as (name, content type, bytes), for carrying them over."""
    if not raw:
        return []
    msg = message_from_bytes(raw, policy=policy.default)
    if not isinstance(msg, EmailMessage):
        return []
    found = []
    for part in msg.iter_attachments():
        name = part.get_filename()
        if not name:
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            found.append((name, part.get_content_type(), data))
    return found


@dataclass(frozen=True)
class Verdict:
    authenticated: bool
    reason: str


class AgentDesk:
    """The agent side of the processor; called inside the processor's transaction."""

    @classmethod
    def of(cls, policy: Policy) -> AgentDesk:
        """The desk's agent side under POLICY (its config, templates and backfill flag)."""
        return cls(policy.config, policy.renderer, backfill=policy.backfill)

    def __init__(self, config: Config, renderer: Renderer, *, backfill: bool = False) -> None:
        self.config = config
        self.renderer = renderer
        self.backfill = backfill  # history being loaded: tell nobody

    # --- who -------------------------------------------------------------------------------------

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

    def authenticate(self, parsed: ParsedMessage, agent: Agent, ticket_ref: str | None) -> Verdict:
        """Decide whether PARSED is AGENT's own reply to TICKET_REF (DESIGN "Agents by email")."""
        service = self.config.service
        if len(parsed.from_) != 1:
            return Verdict(False, "several From mailboxes")
        tokens = [
            verify_reply(service.secret_keys, text)
            for text in tokens_in(list(parsed.recipients), service.support_address)
        ]
        mine = [t for t in tokens if t is not None and t.agent_id == agent.id]
        if not mine:
            if any(t is not None for t in tokens):
                return Verdict(False, "sent to a reply address that is not this agent's")
            return Verdict(False, "not sent to the agent's own reply address")
        if ticket_ref is not None and all(t.ref != ticket_ref for t in mine):
            return Verdict(False, "reply address is for another ticket")
        wants_dkim = service.agent_auth == "token+dkim"
        if wants_dkim and not (service.authserv_id and dkim_aligned(parsed, service.authserv_id)):
            return Verdict(False, "no aligned DKIM pass in our Authentication-Results")
        return Verdict(True, "signed token" + (" and DKIM" if "dkim" in service.agent_auth else ""))

    def agent_reply_to(self, ticket_id: int, agent: Agent) -> str:
        service = self.config.service
        token = ReplyToken(ticket_ref(self.config, ticket_id), agent_id=agent.id)
        return reply_address(service.support_address, service.secret_keys, token)

    # --- notifications ---------------------------------------------------------------------------

    async def recipients_for(
        self, session: AsyncSession, ticket: Ticket, exclude: int | None
    ) -> list[Agent]:
        """The assignee; else the agents of the ticket's queue (all agents without one)."""
        assignee = await session.get(Agent, ticket.assignee_id) if ticket.assignee_id else None
        rows: dict[str, Agent] = {}
        if assignee is None or not assignee.active:
            for configured in self.config.agents:
                row = await self.agent(session, configured.email)
                if row is not None:
                    rows[configured.email] = row
        return self.agents_for(ticket.queue, assignee, rows, exclude) or []

    def agents_for(
        self,
        queue: str | None,
        assignee: Agent | None,
        rows: dict[str, Agent],
        exclude: int | None = None,
    ) -> list[Agent] | None:
        """Who hears of a ticket's mail: its active ASSIGNEE, else the agents of QUEUE (all
        agents without one), from ROWS by address; None when a configured agent has no row."""
        agents: list[Agent] = []
        if assignee is not None and assignee.active:
            agents = [assignee]
        if not agents:
            for configured in self.config.agents:
                if queue and configured.queues and queue not in configured.queues:
                    continue
                row = rows.get(configured.email)
                if row is None:
                    return None
                agents.append(row)
        return [a for a in agents if a.id != exclude]

    def notifications(
        self,
        ticket: Mapping[str, Any],
        message: Mapping[str, Any],
        *,
        requester: tuple[str, str],
        message_count: int,
        assignee: str | None,
        agents: Sequence[Agent],
    ) -> list[Composed]:
        """Compose the mail telling each of AGENTS about MESSAGE, each with their own reply
        address. TICKET and MESSAGE hold the columns of the ticket and the ticket message."""
        service = self.config.service
        ref = ticket_ref(self.config, ticket["id"])
        writer = message["from_name"] or message["from_addr"]
        mails = []
        for agent in agents:
            context = {
                "service": {"name": service.name, "support_address": service.support_address},
                "ticket": {
                    "ref": ref,
                    "subject": ticket["subject"],
                    "state": ticket["state"],
                    "priority": ticket["priority"],
                    "queue": ticket["queue"],
                    "assignee": assignee,
                    "message_count": message_count,
                    "channel": ticket["channel"],
                    "external_ref": ticket["external_ref"],
                },
                "requester": {"name": requester[0], "email": requester[1]},
                "message": {
                    "text": message["text"],
                    "from": message["from_addr"],
                    "from_name": message["from_name"] or "",
                    "kind": message["kind"],
                    "attachments": message["attachments"] or [],
                },
                "agent": {"name": agent.name, "email": agent.email},
            }
            rendered = self.renderer.render("agent_notification.txt.j2", context)
            mails.append(
                compose_mail(
                    domain=service.support_domain,
                    kind="agent_notification",
                    envelope=Envelope(
                        from_addr=service.support_address,
                        from_name=f"{writer} via {service.name}",
                        to=(agent.email,),
                        reply_to=self.agent_reply_to(ticket["id"], agent),
                    ),
                    subject=tag_subject(rendered.subject, ref, service.ticket_prefix),
                    text=rendered.text,
                    parent=Parent(
                        message["message_id"],
                        tuple(message["references"] or ()),
                        message["in_reply_to"],
                        message["thread_index"],
                    ),
                    ticket_id=ticket["id"],
                    internal=True,
                    extra_headers=automatic_headers(service.support_address, "auto-generated"),
                )
            )
        return mails

    async def notify(
        self,
        session: AsyncSession,
        ticket: Ticket,
        message: Message,
        *,
        exclude: int | None = None,
    ) -> int:
        """Tell the ticket's agents about MESSAGE, each with their own reply address."""
        if self.backfill:
            return 0
        agents = await self.recipients_for(session, ticket, exclude)
        if not agents:
            return 0
        requester = await session.get_one(Contact, ticket.requester_id)
        count = await session.scalar(
            select(func.count(Message.id)).where(
                Message.ticket_id == ticket.id, Message.direction == "in"
            )
        )
        assignee = await session.get(Agent, ticket.assignee_id) if ticket.assignee_id else None
        for mail in self.notifications(
            columns(ticket),
            columns(message),
            requester=(requester.name or "", requester.email),
            message_count=count or 0,
            assignee=assignee.email if assignee else None,
            agents=agents,
        ):
            await store_mail(session, mail)
        session.add(
            Event(
                ticket_id=ticket.id,
                type="agents_notified",
                actor="system",
                detail={"agents": [a.email for a in agents], "message_id": message.message_id},
            )
        )
        return len(agents)

    async def notify_address(
        self, session: AsyncSession, ticket: Ticket, message: Message, address: str
    ) -> None:
        """Send a rule's notification about MESSAGE to ADDRESS (not an agent: no reply token)."""
        service = self.config.service
        ref = ticket_ref(self.config, ticket.id)
        writer = message.from_name or message.from_addr
        footer = f"{ref} · {ticket.state} · {ticket.priority} priority"
        await store_mail(
            session,
            compose_mail(
                domain=service.support_domain,
                kind="rule_notification",
                envelope=Envelope(
                    from_addr=service.support_address,
                    from_name=f"{writer} via {service.name}",
                    to=(address,),
                ),
                subject=tag_subject(ticket.subject, ref, service.ticket_prefix),
                text=f"{message.text}\n\n-- \n{footer}\n",
                parent=Parent.of(message),
                ticket_id=ticket.id,
                internal=True,
                extra_headers=automatic_headers(service.support_address, "auto-generated"),
            ),
        )

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
    ) -> None:
        """Send AGENT (or a plain address) a short note from the desk: errors, receipts,
        security notices, alerts. Only an agent gets a reply address for the ticket."""
        service = self.config.service
        ref = ticket_ref(self.config, ticket.id) if ticket else None
        address = agent.email if isinstance(agent, Agent) else agent
        reply = (
            self.agent_reply_to(ticket.id, agent)
            if ticket is not None and isinstance(agent, Agent)
            else None
        )
        await store_mail(
            session,
            compose_mail(
                domain=service.support_domain,
                kind="agent_notice",
                envelope=Envelope(
                    from_addr=service.support_address,
                    from_name=f"{service.name} helpdesk",
                    to=(address,),
                    reply_to=reply,
                ),
                subject=tag_subject(subject, ref, service.ticket_prefix) if ref else subject,
                text=text,
                parent=parent,
                ticket_id=ticket.id if ticket else None,
                internal=True,
                extra_headers=automatic_headers(service.support_address, "auto-generated"),
            ),
        )

    # --- replies ---------------------------------------------------------------------------------

    async def hold(
        self,
        session: AsyncSession,
        ticket: Ticket,
        agent: Agent,
        message: Message,
        reason: str,
        *,
        security: bool,
        details: Sequence[str] = (),
    ) -> None:
        """Keep MESSAGE as an internal draft and tell the agent why nothing was sent."""
        message.internal = True
        message.kind = "agent_draft"
        event = "security_event" if security else "reply_held"
        session.add(
            Event(
                ticket_id=ticket.id,
                type=event,
                actor=agent.email,
                detail={
                    "reason": reason,
                    "message_id": message.message_id,
                    "details": list(details),
                },
            )
        )
        (log.warning if security else log.info)(
            event, reason=reason, agent=agent.email, ticket=ticket_ref(self.config, ticket.id)
        )
        lines = [
            f"Your mail to {ticket_ref(self.config, ticket.id)} was not sent to the customer "
            f"and changed nothing: {reason}.",
            *(f"  - {line}" for line in details),
            "",
            "It is kept on the ticket as an internal draft.",
        ]
        if security:
            lines.append(
                "Reply from your own mail client to the Reply-To address of a helpdesk "
                "notification. If you did not send this mail, someone may be using your address."
            )
        else:
            lines.append("Correct it and reply again.")
        await self.tell(
            session,
            agent,
            ticket,
            "Not sent: " + ticket.subject,
            "\n".join(lines) + "\n",
            parent=Parent.of(message),
        )

    async def reply(
        self,
        session: AsyncSession,
        ticket: Ticket,
        agent: Agent,
        message: Message,
        raw: RawMessage,
        parsed: ParsedMessage,
    ) -> str:
        """Apply an authenticated agent reply; return a one-line reason for the outcome.

        What the reply does is decided by :func:`decide_agent_reply` from the facts gathered
        here; this only carries the plan out.
        """
        commands = parse_commands(parsed.full_text, ticket_prefix=self.config.service.ticket_prefix)
        text = extract_reply(commands.body) if commands.body.strip() else ""
        facts = await self._reply_facts(session, ticket, agent, message, commands)
        plan = decide_agent_reply(commands, text, facts)
        if plan.message_text is not None:
            message.text = plan.message_text
        if plan.held is not None:
            await self.hold(
                session,
                ticket,
                agent,
                message,
                plan.held.reason,
                security=False,
                details=plan.held.details,
            )
            return plan.outcome
        await self._carry_out(session, ticket, agent, message, raw, plan)
        return plan.outcome

    async def _reply_facts(
        self,
        session: AsyncSession,
        ticket: Ticket,
        agent: Agent,
        message: Message,
        commands: ParsedCommands,
    ) -> ReplyFacts:
        """Look up what deciding an agent's reply to TICKET needs."""
        service = self.config.service
        requester = await session.get_one(Contact, ticket.requester_id)
        merge = commands.get("merge")
        template = commands.get("template")
        canned = (
            template.args[0]
            if template is not None and self.renderer.exists(_canned(template.args[0]))
            else None
        )
        facts = ReplyFacts(
            ticket=TicketFacts(
                id=ticket.id,
                ref=ticket_ref(self.config, ticket.id),
                subject=ticket.subject,
                status=Status(ticket.state, ticket.solved_at, ticket.closed_at),
                priority=ticket.priority,
                queue=ticket.queue,
                tags=tuple(ticket.tags or ()),
                requester_id=ticket.requester_id,
                requester=requester.email,
                first_response_at=ticket.first_response_at,
            ),
            agent=AgentFacts(agent.id, agent.email, agent.name),
            message_id=message.message_id,
            agent_addresses=frozenset(a.email for a in self.config.agents),
            canned_replies=frozenset([canned] if canned else []),
            now=utcnow(),
            agent_reply_state=as_state(service.agent_reply_state),
            receipts="errors" if service.receipts == "errors" else "always",
            merge_target=await self._merge_target(session, merge.args[0]) if merge else None,
        )
        if canned and not commands.internal and commands.ok and not refusals(commands, facts):
            # Rendered only for a reply that will be sent: a refused one renders nothing.
            context = self._context(ticket, agent, requester)
            facts = replace(facts, canned_text=self.renderer.render(_canned(canned), context).text)
        return facts

    async def _merge_target(self, session: AsyncSession, ref: str) -> MergeTarget | None:
        number = ref.rpartition("-")[2]
        if not number.isdigit() or int(number) > MAX_TICKET_ID:
            return None
        target = await session.get(Ticket, int(number))
        if target is None:
            return None
        return MergeTarget(target.id, target.requester_id, target.merged_into_id)

    def _context(self, ticket: Ticket, agent: Agent, requester: Contact) -> dict[str, Any]:
        service = self.config.service
        return {
            "service": {"name": service.name, "support_address": service.support_address},
            "ticket": {
                "ref": ticket_ref(self.config, ticket.id),
                "subject": ticket.subject,
                "state": ticket.state,
                "priority": ticket.priority,
            },
            "requester": {"name": requester.name or "", "email": requester.email},
            "agent": {"name": agent.name, "email": agent.email},
        }

    async def _carry_out(
        self,
        session: AsyncSession,
        ticket: Ticket,
        agent: Agent,
        message: Message,
        raw: RawMessage,
        plan: AgentReplyPlan,
    ) -> None:
        """Make the changes PLAN decided, send what it sends and tell whom it tells."""
        message.kind, message.internal = plan.message_kind, plan.message_internal
        for address in plan.cc.add:
            contact = await ensure_contact(session, address, None)
            await add_participant(session, ticket.id, contact.id, "cc")
        for address in plan.cc.remove:
            await remove_participant(session, ticket.id, address, "cc")
        if plan.assign is not None:
            email, assignee = plan.assign.email, None
            if email == agent.email:
                assignee = agent
            elif email is not None:
                assignee = await self.agent(session, email)
            ticket.assignee_id = assignee.id if assignee is not None else None
        if plan.merge_into is not None:
            await self._merge(session, ticket, plan.merge_into)
        if plan.changes is not None:
            changes = plan.changes
            ticket.state = changes.status.state
            ticket.solved_at, ticket.closed_at = changes.status.solved_at, changes.status.closed_at
            ticket.priority, ticket.queue = changes.priority, changes.queue
            ticket.tags = list(changes.tags)
            ticket.first_response_at = changes.first_response_at
            ticket.updated_at = changes.updated_at
        _add_events(session, plan.events)
        if plan.send is not None:
            await self._send_to_customer(session, ticket, agent, plan.send, raw)
        _add_events(session, plan.events_after_send)
        await self.notify(session, ticket, message, exclude=agent.id)
        if plan.receipt:
            await self.tell(
                session,
                agent,
                ticket,
                "Done: " + ticket.subject,
                "\n".join(plan.receipt) + "\n",
                parent=Parent.of(message),
            )

    async def _merge(self, session: AsyncSession, ticket: Ticket, target_id: int) -> None:
        """Move TICKET's mail into ticket TARGET_ID and add its participants there as Cc."""
        await session.flush()  # the reply being handled moves too
        await session.execute(
            update(Message).where(Message.ticket_id == ticket.id).values(ticket_id=target_id)
        )
        contacts = await session.scalars(
            select(Participant.contact_id).where(Participant.ticket_id == ticket.id)
        )
        for contact_id in contacts.all():
            await add_participant(session, target_id, contact_id, "cc")
        ticket.merged_into_id = target_id

    async def _send_to_customer(
        self, session: AsyncSession, ticket: Ticket, agent: Agent, text: str, raw: RawMessage
    ) -> None:
        service = self.config.service
        ref = ticket_ref(self.config, ticket.id)
        parent_message = await session.scalar(
            select(Message)
            .where(
                Message.ticket_id == ticket.id,
                Message.direction == "in",
                Message.internal.is_(False),
            )
            .order_by(Message.id.desc())
            .limit(1)
        )
        parent = Parent.of(parent_message) if parent_message else None
        attachments = attachments_of(raw.data)
        heroku = self.config.heroku
        if ticket.channel == "heroku" and heroku is not None:
            # The desk gets our reply with its subject intact, From our registered agent
            # address and no differing Reply-To.
            envelope = Envelope(
                from_addr=heroku.agent_address, from_name=service.name, to=(heroku.reply_address,)
            )
            subject = ticket.subject
        else:
            requester = await session.get_one(Contact, ticket.requester_id)
            ccs = [
                c.email
                for c in await session.scalars(
                    select(Contact)
                    .join(Participant, Participant.contact_id == Contact.id)
                    .where(
                        Participant.ticket_id == ticket.id,
                        Participant.role == "cc",
                        Contact.undeliverable.is_(False),
                    )
                )
                if c.email != requester.email
            ]
            envelope = customer_envelope(
                service,
                ref,
                (requester.email,),
                from_name=f"{agent.name} ({service.name})",
                cc=tuple(ccs),
            )
            subject = tag_subject(f"Re: {ticket.subject}", ref, service.ticket_prefix)
        sent = await store_mail(
            session,
            compose_mail(
                domain=service.support_domain,
                kind="reply",
                envelope=envelope,
                subject=subject,
                text=text,
                parent=parent,
                ticket_id=ticket.id,
                attachments=attachments,
            ),
        )
        session.add(
            Event(
                ticket_id=ticket.id,
                type="reply_sent",
                actor=agent.email,
                detail={
                    "message_id": sent.message_id if sent else None,
                    "to": list(envelope.to),
                    "cc": list(envelope.cc),
                },
            )
        )


def _canned(name: str) -> str:
    """The template of canned reply NAME."""
    return f"replies/{name}.txt.j2"


def _add_events(session: AsyncSession, events: Iterable[EventRow]) -> None:
    for event in events:
        session.add(
            Event(
                ticket_id=event.ticket_id,
                type=event.type,
                actor=event.actor,
                detail=dict(event.detail),
            )
        )
