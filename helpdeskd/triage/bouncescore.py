"""How badly a recipient bounced, and Mailman's score of an address's bounces.

Pure: frozen dataclasses and arithmetic, no I/O, no DB. :mod:`helpdeskd.triage.bounces` reads a
report into :class:`BouncedRecipient` values; this module says what each one weighs and what it
does to the address's :class:`Standing`, so the processor can suspend an address that keeps
failing (DESIGN.md "Classification").

Hardness (:attr:`BouncedRecipient.hard`): a permanent failure is ``action: failed`` with a 5.x.x
status, or a 5xx SMTP code when there is no status. A full mailbox (X.2.2, a bare SMTP 552, or
"mailbox full"/"over quota" in the text) is *soft* even when RFC 3463 calls 5.2.2 permanent: it
is a state of the mailbox, not of the address, and most desks retry it. ``delayed`` is never
hard, and neither is ``failed`` with a 4.x.x status (the MTA gave up on a temporary problem).

A refusal of our mail as spam or by the receiving server's policy (:attr:`BouncedRecipient.policy`:
a 5.7.x status with words of spam, blocking or policy, or an NDR's well-known words for it) says
nothing about the customer's address and scores nothing.

Scoring is Mailman's (:func:`score`): a hard bounce weighs 1, a soft one 0.5, a policy refusal
or a delay 0; one bounce a day counts per address (the heaviest of that day); the score starts
again when the last scored bounce is more than ``stale_after_days`` old; at ``threshold`` the
address is suspended, and stays so until an admin lifts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, timedelta

# RFC 3463 enhanced status code; not part of a dotted quad or a longer number.
STATUS_CODE = re.compile(r"(?<![\w.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
# An SMTP reply code as it appears in diagnostics: "550 ...", "550-5.1.1", "#550", "said: 552".
SMTP_CODE = re.compile(r"(?<![\w.])([245]\d\d)(?=[ \-]|$)")
_MAILBOX_FULL = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:storage|its quota)|"
    r"insufficient (?:system )?storage",
    re.IGNORECASE,
)

HARD_WEIGHT = 1.0  # Mailman's bounce_score weights
SOFT_WEIGHT = 0.5
# The words of a refusal of our mail as spam or by policy, beside a 5.7.x status. "blocked" and
# "denied" say it of the sender: a 5.7.x status already says "security or policy".
_POLICY_WORDS = re.compile(
    r"spam|junk|unsolicited|bulk\s+mail|\bblock(?:ed|ing)?\b|block\s*-?list|black\s*-?list|"
    r"\blisted\b|\bdnsbl\b|\brbl\b|reputation|polic(?:y|ies)|content|filter|\bdmarc\b|\bspf\b|"
    r"\bdkim\b|authenticat|\bdenied\b|not\s+(?:authori[sz]ed|allowed|permitted|accepted)|"
    r"prohibited|refused|banned|virus|malware|phish|suspicious|\brelay",
    re.IGNORECASE,
)
# What only a spam or policy refusal says, whatever its status (or with none): Gmail's
# "likely unsolicited mail", Outlook.com's "on our block list", "blocked using Spamhaus",
# Yahoo's "[BL21] ... in Spamhaus's list", "rejected as spam", "poor reputation", DMARC.
_SPAM_REFUSAL = re.compile(
    r"\bspam\b|unsolicited\s+(?:mail|e-?mail|message|bulk)|\bjunk\s+(?:mail|e-?mail)|"
    r"spamhaus|spamcop|barracuda(?:central)?|\bsorbs\b|\bdnsbl\b|\brbl\b|"
    r"block\s*-?list(?:ed)?|black\s*-?list(?:ed)?|\bblocked\s+using\b|"
    r"\blisted\s+(?:at|on|in|by)\b|(?:poor|bad|low)\s+(?:ip\s+|sender\s+|domain\s+)?reputation|"
    r"\bdmarc\b|(?:rejected|refused|blocked)\s+(?:for|due\s+to|because\s+of)\s+"
    r"(?:policy|content|spam)|policy\s+(?:violation|rejection|reasons)|content\s+filter",
    re.IGNORECASE,
)
# A refusal that is about the address after all ("550 5.7.1 User unknown", a misused status).
_ADDRESS_PROBLEM = re.compile(
    r"\b(?:user|recipient|address|mailbox|account)\s+(?:unknown|not\s+found|does\s+not\s+exist|"
    r"disabled|inactive|deactivated)|\bno\s+such\s+(?:user|recipient|mailbox|address)|"
    r"\b(?:unknown|invalid)\s+(?:user|recipient|mailbox|address)\b|"
    r"not\s+listed\s+in\s+(?:the\s+)?(?:domino|public)",  # Domino and Notes
    re.IGNORECASE,
)


@dataclass(frozen=True)
class BouncedRecipient:
    address: str  # lower-cased; the original recipient when the DSN gives it, else the final
    action: str  # failed | delayed | delivered | relayed | expanded | unknown
    status: str  # RFC 3463 code, e.g. "5.1.1"; "" when unknown
    diagnostic: str  # one line, at most bounces.MAX_DIAGNOSTIC characters

    @property
    def hard(self) -> bool:
        """Say whether this address failed for good (see the module docstring for soft cases)."""
        if self.action != "failed" or _MAILBOX_FULL.search(self.diagnostic):
            return False
        if self.status:
            return self.status.startswith("5.") and self.status.split(".")[1:] != ["2", "2"]
        code = SMTP_CODE.search(self.diagnostic)
        return code is not None and code.group(1).startswith("5") and code.group(1) != "552"

    @property
    def policy(self) -> bool:
        """Say whether the receiving server refused our mail as spam or by its policy.

        A 5.7.x or 4.7.x status (RFC 3463's "security or policy") counts when its words say spam,
        blocking, reputation or policy, and not that the mailbox is unknown; without such a
        status, only the words no address problem uses (spam, a block list, reputation, DMARC).
        """
        text = self.diagnostic
        if _ADDRESS_PROBLEM.search(text):
            return False
        codes = (self.status, *STATUS_CODE.findall(text))
        if any(code[1:4] == ".7." for code in codes) and _POLICY_WORDS.search(text):
            return True
        return bool(_SPAM_REFUSAL.search(text))

    @property
    def weight(self) -> float:
        """What this bounce adds to the address's score: hard 1, soft 0.5, else 0."""
        if self.action != "failed" or self.policy:
            return 0.0
        return HARD_WEIGHT if self.hard else SOFT_WEIGHT

    @property
    def state(self) -> str:
        """One word for what happened: hard, policy, failed (soft), delayed, ..."""
        if self.action == "failed" and self.policy:
            return "policy"
        return "hard" if self.hard else self.action


@dataclass(frozen=True)
class Standing:
    """An address's bounce score as stored: the score, the day of the last scored bounce and
    what that day counted, what the bounce said, and whether the address is suspended."""

    score: float = 0.0
    last_on: date | None = None
    last_weight: float = 0.0
    reason: str | None = None
    suspended: bool = False

    def stale(self, today: date, stale_after_days: int) -> bool:
        """Say whether the score has gone stale by TODAY: no bounce scored for too long."""
        return self.last_on is None or (today - self.last_on).days > stale_after_days

    def current(self, today: date, stale_after_days: int) -> float:
        """The score as it stands on TODAY: 0 once it is stale (the next bounce starts anew)."""
        return 0.0 if self.stale(today, stale_after_days) else self.score

    def resets_on(self, stale_after_days: int) -> date | None:
        """The first day the score is stale, unless another bounce is scored before it."""
        if self.last_on is None:
            return None
        return self.last_on + timedelta(days=stale_after_days + 1)


def score(
    standing: Standing,
    bounce: BouncedRecipient,
    day: date,
    *,
    threshold: float,
    stale_after_days: int,
) -> Standing:
    """Score BOUNCE, received on DAY, against an address whose score is STANDING (Mailman's
    way, see the module docstring). A bounce that weighs nothing leaves it as it is."""
    weight = bounce.weight
    if weight <= 0:
        return standing
    reason = f"{bounce.state} {bounce.status} {bounce.diagnostic}".replace("  ", " ").strip()
    if standing.last_on is None or standing.stale(day, stale_after_days):
        scored = Standing(weight, day, weight, reason, standing.suspended)
    elif day <= standing.last_on:  # that day is scored already: its heaviest bounce counts
        if weight <= standing.last_weight:
            return standing
        added = standing.score + weight - standing.last_weight
        scored = replace(standing, score=added, last_weight=weight, reason=reason)
    else:
        scored = Standing(standing.score + weight, day, weight, reason, standing.suspended)
    return replace(scored, suspended=scored.suspended or scored.score >= threshold)
