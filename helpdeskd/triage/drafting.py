"""The parts of a plan as a person's mail builds them: the ticket, its rows, the mail it sends.

:class:`Drafting` holds what the decision about one mail has gathered so far and the steps every
path shares — a new ticket, its participants (at most MAX_JOIN from one mail), the
acknowledgement and its loop guards, the flood breaker, the agents' notifications — and hands
the finished :class:`~helpdeskd.triage.plan.Plan` over. It reads only its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from helpdeskd.config.settings import Config
from helpdeskd.mail.authresults import sender_verified
from helpdeskd.mail.build import new_message_id
from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.triage.facts import (
    AgentFacts,
    ContactFacts,
    Facts,
    Needs,
    Policy,
    TicketFacts,
)
from helpdeskd.triage.loops import autoreply_limit_reached, flood, may_autorespond
from helpdeskd.triage.mails import (
    Ack,
    FloodAlert,
    Mail,
    Note,
    Notification,
    Said,
)
from helpdeskd.triage.plan import ContactChange, Event, Plan, TicketRow
from helpdeskd.triage.received import Incoming, inbound_message, ticket_ref
from helpdeskd.triage.threading import (
    ThreadMatch,
    normalize_subject,
)


class _Agent(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def active(self) -> bool: ...


A = TypeVar("A", bound=_Agent)

MAX_JOIN = 50  # Cc participants one mail may add to a ticket (and an answer may copy)


class Drafting:
    """The decision for one person's mail so far (see the module docstring)."""

    def __init__(
        self, item: Incoming, parsed: ParsedMessage, needs: Needs, facts: Facts, policy: Policy
    ) -> None:
        self.item, self.parsed, self.needs, self.facts, self.policy = (
            item,
            parsed,
            needs,
            facts,
            policy,
        )
        self.config = policy.config
        self.service = policy.config.service
        self.now = facts.now
        self.ticket: TicketRow | None = None
        self.before: TicketFacts | None = None  # the stored ticket the mail is filed into
        self.message: dict[str, Any] | None = None
        self.contacts: dict[str, ContactChange] = {}
        self.participants: list[tuple[str, str]] = []
        self.members: set[str] = set()  # the ticket's participants as the plan leaves them
        self.thread_refs: list[str] = []
        self.referrers: tuple[str, ...] = ()
        self.joined = 0  # Cc participants this mail added
        self.left_out: list[str] = []  # addresses past MAX_JOIN
        self.removals: list[str] = []
        self.merge_into: int | None = None
        self.events: list[Event] = []
        self.mails: list[Mail] = []
        self.logs: list[tuple[str, Mapping[str, Any]]] = []
        self.autoreply_to: str | None = None
        self.flooding: str | bool | None = False  # False: not asked yet

    def _file_into(self, ticket: TicketFacts) -> None:
        self.before = ticket
        self.members = set(ticket.participants)
        self.ticket = row_of(ticket)

    def _new_ticket(
        self,
        match: ThreadMatch,
        *,
        parent: TicketFacts | None = None,
        ack: bool = True,
        requester_of: tuple[str, str] | None = None,
        channel: str = "email",
        external_ref: str | None = None,
        subject: str | None = None,
        kind: str = "customer",
        template: str = "ack.txt.j2",
    ) -> None:
        parsed = self.parsed
        linked = match.linked if isinstance(match.linked, TicketFacts) else None
        name, email = requester_of or (parsed.sender_name, parsed.sender)
        requester = self._contact_facts(email, name)
        if subject is None:
            subject = normalize_subject(parsed.subject, self.service.ticket_prefix)
        self.before = None
        self.members = set()
        self.ticket = TicketRow(
            id=None,
            subject=subject or "(no subject)",
            state="new",
            priority="normal",
            queue=None,
            assignee_id=None,
            requester=requester.email,
            channel=channel,
            external_ref=external_ref,
            tags=(),
            parent_id=next((t.id for t in (parent, linked) if t is not None), None),
        )
        self._participant(requester.email, "requester")
        if channel == "email" and requester_of is None:
            for address in parsed.cc + parsed.to:
                if self.policy.joinable(address) and address != requester.email:
                    self._join(address)
        self._inbound(kind, internal=False)
        known = self.facts.known_ids
        for mid in dict.fromkeys([*parsed.in_reply_to, *parsed.references]):
            if mid not in known:
                self.thread_refs.append(mid)
        if self.thread_refs:
            # Only mail from these addresses may later join the ticket through those IDs.
            on_mail = (parsed.sender, *parsed.to, *parsed.cc)
            self.referrers = tuple(dict.fromkeys(a.lower() for a in on_mail if a))
        detail: dict[str, object] = {"message_id": parsed.message_id, "thread": match.reason}
        if parent is not None:
            detail["follow_up_to"] = ticket_ref(self.config, parent.id)
        if linked is not None:
            detail["linked_to"] = ticket_ref(self.config, linked.id)
            self.events.append(
                Event(
                    "stranger_reference",
                    parsed.sender,
                    {"message_id": parsed.message_id, "reason": match.reason},
                    on=linked.id,
                )
            )
        self._event("ticket_created", parsed.sender, detail)
        if ack:
            self._acknowledge(requester, template)

    def _acknowledge(self, requester: ContactFacts, template: str) -> None:
        """Plan the automatic answer TEMPLATE to REQUESTER, unless a loop rule forbids it."""
        reason = self._ack_blocker(requester)
        if reason is not None:
            self._event("ack_suppressed", "system", {"reason": reason})
            self.logs.append(("ack_suppressed", {"reason": reason}))
            return
        parsed, message = self.parsed, self.message
        assert message is not None
        authserv_id = self.service.authserv_id
        mail = Ack(
            self._new_id(),
            template,
            (requester.name or "", requester.email),
            Parent(
                parsed.message_id,
                parsed.references,
                parsed.in_reply_to[0] if parsed.in_reply_to else None,
                message["thread_index"],
            ),
            # Only where our mail server stamps its verdict can a sender be judged unverified.
            unverified=bool(authserv_id) and not sender_verified(parsed, authserv_id),
        )
        self.mails.append(mail)
        self.autoreply_to = requester.email
        self._event("ack_queued", "system", {"message_id": mail.message_id})

    def _ack_blocker(self, requester: ContactFacts) -> str | None:
        service = self.service
        if self.policy.backfill:
            return "backfill sends nothing"
        if not service.ack:
            return "acknowledgements are off"
        if self.config.smtp is None:
            return "no [smtp] configured"
        if requester.undeliverable:
            return "requester is undeliverable"
        if requester.suppressed:
            return "requester complained (ARF): suppressed"
        verdict = may_autorespond(
            self.parsed,
            support_address=service.support_address,
            own_addresses=self.policy.context.own_addresses,
            authserv_id=service.authserv_id,
        )
        if not verdict.allowed:
            return verdict.reason
        limited = autoreply_limit_reached(self.facts.autoreplies, service.autoreply_limit)
        if limited:
            return limited
        return self._flood()

    def _flood(self) -> str | None:
        """Why automatic mail stops for the sender or the ticket (a flood); tell agents once.

        Asked by the acknowledgement and by the notification: the answer is kept.
        """
        if self.flooding is not False:
            return self.flooding if isinstance(self.flooding, str) else None
        ticket = self.ticket
        assert ticket is not None
        sender, service = self.parsed.sender, self.service
        heroku = self.config.heroku
        before = self.before
        ref = ticket_ref(self.config, ticket.id) if ticket.id is not None else "the new ticket"
        reason = flood(
            self.facts.recent_by_sender + 1,
            (before.recent if before is not None else 0) + 1,
            limit=service.flood_messages,
            minutes=service.flood_minutes,
            sender=sender,
            ref=ref,
            desk=heroku is not None and sender in heroku.senders,
        )
        self.flooding = reason
        told = self.facts.sender_flood_told or (before is not None and before.flood_told)
        if reason is None or told:
            return reason
        self._event("flood_detected", sender, {"reason": reason})
        self.logs.append(("flood_detected", {"sender": sender, "ticket": ticket.id}))
        if not self.policy.backfill:
            for configured in self.config.agents:
                agent = self.facts.agents.get(configured.email)
                if agent is not None:
                    self.mails.append(
                        FloodAlert(
                            self._new_id(),
                            agent.id,
                            agent.email,
                            sender,
                            service.flood_messages,
                            service.flood_minutes,
                        )
                    )
        return reason

    def _notify(self, exclude: int | None = None, *, flood_check: bool = True) -> None:
        """Tell the ticket's agents about the mail, unless a flood has paused notifications.

        An agent's own reply tells the other agents whatever its sender's mail count says.
        """
        if (flood_check and self._flood() is not None) or self.policy.backfill:
            return
        ticket = self.ticket
        assert ticket is not None
        agents = self._agents_for(ticket, exclude)
        if not agents:
            return
        requester = self._contact_facts(ticket.requester, None)
        said = self._said()
        count = (self.before.inbound if self.before is not None else 0) + 1
        for agent in agents:
            self.mails.append(
                Notification(
                    self._new_id(),
                    agent.id,
                    agent.email,
                    agent.name,
                    said,
                    (requester.name or "", requester.email),
                    count,
                )
            )
        detail = {"agents": [a.email for a in agents], "message_id": said.message_id}
        self._event("agents_notified", "system", detail)

    def _agents_for(self, ticket: TicketRow, exclude: int | None) -> list[AgentFacts]:
        return agents_for(self.config, self.facts.agents, ticket.assignee_id, ticket.queue, exclude)

    # --- rows --------------------------------------------------------------------------------

    def _new_id(self) -> str:
        return new_message_id(self.service.support_domain)

    def _contact_facts(self, email: str, name: str | None) -> ContactFacts:
        """The contact for EMAIL as the plan leaves it: added when new, a missing name filled."""
        email = email.lower()
        known = self.facts.contact(email) or ContactFacts(email)
        planned = self.contacts.get(email)
        current = (planned.name if planned is not None else None) or known.name
        if name and not current:
            self.contacts[email] = ContactChange(email, name[:200])
            return replace(known, name=name[:200])
        if planned is None:
            self.contacts[email] = ContactChange(email)
        return known if known.name == current else replace(known, name=current)

    def _join(self, address: str) -> bool:
        """Add ADDRESS from the mail's To/Cc as a Cc participant, up to MAX_JOIN from one mail;
        the rest stay in the mail's record and the agents are told (one mail, no mass mailing).
        """
        email = address.lower()
        if email in self.members:
            return False
        if self.joined >= MAX_JOIN:
            self.left_out.append(email)
            return False
        self.joined += 1
        self._contact_facts(email, None)
        return self._participant(email, "cc")

    def _cap_note(self) -> None:
        """Record and tell the agents that a mail named more addresses than may join."""
        if not self.left_out:
            return
        sender = self.parsed.sender
        detail = {"added": self.joined, "left_out": len(self.left_out), "some": self.left_out[:20]}
        self._event("participants_capped", sender, detail)
        if self.policy.backfill or self.ticket is None:
            return
        text = (
            f"{sender}'s mail named {self.joined + len(self.left_out)} addresses; the first "
            f"{MAX_JOIN} joined the ticket and {len(self.left_out)} did not. They are kept in "
            "the mail's record; add any that belong with '#cc +ADDRESS'.\n"
        )
        for agent in self._agents_for(self.ticket, None):
            subject = "Recipients capped: " + self.ticket.subject
            self.mails.append(Note(self._new_id(), agent.email, subject, text, agent_id=agent.id))

    def _participant(self, email: str, role: str) -> bool:
        email = email.lower()
        if email in self.members:
            return False
        self.members.add(email)
        self.participants.append((email, role))
        return True

    def _inbound(self, kind: str, *, internal: bool) -> None:
        self.message = inbound_message(self.parsed, kind, internal, self.needs.digest)

    def _said(self) -> Said:
        message = self.message
        assert message is not None
        return Said(
            message_id=message["message_id"],
            from_addr=message["from_addr"],
            from_name=message["from_name"],
            kind=message["kind"],
            text=message["text"],
            attachments=tuple(message["attachments"]),
            references=tuple(message["references"]),
            in_reply_to=message["in_reply_to"],
            thread_index=message["thread_index"],
        )

    def _event(self, type_: str, actor: str, detail: Mapping[str, Any]) -> None:
        self.events.append(Event(type_, actor, detail))

    def _plan(self, outcome: str, reason: str) -> Plan:
        self._cap_note()
        return Plan(
            outcome,
            reason,
            ticket_id=self.before.id if self.before is not None else None,
            ticket=self.ticket,
            message=self.message,
            contacts=tuple(self.contacts.values()),
            participants=tuple(self.participants),
            thread_refs=tuple(self.thread_refs),
            referrers=self.referrers,
            removals=tuple(self.removals),
            merge_into=self.merge_into,
            events=tuple(self.events),
            mails=tuple(self.mails),
            autoreply_to=self.autoreply_to,
            logs=tuple(self.logs),
        )


