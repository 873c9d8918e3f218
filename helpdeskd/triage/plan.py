"""What a plan is: the rows, events, mails and log lines the decision about one mail asks for.

:func:`helpdeskd.triage.decision.decide` makes a :class:`Plan` from the facts; the ingest writer
applies plans one at a time or a run at once. A plan is data: nothing in it has happened yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.rules.model import Facts as RuleFacts
from helpdeskd.triage.facts import TicketFacts
from helpdeskd.triage.lifecycle import Status
from helpdeskd.triage.mails import Mail
from helpdeskd.vocab import as_state


@dataclass(frozen=True)
class Event:
    """An event row: on the plan's ticket, on ticket ``on``, or on none (``ticketless``)."""

    type: str
    actor: str
    detail: Mapping[str, Any]
    ticketless: bool = False
    on: int | None = None


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
    first_response_at: datetime | None = None
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
    removals: tuple[str, ...] = ()  # addresses taken off the ticket's Cc
    merge_into: int | None = None  # the ticket this one is merged into, its mail moved there
    thread_refs: tuple[str, ...] = ()  # Message-IDs referred to that we have not seen
    referrers: tuple[str, ...] = ()  # the addresses on the mail that referred to them
    events: tuple[Event, ...] = ()
    mails: tuple[Mail, ...] = ()
    autoreply_to: str | None = None  # the address an acknowledgement counts against
    opt_out: tuple[int, str] | None = None  # (contact id, category), by mail
    logs: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (event, fields) to log

    @property
    def new_ticket(self) -> bool:
        return self.ticket is not None and self.ticket.id is None


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
