"""The one decision for a received mail: typed facts in, a typed plan out, no I/O.

:func:`decide` holds the whole tree in DESIGN.md's order — duplicates, classification, loop
safety, threading, reopen and follow-up, agents' mail, rules, the acknowledgement and the
notifications — over the :class:`~helpdeskd.triage.facts.Facts` the lookup layer gathered. It
returns a :class:`Plan`: the rows to write, the events, the mails to compose, the log lines. The
ingest writer applies plans one at a time or a run at once; the two shapes differ in I/O only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from helpdeskd.mail.build import new_message_id
from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.rules.evaluate import evaluate
from helpdeskd.rules.model import Decision
from helpdeskd.rules.model import Facts as RuleFacts
from helpdeskd.triage import lifecycle
from helpdeskd.triage.agentmail import authenticate, forwarded_sender
from helpdeskd.triage.facts import AgentFacts, ContactFacts, Facts, Needs, Policy, TicketFacts
from helpdeskd.triage.lifecycle import Status, change_state, edit_tags, reopen_action
from helpdeskd.triage.loops import autoreply_limit_reached, flood, may_autorespond
from helpdeskd.triage.mails import (
    Ack,
    FloodAlert,
    Mail,
    Note,
    Notification,
    RuleCopy,
    Said,
    human_size,
)
from helpdeskd.triage.received import Incoming, inbound_message, ticket_ref
from helpdeskd.triage.threading import (
    Candidates,
    ThreadMatch,
    normalize_subject,
    resolve_thread,
)
from helpdeskd.vocab import as_state

SOFT_BOUNCE_LIMIT = 3  # failed deliveries without a permanent status before we stop mailing


@dataclass(frozen=True)
class Event:
    """An event row; on the plan's ticket unless ``ticketless``."""

    type: str
    actor: str
    detail: Mapping[str, Any]
    ticketless: bool = False


@dataclass(frozen=True)
class ContactChange:
    """Make sure a contact for EMAIL exists (filling a missing NAME) and set CHANGES on it."""

    email: str
    name: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TicketRow:
    """The ticket as the plan leaves it; ``id`` None: a new ticket. CHANGED: columns it sets."""

    id: int | None
    subject: str
    state: str
    priority: str
    queue: str | None
    assignee_id: int | None
    requester: str  # the requester's address
    channel: str
    external_ref: str | None
    tags: tuple[str, ...]
    parent_id: int | None = None
    solved_at: datetime | None = None
    closed_at: datetime | None = None
    updated_at: datetime | None = None
    changed: frozenset[str] = frozenset()

    def set(self, **columns: Any) -> TicketRow:
        return replace(self, **columns, changed=self.changed | set(columns))

    @property
    def current(self) -> Status:
        return Status(as_state(self.state), self.solved_at, self.closed_at)

    def status(self, status: Status) -> TicketRow:
        """The ticket moved to STATUS (lifecycle's rules say what a state change stamps)."""
        return self.set(state=status.state, solved_at=status.solved_at, closed_at=status.closed_at)


@dataclass(frozen=True)
class Plan:
    """What to do with one received mail: the outcome and every row it writes."""

    outcome: str
    reason: str
    ticket_id: int | None = None  # the stored ticket the mail is filed into or is about
    ticket: TicketRow | None = None  # a new ticket, or the changes to ticket_id
    message: Mapping[str, Any] | None = None  # the inbound ticket message's columns
    contacts: tuple[ContactChange, ...] = ()
    participants: tuple[tuple[str, str], ...] = ()  # (address, role) new on the ticket
    thread_refs: tuple[str, ...] = ()  # Message-IDs referred to that we have not seen
    events: tuple[Event, ...] = ()
    mails: tuple[Mail, ...] = ()
    autoreply_to: str | None = None  # the address an acknowledgement counts against
    opt_out: tuple[int, str] | None = None  # (contact id, category), by mail
    agent_reply: AgentFacts | None = None  # an authenticated agent's reply: the desk applies it
    logs: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (event, fields) to log

    @property
    def new_ticket(self) -> bool:
        return self.ticket is not None and self.ticket.id is None