def agents_for(
    config: Config,
    agents: Mapping[str, A],
    assignee_id: int | None,
    queue: str | None,
    exclude: int | None = None,
) -> list[A]:
    """Who hears of a ticket's news: its active assignee; else the configured agents of its
    QUEUE (all of them without one), from AGENTS by address; never EXCLUDE."""
    assignee = next((a for a in agents.values() if a.id == assignee_id), None)
    if assignee is not None and assignee.active:
        chosen = [assignee]
    else:
        chosen = [
            agent
            for configured in config.agents
            if not (queue and configured.queues and queue not in configured.queues)
            and (agent := agents.get(configured.email)) is not None
        ]
    return [a for a in chosen if a.id != exclude]


def row_of(ticket: TicketFacts) -> TicketRow:
    """TICKET as a row the plan leaves unchanged."""
    return TicketRow(
        id=ticket.id,
        subject=ticket.subject,
        state=ticket.state,
        priority=ticket.priority,
        queue=ticket.queue,
        assignee_id=ticket.assignee_id,
        requester=ticket.requester.email,
        channel=ticket.channel,
        external_ref=ticket.external_ref,
        tags=ticket.tags,
        solved_at=ticket.solved_at,
        closed_at=ticket.closed_at,
        first_response_at=ticket.first_response_at,
    )
