"""Decide which ticket a mail belongs to (DESIGN.md "Threading", first match wins).

The processor looks up candidates in the database; :func:`resolve_thread` is the pure decision
over them, so every branch is table-tested without I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Reply and forward prefixes in the languages our customers write in, as mail clients emit them
# (some abbreviate with a period: French "Réf. :").
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|antw|antwort|sv|vs|ref|réf|rif|odp|res|r|wg|fw|fwd|fwd?|tr|enc|doorst|"
    r"vb|vl|rv|ynt|atb|παρ|σχετ|ответ|отв|回复|回覆|转发|轉寄|答复|件名|返信|転送|답장|전달|"
    r"رد|إعادة توجيه|השב|הועבר)\.?\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_LIST_TAG = re.compile(r"^\s*\[[^\]]{1,40}\]\s*")


def ticket_tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[\s*({re.escape(prefix)}-\d+)\s*\]", re.IGNORECASE)


def subject_refs(subject: str, prefix: str) -> list[str]:
    """Return the ticket refs tagged in SUBJECT, like ``[HD-1042]``, upper-cased."""
    return [m.upper() for m in ticket_tag_pattern(prefix).findall(subject)]


def normalize_subject(subject: str, prefix: str = "HD") -> str:
    """Strip reply/forward prefixes (in many languages) and our ticket tags from SUBJECT."""
    text = ticket_tag_pattern(prefix).sub(" ", subject)
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX.sub("", text)
        text = text.strip()
    text = " ".join(text.split())
    return text


def tag_subject(subject: str, ref: str, prefix: str) -> str:
    """Return SUBJECT carrying the tag ``[REF]`` exactly once."""
    if ref.upper() in subject_refs(subject, prefix):
        return subject
    return f"[{ref}] {subject}".strip() if subject else f"[{ref}]"


def thread_index_root(value: str | None) -> str | None:
    """Return the conversation root of an Outlook Thread-Index (its first 22 bytes), base64."""
    if not value:
        return None
    try:
        data = base64.b64decode(value.strip() + "==", validate=False)
    except (binascii.Error, ValueError):
        return None
    if len(data) < 22:
        return None
    return base64.b64encode(data[:22]).decode()


@dataclass(frozen=True)
class TicketView:
    id: int
    ref: str
    state: str
    participants: frozenset[str]
    closed_at: datetime | None = None


@dataclass(frozen=True)
class Candidates:
    """What the database knows that could thread this mail, one per DESIGN step."""

    by_token: TicketView | None = None
    by_reference: TicketView | None = None
    by_thread_index: TicketView | None = None
    by_subject: TicketView | None = None
    by_external_ref: TicketView | None = None


@dataclass(frozen=True)
class ThreadMatch:
    ticket: TicketView | None
    step: str  # token | references | thread_index | subject | external_ref | new
    reason: str

    @property
    def trusted(self) -> bool:
        """Whether new participants may join from this mail (never by subject tag alone)."""
        return self.step in ("token", "references", "thread_index")


def resolve_thread(sender: str, is_agent: bool, candidates: Candidates) -> ThreadMatch:
    """Pick the ticket for a mail from SENDER, in DESIGN.md's order."""
    if candidates.by_token is not None:
        return ThreadMatch(candidates.by_token, "token", "signed reply token")
    if candidates.by_reference is not None:
        return ThreadMatch(candidates.by_reference, "references", "In-Reply-To/References")
    if candidates.by_thread_index is not None:
        return ThreadMatch(candidates.by_thread_index, "thread_index", "Outlook Thread-Index")
    tagged = candidates.by_subject
    if tagged is not None:
        if is_agent or sender in tagged.participants:
            return ThreadMatch(tagged, "subject", f"subject tag [{tagged.ref}]")
        return ThreadMatch(
            None, "new", f"subject tag [{tagged.ref}] from a non-participant: new ticket"
        )
    if candidates.by_external_ref is not None:
        return ThreadMatch(candidates.by_external_ref, "external_ref", "Heroku ticket number")
    return ThreadMatch(None, "new", "no thread found")


def reopen_action(state: str, closed_at: datetime | None, now: datetime, window: timedelta) -> str:
    """Return what a reply does to a ticket in STATE: ``append``, ``reopen`` or ``follow_up``."""
    if state == "solved":
        return "reopen"
    if state == "closed":
        if closed_at is not None and now - closed_at <= window:
            return "reopen"
        return "follow_up"
    return "append"


_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def thread_index_child(root: str, now: datetime) -> str | None:
    """Return an Outlook Thread-Index that continues the conversation ROOT (base64, 22 bytes).

    A reply's index is its conversation's 22-byte header plus a 5-byte block: the time since
    the header's FILETIME in 2**18 units (31 bits after a code bit), then random bits. Outlook
    groups mail by the header, so every reply we send stays in the customer's conversation.
    """
    try:
        header = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(header) != 22:
        return None
    started = int.from_bytes(header[1:6] + b"\0\0\0", "big")  # the high 40 bits of a FILETIME
    current = int((now - _FILETIME_EPOCH).total_seconds() * 10_000_000)
    delta = max(0, current - started) >> 18
    block = ((delta & 0x7FFFFFFF) << 8) | secrets.randbits(8)
    return base64.b64encode(header + block.to_bytes(5, "big")).decode()
