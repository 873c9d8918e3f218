"""SASL XOAUTH2 and OAUTHBEARER (RFC 7628): what the client sends, and the server's error.

Both IMAP and SMTP use these. The initial response is returned raw; the protocol code base64s
it. When the server refuses the token it sends a challenge (IMAP ``+ …``, SMTP ``334 …``) that
holds a base64 JSON error; the client must answer it (:data:`FAILED_SASL_RESPONSE`) to get the
final NO or 535, or the exchange hangs.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

MECHANISMS = ("xoauth2", "oauthbearer")

# What the client sends in answer to an error challenge: XOAUTH2 an empty line, OAUTHBEARER
# a single %x01 (RFC 7628 section 3.2.3).
FAILED_SASL_RESPONSE: dict[str, bytes] = {"xoauth2": b"", "oauthbearer": b"\x01"}

_ERROR_KEYS = ("status", "schemes", "scope")
_MAX_ERROR = 200


def sasl_initial_response(mechanism: str, user: str, token: str, *, host: str, port: int) -> bytes:
    """Return the raw (not base64) initial client response of MECHANISM for USER and TOKEN.

    XOAUTH2: ``user=USER^Aauth=Bearer TOKEN^A^A``. OAUTHBEARER: the GS2 header with USER as the
    authorization identity, then ``host``, ``port`` and ``auth`` (RFC 7628 section 3.1).
    """
    for what, value in (("user", user), ("token", token), ("host", host)):
        if "\x01" in value or "\r" in value or "\n" in value:
            raise ValueError(f"SASL {what} must not hold control characters")
    if mechanism == "xoauth2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    if mechanism == "oauthbearer":
        # RFC 5801 saslname: "," and "=" are escaped as =2C and =3D.
        name = user.replace("=", "=3D").replace(",", "=2C")
        return f"n,a={name},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()
    raise ValueError(f"unknown SASL mechanism {mechanism!r}: use xoauth2 or oauthbearer")


def sasl_error(challenge: bytes) -> str:
    """Return the server's error challenge as one line: ``status 401, schemes bearer, scope …``.

    CHALLENGE is what followed ``+ `` or ``334 `` (base64 JSON, RFC 7628 section 3.2.2). What
    is not base64 or not JSON is shown as printable text, cut short; never raises.
    """
    raw = challenge.strip()
    try:
        decoded = base64.b64decode(raw, validate=True) if raw else b""
    except (binascii.Error, ValueError):
        decoded = raw
    text = decoded.decode("utf-8", "replace")
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [f"{key} {_printable(str(data[key]))}" for key in _ERROR_KEYS if key in data]
        if parts:
            return _cut(", ".join(parts))
    line = _printable(text)
    return _cut(line) if line else "no details"


def _printable(text: str) -> str:
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"
