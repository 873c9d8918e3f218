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
- A leaked reply address is not a master key: a command that reaches beyond the ticket
  (``#merge``) or adds someone who is not on it (``#cc +x``) needs more proof than the token.
  Our trusted aligned DKIM pass is such proof; without it the reply is held, nothing changes or
  is sent, and the agent is mailed a confirmation request whose reply address (a token of its
  own, :func:`~helpdeskd.mail.tokens.confirmation_code`) names the held reply. A reply to that
  address, with no command lines of its own, carries the held reply out once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, cast

from helpdeskd.mail.tokens import CONFIRM_DAYS, confirmation_code
from helpdeskd.triage.commands import (
    COMMAND_NAMES,
    Command,
    CommandName,
    ParsedCommands,
    describe,
)
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
CONFIRM = "it needs your confirmation"
NOTHING_HELD = "no reply is held under this confirmation address"
CONFIRMED_ALREADY = "the held reply was confirmed already"
CONFIRM_ONLY = "a confirmation carries out the held reply only: it takes no commands of its own"
QUOTED_LINES = 20  # lines of a held reply's text quoted in its confirmation request


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
    # More than the token: our trusted Authentication-Results shows an aligned DKIM pass.
    # False: #merge and #cc +x are held for the agent's confirmation. The intake passes the
    # verdict's (helpdeskd.triage.agentmail.Verdict.strong); a caller that says nothing keeps
    # the behaviour from before there was a confirmation.
    strong_proof: bool = True
    participants: frozenset[str] = frozenset()  # who is on the ticket already, lower-cased
    # The mail came to a confirmation request's address: the code it carries, and the reply
    # held under that code on this ticket by this agent (None: there is none).
    confirmation: str | None = None
    held: HeldReply | None = None


@dataclass(frozen=True)
class HeldReply:
    """A reply held for confirmation, as its ``confirmation_requested`` event recorded it.

    The lookup reads it back with :func:`held_reply`; ``confirmed`` says a ``reply_confirmed``
    event names its code already, ``attachments`` are those of the held mail (from its raw).
    """

    code: str
    message_id: str  # the held mail's
    commands: ParsedCommands
    text: str  # the held mail's extracted text, what is sent when it is confirmed
    confirmed: bool = False
    attachments: tuple[tuple[str, str, bytes], ...] = ()


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
    was read). Held for confirmation (``confirm`` too): keep the mail as a draft with
    ``message_text``, record ``events`` and mail the agent the ``confirm`` request instead.
    Otherwise: store ``message_text`` with ``message_kind``/``message_internal`` on the
    agent's mail; edit the Cc list, assign, merge, set ``changes``; record ``events``; send
    ``send`` to the customer (with the held mail's attachments when ``confirmed`` names it);
    record ``events_after_send``; tell the agents; mail the agent the ``receipt`` lines, if any.
    ``outcome`` is the one-line reason for the received mail.
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
    confirm: ConfirmRequest | None = None  # held for confirmation: mail the agent this request
    confirmed: str | None = None  # the Message-ID of the held reply this plan carries out


@dataclass(frozen=True)
class ConfirmRequest:
    """Ask the agent to confirm a held reply: its code and the request's text, line by line.

    The request goes to the agent's own address with Reply-To the agent's confirmation address
    for the ticket (a token carrying CODE); ``lines`` are the body.
    """

    code: str
    lines: tuple[str, ...]


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


def needs_proof(commands: ParsedCommands, facts: ReplyFacts) -> list[str]:
    """Return why COMMANDS need more proof than the token, one line per command, in order.

    A leaked reply address must not let its finder reach beyond the ticket (``#merge``) or add
    someone who is not on it (``#cc +x``; the requester, the Cc and the agents are on it).
    """
    known = facts.participants | {facts.ticket.requester.lower()} | facts.agent_addresses
    reasons: list[str] = []
    for command in commands.commands:
        match command.name:
            case "merge":
                reasons.append(
                    f"#merge {command.args[0]}: moves this ticket's mail and people into another"
                )
            case "cc":
                outside = [a for a in cc_edit(command.args).add if a not in known]
                if outside:
                    reasons.append(f"#cc: adds {', '.join(outside)}, not on the ticket yet")
    return reasons


def held_detail(
    code: str, message_id: str, commands: ParsedCommands, text: str, reasons: list[str]
) -> dict[str, Any]:
    """Return the detail of a ``confirmation_requested`` event: all a confirmation carries out."""
    return {
        "code": code,
        "message_id": message_id,
        "commands": [[c.name, list(c.args), c.source] for c in commands.commands],
        "text": text,
        "why": reasons,
    }


def held_reply(
    detail: Mapping[str, Any],
    *,
    confirmed: bool = False,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
) -> HeldReply | None:
    """Read a ``confirmation_requested`` event's DETAIL back (None: not one of ours)."""
    code, message_id, text = detail.get("code"), detail.get("message_id"), detail.get("text")
    rows = detail.get("commands")
    if not (isinstance(code, str) and isinstance(message_id, str) and isinstance(text, str)):
        return None
    if not isinstance(rows, list):
        return None
    commands: list[Command] = []
    for line, row in enumerate(rows, 1):
        if not (isinstance(row, list) and len(row) == 3 and row[0] in COMMAND_NAMES):
            return None
        name, args, source = row
        if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            return None
        commands.append(Command(cast(CommandName, name), tuple(args), line, str(source)))
    parsed = ParsedCommands(commands=tuple(commands), errors=(), body=text)
    return HeldReply(code, message_id, parsed, text, confirmed, attachments)


def _held(reason: str, details: list[str], outcome: str, text: str | None = None) -> AgentReplyPlan:
    return AgentReplyPlan(outcome=outcome, held=Held(reason, tuple(details)), message_text=text)


def decide_agent_reply(commands: ParsedCommands, text: str, facts: ReplyFacts) -> AgentReplyPlan:
    """Decide what an authenticated agent's reply does.

    COMMANDS is the parsed command block of the reply, TEXT the reply's extracted text (quoted
    history and signature removed) below it, FACTS what the desk knows (see the module docstring
    for the policy). A reply to a confirmation request (``facts.confirmation``) carries out the
    held reply ``facts.held`` instead, as if it had the proof it lacked.
    """
    if facts.confirmation is not None:
        return _confirmed(commands, text, facts)
    return _decide(commands, text, facts)


def _confirmed(commands: ParsedCommands, text: str, facts: ReplyFacts) -> AgentReplyPlan:
    """Decide a reply to a confirmation request: carry the held reply out, once."""
    held = facts.held
    refused = "confirmation refused: "
    if held is None or held.code != facts.confirmation:
        return _held(NOTHING_HELD, [], refused + NOTHING_HELD)
    if held.confirmed:
        return _held(CONFIRMED_ALREADY, [], refused + CONFIRMED_ALREADY)
    if commands.commands or commands.errors:
        lines = [c.source for c in commands.commands] + [e.source for e in commands.errors]
        return _held(CONFIRM_ONLY, lines, refused + CONFIRM_ONLY)
    proven = replace(
        facts, strong_proof=True, confirmation=None, held=None, message_id=held.message_id
    )
    plan = _decide(held.commands, held.text, proven, heading="Confirmed and applied to")
    if plan.held is not None:
        return plan  # the ticket changed meanwhile: refused now, the agent is told why
    ticket = facts.ticket
    confirmed = EventRow(
        ticket.id,
        "reply_confirmed",
        facts.agent.email,
        {"code": held.code, "message_id": held.message_id, "by": facts.message_id},
    )
    return replace(
        plan,
        outcome="confirmed: " + plan.outcome,
        message_text=text,  # the confirmation itself: an internal note, never sent
        message_kind="note",
        events=(confirmed, *plan.events),
        confirmed=held.message_id,
    )


def _confirm_request(
    commands: ParsedCommands, text: str, facts: ReplyFacts, reasons: list[str]
) -> AgentReplyPlan:
    """Hold a reply whose commands need proof, and ask the agent to confirm it."""
    ticket, agent = facts.ticket, facts.agent
    code = confirmation_code(facts.message_id)
    quoted = text.strip().splitlines()
    more = len(quoted) - QUOTED_LINES
    lines = (
        f"Your reply to {ticket.ref} is held: nothing was changed or sent yet.",
        "Its reply address alone does not prove that you wrote it, and some of its commands",
        "reach beyond the ticket or add someone who is not on it:",
        *(f"  - {reason}" for reason in reasons),
        "",
        "Confirmed, it will do this:",
        *(f"  - {describe(command)}" for command in commands.commands),
        *(
            ("", "with this note:" if commands.internal else "and send this text:")
            if quoted
            else ()
        ),
        *(f"  > {line}" for line in quoted[:QUOTED_LINES]),
        *((f"  > … ({more} more lines)",) if more > 0 else ()),
        "",
        f"To confirm, reply to this mail within {CONFIRM_DAYS} days, with no command lines",
        "(your answer is kept as an internal note). If you did not write the reply, do not",
        "answer: it stays on the ticket as an internal draft, and someone may be using your",
        "reply address.",
    )
    detail = held_detail(code, facts.message_id, commands, text, reasons)
    return AgentReplyPlan(
        outcome="held for confirmation: " + "; ".join(reasons),
        held=Held(CONFIRM, tuple(reasons)),
        message_text=text,
        events=(EventRow(ticket.id, "confirmation_requested", agent.email, detail),),
        confirm=ConfirmRequest(code, lines),
    )


def _decide(
    commands: ParsedCommands, text: str, facts: ReplyFacts, heading: str = "Applied to"
) -> AgentReplyPlan:
    """Decide a reply's own commands and text (see :func:`decide_agent_reply`)."""
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
    reasons = needs_proof(commands, facts) if not facts.strong_proof else []
    if reasons:
        return _confirm_request(commands, text, facts, reasons)

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
            f"{heading} {ticket.ref}:",
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
