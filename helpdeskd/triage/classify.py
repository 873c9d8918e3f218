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
from helpdeskd.triage.loops import has_our_loop, robot_marker, robot_sender, spam_verdict

BOUNCE_SUBJECTS = re.compile(
    r"^\s*(undeliverable|undelivered mail returned to sender|delivery status notification "
    r"\((failure|delay)\)|mail delivery failed|returned mail|failure notice|delivery failure|"
    r"mail delivery (subsystem|system)|message delivery failure|nicht zustellbar|"
    r"non remis|unzustellbar|delivery has failed|warning: could not send message)",
    re.IGNORECASE,
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


def _bounce(parsed: ParsedMessage, ctx: ClassifyContext) -> str | None:
    report = _report_type(parsed)
    if report == "delivery-status":
        return "RFC 3464 delivery status report"
    local = parsed.sender.partition("@")[0]
    robot = bool(local) and re.match(r"^(mailer-daemon|postmaster)\b", local, re.I)
    if (robot or not parsed.sender) and BOUNCE_SUBJECTS.search(parsed.subject):
        return f"non-delivery report: {parsed.subject[:60]}"
    # mail-parser lists few message/* parts as attachments; the top-level part types have them.
    part_types = {a.type for a in parsed.attachments} | set(parsed.part_types)
    if (
        robot
        and report is None
        and part_types & {"message/delivery-status", "message/rfc822", "text/rfc822-headers"}
    ):
        return "non-delivery report with returned message"
    return_path = parsed.header("return-path")
    if (
        return_path is not None
        and return_path.strip() in ("<>", "")
        and BOUNCE_SUBJECTS.search(parsed.subject)
    ):
        return "null sender non-delivery report"
    if parsed.header("x-failed-recipients"):
        return "X-Failed-Recipients"
    return None


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
    domain = ctx.support_address.rpartition("@")[2].lower()
    for address in parsed.recipients:
        local, _, a_domain = address.rpartition("@")
        if a_domain == domain and local.lower().startswith("unsubscribe+"):
            return "mail to an unsubscribe address"
    return None


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
    # A From with several mailboxes is never treated as an agent's.
    if len(parsed.from_) == 1 and parsed.sender in ctx.agent_addresses:
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
