"""Decide an agent's mail: a reply to a ticket, a forward of a customer's mail, a held draft.

An agent's reply counts only when it authenticates (helpdeskd/triage/agentmail.py); its commands,
the answer to the customer, confirmations and receipts come from the pure decision in
:mod:`helpdeskd.triage.agent_reply`, carried into the plan here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.compose import Parent
from helpdeskd.mail.parse import extract_reply
from helpdeskd.triage import agent_reply
from helpdeskd.triage.agentmail import (
    HeldNotices,
    Verdict,
    attachments_of,
    authenticate,
    forwarded_sender,
    held_notice,
)
from helpdeskd.triage.drafting import MAX_JOIN, Drafting
from helpdeskd.triage.facts import (
    AgentFacts,
    ReplyContext,
    TicketFacts,
)
from helpdeskd.triage.lifecycle import (
    CcEdit,
    MergeTarget,
    Status,
)
from helpdeskd.triage.mails import (
    Note,
    Reply,
)
from helpdeskd.triage.plan import Event, Plan
from helpdeskd.triage.received import ticket_ref
from helpdeskd.triage.threading import (
    ThreadMatch,
)
from helpdeskd.vocab import as_priority, as_state


class AgentIntake(Drafting):
    """The agent's side of the decision about a person's mail."""

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


def _canned(name: str) -> str:
    """The template of canned reply NAME."""
    return f"replies/{name}.txt.j2"
