"""Name the words tickets, messages and outcomes are spelled with, once for all of helpdeskd.

Each vocabulary is a ``Literal`` type, for mypy, and the tuple of its words derived from it with
``typing.get_args``, for checks and messages; the tuples keep the order users read them in (rule
errors list them). A leaf: it imports nothing from helpdeskd, so every layer may import it.
"""

from __future__ import annotations

from typing import Literal, get_args

OpenState = Literal["new", "open", "pending"]
"""A state in which the desk still owes the customer something (SLAs run, load is counted)."""
State = Literal[OpenState, "solved", "closed"]
STATES: tuple[State, ...] = get_args(State)
OPEN_STATES: tuple[OpenState, ...] = get_args(OpenState)

Priority = Literal["low", "normal", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

Channel = Literal["email", "heroku"]
"""How a ticket's customer is reached: by mail, or through the Heroku support desk."""
CHANNELS: tuple[Channel, ...] = get_args(Channel)

Direction = Literal["in", "out"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)

MessageKind = Literal[
    # received
    "customer",
    "auto_reply",
    "agent_reply",
    "agent_draft",  # an agent's mail held: not authenticated, refused commands, nothing to send
    "note",
    "heroku_forward",
    "heroku_update",
    # sent
    "ack",
    "reply",
    "reminder",
    "agent_notification",
    "agent_notice",
    "rule_notification",
]
"""The ``kind`` of a ticket's message row."""
MESSAGE_KINDS: tuple[MessageKind, ...] = get_args(MessageKind)

Kind = Literal[
    "customer",
    "agent_reply",
    "heroku_forward",
    "auto_reply",
    "bounce",
    "report",
    "unsubscribe",
    "spam",
    "ignored",
    "blocked",
]
"""What classification makes of a received mail, before threading (DESIGN "Classification")."""
KINDS: tuple[Kind, ...] = get_args(Kind)

Outcome = Literal[
    "new_ticket",
    "reply",
    "bounce",
    "report",
    "auto_reply",
    "unsubscribe",
    "spam",
    "ignored",
    "duplicate",
    "blocked",
    "quarantined",
]
"""What became of a received mail; ``ingest --json`` promises these and no others."""
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


def as_state(value: str) -> State:
    """Return VALUE, a state's name read from the database or a command, as a State."""
    for state in STATES:
        if state == value:
            return state
    raise ValueError(f"{value!r} is not a state (one of {', '.join(STATES)})")


def as_priority(value: str) -> Priority:
    """Return VALUE, a priority's name read from the database or a command, as a Priority."""
    for priority in PRIORITIES:
        if priority == value:
            return priority
    raise ValueError(f"{value!r} is not a priority (one of {', '.join(PRIORITIES)})")
