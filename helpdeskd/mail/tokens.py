"""Signed reply tokens carried in plus-addresses: ``support+HD-1042.k1.7q2m9xa4pq@acme.test``.

A customer's token names the ticket, the key that signed it and a truncated HMAC-SHA256. An
agent's copy also names the agent and the day it was issued (``HD-1042.a3.d2530.k1.…``: days
since :data:`TOKEN_EPOCH`), so that it can expire; the one a confirmation request carries names
the held reply it confirms too (``HD-1042.a3.d2530.cq4zk7m.k1.…``). The MAC covers all of it.
Every configured key verifies; the first one signs, so a rotated-out key stays valid while it
is still listed, and a token signed with a key no longer listed fails.

Unsubscribe tokens (``unsubscribe+17-maintenance.k1.…``) and VERP return paths
(``bounces+r5310.…``: one recipient of one sent mail, :class:`BounceToken`) are signed alike,
each with a purpose of its own in the MAC, so that no kind of token passes for another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from helpdeskd.config.secrets import Secret

MAC_CHARS = 10  # base32 characters: 50 bits
_MAC_BYTES = -(-MAC_CHARS // 8) * 5  # base32 makes 8 characters of each 5 bytes
TOKEN_EPOCH = date(2020, 1, 1)  # issue days count from here: four digits until 2047
# Agent tokens signed before they carried an issue day count as issued on the day this release
# was made, so they expire with the tokens issued that day (DESIGN "Agents by email").
UNDATED_AGENT_TOKENS = date(2026, 12, 5)
CODE_CHARS = 6  # base32 characters of a confirmation code: 30 bits, plenty within one ticket
CONFIRM_DAYS = 7  # a confirmation request's reply address expires sooner than the others
_CODE = re.compile(rf"[a-z2-7]{{{CODE_CHARS}}}")
_TOKEN = re.compile(
    r"^(?P<ref>[A-Za-z0-9]+-\d+)"
    rf"(?:\.a(?P<agent>\d+)(?:\.d(?P<day>\d{{1,5}})(?:\.c(?P<code>[a-z2-7]{{{CODE_CHARS}}}))?)?)?"
    r"\.(?P<kid>[A-Za-z0-9]+)\.(?P<mac>[a-z2-7]+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ReplyToken:
    """What a reply address names: the ticket, and for an agent's copy the agent and more.

    ``issued`` is the day an agent's token was signed (None: signed before tokens carried one);
    ``confirms`` the code of the held reply a confirmation request's address confirms.
    """

    ref: str  # "HD-1042"
    agent_id: int | None = None
    issued: date | None = None
    confirms: str | None = None

    def __post_init__(self) -> None:
        if self.agent_id is None and (self.issued is not None or self.confirms is not None):
            raise ValueError("only an agent's token carries an issue day or a confirmation")
        if self.confirms is not None and (
            self.issued is None or not _CODE.fullmatch(self.confirms)
        ):
            raise ValueError(
                f"a confirmation needs an issue day and a code of {CODE_CHARS} base32 characters"
            )
        if self.issued is not None and self.issued < TOKEN_EPOCH:
            raise ValueError(f"an issue day is on or after {TOKEN_EPOCH}")


def _mac(key: Secret, payload: str, purpose: str) -> str:
    digest = hmac.digest(key.reveal().encode(), f"{purpose}:{payload}".encode(), "sha256")
    # Base32 writes each 5 bytes as 8 characters: the first 10 bytes give the first 16.
    return base64.b32encode(digest[:_MAC_BYTES]).decode().lower()[:MAC_CHARS]


def _payload(token: ReplyToken) -> str:
    """Return the signed part of TOKEN's text: everything but the key id and the MAC."""
    payload = token.ref.upper()
    if token.agent_id is not None:
        payload += f".a{token.agent_id}"
    if token.issued is not None:
        payload += f".d{(token.issued - TOKEN_EPOCH).days}"
    if token.confirms is not None:
        payload += f".c{token.confirms}"
    return payload


def sign_reply(keys: tuple[tuple[str, Secret], ...], token: ReplyToken) -> str:
    """Return the signed token text for TOKEN with the first key."""
    kid, key = keys[0]
    payload = _payload(token)
    return f"{payload}.{kid}.{_mac(key, payload, 'reply')}"


