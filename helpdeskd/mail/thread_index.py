"""Outlook's Thread-Index: the conversation root of one, and the index of a reply in it."""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import UTC, datetime


def thread_index_root(value: str | None) -> str | None:
    """Return the conversation root of an Outlook Thread-Index (its first 22 bytes), base64."""
    if not value:
        return None
    try:
        data = base64.b64decode(value.strip() + "==", validate=False)
    except (binascii.Error, ValueError):
        return None
    if len(data) < 22:
        return None
    return base64.b64encode(data[:22]).decode()


_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def thread_index_child(root: str, now: datetime) -> str | None:
    """Return an Outlook Thread-Index that continues the conversation ROOT (base64, 22 bytes).

    A reply's index is its conversation's 22-byte header plus a 5-byte block: the time since
    the header's FILETIME in 2**18 units (31 bits after a code bit), then random bits. Outlook
    groups mail by the header, so every reply we send stays in the customer's conversation.
    """
    try:
        header = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(header) != 22:
        return None
    started = int.from_bytes(header[1:6] + b"\0\0\0", "big")  # the high 40 bits of a FILETIME
    current = int((now - _FILETIME_EPOCH).total_seconds() * 10_000_000)
    delta = max(0, current - started) >> 18
    block = ((delta & 0x7FFFFFFF) << 8) | secrets.randbits(8)
    return base64.b64encode(header + block.to_bytes(5, "big")).decode()
