"""Decide which ticket a mail belongs to (DESIGN.md "Threading", first match wins).

The processor looks up candidates in the database; :func:`resolve_thread` is the pure decision
over them, so every branch is table-tested without I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime

# Reply and forward prefixes in the languages our customers write in, as mail clients emit them
# (some abbreviate with a period: French "Réf. :").
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|antw|antwort|sv|vs|ref|réf|rif|odp|res|r|wg|fw|fwd|fwd?|tr|enc|doorst|"
    r"vb|vl|rv|ynt|atb|παρ|σχετ|ответ|отв|回复|回覆|转发|轉寄|答复|件名|返信|転送|답장|전달|"
    r"رد|إعادة توجيه|השב|הועבר)\.?\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_LIST_TAG = re.compile(r"^\s*\[[^\]]{1,40}\]\s*")


@functools.cache  # one prefix, asked for several times per mail
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
    linked: TicketView | None = None  # the ticket a stranger's mail referred to

    @property
    def trusted(self) -> bool:
        """Whether new participants may join from this mail (never by subject tag alone)."""
        return self.step in ("token", "references", "thread_index")


def resolve_thread(
    sender: str,
    is_agent: bool,
    candidates: Candidates,
    referrers: frozenset[str] = frozenset(),
) -> ThreadMatch:
    """Pick the ticket for a mail from SENDER, in DESIGN.md's order.

    A Message-ID is not a secret: References and Thread-Index file a mail into a ticket only
    when its sender is on the ticket, is an agent, or is among REFERRERS (the recipients of our
    mail it answers, or the addresses on the mail that remembered the ID). A stranger's mail
    starts a new ticket, linked to the one it referred to.
    """
    if candidates.by_token is not None:
        return ThreadMatch(candidates.by_token, "token", "signed reply token")
    for step, found, label, allowed in (
        ("references", candidates.by_reference, "In-Reply-To/References", referrers),
        ("thread_index", candidates.by_thread_index, "Outlook Thread-Index", frozenset()),
    ):
        if found is None:
            continue
        if is_agent or sender in found.participants or sender in allowed:
            return ThreadMatch(found, step, label)
        return ThreadMatch(
            None,
            "new",
            f"{label} of {found.ref} from someone not on it: new ticket",
            linked=found,
        )
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
