"""Decide what an authenticated agent's reply does: the commands' effect, what is sent, the receipt.

Pure: :func:`decide_agent_reply` takes the parsed command block, the reply's extracted text and
the facts the lookup gathered, and returns an :class:`AgentReplyPlan`, which the intake
(:mod:`helpdeskd.triage.intake`) turns into the rows, events and mail of the mail's plan.

The policy (DESIGN "Agents by email"):

- Commands are all-or-nothing. One invalid command line, or one command that cannot be applied
  (an unknown agent or canned reply, removing the requester, a merge the target refuses), and
  nothing changes, nothing is sent: the reply is held as an internal draft and the agent told why.
- What goes to the customer is the extracted text only, followed by the canned reply of a
  ``#template``; a ``#note`` sends nothing. A reply with neither text nor commands is held.
- The agent's own mail stays on the ticket as internal; the customer gets a copy of its own.
- A public reply stamps the first response and, unless ``#status`` said otherwise, moves a new
  or open ticket to ``agent_reply_state``.
- Commands apply as one batch, whatever their order: the Cc list is edited before a merge copies
  the participants, and a merged ticket ends closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from helpdeskd.triage.commands import ParsedCommands, describe
from helpdeskd.triage.lifecycle import (
    CcEdit,
    MergeTarget,
    Status,
    cc_check,
    cc_edit,
    change_state,
    edit_tags,
    merge_check,
    merged,
    signed,
)
from helpdeskd.vocab import MessageKind, Priority, State, as_priority, as_state

Receipts = Literal["always", "errors"]

INVALID = "a command is invalid"
CANNOT_APPLY = "a command cannot be applied"
EMPTY = "nothing was left to send once quoted text and signature were removed"


@dataclass(frozen=True)
class AgentFacts:
    """The agent who wrote the reply."""

    id: int
    email: str
    name: str


@dataclass(frozen=True)
class TicketFacts:
    """The columns of the ticket replied to that the reply may read or change."""

    id: int
    ref: str
    subject: str
    status: Status
    priority: Priority
    queue: str | None
    tags: tuple[str, ...]
    requester_id: int
    requester: str  # the requester's address
    first_response_at: datetime | None


@dataclass(frozen=True)
class ReplyFacts:
    """What the desk looked up for one agent reply; nothing here is read again later."""

    ticket: TicketFacts
    agent: AgentFacts
    message_id: str  # the Message-ID of the agent's mail, stored on the ticket
    agent_addresses: frozenset[str]  # the configured agents, lower-cased
    canned_replies: frozenset[str]  # the canned replies asked for that exist, by name
    now: datetime
    agent_reply_state: State = "pending"
    receipts: Receipts = "always"
    merge_target: MergeTarget | None = None  # the ticket #merge names, None if there is none
    canned_text: str | None = None  # the #template reply rendered, when one is to be sent


@dataclass(frozen=True)
class Held:
    """Why a reply was held as a draft: a sentence, then one line per problem."""

    reason: str
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventRow:
    """One event to record: on which ticket, what, by whom, and the detail."""

    ticket_id: int
    type: str
    actor: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TicketChanges:
    """The ticket's columns after the reply (all of them, changed or not)."""

    status: Status
    priority: Priority
    queue: str | None
    tags: tuple[str, ...]
    first_response_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class Assign:
    """Assign the ticket to the agent with address EMAIL; None unassigns it."""

    email: str | None


@dataclass(frozen=True)
class AgentReplyPlan:
    """What to do with an agent's reply, in the order the desk carries it out.

    Held: keep the mail as a draft and tell the agent (``held``; ``message_text`` when the text
    was read). Otherwise: store ``message_text`` with ``message_kind``/``message_internal`` on the
    agent's mail; edit the Cc list, assign, merge, set ``changes``; record ``events``; send
    ``send`` to the customer; record ``events_after_send``; tell the agents; mail the agent the
    ``receipt`` lines, if any. ``outcome`` is the one-line reason for the received mail.
    """

    outcome: str
    held: Held | None = None
    message_text: str | None = None  # None: the text stored at intake stays
    message_kind: MessageKind = "agent_draft"
    message_internal: bool = True
    changes: TicketChanges | None = None
    cc: CcEdit = field(default_factory=CcEdit)
    assign: Assign | None = None
    merge_into: int | None = None
    events: tuple[EventRow, ...] = ()
    send: str | None = None  # the text sent to the customer
    events_after_send: tuple[EventRow, ...] = ()
    receipt: tuple[str, ...] = ()  # lines of the receipt mailed to the agent; () for none


