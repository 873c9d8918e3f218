"""Read and write the IMAP wire: pure parsers of responses, encoders of command arguments.

Nothing here does I/O or imports aioimaplib; the functions take the response lines as
aioimaplib hands them over. In a FETCH response the ``N FETCH (UID u BODY[] {n}`` line is
``bytes``, the literal follows as a separate ``bytearray`` and the rest of the response (``)``)
as ``bytes`` again; the tagged status text is the last line. :func:`parse_fetch` relies on
exactly that.

:class:`ImapError`, the base of the IMAP exceptions, lives here: the lowest layer that raises
it (a SELECT response without UIDVALIDITY). The adapter adds its subclass
:class:`helpdeskd.imap.client.ImapDisconnected`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from helpdeskd.errors import HelpdeskError


class ImapError(HelpdeskError):
    """An IMAP command failed, or the server lacks what the configuration needs."""


@dataclass(frozen=True)
class SelectInfo:
    """What a SELECT response says about the folder."""

    uidvalidity: int
    exists: int | None
    permanent_flags: tuple[str, ...] | None  # None: no PERMANENTFLAGS (all flags permanent)
    read_only: bool

    def keeps_keyword(self, keyword: str) -> bool:
        """Say whether the folder stores KEYWORD permanently (RFC 3501 section 7.1)."""
        if self.permanent_flags is None:
            return True
        return "\\*" in self.permanent_flags or keyword in self.permanent_flags


@dataclass(frozen=True)
class FetchRecord:
    """The items of one ``* N FETCH`` response that the watcher asks for."""

    uid: int
    size: int | None = None
    internal_date: str | None = None
    body: bytes | None = None


_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_PERMANENTFLAGS = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]")
_EXISTS_LINE = re.compile(rb"(\d+) EXISTS\b")
_FETCH_START = re.compile(rb"\d+ FETCH \(")
_FETCH_UID = re.compile(rb"[( ]UID (\d+)")
_FETCH_SIZE = re.compile(rb"[( ]RFC822\.SIZE (\d+)")
_FETCH_DATE = re.compile(rb'[( ]INTERNALDATE "([^"]*)"')
_FETCH_BODY_LITERAL = re.compile(rb"[( ]BODY\[\](?:<\d+>)? ~?\{(\d+)\}$")
_FETCH_BODY_QUOTED = re.compile(rb'[( ]BODY\[\](?:<\d+>)? "((?:[^"\\]|\\.)*)"')
_SEARCH_LINE = re.compile(rb"[0-9 ]*")


def is_exists(line: bytes | bytearray) -> bool:
    """Say whether LINE, an untagged response without its ``* ``, is ``N EXISTS``."""
    return _EXISTS_LINE.fullmatch(bytes(line)) is not None


def parse_select(lines: Sequence[bytes | bytearray]) -> SelectInfo:
    """Read UIDVALIDITY, EXISTS, PERMANENTFLAGS and the access mode from SELECT's lines."""
    uidvalidity: int | None = None
    exists: int | None = None
    flags: tuple[str, ...] | None = None
    for line in lines:
        line = bytes(line)
        if match := _UIDVALIDITY.search(line):
            uidvalidity = int(match.group(1))
        if match := _PERMANENTFLAGS.search(line):
            flags = tuple(match.group(1).decode("ascii", "replace").split())
        if match := _EXISTS_LINE.fullmatch(line):
            exists = int(match.group(1))
    if uidvalidity is None:
        raise ImapError("the SELECT response carries no UIDVALIDITY")
    read_only = bool(lines) and b"[READ-ONLY]" in bytes(lines[-1]).upper()
    return SelectInfo(uidvalidity, exists, flags, read_only)


def parse_search(lines: Sequence[bytes | bytearray]) -> list[int]:
    """Return the sorted UIDs of a UID SEARCH response (aioimaplib's lines, tag text last)."""
    uids: set[int] = set()
    for line in lines[:-1]:
        if isinstance(line, bytes) and _SEARCH_LINE.fullmatch(line):
            uids.update(int(n) for n in line.split())
    return sorted(uids)


def parse_fetch(lines: Sequence[bytes | bytearray]) -> dict[int, FetchRecord]:
    """Return the FETCH records by UID from aioimaplib's response lines.

    A response is a ``bytes`` line starting ``N FETCH (``, then for each literal a
    ``bytearray`` with its data and a ``bytes`` line with the rest of the response; the
    tagged status text comes last. Message data never goes through the line parser, so a body
    full of lines that look like IMAP responses cannot confuse it. Records without a UID
    (unsolicited flag updates) are skipped; two records for one UID are merged.
    """
    records: dict[int, FetchRecord] = {}
    text: list[bytes] = []
    body: bytes | None = None
    literal_is_body = False

    def finish() -> None:
        if not text:
            return
        joined = b"".join(text)
        uid = _FETCH_UID.search(joined)
        if uid is None:
            return
        size = _FETCH_SIZE.search(joined)
        date = _FETCH_DATE.search(joined)
        found_body = body
        if found_body is None and (quoted := _FETCH_BODY_QUOTED.search(joined)):
            found_body = re.sub(rb"\\(.)", rb"\1", quoted.group(1))
        record = FetchRecord(
            uid=int(uid.group(1)),
            size=int(size.group(1)) if size else None,
            internal_date=date.group(1).decode("ascii", "replace") if date else None,
            body=found_body,
        )
        old = records.get(record.uid)
        if old is not None:
            record = FetchRecord(
                uid=record.uid,
                size=record.size if record.size is not None else old.size,
                internal_date=record.internal_date or old.internal_date,
                body=record.body if record.body is not None else old.body,
            )
        records[record.uid] = record

    for line in lines[:-1]:
        if isinstance(line, bytearray):
            if literal_is_body:
                body = bytes(line)
            # the literal's place in the text, so that items after it still parse
            text.append(b'""')
            literal_is_body = False
            continue
        if _FETCH_START.match(line):
            finish()
            text, body = [], None
        elif not text:
            continue  # not part of a FETCH response
        text.append(line)
        literal_is_body = bool(_FETCH_BODY_LITERAL.search(line))
    finish()
    return records


def uid_set(uids: Iterable[int]) -> str:
    """Return UIDS as a compact IMAP sequence set: ``1:3,7,9:10``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev > start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev > start else str(start))
    return ",".join(parts)


def encode_mailbox(name: str) -> str:
    """Return NAME as a quoted IMAP mailbox argument, in modified UTF-7 (RFC 3501 5.1.3).

    aioimaplib sends arguments as they are: every mailbox name goes through here.
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + data.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if "\x20" <= char <= "\x7e":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    encoded = "".join(out)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'
