"""Agents work by email: notifications out, authenticated replies and command tags in.

An agent's reply is taken only when it came to that agent's own signed token address for the
ticket (and, with ``agent_auth = "token+dkim"``, our trusted Authentication-Results shows an
aligned DKIM pass). Anything else from an agent address is kept as an internal draft, logged as
a ``security_event`` and the agent is told. What reaches the customer is built from the
extracted text only — never the agent's HTML, never a ``#note``. Commands are all-or-nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.parse import ParsedMessage, extract_reply
from helpdeskd.mail.render import Renderer
from helpdeskd.mail.tokens import ReplyToken, reply_address, tokens_in, verify_reply
from helpdeskd.outbox.compose import (
    Composed,
    Envelope,
    Parent,
    compose_mail,
    customer_envelope,
    store_mail,
)
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
from helpdeskd.triage.commands import Command, ParsedCommands, describe, parse_commands
from helpdeskd.triage.loops import automatic_headers
from helpdeskd.triage.received import ticket_ref
from helpdeskd.triage.threading import tag_subject

log = structlog.get_logger(__name__)

STATES = ("new", "open", "pending", "solved", "closed")
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
        """Apply an authenticated agent reply; return a one-line reason for the outcome."""
        service = self.config.service
        commands = parse_commands(parsed.full_text, ticket_prefix=service.ticket_prefix)
        if not commands.ok:
            details = [f"line {e.line}: {e.message}" for e in commands.errors]
            await self.hold(
                session,
                ticket,
                agent,
                message,
                "a command is invalid",
                security=False,
                details=details,
            )
            return "commands refused: " + "; ".join(details)
        problems = await self._check(session, ticket, agent, commands)
        if problems:
            await self.hold(
                session,
                ticket,
                agent,
                message,
                "a command cannot be applied",
                security=False,
                details=problems,
            )
            return "commands refused: " + "; ".join(problems)

        text = extract_reply(commands.body) if commands.body.strip() else ""
        message.text = text
        message.kind = "agent_reply"
        template = commands.get("template")
        outgoing = text
        if template is not None and not commands.internal:
            rendered = self.renderer.render(
                f"replies/{template.args[0]}.txt.j2", await self._context(session, ticket, agent)
            )
            outgoing = "\n\n".join(part for part in (text, rendered.text.strip()) if part)
        if not outgoing.strip() and not commands.commands:
            await self.hold(
                session,
                ticket,
                agent,
                message,
                "nothing was left to send once quoted text and signature were removed",
                security=False,
            )
            return "empty reply held"

        applied = await self._apply(session, ticket, agent, commands)
        ticket = await session.get_one(Ticket, ticket.id)  # a merge may have moved us
        sent = False
        if commands.internal:
            message.kind, message.internal = "note", True
            session.add(
                Event(
                    ticket_id=ticket.id,
                    type="note_added",
                    actor=agent.email,
                    detail={"message_id": message.message_id},
                )
            )
        else:
            message.internal = True  # the agent's own mail stays internal; the customer copy is new
            if outgoing.strip():
                await self._send_to_customer(session, ticket, agent, outgoing, raw)
                sent = True
        if sent:
            now = utcnow()
            if ticket.first_response_at is None:
                ticket.first_response_at = now
            if commands.get("status") is None and ticket.state in ("new", "open"):
                target = service.agent_reply_state
                session.add(
                    Event(
                        ticket_id=ticket.id,
                        type="state_changed",
                        actor=agent.email,
                        detail={"from": ticket.state, "to": target},
                    )
                )
                ticket.state = target
        ticket.updated_at = utcnow()
        await self.notify(session, ticket, message, exclude=agent.id)
        if commands.commands and service.receipts == "always":
            lines = [
                f"Applied to {ticket_ref(self.config, ticket.id)}:",
                *(f"  - {a}" for a in applied),
            ]
            if sent:
                lines.append("  - reply sent to the customer")
            await self.tell(
                session,
                agent,
                ticket,
                "Done: " + ticket.subject,
                "\n".join(lines) + "\n",
                parent=Parent.of(message),
            )
        parts = list(applied) + (["reply sent"] if sent else [])
        return "; ".join(parts) or "agent reply"

    async def _context(self, session: AsyncSession, ticket: Ticket, agent: Agent) -> dict[str, Any]:
        service = self.config.service
        requester = await session.get_one(Contact, ticket.requester_id)
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

    async def _check(
        self, session: AsyncSession, ticket: Ticket, agent: Agent, commands: ParsedCommands
    ) -> list[str]:
        """Return why commands cannot be applied to TICKET (all-or-nothing: check first)."""
        problems = []
        for command in commands.commands:
            if command.name == "assign":
                target = command.args[0]
                if target not in ("me", "none") and self.config.agent(target) is None:
                    problems.append(f"#assign: {target} is not an agent")
            elif command.name == "template":
                name = f"replies/{command.args[0]}.txt.j2"
                if not self.renderer.exists(name):
                    problems.append(f"#template: there is no canned reply {command.args[0]}")
            elif command.name == "cc":
                requester = await session.get_one(Contact, ticket.requester_id)
                for item in command.args:
                    if item[1:] == requester.email and item.startswith("-"):
                        problems.append("#cc: the requester cannot be removed")
            elif command.name == "merge":
                problems.extend(await self._check_merge(session, ticket, command))
        return problems

    async def _check_merge(
        self, session: AsyncSession, ticket: Ticket, command: Command
    ) -> list[str]:
        target_ref = command.args[0]
        number = target_ref.rpartition("-")[2]
        target = await session.get(Ticket, int(number)) if number.isdigit() else None
        if target is None:
            return [f"#merge: there is no ticket {target_ref}"]
        if target.id == ticket.id:
            return ["#merge: a ticket cannot be merged into itself"]
        if target.merged_into_id is not None:
            return [f"#merge: {target_ref} was itself merged into another ticket"]
        if target.requester_id != ticket.requester_id and "force" not in command.args:
            return [
                f"#merge: {target_ref} has another requester; write '#merge {target_ref} force' "
                "to merge anyway"
            ]
        return []

    async def _apply(
        self, session: AsyncSession, ticket: Ticket, agent: Agent, commands: ParsedCommands
    ) -> list[str]:
        applied = []
        now = utcnow()
        for command in commands.commands:
            detail: dict[str, Any] = {"command": command.source}
            if command.name == "status":
                state = command.args[0]
                detail.update({"from": ticket.state, "to": state})
                ticket.state = state
                ticket.solved_at = now if state == "solved" else ticket.solved_at
                ticket.closed_at = now if state == "closed" else None
                if state in ("open", "pending"):
                    ticket.solved_at = None
            elif command.name == "assign":
                target = command.args[0]
                row = agent if target == "me" else None
                if target not in ("me", "none"):
                    row = await self.agent(session, target)
                ticket.assignee_id = row.id if row else None
                detail["to"] = row.email if row else None
            elif command.name == "priority":
                detail.update({"from": ticket.priority, "to": command.args[0]})
                ticket.priority = command.args[0]
            elif command.name == "queue":
                detail.update({"from": ticket.queue, "to": command.args[0]})
                ticket.queue = command.args[0]
            elif command.name == "tags":
                tags = list(ticket.tags or [])
                for item in command.args:
                    tag = item[1:]
                    if item.startswith("+") and tag not in tags:
                        tags.append(tag)
                    elif item.startswith("-") and tag in tags:
                        tags.remove(tag)
                ticket.tags = tags
                detail["tags"] = tags
            elif command.name == "cc":
                await self._apply_cc(session, ticket, command)
            elif command.name == "merge":
                target_id = int(command.args[0].rpartition("-")[2])
                await self._merge(session, ticket, target_id, agent)
            elif command.name in ("note", "public", "template"):
                pass  # shape what is sent, handled by the caller
            session.add(
                Event(
                    ticket_id=ticket.id,
                    type=f"command_{command.name}",
                    actor=agent.email,
                    detail=detail,
                )
            )
            applied.append(describe(command))
        return applied

    async def _apply_cc(self, session: AsyncSession, ticket: Ticket, command: Command) -> None:
        for item in command.args:
            address = item[1:].lower()
            contact = await session.scalar(select(Contact).where(Contact.email == address))
            if item.startswith("+"):
                if contact is None:
                    contact = Contact(email=address, undeliverable=False, bounce_count=0)
                    session.add(contact)
                    await session.flush()
                exists = await session.scalar(
                    select(Participant.id).where(
                        Participant.ticket_id == ticket.id, Participant.contact_id == contact.id
                    )
                )
                if exists is None:
                    session.add(Participant(ticket_id=ticket.id, contact_id=contact.id, role="cc"))
            elif contact is not None:
                await session.execute(
                    delete(Participant).where(
                        Participant.ticket_id == ticket.id,
                        Participant.contact_id == contact.id,
                        Participant.role == "cc",
                    )
                )

    async def _merge(
        self, session: AsyncSession, ticket: Ticket, target_id: int, agent: Agent
    ) -> None:
        await session.flush()
        await session.execute(
            update(Message).where(Message.ticket_id == ticket.id).values(ticket_id=target_id)
        )
        existing = set(
            await session.scalars(
                select(Participant.contact_id).where(Participant.ticket_id == target_id)
            )
        )
        for participant in await session.scalars(
            select(Participant).where(Participant.ticket_id == ticket.id)
        ):
            if participant.contact_id not in existing:
                session.add(
                    Participant(ticket_id=target_id, contact_id=participant.contact_id, role="cc")
                )
        ticket.merged_into_id = target_id
        ticket.state, ticket.closed_at = "closed", utcnow()
        session.add(
            Event(
                ticket_id=target_id,
                type="merged_in",
                actor=agent.email,
                detail={"from": ticket_ref(self.config, ticket.id)},
            )
        )

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