def verify_reply(keys: tuple[tuple[str, Secret], ...], text: str) -> ReplyToken | None:
    """Return the token TEXT stands for if its MAC verifies with any configured key.

    Whether an agent's token is still fresh is :func:`agent_token_expired`'s question.
    """
    match = _TOKEN.match(text.strip())
    if not match:
        return None
    # The payload is rebuilt from the text as written (``a03`` is not ``a3``), so only the
    # exact text that was signed verifies.
    payload = match["ref"].upper()
    if match["agent"] is not None:
        payload += f".a{match['agent']}"
    if match["day"] is not None:
        payload += f".d{match['day']}"
    if match["code"] is not None:
        payload += f".c{match['code'].lower()}"
    # Mail systems may change the case of an address (parsing lower-cases it), so the key id
    # and the base32 MAC compare without case, like the ref.
    for kid, key in keys:
        if kid.lower() == match["kid"].lower() and hmac.compare_digest(
            _mac(key, payload, "reply"), match["mac"].lower()
        ):
            return ReplyToken(
                ref=match["ref"].upper(),
                agent_id=int(match["agent"]) if match["agent"] is not None else None,
                issued=TOKEN_EPOCH + timedelta(days=int(match["day"]))
                if match["day"] is not None
                else None,
                confirms=match["code"].lower() if match["code"] is not None else None,
            )
    return None


def confirmation_code(message_id: str) -> str:
    """Return the code naming the held reply MESSAGE_ID in its confirmation request's address.

    Not a secret: the token's MAC, which covers it, is what only the agent's mailbox receives.
    """
    digest = hashlib.sha256(message_id.encode()).digest()
    return base64.b32encode(digest[:5]).decode().lower()[:CODE_CHARS]


def issue_day(now: datetime) -> date:
    """Return the issue day of a token signed at NOW (the UTC date)."""
    return now.astimezone(UTC).date()


def token_days(token: ReplyToken, agent_token_days: int) -> int:
    """Return how many days after its issue day agent TOKEN is valid.

    AGENT_TOKEN_DAYS is the configured lifetime; a confirmation request's address lasts at most
    :data:`CONFIRM_DAYS`: a held reply is confirmed soon or sent again.
    """
    if token.confirms is not None:
        return min(CONFIRM_DAYS, agent_token_days)
    return agent_token_days


def agent_token_expired(token: ReplyToken, now: datetime, agent_token_days: int) -> bool:
    """Tell whether TOKEN, an agent's, is past its :func:`token_days` at NOW.

    A customer's token never expires: it only files mail into its ticket. An agent's token from
    before issue days counts as issued on :data:`UNDATED_AGENT_TOKENS`. One issued later than
    NOW (a clock set wrong on another daemon) is not expired: only our keys could sign it.
    """
    if token.agent_id is None:
        return False
    issued = token.issued or UNDATED_AGENT_TOKENS
    return (issue_day(now) - issued).days > token_days(token, agent_token_days)


def reply_address(
    support_address: str, keys: tuple[tuple[str, Secret], ...], token: ReplyToken
) -> str:
    local, _, domain = support_address.rpartition("@")
    return f"{local}+{sign_reply(keys, token)}@{domain}"


def tokens_in(addresses: list[str], support_address: str) -> list[str]:
    """Return the plus-parts of ADDRESSES that are sub-addresses of the support address."""
    local, _, domain = support_address.lower().rpartition("@")
    found = []
    for address in addresses:
        a_local, _, a_domain = address.rpartition("@")
        if a_domain.lower() != domain:
            continue
        base, plus, tag = a_local.partition("+")
        if plus and base.lower() == local and tag:
            found.append(tag)
    return found


# --- unsubscribe tokens ----------------------------------------------------------------------

# Short enough for "unsubscribe+TOKEN" to stay within a 64-octet local part (RFC 5321).
_UNSUB = re.compile(
    r"^(?P<contact>\d+)-(?P<category>[A-Za-z0-9_]+|\*)\.(?P<kid>[A-Za-z0-9]+)\.(?P<mac>[a-z2-7]+)$"
)
ALL_CATEGORIES = "*"  # a token for the preferences page: every category


@dataclass(frozen=True)
class UnsubscribeToken:
    contact_id: int
    category: str  # a notice category, or ALL_CATEGORIES


