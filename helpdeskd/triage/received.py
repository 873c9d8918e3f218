"""What was received and what became of it: the plain data both paths of the store share.

:class:`Incoming` is one received mail, :class:`Outcome` what the store did with it; the helpers
read a message's sender and ticket columns and spell ticket references. The per-message path
(:mod:`helpdeskd.ingest.batch`) and the fast lane (:mod:`helpdeskd.ingest.fastlane`) both use them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from helpdeskd.config.settings import Config
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.mail.thread_index import thread_index_root
from helpdeskd.vocab import OUTCOMES


@dataclass(frozen=True)
class Incoming:
    """One received mail: where it came from and its bytes.

    An oversize mail has no bytes in memory: they are in a spool file at PATH (or, when the
    watcher could not keep them, nowhere, and the mail is quarantined with its size).
    """

    source: str
    uid: int
    raw: bytes | None
    size: int
    uidvalidity: int = 0
    path: str | None = None

    @property
    def oversize(self) -> bool:
        return self.raw is None


@dataclass(frozen=True)
class Outcome:
    source: str
    message_id: str | None
    outcome: str
    ticket: str | None
    reason: str

    def __post_init__(self) -> None:
        # `ingest --json` promises these outcomes and no others (DESIGN.md).
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")

    def as_json(self) -> dict[str, str | None]:
        return {
            "source": self.source,
            "message_id": self.message_id,
            "outcome": self.outcome,
            "ticket": self.ticket,
            "reason": self.reason,
        }


def ticket_ref(config: Config, ticket_id: int) -> str:
    return f"{config.service.ticket_prefix}-{ticket_id}"


def ref_to_id(config: Config, ref: str) -> int | None:
    prefix, _, number = ref.upper().rpartition("-")
    if prefix != config.service.ticket_prefix or not number.isdigit():
        return None
    return int(number)


_BARE_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


def with_fallback_sender(parsed: ParsedMessage) -> ParsedMessage:
    """Give mail whose From holds no usable mailbox the sender other headers name.

    Broken clients write ``From: Big Bug bb@bug.com`` or leave From out; the mail is still a
    customer's. The bare address in From, then Sender, Reply-To and Return-Path are used, in
    that order. Mail with none of them has nobody to answer and goes to quarantine.
    """
    if parsed.from_:
        return parsed
    for name in ("from", "sender", "reply-to", "return-path"):
        for value in parsed.header_all(name):
            match = _BARE_ADDRESS.search(value)
            if match and len(match.group(0)) <= 320:
                return replace(parsed, from_=((("", match.group(0).lower())),))
    return parsed


def inbound_message(
    parsed: ParsedMessage, kind: str, internal: bool, digest: str | None = None
) -> dict[str, Any]:
    """The columns of the ticket Message that stores received mail PARSED (but its ticket)."""
    return {
        "digest": digest,
        "direction": "in",
        "kind": kind,
        "message_id": parsed.message_id,
        "in_reply_to": parsed.in_reply_to[0] if parsed.in_reply_to else None,
        "references": list(parsed.references),
        "thread_index": thread_index_root(parsed.thread_index),
        "from_addr": parsed.sender,
        "from_name": parsed.sender_name or None,
        "to": list(parsed.to),
        "cc": list(parsed.cc),
        "subject": parsed.subject,
        "text": parsed.text,
        "full_text": parsed.full_text,
        "attachments": [
            {"name": a.name, "type": a.type, "size": a.size, "sha256": a.sha256}
            for a in parsed.attachments
        ],
        "internal": internal,
    }


def raw_fields(item: Incoming, message_id: str | None) -> dict[str, Any]:
    """The columns of ITEM's raw_messages row that say what was received and where."""
    data = item.raw
    digest = hashlib.sha256(data).hexdigest() if data is not None else ""
    if data is None and item.path:
        digest = Path(item.path).stem  # spool files are named by their SHA-256
    return {
        "source": item.source,
        "uidvalidity": item.uidvalidity,
        "uid": item.uid,
        "sha256": digest,
        "size": item.size,
        "data": data,
        "path": item.path,
        "message_id": message_id,
    }
