"""Mail from an agent's address: is it the agent's own reply, or a customer's mail forwarded?

An agent's reply is taken only when it came to that agent's own signed token address for the
ticket (and, with ``agent_auth = "token+dkim"``, our trusted Authentication-Results shows an
aligned DKIM pass), from exactly one From mailbox. A forwarded customer mail names its original
sender in the forward's header block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

from helpdeskd.config.settings import ServiceConfig
from helpdeskd.mail.authresults import dkim_aligned
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.mail.tokens import tokens_in, verify_reply

_FORWARD_MARKER = re.compile(
    r"^-{2,}\s*(forwarded message|original message|weitergeleitete nachricht|"
    r"message transféré|mensaje reenviado)\s*-{2,}\s*$|^begin forwarded message:\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_FORWARD_FROM = re.compile(r"^\s*(?:from|von|de)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


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
    authenticated: bool
    reason: str


def authenticate(
    parsed: ParsedMessage, agent_id: int, ticket_ref: str | None, service: ServiceConfig
) -> Verdict:
    """Decide whether PARSED is agent AGENT_ID's own reply to TICKET_REF (DESIGN "Agents")."""
    if len(parsed.from_) != 1:
        return Verdict(False, "several From mailboxes")
    tokens = [
        verify_reply(service.secret_keys, text)
        for text in tokens_in(list(parsed.recipients), service.support_address)
    ]
    mine = [t for t in tokens if t is not None and t.agent_id == agent_id]
    if not mine:
        if any(t is not None for t in tokens):
            return Verdict(False, "sent to a reply address that is not this agent's")
        return Verdict(False, "not sent to the agent's own reply address")
    if ticket_ref is not None and all(t.ref != ticket_ref for t in mine):
        return Verdict(False, "reply address is for another ticket")
    wants_dkim = service.agent_auth == "token+dkim"
    if wants_dkim and not (service.authserv_id and dkim_aligned(parsed, service.authserv_id)):
        return Verdict(False, "no aligned DKIM pass in our Authentication-Results")
    return Verdict(True, "signed token" + (" and DKIM" if "dkim" in service.agent_auth else ""))


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