def refusals(commands: ParsedCommands, facts: ReplyFacts) -> list[str]:
    """Return why COMMANDS (all valid lines) cannot be applied, in command order."""
    problems: list[str] = []
    ticket = facts.ticket
    for command in commands.commands:
        problem: str | None = None
        match command.name:
            case "assign":
                target = command.args[0]
                if target not in ("me", "none") and target not in facts.agent_addresses:
                    problem = f"#assign: {target} is not an agent"
            case "template":
                if command.args[0] not in facts.canned_replies:
                    problem = f"#template: there is no canned reply {command.args[0]}"
            case "cc":
                problem = cc_check(cc_edit(command.args), ticket.requester)
            case "merge":
                problem = merge_check(
                    ticket.id,
                    ticket.requester_id,
                    command.args[0],
                    facts.merge_target,
                    force="force" in command.args[1:],
                )
        if problem is not None:
            problems.append(problem)
    return problems


def _held(reason: str, details: list[str], outcome: str, text: str | None = None) -> AgentReplyPlan:
    return AgentReplyPlan(outcome=outcome, held=Held(reason, tuple(details)), message_text=text)


def decide_agent_reply(commands: ParsedCommands, text: str, facts: ReplyFacts) -> AgentReplyPlan:
    """Decide what an authenticated agent's reply does.

    COMMANDS is the parsed command block of the reply, TEXT the reply's extracted text (quoted
    history and signature removed) below it, FACTS what the desk knows (see the module docstring
    for the policy).
    """
    if not commands.ok:
        details = [f"line {e.line}: {e.message}" for e in commands.errors]
        return _held(INVALID, details, "commands refused: " + "; ".join(details))
    problems = refusals(commands, facts)
    if problems:
        return _held(CANNOT_APPLY, problems, "commands refused: " + "; ".join(problems))

    outgoing = text
    if commands.get("template") is not None and not commands.internal:
        outgoing = "\n\n".join(part for part in (text, (facts.canned_text or "").strip()) if part)
    if not outgoing.strip() and not commands.commands:
        return _held(EMPTY, [], "empty reply held", text)

    ticket, agent, now = facts.ticket, facts.agent, facts.now
    status, priority, queue, tags = ticket.status, ticket.priority, ticket.queue, ticket.tags
    cc = CcEdit()
    assign: Assign | None = None
    merge_into: int | None = None
    events: list[EventRow] = []
    for command in commands.commands:
        detail: dict[str, Any] = {"command": command.source}
        match command.name:
            case "status":
                to = as_state(command.args[0])
                detail.update({"from": status.state, "to": to})
                status = change_state(status, to, now)
            case "assign":
                target = command.args[0]
                email = agent.email if target == "me" else None if target == "none" else target
                assign = Assign(email)
                detail["to"] = email
            case "priority":
                new_priority = as_priority(command.args[0])
                detail.update({"from": priority, "to": new_priority})
                priority = new_priority
            case "queue":
                detail.update({"from": queue, "to": command.args[0]})
                queue = command.args[0]
            case "tags":
                tags = tuple(edit_tags(tags, *signed(command.args)))
                detail["tags"] = list(tags)
            case "cc":
                edit = cc_edit(command.args)
                cc = CcEdit(cc.add + edit.add, cc.remove + edit.remove)
            case "merge":
                assert facts.merge_target is not None  # refusals() checked it
                merge_into = facts.merge_target.id
                events.append(EventRow(merge_into, "merged_in", agent.email, {"from": ticket.ref}))
            case "note" | "public" | "template":
                pass  # they shape what is sent, below
        events.append(EventRow(ticket.id, f"command_{command.name}", agent.email, detail))
    if merge_into is not None:
        status = merged(status, now)

    send: str | None = None
    kind: MessageKind = "agent_reply"
    if commands.internal:
        kind = "note"
        events.append(
            EventRow(ticket.id, "note_added", agent.email, {"message_id": facts.message_id})
        )
    elif outgoing.strip():
        send = outgoing

    first_response_at = ticket.first_response_at
    after_send: list[EventRow] = []
    if send is not None:
        first_response_at = first_response_at or now
        if commands.get("status") is None and status.state in ("new", "open"):
            target_state = facts.agent_reply_state
            after_send.append(
                EventRow(
                    ticket.id,
                    "state_changed",
                    agent.email,
                    {"from": status.state, "to": target_state},
                )
            )
            status = change_state(status, target_state, now)

    applied = [describe(command) for command in commands.commands]
    receipt: tuple[str, ...] = ()
    if commands.commands and facts.receipts == "always":
        receipt = (
            f"Applied to {ticket.ref}:",
            *(f"  - {line}" for line in applied),
            *(("  - reply sent to the customer",) if send is not None else ()),
        )
    return AgentReplyPlan(
        outcome="; ".join([*applied, *(["reply sent"] if send is not None else [])])
        or "agent reply",
        message_text=text,
        message_kind=kind,
        message_internal=True,  # the customer gets a copy of its own
        changes=TicketChanges(
            status=status,
            priority=priority,
            queue=queue,
            tags=tags,
            first_response_at=first_response_at,
            updated_at=now,
        ),
        cc=cc,
        assign=assign,
        merge_into=merge_into,
        events=tuple(events),
        send=send,
        events_after_send=tuple(after_send),
        receipt=receipt,
    )