def decide(item: Incoming, needs: Needs, facts: Facts, policy: Policy) -> Plan:
    """Decide what becomes of one received mail (DESIGN.md "Parts and the path of a message")."""
    if facts.stored is not None:
        tid = facts.stored.ticket_id
        if facts.stored.direction == "out":
            return Plan("ignored", "our own outgoing mail came back", ticket_id=tid)
        return Plan("duplicate", "Message-ID already stored", ticket_id=tid)
    kind = needs.kind
    if kind.kind == "bounce":
        return _bounce(needs, facts, policy)
    if kind.kind == "report":
        return _report(needs, facts)
    if kind.kind == "unsubscribe":
        return _unsubscribe(needs, facts)
    if kind.kind in ("spam", "ignored", "blocked"):
        return Plan(kind.kind, kind.reason)
    parsed = needs.parsed
    if not parsed.sender:
        raise ValueError("no usable From address")
    if item.oversize:
        limit = policy.config.service.max_message_bytes
        note = (
            f"[This message is {human_size(item.size)}, over the {human_size(limit)} "
            f"limit, and was not processed. Its bytes are kept at {item.path}.]"
        )
        parsed = replace(parsed, text=note, full_text=note, attachments=())
    return _Deciding(item, parsed, needs, facts, policy).run()


def rule_facts(
    parsed: ParsedMessage,
    *,
    mailbox: str,
    kind: str,
    plan: str | None,
    ticket: TicketFacts | None,
    now: datetime,
    channel: str = "email",
) -> RuleFacts:
    """What the routing rules see of PARSED: the mail, its kind, and TICKET before it."""
    return RuleFacts(
        received_at=parsed.date or now,
        mailbox=mailbox,
        from_addr=parsed.sender,
        to=parsed.to,
        cc=parsed.cc,
        subject=parsed.subject,
        body=parsed.full_text,
        headers=parsed.headers,
        channel=ticket.channel if ticket is not None else channel,
        kind=kind,
        plan=plan,
        new_ticket=ticket is None,
        state=ticket.state if ticket is not None else "new",
        priority=ticket.priority if ticket is not None else "normal",
        queue=ticket.queue if ticket is not None else None,
        tags=frozenset(ticket.tags) if ticket is not None else frozenset(),
    )


# --- returned mail -------------------------------------------------------------------------------


def _bounce(needs: Needs, facts: Facts, policy: Policy) -> Plan:
    """Record a bounce: mark the contact, note it on the ticket, tell the agent who wrote."""
    reason = needs.kind.reason
    report = needs.bounce
    if report is None:
        return Plan("bounce", f"{reason}; no recipient could be read")
    ticket, message = facts.returned.ticket, facts.returned.message
    counts: dict[str, ContactFacts] = {}
    contacts: list[ContactChange] = []
    lines = []
    for rcpt in report.recipients:
        contact = counts.get(rcpt.address) or facts.contact(rcpt.address)
        if contact is not None and contact.id is not None and rcpt.action == "failed":
            count = contact.bounce_count + 1
            undeliverable = contact.undeliverable or rcpt.hard or count >= SOFT_BOUNCE_LIMIT
            counts[rcpt.address] = replace(contact, bounce_count=count, undeliverable=undeliverable)
            contacts.append(
                ContactChange(
                    contact.email, changes={"bounce_count": count, "undeliverable": undeliverable}
                )
            )
        state = "hard" if rcpt.hard else rcpt.action
        lines.append(f"{rcpt.address} {state} {rcpt.status} {rcpt.diagnostic}".strip())
    summary = "; ".join(lines) or "no recipient listed"
    events: list[Event] = []
    mails: list[Mail] = []
    if ticket is not None:
        detail = {"message_id": report.original_message_id, "recipients": lines}
        events.append(Event("bounce", "system", detail))
        writer = facts.returned.writer
        if message is not None and message.kind == "reply" and writer is not None:
            ref = ticket_ref(policy.config, ticket.id)
            mails.append(
                Note(
                    new_message_id(policy.config.service.support_domain),
                    writer.email,
                    "Undeliverable: " + ticket.subject,
                    f"Your reply on {ref} could not be delivered:\n  {summary}\n",
                    agent_id=writer.id,
                    parent=Parent(
                        message.message_id,
                        message.references,
                        message.in_reply_to,
                        message.thread_index,
                    ),
                )
            )
    return Plan(
        "bounce",
        f"{reason}; {summary}",
        ticket_id=ticket.id if ticket is not None else None,
        contacts=tuple(contacts),
        events=tuple(events),
        mails=tuple(mails),
        logs=(
            (
                "bounce_recorded",
                {"recipients": lines, "ticket": ticket.id if ticket is not None else None},
            ),
        ),
    )


