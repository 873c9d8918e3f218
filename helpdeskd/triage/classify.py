"""Classify a parsed mail before threading: what kind of mail is this?

Runs for every sender, agents included, so an agent's out-of-office is an ``auto_reply`` and never
reaches a customer. The checks are ordered data, like a Mailman chain: the first that says yes
decides, and the reason travels with the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from helpdeskd.config.settings import HerokuConfig
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.triage.heroku import recognise
from helpdeskd.triage.loops import (
    auto_submitted,
    has_our_loop,
    robot_marker,
    robot_sender,
    spam_verdict,
)
from helpdeskd.triage.ndr import (
    mail_system,
    ndr_phrase,
    ndr_subject,
    notice_only,
    rejection_reason,
    ses_bounce,
    system_mailbox,
)

# An autoresponder's phrase is the whole subject or is followed by a colon, a bracket or a date
# ("Automatic reply: …", "Abwesend bis …"); a customer's "Out of office hours support?" or "I am
# out of connections" is not one.
OUT_OF_OFFICE_SUBJECTS = re.compile(
    r"^\s*(?:(?:auto(?:matic|matische)?[ -]?(?:reply|response|antwort)|"
    r"out of (?:the )?office(?: auto-?reply)?|"
    r"abwesenheitsnotiz|abwesend|r[ée]ponse automatique|absence du bureau|"
    r"respuesta autom[aá]tica|fuera de la oficina|risposta automatica|fuori sede|"
    r"automatisch antwoord|afwezig|automatiskt svar|automatisk svar|fraværende|"
    r"automaattinen vastaus|odpowied[zź] automatyczna|resposta autom[aá]tica|"
    r"automatick[aá] odpov[eě]d|自動応答|自动回复|自動回覆|자동 응답|"
    r"on vacation|vacation reply)"
    r"\s*(?:$|[:：(\[<,.!\-–—]|(?:until|till|through|bis|jusqu|hasta|fino|tot)\b)"
    r"|(?:i am|i'm|i will be) (?:currently )?out of (?:the )?office)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ClassifyContext:
    support_address: str
    own_addresses: frozenset[str]
    agent_addresses: frozenset[str]
    blocked: tuple[str, ...] = ()  # addresses or @domains
    heroku: HerokuConfig | None = None


@dataclass(frozen=True)
class Classification:
    kind: str
    reason: str


REPORT_PARTS = {
    "message/delivery-status": "delivery-status",
    "message/global-delivery-status": "delivery-status",
    "message/disposition-notification": "disposition-notification",
    "message/global-disposition-notification": "disposition-notification",
    "message/feedback-report": "feedback-report",
}


def _report_type(parsed: ParsedMessage) -> str | None:
    if parsed.content_type in REPORT_PARTS:
        return REPORT_PARTS[parsed.content_type]  # the status part without its wrapper
    if parsed.content_type != "multipart/report":
        return None
    match = re.search(r'report-type\s*=\s*"?([\w-]+)', parsed.header("content-type") or "", re.I)
    declared = match.group(1).lower() if match else "unknown"
    if declared not in REPORT_PARTS.values():
        # A missing or garbled report-type: the machine-readable part says what it is.
        for part_type in parsed.part_types:
            if part_type in REPORT_PARTS:
                return REPORT_PARTS[part_type]
    return declared


# A copy of the mail that bounced, whole or its headers only.
RETURNED_PARTS = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global-headers",
        "message/partial",
    }
)


def _bounce(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    """Say why PARSED is a bounce: a status report, or an NDR by its sender and its words.

    Structure alone is enough (a delivery-status part, X-Failed-Recipients, Exchange's NDR
    marker, an Amazon SES bounce notification). Otherwise the words of an NDR count only when
    the mail system sent them (see :mod:`helpdeskd.triage.ndr`), or a robot did: an NDR that
    also says Auto-Submitted is a bounce, not an auto-reply (DESIGN.md "Classification").
    """
    report = _report_type(parsed)
    if report == "delivery-status":
        return "RFC 3464 delivery status report"
    part_types = {a.type for a in parsed.attachments} | set(parsed.part_types)
    if part_types & {"message/delivery-status", "message/global-delivery-status"}:
        return "delivery status part"
    if parsed.header("x-failed-recipients"):
        return "X-Failed-Recipients"
    if parsed.header("x-ms-exchange-message-is-ndr") is not None:
        return "X-MS-Exchange-Message-Is-Ndr"
    headers = frozenset(name for name, _ in parsed.headers)
    if ses_bounce(parsed.full_text, parsed.sender, headers):
        return "Amazon SES bounce notification"
    system = mail_system(parsed.header("from") or "", parsed.header("return-path"))
    # The NDR phrases are read only for mail a mail system or a robot sent: most mail is a
    # person's, and reading its whole text for them costs more than everything else here.
    if system is not None:
        words = ndr_phrase(parsed.full_text)
        # A feedback report or read receipt returns the mail too, and so may a person's mail
        # with a null return path: only a named mail system's returned copy is an NDR's.
        returned = (
            report is None and not system.startswith("null") and bool(part_types & RETURNED_PARTS)
        )
        evidence = (
            (f"subject {parsed.subject[:60]!r}" if ndr_subject(parsed.subject) else None)
            or (f"says {words!r}" if words else None)
            or (f"quotes {reason!r}" if (reason := rejection_reason(parsed.full_text)) else None)
            or ("returns the mail" if returned else None)
        )
        if evidence:
            return f"non-delivery report: {system}, {evidence}"
        return None
    if _robot(parsed) and (words := ndr_phrase(parsed.full_text)):
        return f"non-delivery report from a robot: says {words!r}"
    if notice_only(parsed.subject, parsed.full_text):
        return "non-delivery report: nothing but the notice"
    return None


def _robot(parsed: ParsedMessage) -> bool:
    """Say whether a robot wrote PARSED: RFC 3834, a no-reply sender, or bulk mail.

    ``Precedence: list`` and List-* headers are left out: a list relays people's mail.
    """
    precedence = (parsed.header("precedence") or "").strip().lower()
    return (
        auto_submitted(parsed) != "no"
        or robot_sender(parsed.sender)
        or precedence in ("bulk", "junk", "auto_reply")
        or any(parsed.header(name) is not None for name in ("x-autoreply", "x-autorespond"))
    )


def _report(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    report = _report_type(parsed)
    if report == "disposition-notification":
        return "MDN read receipt"
    if report == "feedback-report":
        return "ARF feedback report"
    return None


def _ignored(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    if has_our_loop(parsed, ctx.support_address):
        return "our X-Loop: our own mail came back"
    if parsed.sender in ctx.own_addresses:
        return f"from our own address {parsed.sender}"
    return None


def _unsubscribe(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    """Say why PARSED is an unsubscribe request: mail to ``unsubscribe+TOKEN@`` alone.

    With one of our support addresses also in To or Cc the mail is a person's to support, and
    the unsubscribe address only a side address: customer mail, and nobody is opted out
    (DESIGN.md "Classification").
    """
    domain = ctx.support_address.rpartition("@")[2].lower()
    if not any(
        a_domain == domain and local.lower().startswith("unsubscribe+")
        for local, _, a_domain in (address.rpartition("@") for address in parsed.recipients)
    ):
        return None
    if any(_support_address(address, ctx) for address in (*parsed.to, *parsed.cc)):
        return None
    return "mail to an unsubscribe address"


def _support_address(address: str, ctx: ClassifyContext) -> bool:
    """Say whether ADDRESS is one of ours that people write to: a mailbox, or support+TAG@."""
    if address in ctx.own_addresses:
        return True
    local, _, domain = address.rpartition("@")
    support_local, _, support_domain = ctx.support_address.rpartition("@")
    return domain == support_domain and local.partition("+")[0] == support_local


def _spam(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    verdict = spam_verdict(parsed)
    return f"upstream spam verdict: {verdict}" if verdict else None


def _auto_reply(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    marker = robot_marker(parsed)
    if marker is not None:
        return marker
    if OUT_OF_OFFICE_SUBJECTS.search(parsed.subject):
        return f"out-of-office subject: {parsed.subject[:60]}"
    if robot_sender(parsed.sender):
        return f"robot sender {parsed.sender}"
    if parsed.sender and system_mailbox(parsed.sender):
        return f"mail system sender {parsed.sender}"
    return None


def _blocked(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    sender = parsed.sender
    for entry in ctx.blocked:
        entry = entry.lower()
        if sender == entry or (entry.startswith("@") and sender.endswith(entry)):
            return f"sender blocked by {entry}"
    return None


def _heroku(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    if ctx.heroku is None:
        return None
    found = recognise(parsed, ctx.heroku)
    return f"Heroku support ticket #{found.ticket_number}" if found else None


def _agent(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    # A From with several mailboxes, readable or not, is never treated as an agent's.
    if parsed.single_sender and parsed.sender in ctx.agent_addresses:
        return f"from agent {parsed.sender}"
    return None


CHAIN: tuple[tuple[str, Callable[[ParsedMessage, ClassifyContext], str | None]], ...] = (
    ("ignored", _ignored),
    ("bounce", _bounce),
    ("report", _report),
    ("unsubscribe", _unsubscribe),
    ("blocked", _blocked),
    # Before the robot checks: the desk's notifications may well say Auto-Submitted.
    ("heroku_forward", _heroku),
    ("spam", _spam),
    ("auto_reply", _auto_reply),
    ("agent_reply", _agent),
)


def classify(parsed: ParsedMessage, ctx: ClassifyContext) -> Classification:
    """Return the kind of PARSED and the reason: the first check in CHAIN that holds."""
    for kind, check in CHAIN:
        reason = check(parsed, ctx)
        if reason:
            return Classification(kind, reason)
    return Classification("customer", "default")
