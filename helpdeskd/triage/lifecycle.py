"""Change a ticket's state, tags, Cc list and merges by one set of rules, whoever asks.

Intake (a reply reopens a ticket), agents' commands, routing rules and time rules all change
tickets; each asks here what the change comes to, so a ticket solved by ``#status solved`` and
one solved by a time rule look the same afterwards. Pure: values in, values out — no database,
no clock (the caller passes ``now``), no mail.

The rules:

- **State.** ``solved`` stamps ``solved_at``; ``closed`` stamps ``closed_at`` and keeps when it
  was solved; an open state (``new``, ``open``, ``pending``) clears both. Changing a ticket to the
  state it is in stamps it again: ``#status solved`` twice means solved now.
- **Reply to a finished ticket** (DESIGN "Threading"): a reply to a solved ticket, or a closed
  one within the reopen window, reopens it; a later one starts a follow-up ticket.
- **Tags.** The ticket's order is kept, removals go first, new tags are appended once: adding a
  tag the ticket has changes nothing.
- **Merge.** A ticket goes into another that exists, is not itself, was not merged away, and has
  the same requester unless forced; the merged ticket is closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, assert_never

from helpdeskd.vocab import State

ReopenAction = Literal["append", "reopen", "follow_up"]


@dataclass(frozen=True)
class Status:
    """A ticket's state and the moments it was last solved and closed."""

    state: State
    solved_at: datetime | None = None
    closed_at: datetime | None = None


def change_state(status: Status, to: State, now: datetime) -> Status:
    """Return STATUS moved to state TO at NOW, stamping or clearing solved_at and closed_at."""
    match to:
        case "solved":
            return Status("solved", solved_at=now, closed_at=None)
        case "closed":
            return Status("closed", solved_at=status.solved_at, closed_at=now)
        case "new" | "open" | "pending":
            return Status(to)
    assert_never(to)


def reopen(status: Status, now: datetime) -> Status:
    """Return STATUS reopened at NOW by a reply: open, neither solved nor closed."""
    return change_state(status, "open", now)


def reopen_action(
    state: str, closed_at: datetime | None, now: datetime, window: timedelta
) -> ReopenAction:
    """Return what a reply does to a ticket in STATE: ``append``, ``reopen`` or ``follow_up``."""
    if state == "solved":
        return "reopen"
    if state == "closed":
        if closed_at is not None and now - closed_at <= window:
            return "reopen"
        return "follow_up"
    return "append"


def edit_tags(
    tags: Iterable[str], add: Iterable[str] = (), remove: Iterable[str] = ()
) -> list[str]:
    """Return TAGS without those in REMOVE, then each tag of ADD not yet there, appended once."""
    removed = set(remove)
    edited = [tag for tag in dict.fromkeys(tags) if tag not in removed]
    for tag in add:
        if tag not in edited:
            edited.append(tag)
    return edited


def signed(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split signed ENTRIES (``+billing``, ``-refund``) into what to add and what to remove."""
    add: list[str] = []
    remove: list[str] = []
    for entry in entries:
        (remove if entry.startswith("-") else add).append(entry[1:])
    return tuple(add), tuple(remove)


@dataclass(frozen=True)
class CcEdit:
    """Addresses to add to a ticket as Cc participants and to take off it (lower-cased)."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def cc_edit(entries: Sequence[str]) -> CcEdit:
    """Return the Cc edit that signed address ENTRIES (``+bob@x.org``, ``-carol@x.org``) make."""
    add, remove = signed(entries)
    return CcEdit(
        add=tuple(a.lower() for a in add),
        remove=tuple(a.lower() for a in remove),
    )


def cc_check(edit: CcEdit, requester: str) -> str | None:
    """Return why EDIT cannot be made on a ticket whose requester is REQUESTER, or None."""
    if requester.lower() in edit.remove:
        return "#cc: the requester cannot be removed"
    return None


@dataclass(frozen=True)
class MergeTarget:
    """The ticket another is to be merged into, as far as a merge needs to know."""

    id: int
    requester_id: int
    merged_into_id: int | None


def merge_check(
    ticket_id: int,
    requester_id: int,
    target_ref: str,
    target: MergeTarget | None,
    *,
    force: bool,
) -> str | None:
    """Return why ticket TICKET_ID cannot be merged into TARGET (spelled TARGET_REF), or None.

    TARGET is None when there is no such ticket. Tickets of two requesters merge only when
    FORCE is set: the other requester would see the conversation.
    """
    if target is None:
        return f"#merge: there is no ticket {target_ref}"
    if target.id == ticket_id:
        return "#merge: a ticket cannot be merged into itself"
    if target.merged_into_id is not None:
        return f"#merge: {target_ref} was itself merged into another ticket"
    if target.requester_id != requester_id and not force:
        return (
            f"#merge: {target_ref} has another requester; write '#merge {target_ref} force' "
            "to merge anyway"
        )
    return None


def merged(status: Status, now: datetime) -> Status:
    """Return the status of a ticket merged into another at NOW: closed."""
    return change_state(status, "closed", now)