def _report(needs: Needs, facts: Facts) -> Plan:
    """Record a report; an ARF complaint suppresses the complainant."""
    complaint = needs.complaint
    if complaint is None:
        return Plan("report", f"{needs.kind.reason}; recorded")
    ticket = facts.returned.ticket
    contacts: tuple[ContactChange, ...] = ()
    if complaint.complainant:
        contacts = (ContactChange(complaint.complainant, changes={"suppressed": True}),)
    events: tuple[Event, ...] = ()
    if ticket is not None:
        actor = complaint.complainant or "unknown"
        events = (Event("complaint", actor, {"feedback_type": complaint.feedback_type}),)
    who = complaint.complainant or "an unnamed recipient"
    return Plan(
        "report",
        f"{needs.kind.reason}; {complaint.feedback_type} complaint from {who}; suppressed",
        ticket_id=ticket.id if ticket is not None else None,
        contacts=contacts,
        events=events,
    )


def _unsubscribe(needs: Needs, facts: Facts) -> Plan:
    """Opt out whoever a mail to ``unsubscribe+TOKEN@`` names (the mailto: link)."""
    contact = facts.unsubscriber
    if needs.unsubscribe is None or contact is None or contact.id is None:
        return Plan("unsubscribe", "no valid unsubscribe token: nothing changed")
    category = needs.unsubscribe[1]
    state = "already opted out" if facts.opted_out else "opted out"
    return Plan(
        "unsubscribe",
        f"{contact.email} {state} of {category}",
        opt_out=(contact.id, category),
    )


# --- a person's mail -----------------------------------------------------------------------------


