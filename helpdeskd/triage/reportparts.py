"""Read a report's MIME leniently: its leaf parts, their decoded bodies and text, its report-type.

Pure: no I/O. Bounces and feedback reports are written by every kind of mail system, many of them
carelessly (a byte-order mark before the headers, a mangled Content-Type, a pre-parsed
message/* part whose body is still base64), so :mod:`helpdeskd.triage.bounces` reads their parts
through these functions rather than the stdlib's strict views.
"""

from __future__ import annotations

import base64
import binascii
import io
import quopri
import re
from collections.abc import Iterator
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value

from helpdeskd.triage.ndr import RETURNED_COPY

MAX_TEXT = 200_000  # characters of notice text searched; bounds the regex work on huge mail
MAX_PARTS = 500


def parse(raw: bytes) -> Message:
    """Parse RAW as compat32 does, which keeps what a careless mail system wrote."""
    # A byte-order mark before the first header (mimekit's feedback-report) would turn the
    # whole header block into body text.
    return BytesParser(policy=compat32).parsebytes(raw.removeprefix(b"\xef\xbb\xbf"))


def leaves(msg: Message) -> Iterator[Message]:
    """Yield the leaf parts in order, not descending into attached messages.

    A bounce forwarded as an attachment is the forwarder's mail, not a bounce; and message/*
    parts (the returned mail, the delivery-status blocks) are read as wholes.
    """
    stack = [msg]
    count = 0
    while stack and count < MAX_PARTS:
        part = stack.pop()
        count += 1
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
        else:
            yield part


def attached_leaves(parts: list[Message]) -> Iterator[Message]:
    """Yield the leaf parts of the messages attached to PARTS, one level down."""
    for part in parts:
        payload = part.get_payload()
        if part.get_content_type() == "message/rfc822" and isinstance(payload, list):
            for inner in payload:
                if isinstance(inner, Message):
                    yield from leaves(inner)


def report_type(msg: Message) -> str:
    """Return the report-type of a multipart/report mail, lower-cased; "" for other mail."""
    if msg.get_content_type() != "multipart/report":
        return ""
    value = msg.get_param("report-type")
    if value is None:
        return ""
    return str(collapse_rfc2231_value(value) if isinstance(value, tuple) else value).lower()


def header(msg: Message | None, name: str) -> str:
    """Return every NAME field of MSG joined by spaces; "" for none (or no MSG)."""
    if msg is None:
        return ""
    # compat32 hands back an email.header.Header when the value has undecodable bytes.
    return " ".join(str(value) for value in msg.get_all(name, []))


def _flatten(part: Message) -> bytes:
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=compat32).flatten(part)
    return out.getvalue()


def part_bytes(part: Message) -> bytes:
    """Return the decoded body of a part, also for message/* parts the stdlib pre-parsed."""
    payload = part.get_payload()
    if isinstance(payload, list):
        flat = _flatten(part).replace(b"\r\n", b"\n")
        body = flat.split(b"\n\n", 1)[1] if b"\n\n" in flat else b""
        encoding = header(part, "Content-Transfer-Encoding").strip().lower()
        if encoding == "base64":
            try:
                return base64.b64decode(body, validate=False)
            except (binascii.Error, ValueError):
                return body
        if encoding == "quoted-printable":
            return quopri.decodestring(body)
        return body
    decoded = part.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else b""


def decode(data: bytes, charset: str | None) -> str:
    """Decode DATA from CHARSET (UTF-8 when unknown), bad bytes replaced, with \\n line ends."""
    try:
        text = data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def part_text(part: Message) -> str:
    """Return PART's body as text."""
    return decode(part_bytes(part), part.get_content_charset())


def text_of(parts: list[Message]) -> str:
    """Return the human-readable text of the mail PARTS (its leaves) make: its text/plain parts,
    else its HTML."""
    plain = [part_text(p) for p in parts if _plain(p)]
    if any(text.strip() for text in plain):
        return "\n\n".join(plain)[:MAX_TEXT]
    html = [part_text(p) for p in parts if p.get_content_type() == "text/html"]
    text = "\n".join(html)[:MAX_TEXT]
    text = re.sub(r"(?i)<br\s*/?>|</(?:p|div|tr|li|h\d)>", "\n", text)
    text = re.sub(r"<[^<>]*>", " ", text)
    return (
        text.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ").replace("&amp;", "&")
    )


def _plain(part: Message) -> bool:
    """Say whether PART is plain text: also when its Content-Type is mangled ("text/plain
    charset=…" on two lines) or it claims to be multipart with no boundary to split on."""
    if part.get_content_maintype() == "multipart":
        return isinstance(part.get_payload(), str)
    return (part.get_content_type().split() or [""])[0] == "text/plain"


def notice_text(parts: list[Message]) -> str:
    """Return the NDR's own words: its text up to the returned copy of our mail."""
    text = text_of(parts)
    cut = RETURNED_COPY.search(text)
    return text[: cut.start()] if cut else text
