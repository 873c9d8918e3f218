"""Mail-loop safety in one place: what we stamp on automatic mail, and when we never answer.

Both sides live here so that the marker we put on outgoing mail and the check that recognises it
coming back can never drift apart. The robot markers are one list (:func:`robot_marker`), read by
classification (an ``auto_reply``) and by the never-answer policy alike; the caps on automatic
answers and the flood breaker are here too, as functions of the counts the plan is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from helpdeskd.mail.authresults import dmarc_failed
from helpdeskd.mail.parse import ParsedMessage

NO_REPLY_LOCALS = re.compile(
    r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|donotreply|bounces?|"
    r"notifications?|auto-?reply|autoresponder)([+\-._].*)?$",
    re.IGNORECASE,
)
SPAM_VERDICTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("x-spam-flag", re.compile(r"^\s*yes\b", re.IGNORECASE)),
    ("x-spam-status", re.compile(r"^\s*yes\b", re.IGNORECASE)),
    ("x-spam", re.compile(r"^\s*(yes|true|spam)\b", re.IGNORECASE)),
    ("x-ms-exchange-organization-scl", re.compile(r"^\s*[5-9]\b")),
    ("x-forefront-antispam-report", re.compile(r"\bSFV:SPM\b")),
)


def auto_submitted(parsed: ParsedMessage) -> str:
    """Return the RFC 3834 Auto-Submitted keyword (its first token), "no" when absent."""
    value = (parsed.header("auto-submitted") or "no").strip().lower()
    return re.split(r"[\s;(]", value, maxsplit=1)[0] or "no"


def robot_marker(parsed: ParsedMessage) -> str | None:
    """Return the header that says a robot wrote PARSED (RFC 3834 and the common ones), or None."""
    auto = auto_submitted(parsed)
    if auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder"):
        if parsed.header(name) is not None:
            return f"{name} header"
    if (parsed.header("x-auto-response-suppress") or "").strip().lower() == "all":
        return "X-Auto-Response-Suppress: All"
    precedence = (parsed.header("precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    return None


def robot_sender(address: str) -> bool:
    """Whether ADDRESS is a robot's by its local part (mailer-daemon, postmaster, noreply …)."""
    return bool(address) and bool(NO_REPLY_LOCALS.match(address.partition("@")[0]))


def loop_marker(support_address: str) -> str:
    return f"helpdeskd; {support_address.lower()}"


def automatic_headers(support_address: str, kind: str) -> dict[str, str]:
    """Return the headers every automatic mail carries (RFC 3834 and the Microsoft ones).

    KIND is ``auto-replied`` for answers to a person's mail (acknowledgements) and
    ``auto-generated`` for everything we start ourselves (notices, reminders, alerts).
    """
    return {
        "Auto-Submitted": kind,
        "X-Auto-Response-Suppress": "OOF, AutoReply",
        "X-Loop": loop_marker(support_address),
        "Precedence": "bulk" if kind == "auto-generated" else "auto_reply",
    }


def has_our_loop(parsed: ParsedMessage, support_address: str) -> bool:
    marker = support_address.lower()
    return any(marker in value.lower() for value in parsed.header_all("x-loop"))


def spam_verdict(parsed: ParsedMessage) -> str | None:
    """Return the header that carries an upstream spam verdict, or None."""
    for name, pattern in SPAM_VERDICTS:
        for value in parsed.header_all(name):
            if pattern.search(value):
                return f"{name}: {value[:60]}"
    return None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def may_autorespond(
    parsed: ParsedMessage,
    *,
    support_address: str,
    own_addresses: frozenset[str],
    authserv_id: str | None = None,
) -> Verdict:
    """Decide whether automatic mail (an acknowledgement) may answer PARSED, and why not.

    The list is DESIGN.md's "never answer": RFC 3834 markers, a null return path, bulk and list
    mail, our own loop marker, robot senders, reports, our own addresses, failed DMARC in our
    trusted Authentication-Results, and upstream spam verdicts.
    """
    marker = robot_marker(parsed)
    if marker is not None:
        return Verdict(False, marker)
    return_path = parsed.header("return-path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return Verdict(False, "null return path")
    for name, _ in parsed.headers:
        if name.startswith("list-"):
            return Verdict(False, f"{name} header")
    if has_our_loop(parsed, support_address):
        return Verdict(False, "our X-Loop")
    sender = parsed.sender
    if not sender:
        return Verdict(False, "no sender address")
    if len(parsed.from_) != 1:
        return Verdict(False, "several From mailboxes")
    if robot_sender(sender):
        return Verdict(False, f"robot sender {sender}")
    if sender in own_addresses:
        return Verdict(False, "our own address")
    if parsed.content_type == "multipart/report":
        return Verdict(False, "multipart/report")
    if dmarc_failed(parsed, authserv_id):
        return Verdict(False, "dmarc=fail")
    verdict = spam_verdict(parsed)
    if verdict:
        return Verdict(False, f"spam verdict ({verdict})")
    return Verdict(True, "ok")


def autoreply_limit_reached(sent: int, limit: int) -> str | None:
    """Why no more automatic answers go to a sender who had SENT of them in 24 h, or None."""
    if sent >= limit:
        return f"autoreply_limit of {limit} per 24 h reached"
    return None


def flood(
    by_sender: int,
    by_ticket: int,
    *,
    limit: int,
    minutes: int,
    sender: str,
    ref: str,
    desk: bool = False,
) -> str | None:
    """Why automatic mail stops for SENDER or ticket REF (a flood breaker), or None.

    BY_SENDER and BY_TICKET count the inbound mail of the last MINUTES, this one included.
    Heroku's desk (DESK) writes for all its customers: only one of its tickets can flood.
    """
    if desk:
        by_sender = 0
    if by_sender <= limit and by_ticket <= limit:
        return None
    return f"flood: more than {limit} messages in {minutes} min from {sender}" + (
        "" if by_sender > limit else f" on {ref}"
    )