class _Deciding:
    """The decision for one person's mail (a customer, an agent, Heroku's desk), step by step.

    It only gathers the plan's parts; nothing here reads or writes anything but its arguments.
    """

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
        self.events: list[Event] = []
        self.mails: list[Mail] = []
        self.logs: list[tuple[str, Mapping[str, Any]]] = []
        self.autoreply_to: str | None = None
        self.flooding: str | bool | None = False  # False: not asked yet

    def run(self) -> Plan:
        needs, parsed = self.needs, self.parsed
        kind = needs.kind.kind
        if kind == "heroku_forward":
            return self._heroku()
        facts = self.facts
        is_agent = kind == "agent_reply"
        candidates = Candidates(
            by_token=facts.by_token,
            by_reference=facts.by_reference,
            by_thread_index=facts.by_thread_index,
            by_subject=facts.by_subject,
        )
        match = resolve_thread(parsed.sender, is_agent, candidates)
        ticket = match.ticket if isinstance(match.ticket, TicketFacts) else None
        if kind == "auto_reply":
            if ticket is None:
                return Plan("auto_reply", needs.kind.reason)
            self._file_into(ticket)
            self._inbound("auto_reply", internal=False)
            self._event("auto_reply_received", parsed.sender, {"reason": needs.kind.reason})
            return self._plan(
                "auto_reply", f"{needs.kind.reason}; kept on the ticket, not answered"
            )
        if is_agent:
            return self._agent(match, ticket)
        if ticket is not None:
            action = reopen_action(
                ticket.state,
                ticket.closed_at,
                self.now,
                timedelta(days=self.service.reopen_window_days),
            )
            if action == "follow_up":
                self._new_ticket(match, parent=ticket)
                self._notify()
                return self._plan(
                    "new_ticket", f"follow-up to closed {ticket_ref(self.config, ticket.id)}"
                )
            self._file_into(ticket)
            decision = self._route("customer")
            self._append(match, reopen=action == "reopen")
            self._carry_out(decision)
            if self.item.oversize:
                sender = self._contact_facts(parsed.sender, parsed.sender_name)
                self._acknowledge(sender, "oversize.txt.j2")
            self._notify()
            return self._plan("reply", match.reason)
        decision = self._route("customer")
        if decision.actions.spam:
            setter = next((a.rule for a in decision.applied if a.name == "spam"), "?")
            return Plan("spam", f"rule {setter} marked it as spam", logs=tuple(self.logs))
        auto = decision.actions.auto_reply
        template = "ack.txt.j2" if auto in (None, "none") else f"{auto}.txt.j2"
        if self.item.oversize:
            template = "oversize.txt.j2"
        self._new_ticket(match, template=template, ack=auto != "none" or self.item.oversize)
        self._carry_out(decision)
        self._notify()
        return self._plan("new_ticket", match.reason)

    # --- the paths ---------------------------------------------------------------------------

    def _heroku(self) -> Plan:
        found = self.needs.heroku
        assert found is not None  # classify() recognised it
        parsed = self.parsed
        match = ThreadMatch(None, "external_ref", f"Heroku ticket #{found.ticket_number}")
        ticket = self.facts.by_external_ref
        if ticket is not None:
            self._file_into(ticket)
            self._append(match, reopen=ticket.state in ("solved", "closed"), kind="heroku_update")
            self._notify()
            return self._plan("reply", match.reason)
        requester = (
            (found.requester_name or "", found.requester_email)
            if found.requester_email
            else (parsed.sender_name, parsed.sender)
        )
        # Nothing automatic ever goes to the desk: no acknowledgement.
        decision = self._route("heroku_forward", channel="heroku")
        self._new_ticket(
            match,
            ack=False,
            requester_of=requester,
            channel="heroku",
            external_ref=found.ticket_number,
            subject=found.subject,
            kind="heroku_forward",
        )
        self._carry_out(decision)
        self._notify()
        return self._plan("new_ticket", match.reason)

    def _agent(self, match: ThreadMatch, ticket: TicketFacts | None) -> Plan:
        parsed = self.parsed
        agent = self.facts.agents.get(parsed.sender)
        if agent is None:
            raise ValueError(f"agent {parsed.sender} has no row")
        if ticket is None:
            forwarded = forwarded_sender(parsed.full_text)
            if forwarded is not None and self.policy.joinable(forwarded[1]):
                # An agent forwarding a customer's mail to support opens the customer's ticket.
                self._new_ticket(match, ack=False, requester_of=forwarded)
                self._event("opened_from_forward", agent.email, {"customer": forwarded[1]})
                self._notify(exclude=agent.id)
                return self._plan("new_ticket", f"forwarded by {agent.email} for {forwarded[1]}")
            self._new_ticket(match, ack=False)
            return self._plan("new_ticket", f"{match.reason}; from an agent, no acknowledgement")
        self._file_into(ticket)
        self._inbound("agent_reply", internal=True)
        self._event(
            "message_received",
            agent.email,
            {"message_id": parsed.message_id, "thread": match.reason},
        )
        ref = ticket_ref(self.config, ticket.id)
        verdict = authenticate(parsed, agent.id, ref, self.service)
        if not verdict.authenticated:
            self._hold(agent, verdict.reason)
            return self._plan("reply", f"agent mail held as a draft: {verdict.reason}")
        plan = self._plan("reply", "agent reply")
        return replace(plan, agent_reply=agent)

    def _hold(self, agent: AgentFacts, reason: str) -> None:
        """Keep the agent's mail as an internal draft and tell the agent (a security event)."""
        assert self.message is not None and self.before is not None
        self.message.update(internal=True, kind="agent_draft")
        message_id = self.parsed.message_id
        detail = {"reason": reason, "message_id": message_id, "details": []}
        self._event("security_event", agent.email, detail)
        ref = ticket_ref(self.config, self.before.id)
        self.logs.append(
            ("security_event", {"reason": reason, "agent": agent.email, "ticket": ref})
        )
        text = (
            f"Your mail to {ref} was not sent to the customer and changed nothing: {reason}.\n"
            "\n"
            "It is kept on the ticket as an internal draft.\n"
            "Reply from your own mail client to the Reply-To address of a helpdesk "
            "notification. If you did not send this mail, someone may be using your address.\n"
        )
        self.mails.append(
            Note(
                self._new_id(),
                agent.email,
                "Not sent: " + self.before.subject,
                text,
                agent_id=agent.id,
                parent=self._said().parent,
            )
        )

    # --- the ticket ----------------------------------------------------------------------------

    def _file_into(self, ticket: TicketFacts) -> None:
        self.before = ticket
        self.members = set(ticket.participants)
        self.ticket = TicketRow(
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
        )

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
            parent_id=parent.id if parent is not None else None,
        )
        self._participant(requester.email, "requester")
        if channel == "email" and requester_of is None:
            for address in parsed.cc + parsed.to:
                if self.policy.joinable(address) and address != requester.email:
                    self._contact_facts(address, None)
                    self._participant(address, "cc")
        self._inbound(kind, internal=False)
        known = self.facts.known_ids
        for mid in dict.fromkeys([*parsed.in_reply_to, *parsed.references]):
            if mid not in known:
                self.thread_refs.append(mid)
        detail: dict[str, object] = {"message_id": parsed.message_id, "thread": match.reason}
        if parent is not None:
            detail["follow_up_to"] = ticket_ref(self.config, parent.id)
        self._event("ticket_created", parsed.sender, detail)
        if ack:
            self._acknowledge(requester, template)

    def _append(self, match: ThreadMatch, *, reopen: bool, kind: str = "customer") -> None:
        ticket = self.ticket
        assert ticket is not None
        parsed = self.parsed
        self._inbound(kind, internal=False)
        self._event(
            "message_received",
            parsed.sender,
            {"message_id": parsed.message_id, "thread": match.reason, "step": match.step},
        )
        if match.trusted:
            for address in parsed.cc + parsed.to:
                if self.policy.joinable(address):
                    self._contact_facts(address, None)
                    if self._participant(address, "cc"):
                        self._event("participant_added", parsed.sender, {"email": address})
        if reopen:
            self._event("reopened", parsed.sender, {"from": ticket.state})
            ticket = ticket.status(lifecycle.reopen(ticket.current, self.now))
        elif ticket.state == "pending":
            ticket = ticket.status(change_state(ticket.current, "open", self.now))
            self._event("state_changed", parsed.sender, {"from": "pending", "to": "open"})
        if match.trusted and ticket.channel == "email":
            self._contact_facts(parsed.sender, parsed.sender_name)
            self._participant(parsed.sender, "cc")
        self.ticket = ticket.set(updated_at=self.now)

    def _route(self, kind: str, channel: str = "email") -> Decision:
        """Evaluate the routing rules for this mail (the ticket as it was before it)."""
        sender = self.facts.contact(self.parsed.sender)
        facts = rule_facts(
            self.parsed,
            mailbox=self.item.source,
            kind=kind,
            plan=sender.plan if sender is not None else None,
            ticket=self.before,
            channel=channel,
            now=self.now,
        )
        decision = evaluate(self.policy.rules, facts)
        if decision.hits:
            self.logs.append(("rules_matched", {"rules": [hit.rule for hit in decision.hits]}))
        return decision

    def _carry_out(self, decision: Decision) -> None:
        """Apply DECISION's ticket actions, and mail whoever a rule said to notify."""
        ticket = self.ticket
        assert ticket is not None
        actions = decision.actions
        if actions.queue is not None:
            ticket = ticket.set(queue=actions.queue)
        if actions.priority is not None:
            ticket = ticket.set(priority=actions.priority)
        if actions.tags_add or actions.tags_remove:
            tags = edit_tags(ticket.tags, actions.tags_add, actions.tags_remove)
            ticket = ticket.set(tags=tuple(tags))
        if actions.assign is not None:
            agent = self._pick_agent(actions.assign, ticket.queue)
            if agent is not None:
                ticket = ticket.set(assignee_id=agent.id)
        self.ticket = ticket
        for applied in decision.applied:
            self._event(
                "rule_applied",
                f"rule:{applied.rule}",
                {
                    "action": applied.name,
                    "value": applied.value,
                    "where": f"{applied.file}:{applied.line}",
                },
            )
        for target in actions.notify:
            if target != "agents":
                self.mails.append(RuleCopy(self._new_id(), target, self._said()))

    def _pick_agent(self, mode: str, queue: str | None) -> AgentFacts | None:
        """Pick an agent of QUEUE: 'round-robin' (the longest since an assignment),
        'least-loaded' (the fewest open tickets), or the agent a plain address names."""
        config = self.config
        candidates = [
            a.email for a in config.agents if not queue or not a.queues or queue in a.queues
        ]
        if mode not in ("round-robin", "least-loaded"):
            candidates = [mode] if mode in candidates or config.agent(mode) else []
        rows = [
            agent
            for email in candidates
            if (agent := self.facts.agents.get(email)) is not None and agent.active
        ]
        if not rows:
            return None
        load = self.facts.agent_load
        if mode == "least-loaded":
            return min(rows, key=lambda a: (load.get(a.id, (0, 0))[0], a.email))
        if mode == "round-robin":
            return min(rows, key=lambda a: (load.get(a.id, (0, 0))[1], a.email))
        return rows[0]

    # --- automatic mail --------------------------------------------------------------------

    def _acknowledge(self, requester: ContactFacts, template: str) -> None:
        """Plan the automatic answer TEMPLATE to REQUESTER, unless a loop rule forbids it."""
        reason = self._ack_blocker(requester)
        if reason is not None:
            self._event("ack_suppressed", "system", {"reason": reason})
            self.logs.append(("ack_suppressed", {"reason": reason}))
            return
        parsed = self.parsed
        mail = Ack(
            self._new_id(),
            template,
            (requester.name or "", requester.email),
            Parent(
                parsed.message_id,
                parsed.references,
                parsed.in_reply_to[0] if parsed.in_reply_to else None,
                self._said().thread_index,
            ),
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

    def _notify(self, exclude: int | None = None) -> None:
        """Tell the ticket's agents about the mail, unless a flood has paused notifications."""
        if self._flood() is not None or self.policy.backfill:
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
        """The active assignee; else the agents of the ticket's queue (all without one)."""
        by_id = {a.id: a for a in self.facts.agents.values()}
        assignee = by_id.get(ticket.assignee_id) if ticket.assignee_id is not None else None
        agents: list[AgentFacts] = []
        if assignee is not None and assignee.active:
            agents = [assignee]
        else:
            for configured in self.config.agents:
                if ticket.queue and configured.queues and ticket.queue not in configured.queues:
                    continue
                agent = self.facts.agents.get(configured.email)
                if agent is not None:
                    agents.append(agent)
        return [a for a in agents if a.id != exclude]

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
        return replace(known, name=current)

    def _participant(self, email: str, role: str) -> bool:
        email = email.lower()
        if email in self.members:
            return False
        self.members.add(email)
        self.participants.append((email, role))
        return True

    def _inbound(self, kind: str, *, internal: bool) -> None:
        self.message = inbound_message(self.parsed, kind, internal)

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
        return Plan(
            outcome,
            reason,
            ticket_id=self.before.id if self.before is not None else None,
            ticket=self.ticket,
            message=self.message,
            contacts=tuple(self.contacts.values()),
            participants=tuple(self.participants),
            thread_refs=tuple(self.thread_refs),
            events=tuple(self.events),
            mails=tuple(self.mails),
            autoreply_to=self.autoreply_to,
            logs=tuple(self.logs),
        )
