"""Mail from an agent's address: is it the agent's own reply, or a customer's mail forwarded?

An agent's reply is taken only when it came to that agent's own signed token address for the
ticket, issued within ``agent_token_days`` (and, with ``agent_auth = "token+dkim"``, our
trusted Authentication-Results shows an aligned DKIM pass), from exactly one From mailbox. A
forwarded customer mail names its original sender in the forward's header block. Notices to an
agent about held mail are rate-limited here too (:func:`held_notice`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage

from helpdeskd.clock import system_clock
from helpdeskd.config.settings import ServiceConfig
from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.mail.tokens import (
    ReplyToken,
    agent_token_expired,
    token_days,
    tokens_in,
    verify_reply,
)

_FORWARD_MARKER = re.compile(
    r"^-{2,}\s*(forwarded message|original message|weitergeleitete nachricht|"
    r"message transféré|mensaje reenviado)\s*-{2,}\s*$|^begin forwarded message:\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_FORWARD_FROM = re.compile(r"^\s*(?:from|von|de)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
HELD_NOTICE_PERIOD = timedelta(hours=1)  # at most one notice about held mail per agent
SUMMARY_LINES = 10  # held mails listed one by one in a notice's summary


def forwarded_sender(text: str) -> tuple[str, str] | None:
    """Return (name, address) of the original sender in a forwarded mail's text, if any."""
    marker = _FORWARD_MARKER.search(text)
    if marker is None:
        return None
    match = _FORWARD_FROM.search(text, marker.end())
    if match is None:
        return None
    value = match.group(1).strip()
    address = _ADDRESS.search(value)
    if address is None:
        return None
    name = value[: address.start()].strip(" <\"'[(*")
    return name.strip(), address.group(0).lower()


@dataclass(frozen=True)
class Verdict:
    """Whether an agent's mail authenticates, why, and what else it proves.

    ``strong``: our trusted Authentication-Results shows an aligned DKIM pass, the proof a
    command reaching beyond the token's ticket needs (:mod:`helpdeskd.triage.agent_reply`).
    ``token``: the agent's verified token the mail came to (its ``confirms`` names the held reply
    a confirmation request's address confirms).
    """

    authenticated: bool
    reason: str
    strong: bool = False
    token: ReplyToken | None = None


def authenticate(
    parsed: ParsedMessage,
    agent_id: int,
    ticket_ref: str | None,
    service: ServiceConfig,
    now: datetime | None = None,
) -> Verdict:
    """Decide whether PARSED is agent AGENT_ID's own reply to TICKET_REF (DESIGN "Agents").

    The token must be this agent's, for this ticket, signed by a key still configured, and not
    expired at NOW (``agent_token_days``; a confirmation request's address lasts at most
    :data:`~helpdeskd.mail.tokens.CONFIRM_DAYS`). NOW is the decision's time; without it, the
    system clock's.
    """
    if len(parsed.from_) != 1:
        return Verdict(False, "several From mailboxes")
    if now is None:
        now = system_clock()
    tokens = [
        verify_reply(service.secret_keys, text)
        for text in tokens_in(list(parsed.recipients), service.support_address)
    ]
    mine = [t for t in tokens if t is not None and t.agent_id == agent_id]
    if not mine:
        if any(t is not None for t in tokens):
            return Verdict(False, "sent to a reply address that is not this agent's")
        return Verdict(False, "not sent to the agent's own reply address")
    if ticket_ref is not None:
        mine = [t for t in mine if t.ref == ticket_ref]
        if not mine:
            return Verdict(False, "reply address is for another ticket")
    days = service.agent_token_days
    fresh = [t for t in mine if not agent_token_expired(t, now, days)]
    if not fresh:
        lasts = token_days(mine[0], days)
        return Verdict(False, f"the reply address has expired (reply addresses last {lasts} days)")
    strong = bool(service.authserv_id) and dkim_aligned(parsed, service.authserv_id or "")
    if service.agent_auth == "token+dkim" and not strong:
        return Verdict(False, "no aligned DKIM pass in our Authentication-Results")
    return Verdict(
        True, "signed token" + (" and DKIM" if strong else ""), strong=strong, token=fresh[0]
    )


def attachments_of(raw: bytes | None) -> tuple[tuple[str, str, bytes], ...]:
    """Return the attachments of RAW as (name, content type, bytes), for carrying them over."""
    if not raw:
        return ()
    msg = message_from_bytes(raw, policy=policy.default)
    if not isinstance(msg, EmailMessage):
        return ()
    found = []
    for part in msg.iter_attachments():
        name = part.get_filename()
        if not name:
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            found.append((name, part.get_content_type(), data))
    return tuple(found)


# --- telling an agent about held mail -----------------------------------------------------


@dataclass(frozen=True)
class HeldMail:
    """One of an agent's mails held without a notice of its own: when, on which ticket, why."""

    at: datetime
    ticket: str  # the ticket's ref
    reason: str


@dataclass(frozen=True)
class HeldNotices:
    """What the desk knows of the notices an agent got about held mail (the lookup gathers it).

    ``last_told``: when the agent was last mailed about held mail (None: never, or too long
    ago to matter); ``untold``: how many of the agent's mails were held since then without a
    notice; ``recent``: the latest of those, newest last (a few are enough for a summary).
    """

    last_told: datetime | None = None
    untold: int = 0
    recent: tuple[HeldMail, ...] = ()


@dataclass(frozen=True)
class HeldNotice:
    """Whether to mail the agent about the mail held now, and the summary lines to add."""

    send: bool
    summary: tuple[str, ...] = ()


def held_notice(
    notices: HeldNotices, now: datetime, period: timedelta = HELD_NOTICE_PERIOD
) -> HeldNotice:
    """Decide whether the agent hears now of a held mail: at most one notice per PERIOD.

    A forged mail costs its sender nothing, so a flood of them must not become a flood of
    notices: within PERIOD of the last notice the mail is only recorded, and the next notice
    sums up what was held in between. A last notice later than NOW (clocks of two daemons)
    counts as just sent.
    """
    if notices.last_told is not None and now - notices.last_told < period:
        return HeldNotice(False)
    if not notices.untold:
        return HeldNotice(True)
    shown = notices.recent[-SUMMARY_LINES:]
    since = f" since {_utc(notices.last_told)}" if notices.last_told else ""
    minutes = round(period.total_seconds() / 60)
    summary = [
        "",
        f"{notices.untold} more mails from your address were held{since} without a notice"
        f" each (you get at most one every {minutes} minutes):",
        *(f"  - {_utc(m.at)}, {m.ticket}: {m.reason}" for m in shown),
    ]
    if notices.untold > len(shown):
        summary.append(f"  - and {notices.untold - len(shown)} earlier")
    return HeldNotice(True, tuple(summary))


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
