"""Signed reply tokens carried in plus-addresses: ``support+HD-1042.k1.7q2m9xa4@acme.test``.

The token names the ticket (and, for an agent's copy, the agent: ``HD-1042.a3.k1.…``), the key
that signed it and a truncated HMAC-SHA256. Every configured key verifies; the first one signs,
so a rotated-out key stays valid while it is still listed.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass

from helpdeskd.config.secrets import Secret

MAC_CHARS = 10  # base32 characters: 50 bits
_MAC_BYTES = -(-MAC_CHARS // 8) * 5  # base32 makes 8 characters of each 5 bytes
_TOKEN = re.compile(
    r"^(?P<ref>[A-Za-z0-9]+-\d+)(?:\.a(?P<agent>\d+))?\.(?P<kid>[A-Za-z0-9]+)\.(?P<mac>[a-z2-7]+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ReplyToken:
    ref: str  # "HD-1042"
    agent_id: int | None = None


def _mac(key: Secret, payload: str, purpose: str) -> str:
    digest = hmac.digest(key.reveal().encode(), f"{purpose}:{payload}".encode(), "sha256")
    # Base32 writes each 5 bytes as 8 characters: the first 10 bytes give the first 16.
    return base64.b32encode(digest[:_MAC_BYTES]).decode().lower()[:MAC_CHARS]


def sign_reply(keys: tuple[tuple[str, Secret], ...], token: ReplyToken) -> str:
    """Return the signed token text for TOKEN with the first key."""
    kid, key = keys[0]
    payload = (
        token.ref.upper() if token.agent_id is None else f"{token.ref.upper()}.a{token.agent_id}"
    )
    return f"{payload}.{kid}.{_mac(key, payload, 'reply')}"


def verify_reply(keys: tuple[tuple[str, Secret], ...], text: str) -> ReplyToken | None:
    """Return the token TEXT stands for if its MAC verifies with any configured key."""
    match = _TOKEN.match(text.strip())
    if not match:
        return None
    payload = match["ref"].upper()
    if match["agent"] is not None:
        payload += f".a{match['agent']}"
    # Mail systems may change the case of an address (parsing lower-cases it), so the key id
    # and the base32 MAC compare without case, like the ref.
    for kid, key in keys:
        if kid.lower() == match["kid"].lower() and hmac.compare_digest(
            _mac(key, payload, "reply"), match["mac"].lower()
        ):
            agent = int(match["agent"]) if match["agent"] is not None else None
            return ReplyToken(ref=match["ref"].upper(), agent_id=agent)
    return None


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