def sign_unsubscribe(keys: tuple[tuple[str, Secret], ...], token: UnsubscribeToken) -> str:
    """Return a URL- and address-safe token naming a contact and a category, signed."""
    kid, key = keys[0]
    payload = f"{token.contact_id}-{token.category}"
    return f"{payload}.{kid}.{_mac(key, payload, 'unsubscribe')}"


def verify_unsubscribe(keys: tuple[tuple[str, Secret], ...], text: str) -> UnsubscribeToken | None:
    """Return the contact and category TEXT names, if any configured key signed it."""
    match = _UNSUB.match(text.strip())
    if not match:
        return None
    payload = f"{match['contact']}-{match['category']}"
    for kid, key in keys:
        if kid.lower() == match["kid"].lower() and hmac.compare_digest(
            _mac(key, payload, "unsubscribe"), match["mac"].lower()
        ):
            return UnsubscribeToken(int(match["contact"]), match["category"])
    return None


# --- VERP return paths ----------------------------------------------------------------------

# A return path per recipient of each sent mail (VERP): ``bounces+r<recipient id>.<mac>@domain``
# names one ``outbox_recipients`` row, so a bounce sent to it is about that send to that
# address, whatever the report's wording. Only that recipient's own mail carries it: one who
# received the same mail (a Cc) holds a token for himself, never for the others.
#
# Mail sent before return paths were per recipient carries ``bounces+<outbox id>.<mac>@domain``,
# naming the outbox row. It still verifies, but it proves only which send a bounce is about:
# every recipient of that send received it (see helpdeskd.ingest.lookup for what it is trusted
# with). Each form has its own purpose in the MAC, so neither can pass for the other.
_BOUNCE = re.compile(r"^(?P<kind>r?)(?P<id>\d{1,18})\.(?P<mac>[a-z2-7]+)$", re.IGNORECASE)
_BOUNCE_PURPOSE = {"recipient": "bounce-recipient", "outbox": "bounce"}
_BOUNCE_PREFIX = {"recipient": "r", "outbox": ""}


@dataclass(frozen=True)
class BounceToken:
    """What a VERP return path names: one recipient of a send (``kind = "recipient"``, ID is
    the ``outbox_recipients`` row), or, in the form of mail sent before return paths were per
    recipient, the send (``kind = "outbox"``, ID is the ``outbox`` row)."""

    kind: Literal["recipient", "outbox"]
    id: int


def _bounce_payload(kind: Literal["recipient", "outbox"], digits: str) -> str:
    return f"{_BOUNCE_PREFIX[kind]}{digits}"


def sign_bounce(keys: tuple[tuple[str, Secret], ...], token: BounceToken) -> str:
    """Return the VERP token text for TOKEN, signed with the first key."""
    payload = _bounce_payload(token.kind, str(token.id))
    return f"{payload}.{_mac(keys[0][1], payload, _BOUNCE_PURPOSE[token.kind])}"


def verify_bounce(keys: tuple[tuple[str, Secret], ...], text: str) -> BounceToken | None:
    """Return what a VERP token TEXT names, if any configured key signed it.

    The token carries no key id (it must stay short), so every key is tried.
    """
    match = _BOUNCE.match(text.strip())
    if not match:
        return None
    kind: Literal["recipient", "outbox"] = "recipient" if match["kind"] else "outbox"
    # Rebuilt from the digits as written: ``r012`` is not ``r12``, so only what was signed
    # verifies. Parsing may lower-case an address; the ``r`` and the MAC compare without case.
    payload = _bounce_payload(kind, match["id"])
    for _kid, key in keys:
        if hmac.compare_digest(_mac(key, payload, _BOUNCE_PURPOSE[kind]), match["mac"].lower()):
            return BounceToken(kind, int(match["id"]))
    return None


def bounce_address(
    return_address: str, keys: tuple[tuple[str, Secret], ...], recipient_id: int
) -> str:
    """Return the VERP return path for the recipient RECIPIENT_ID (an ``outbox_recipients``
    row) under RETURN_ADDRESS, whose local part (``bounces`` in ``bounces@acme.test``) takes
    ``+TOKEN``."""
    local, _, domain = return_address.rpartition("@")
    token = sign_bounce(keys, BounceToken("recipient", recipient_id))
    return f"{local}+{token}@{domain}"
