"""Decide a person's mail: a customer's, an agent's, or a ticket forwarded by Heroku's desk.

:class:`Intake` walks the steps in DESIGN.md's order — threading (a Message-ID is not a key),
reopen or follow-up, the rules, then the acknowledgement and notifications of
:mod:`helpdeskd.triage.drafting` — and hands agents' mail to
:mod:`helpdeskd.triage.agent_intake`. It reads only its arguments.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from helpdeskd.rules.evaluate import evaluate
from helpdeskd.rules.model import Decision
from helpdeskd.triage import lifecycle
from helpdeskd.triage.agent_intake import AgentIntake
from helpdeskd.triage.drafting import row_of
from helpdeskd.triage.facts import (
    AgentFacts,
    TicketFacts,
)
from helpdeskd.triage.lifecycle import (
    change_state,
    edit_tags,
    reopen_action,
)
from helpdeskd.triage.mails import (
    Note,
    RuleCopy,
)
from helpdeskd.triage.plan import Plan, rule_facts
from helpdeskd.triage.received import ticket_ref
from helpdeskd.triage.threading import (
    Candidates,
    ThreadMatch,
    resolve_thread,
)


class Intake(AgentIntake):
    """The decision for one person's mail (a customer, an agent, Heroku's desk), step by step.

    It only gathers the plan's parts; nothing here reads or writes anything but its arguments.
    """

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
        decision = evaluate(self.policy.rules, facts, explain=False)
        if decision.hits:
            self.logs.append(("rules_matched", {"rules": [hit.rule for hit in decision.hits]}))
        return decision

    def _carry_out(self, decision: Decision) -> None:
        """Apply DECISION's ticket actions, and mail whoever a rule said to notify."""
        ticket = self.ticket
        assert ticket is not None
        actions = decision.actions
        changes: dict[str, Any] = {}
        if actions.queue is not None:
            changes["queue"] = actions.queue
        if actions.priority is not None:
            changes["priority"] = actions.priority
        if actions.tags_add or actions.tags_remove:
            changes["tags"] = tuple(edit_tags(ticket.tags, actions.tags_add, actions.tags_remove))
        if actions.assign is not None:
            agent = self._pick_agent(actions.assign, changes.get("queue", ticket.queue))
            if agent is not None:
                changes["assignee_id"] = agent.id
        if changes:
            self.ticket = ticket.set(**changes)
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
        for agent in self._agents_for(row_of(linked), None):
            self.mails.append(
                Note(
                    self._new_id(),
                    agent.email,
                    "Not threaded: " + linked.subject,
                    text,
                    agent_id=agent.id,
                )
            )
