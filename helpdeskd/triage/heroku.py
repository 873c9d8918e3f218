"""Recognise tickets that Heroku's add-on support desk forwards by email (pure, no I/O).

Heroku does not publish the format of its desk's notifications, so nothing here is built in:
the desk is recognised by its sender addresses (from config only), a subject pattern that yields
the Heroku ticket number and a body pattern that yields the original requester, and, where an
``authserv_id`` is configured, a DKIM signature aligned with the From domain in our own trusted
Authentication-Results. See docs/heroku.md for how an operator adapts ``[heroku]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from helpdeskd.config.settings import BARE_ADDRESS, HerokuConfig
from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.parse import ParsedMessage

# The requester line sits in the desk's header block; scanning a bounded prefix keeps an
# operator's backtracking regex from chewing on half a megabyte of quoted history.
REQUESTER_SCAN_CHARS = 32 * 1024
MAX_TICKET_CHARS = 100  # tickets.external_ref is String(100)
MAX_NAME_CHARS = 200

_CTL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class HerokuTicket:
    ticket_number: str
    requester_email: str | None
    requester_name: str | None
    subject: str  # the desk's subject, intact: our replies keep it


@dataclass(frozen=True)
class Recognition:
    """The answer to "is this the desk's mail?", with the reason shown in events and logs."""

    ticket: HerokuTicket | None
    reason: str
    # True when the sender is a desk address but the mail was refused anyway (one From too
    # many, DKIM missing or misaligned): a spoofing attempt worth a security_event.
    suspicious: bool = False


# --- recognition ---------------------------------------------------------------------------


def _clean(value: str) -> str:
    return " ".join(_CTL.sub(" ", value).split())


def _requester(text: str, config: HerokuConfig) -> tuple[str | None, str | None]:
    match = re.search(config.requester_pattern, text[:REQUESTER_SCAN_CHARS])
    if match is None:
        return None, None
    raw_email = match.group("email") or ""
    email = raw_email.strip().strip("<>").lower().removeprefix("mailto:")
    ours = {*config.senders, config.reply_address, config.agent_address}
    if not BARE_ADDRESS.fullmatch(email) or email in ours:
        return None, None
    name: str | None = None
    if "name" in match.re.groupindex and match.group("name"):
        name = _clean(match.group("name")).strip("\"' ")[:MAX_NAME_CHARS] or None
    return email, name


def examine(parsed: ParsedMessage, config: HerokuConfig) -> Recognition:
    """Decide whether PARSED is a notification from the Heroku desk, and why (not)."""
    if not config.senders:
        return Recognition(None, "heroku: not configured")
    if parsed.sender not in config.senders:
        return Recognition(None, "heroku: sender is not a desk address")
    # Two From mailboxes (or two From fields) could pair a desk address with anyone's.
    if len(parsed.from_) != 1 or len(parsed.header_all("from")) != 1:
        return Recognition(None, "heroku: not exactly one From mailbox", suspicious=True)
    match = re.search(config.subject_pattern, parsed.subject)
    ticket = (match.group("ticket") or "").strip() if match else ""
    if not ticket or len(ticket) > MAX_TICKET_CHARS:
        return Recognition(None, "heroku: subject does not match subject_pattern")
    if config.authserv_id is not None and not dkim_aligned(parsed, config.authserv_id):
        return Recognition(
            None,
            f"heroku: no aligned dkim=pass in Authentication-Results from {config.authserv_id}",
            suspicious=True,
        )
    email, name = _requester(parsed.full_text, config)
    return Recognition(
        HerokuTicket(
            ticket_number=ticket,
            requester_email=email,
            requester_name=name,
            subject=parsed.subject,
        ),
        f"heroku: ticket #{ticket} from {parsed.sender}",
    )


def recognise(parsed: ParsedMessage, config: HerokuConfig) -> HerokuTicket | None:
    """Return the Heroku ticket PARSED notifies about, or None when it is not the desk's mail."""
    return examine(parsed, config).ticket
