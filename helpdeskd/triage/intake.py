"""Decide a person's mail: a customer's, an agent's, or a ticket forwarded by Heroku's desk.

:class:`Intake` gathers the parts of one :class:`~helpdeskd.triage.plan.Plan` step by step:
threading, reopen or follow-up, the rules, the acknowledgement, the notifications and the flood
breaker, an agent's authentication and commands. It reads only its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from helpdeskd.mail.authresults import dkim_aligned, sender_verified
from helpdeskd.mail.build import new_message_id
from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import ParsedMessage, extract_reply
from helpdeskd.rules.evaluate import evaluate
from helpdeskd.rules.model import Decision
from helpdeskd.triage import agent_reply, lifecycle
from helpdeskd.triage.agentmail import (
    HeldNotices,
    Verdict,
    attachments_of,
    authenticate,
    forwarded_sender,
    held_notice,
)
from helpdeskd.triage.facts import (
    AgentFacts,
    ContactFacts,
    Facts,
    Needs,
    Policy,
    ReplyContext,
    TicketFacts,
)
from helpdeskd.triage.lifecycle import (
    CcEdit,
    MergeTarget,
    Status,
    change_state,
    edit_tags,
    reopen_action,
)
from helpdeskd.triage.loops import autoreply_limit_reached, flood, may_autorespond
from helpdeskd.triage.mails import (
    Ack,
    FloodAlert,
    Mail,
    Note,
    Notification,
    Reply,
    RuleCopy,
    Said,
)
from helpdeskd.triage.plan import ContactChange, Event, Plan, TicketRow, rule_facts
from helpdeskd.triage.received import Incoming, inbound_message, ticket_ref
from helpdeskd.triage.threading import (
    Candidates,
    ThreadMatch,
    normalize_subject,
    resolve_thread,
)
from helpdeskd.vocab import as_priority, as_state

MAX_JOIN = 50  # Cc participants one mail may add to a ticket (and an answer may copy)


class Intake:
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
        # Agents are on every ticket: their own out-of-office replies file in like their mail.
        agent = parsed.single_sender and parsed.sender in self.policy.context.agent_addresses
        match = resolve_thread(parsed.sender, agent, candidates, facts.referrers)
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
        if isinstance(match.linked, TicketFacts):
            self._tell_linked(match.linked)
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
                authserv_id = self.service.authserv_id
                if not (authserv_id and dkim_aligned(parsed, authserv_id)):
                    return self._held_forward(match, agent, forwarded[1])
                # An agent forwarding a customer's mail to support opens the customer's ticket:
                # only mail that proves it is the agent's (an aligned DKIM pass) may do that.
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
        verdict = authenticate(parsed, agent.id, ref, self.service, self.now)
        if not verdict.authenticated:
            self._hold(agent, verdict.reason, security=True)
            return self._plan("reply", f"agent mail held as a draft: {verdict.reason}")
        return self._agent_reply(agent, ticket, verdict)

    def _held_forward(self, match: ThreadMatch, agent: AgentFacts, customer: str) -> Plan:
        """A forward that does not authenticate opens nothing for the customer: it is kept as
        an internal draft on a ticket of the agent's own, and the agent is told."""
        self._new_ticket(match, ack=False)
        assert self.message is not None and self.ticket is not None
        self.message.update(internal=True, kind="agent_draft")
        reason = "a forward must pass DKIM in our Authentication-Results"
        detail = {"reason": reason, "message_id": self.parsed.message_id, "customer": customer}
        self._event("security_event", agent.email, detail)
        self.logs.append(("security_event", {"reason": reason, "agent": agent.email}))
        text = (
            f"Your forward of {customer}'s mail did not open a ticket for them: {reason}, "
            "and this one did not. It is kept here as an internal draft and nothing was sent. "
            "If you did not send it, someone may be using your address.\n"
        )
        subject = "Not opened: " + self.ticket.subject
        self.mails.append(Note(self._new_id(), agent.email, subject, text, agent_id=agent.id))
        return self._plan("new_ticket", f"forward by {agent.email} held as a draft: {reason}")

    def _agent_reply(self, agent: AgentFacts, ticket: TicketFacts, verdict: Verdict) -> Plan:
        """Carry an authenticated agent's reply into the plan: commands, the answer, receipts."""
        commands = self.needs.commands
        assert commands is not None and self.message is not None and self.ticket is not None
        context = self.facts.replies.get(ticket.id) or ReplyContext()
        text = extract_reply(commands.body) if commands.body.strip() else ""
        decided = agent_reply.decide_agent_reply(
            commands, text, self._reply_facts(agent, ticket, verdict)
        )
        if decided.message_text is not None:
            self.message["text"] = decided.message_text
        if decided.confirm is not None:
            self._ask_confirmation(agent, decided.confirm, decided.events)
            return self._plan("reply", decided.outcome)
        if decided.held is not None:
            self._hold(agent, decided.held.reason, security=False, details=decided.held.details)
            return self._plan("reply", decided.outcome)
        self.message.update(kind=decided.message_kind, internal=decided.message_internal)
        for address in decided.cc.add:
            self._contact_facts(address, None)
            self._participant(address, "cc")
        self.removals.extend(a for a in decided.cc.remove if a != ticket.requester.email)
        row = self.ticket
        if decided.assign is not None:
            email = decided.assign.email
            assignee = self.facts.agents.get(email) if email is not None else None
            row = row.set(assignee_id=assignee.id if assignee is not None else None)
        self.merge_into = decided.merge_into
        changes = decided.changes
        if changes is not None:
            row = row.status(changes.status).set(
                priority=changes.priority,
                queue=changes.queue,
                tags=changes.tags,
                first_response_at=changes.first_response_at,
                updated_at=changes.updated_at,
            )
        self.ticket = row
        self._events_of(decided.events)
        if decided.send is not None:
            heroku = self.config.heroku
            to_desk = ticket.channel == "heroku" and heroku is not None
            cc = () if to_desk else self._reply_cc(context, decided.cc, ticket.requester.email)
            to = (heroku.reply_address,) if heroku is not None and to_desk else (row.requester,)
            parent = context.parent
            reply = Reply(
                self._new_id(),
                decided.send,
                agent.name,
                to,
                cc,
                Parent(
                    parent.message_id, parent.references, parent.in_reply_to, parent.thread_index
                )
                if parent is not None and decided.merge_into is None
                else None,
                context.held.attachments
                if decided.confirmed is not None and context.held is not None
                else attachments_of(self.item.raw),
                to_desk,
            )
            self.mails.append(reply)
            self._event(
                "reply_sent",
                agent.email,
                {"message_id": reply.message_id, "to": list(to), "cc": list(cc)},
            )
        self._events_of(decided.events_after_send)
        self._notify(exclude=agent.id, flood_check=False)
        if decided.receipt:
            self.mails.append(
                Note(
                    self._new_id(),
                    agent.email,
                    "Done: " + row.subject,
                    "\n".join(decided.receipt) + "\n",
                    agent_id=agent.id,
                    parent=self._said().parent,
                )
            )
        return self._plan("reply", decided.outcome)

    def _reply_cc(self, context: ReplyContext, edit: CcEdit, requester: str) -> tuple[str, ...]:
        """The Cc of the agent's answer: the ticket's deliverable Cc as the reply left it."""
        cc = []
        for address in dict.fromkeys([*context.cc, *edit.add]):
            contact = self.facts.contact(address)
            undeliverable = contact is not None and contact.undeliverable
            if address not in edit.remove and address != requester and not undeliverable:
                cc.append(address)
        return tuple(cc[:MAX_JOIN])  # an agent's answer never fans out to a crowd

    def _reply_facts(
        self, agent: AgentFacts, ticket: TicketFacts, verdict: Verdict
    ) -> agent_reply.ReplyFacts:
        """What deciding the agent's reply to TICKET reads, from the facts and the policy.

        A reply to a confirmation request is decided on the held reply's commands, so the
        canned reply and the merge target are those the held reply names.
        """
        context = self.facts.replies.get(ticket.id) or ReplyContext()
        confirmation = verdict.token.confirms if verdict.token is not None else None
        held = context.held if confirmation is not None else None
        commands = held.commands if held is not None else self.needs.commands
        assert commands is not None
        service = self.service
        template = commands.get("template")
        canned = template.args[0] if template is not None else None
        if canned is not None and not self.policy.renderer.exists(_canned(canned)):
            canned = None
        target = context.merge_target
        facts = agent_reply.ReplyFacts(
            ticket=agent_reply.TicketFacts(
                id=ticket.id,
                ref=ticket_ref(self.config, ticket.id),
                subject=ticket.subject,
                status=Status(as_state(ticket.state), ticket.solved_at, ticket.closed_at),
                priority=as_priority(ticket.priority),
                queue=ticket.queue,
                tags=ticket.tags,
                requester_id=ticket.requester.id or 0,
                requester=ticket.requester.email,
                first_response_at=ticket.first_response_at,
            ),
            agent=agent_reply.AgentFacts(agent.id, agent.email, agent.name),
            message_id=self.parsed.message_id,
            agent_addresses=frozenset(a.email for a in self.config.agents),
            canned_replies=frozenset([canned] if canned else []),
            now=self.now,
            agent_reply_state=as_state(service.agent_reply_state),
            receipts="errors" if service.receipts == "errors" else "always",
            merge_target=(
                MergeTarget(target.id, target.requester_id, target.merged_into_id)
                if target is not None
                else None
            ),
            strong_proof=verdict.strong,
            participants=frozenset(ticket.participants),
            confirmation=confirmation,
            held=held,
        )
        if (
            canned
            and not commands.internal
            and commands.ok
            and not agent_reply.refusals(commands, facts)
        ):
            # Rendered only for a reply that will be sent: a refused one renders nothing.
            requester = ticket.requester
            rendered = self.policy.renderer.render(
                _canned(canned),
                {
                    "service": {"name": service.name, "support_address": service.support_address},
                    "ticket": {
                        "ref": ticket_ref(self.config, ticket.id),
                        "subject": ticket.subject,
                        "state": ticket.state,
                        "priority": ticket.priority,
                    },
                    "requester": {"name": requester.name or "", "email": requester.email},
                    "agent": {"name": agent.name, "email": agent.email},
                },
            )
            facts = replace(facts, canned_text=rendered.text)
        return facts

    def _events_of(self, rows: Sequence[agent_reply.EventRow]) -> None:
        for row in rows:
            on = (
                None
                if row.ticket_id == (self.before.id if self.before else None)
                else row.ticket_id
            )
            self.events.append(Event(row.type, row.actor, row.detail, on=on))

    def _hold(
        self,
        agent: AgentFacts,
        reason: str,
        *,
        security: bool,
        details: Sequence[str] = (),
    ) -> None:
        """Keep the agent's mail as an internal draft and tell the agent why nothing was sent.

        Mail that did not authenticate costs its sender nothing: the agent hears of it at most
        once an hour, the rest summed up in the next notice (``told`` in the event says which).
        """
        assert self.message is not None and self.before is not None
        self.message.update(internal=True, kind="agent_draft")
        message_id = self.parsed.message_id
        event = "security_event" if security else "reply_held"
        detail: dict[str, Any] = {
            "reason": reason,
            "message_id": message_id,
            "details": list(details),
        }
        notice = (
            held_notice(self.facts.held_notices.get(agent.email, HeldNotices()), self.now)
            if security
            else None
        )
        if notice is not None:
            detail["told"] = notice.send
        self._event(event, agent.email, detail)
        ref = ticket_ref(self.config, self.before.id)
        self.logs.append((event, {"reason": reason, "agent": agent.email, "ticket": ref}))
        if notice is not None and not notice.send:
            return
        lines = [
            f"Your mail to {ref} was not sent to the customer and changed nothing: {reason}.",
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
        if notice is not None:
            lines.extend(notice.summary)
        self.mails.append(
            Note(
                self._new_id(),
                agent.email,
                "Not sent: " + self.before.subject,
                "\n".join(lines) + "\n",
                agent_id=agent.id,
                parent=self._said().parent,
            )
        )

    def _ask_confirmation(
        self,
        agent: AgentFacts,
        request: agent_reply.ConfirmRequest,
        events: Sequence[agent_reply.EventRow],
    ) -> None:
        """Keep the agent's reply as a draft and mail the agent the request to confirm it.

        Its Reply-To is the agent's confirmation address for the ticket (a token carrying the
        request's code): only a reply to it carries the held reply out.
        """
        assert self.message is not None and self.before is not None
        self.message.update(internal=True, kind="agent_draft")
        self._events_of(events)
        ref = ticket_ref(self.config, self.before.id)
        self.logs.append(("confirmation_requested", {"agent": agent.email, "ticket": ref}))
        self.mails.append(
            Note(
                self._new_id(),
                agent.email,
                "Confirm: " + self.before.subject,
                "\n".join(request.lines) + "\n",
                agent_id=agent.id,
                parent=self._said().parent,
                confirms=request.code,
            )
        )

    # --- the ticket ----------------------------------------------------------------------------

    def _file_into(self, ticket: TicketFacts) -> None:
        self.before = ticket
        self.members = set(ticket.participants)
        self.ticket = _row_of(ticket)

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
                if self.policy.joinable(address) and self._join(address):
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
        authserv_id = self.service.authserv_id
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

    def _tell_linked(self, linked: TicketFacts) -> None:
        """Tell the agents of LINKED that a stranger's mail referred to it: it opened this new
        ticket instead, which they may merge if the writer does belong there."""
        if self.policy.backfill:
            return
        ref = ticket_ref(self.config, linked.id)
        sender = self.parsed.sender
        text = (
            f"{sender} wrote in reply to mail of {ref}, but is not on {ref}: their mail did not "
            f"join it and opened this ticket instead, linked to {ref}. Nothing of {ref} was "
            "sent to them.\n\nIf they do belong on it, reply to this ticket's notification "
            f"with '#merge {ref}' on the first line.\n"
        )
        for agent in self._agents_for(_row_of(linked), None):
            self.mails.append(
                Note(
                    self._new_id(),
                    agent.email,
                    "Not threaded: " + linked.subject,
                    text,
                    agent_id=agent.id,
                )
            )

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


def _canned(name: str) -> str:
    """The template of canned reply NAME."""
    return f"replies/{name}.txt.j2"


def _row_of(ticket: TicketFacts) -> TicketRow:
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
