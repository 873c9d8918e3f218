"""Parse raw mail into a frozen, picklable :class:`ParsedMessage` (mail-parser underneath).

This runs in worker processes (see :mod:`helpdeskd.ingest.parsepool`), so it takes bytes and returns
plain data. mail-parser gives a header value as ``""``, a ``str`` or a ``list``; everything here
goes through :func:`_values` so callers only ever see tuples of strings.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import email.errors
import email.parser
import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header, decode_header
from email.utils import getaddresses, parseaddr
from typing import Any

import html2text
import mailparser
from mailparser.utils import decode_header_part, ported_string
from mailparser_reply import EmailReplyParser
from mailparser_reply.parser import EmailMessage as ReplySplitter

from helpdeskd.mail.attachments import expand_tnef, is_tnef

MAX_TEXT = 512 * 1024  # characters of text kept per message
# Longer cannot be real and would not fit the database columns (models.py): an address has at
# most 64 + 1 + 255 octets (RFC 5321 section 4.5.3.1), and a Message-ID must fit one 998-octet
# header line, also after "In-Reply-To: " when we answer it.
MAX_ADDRESS = 320
MAX_MSGID = 900
MAX_REFERENCES = 100  # Message-IDs read from In-Reply-To or References, per mail
REPLY_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "pl", "sv", "ja", "cs", "pt"]
_BARE_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
_MSGID = re.compile(r"<([^<>\s]+)>")
_ATOMS = re.compile(r'[^\s()<>@,;:\\"\[\]]+')  # dot-atom-ish: no specials, no quoting needed
# A domain is dot-separated labels (the stdlib cannot read "x." or "x..y" back) or a literal.
_DOMAIN = re.compile(r'[^\s()<>@,;:\\"\[\].]+(?:\.[^\s()<>@,;:\\"\[\].]+)*|\[[^\s\[\]\\]*\]')
# Control characters, and U+FFFD: what undecodable bytes became, so no address anyone has.
_NOT_IN_ADDRESS = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffd]")
# mail-parser logs a warning for every MIME part type it does not turn into text, and an error
# quoting the raw header (line breaks and all) for every encoded word it cannot decode: hostile
# text in the worker's stderr, and noise. Defects are counted in ParsedMessage instead.
logging.getLogger("mailparser").setLevel(logging.CRITICAL)
_CTL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SIGNATURE = re.compile(r"^-- $", re.MULTILINE)  # RFC 3676 section 4.3 signature separator
# The one-line signatures phones add, when they are the last thing the writer wrote.
_MOBILE_SIGNATURE = re.compile(
    r"\n\s*(sent from my \S.{0,40}|sent from (yahoo )?mail (for|on) \S.{0,30}|"
    r"get outlook for (ios|android)|von meinem \S.{0,30} gesendet|envoy[ée] de mon \S.{0,30}|"
    r"enviado desde mi \S.{0,30}|inviato da(l mio)? \S.{0,30}|verzonden (vanaf|met) \S.{0,30})"
    r"\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Attachment:
    name: str
    type: str
    size: int
    sha256: str
    data: bytes = field(default=b"", repr=False, compare=False)  # kept content-addressed


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str  # with angle brackets; synthesised when the mail has none
    has_message_id: bool
    from_: tuple[tuple[str, str], ...]  # (display name, lower-cased address)
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    delivered_to: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    thread_index: str | None
    content_type: str
    text: str  # what the writer added: quoted history and signature removed
    full_text: str
    html: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # (lower-cased name, value)
    defects: int = 0
    # Content types of the top-level MIME parts: what a report is when its report-type is not.
    part_types: tuple[str, ...] = ()
    # Authentication-Results as received: not RFC 2047-decoded, not cleaned. Our MTA copies a
    # sender's HELO and MAIL FROM into its own; decoded, they could spell results of their own.
    auth_results: tuple[str, ...] = field(default=(), repr=False)
    # Mailboxes From names as written, the ones no parser could read included.
    from_written: int = 1

    @property
    def single_sender(self) -> bool:
        """Whether From names exactly one mailbox: not two, and not one readable beside others
        that were dropped. Mail that is not single-sender is never taken as an agent's."""
        return len(self.from_) == 1 and self.from_written == 1

    def header(self, name: str) -> str | None:
        """Return the first value of header NAME, or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def sender(self) -> str:
        """The first From address, lower-cased ('' when there is none)."""
        return self.from_[0][1] if self.from_ else ""

    @property
    def sender_name(self) -> str:
        return self.from_[0][0] if self.from_ else ""

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc + self.delivered_to


def _unicode(value: str) -> str:
    """Return VALUE as valid Unicode: 8-bit header bytes arrive as lone surrogates.

    The stdlib keeps undecodable header bytes as surrogate escapes; a string holding one cannot
    be encoded, so the database driver (or any UTF-8 sink) would refuse the whole message.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:  # the raw bytes were most likely UTF-8 after all
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return value.encode("utf-8", "replace").decode("utf-8")


def _clean(value: str) -> str:
    """Drop control characters and fold line breaks: header values are one line."""
    return _CTL.sub("", " ".join(_unicode(value).split()))


def _raw_values(message: Any, name: str) -> list[str]:
    """Return every raw (undecoded) value of header NAME, as text."""
    try:
        values = message.get_all(name) or []
    except Exception:  # a header the stdlib cannot even split
        return []
    return [_header_text(v) for v in values if v is not None]


def _header_text(value: Any) -> str:
    """Return a raw header value as text; 8-bit bytes (RFC 6532 UTF-8) decoded as UTF-8.

    The stdlib (compat32) wraps a header with 8-bit bytes in a Header whose chunks keep them
    as surrogate escapes; str() of it would turn each byte into U+FFFD.
    """
    if isinstance(value, Header):
        parts = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, str):
                parts.append(chunk)
                continue
            try:
                parts.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                known = charset not in (None, "unknown-8bit")
                parts.append(chunk.decode(charset if known else "cp1252", "replace"))
        return "".join(parts)
    text: str = ported_string(value)
    return text


def _decode(value: str) -> str:
    try:
        return _clean(decode_header_part(value))
    except Exception:
        return _clean(value)


def is_address(text: str) -> bool:
    """Whether TEXT is an address we store and write into our own mail's headers.

    Neither part may hold specials, so no quoted local part ("a,b"@x): the stdlib (3.11) drops
    the quotes of a long one when it folds the header. A local part may have stray dots, as
    some mobile carriers' do ("foo..bar.@docomo.ne.jp"); a domain may not. Nothing may hold
    whitespace, control characters, U+FFFD or "=?". An encoded word is never part of an
    addr-spec (RFC 2047 section 5): one left in an address (a doubly encoded header) is hostile,
    and the stdlib would decode it when we write the address into our own mail's header, or
    misread even a broken one ("=?x?q?y" as a domain).
    """
    local, _, domain = text.rpartition("@")
    return (
        len(text) <= MAX_ADDRESS
        and _ATOMS.fullmatch(local) is not None
        and _DOMAIN.fullmatch(domain) is not None  # neither part matches whitespace
        and not _NOT_IN_ADDRESS.search(text)
        and "=?" not in text
    )


def _addresses(values: list[str]) -> tuple[tuple[str, str], ...]:
    # Split before decoding: an encoded display name may hold a comma ("Foo, Bar").
    found: list[tuple[str, str]] = []
    for value in values:
        try:
            pairs = getaddresses([_clean(value)])
        except (RecursionError, ValueError, IndexError):
            # The stdlib parser recurses per token; pathological headers get a plain scan.
            pairs = [("", m) for m in _BARE_ADDRESS.findall(value)]
        for name, address in pairs:
            address = address.strip().lower()
            if is_address(address):
                found.append((_decode(name), address))
    return tuple(found)


def _written(values: list[str]) -> int:
    """How many mailboxes VALUES (one per From header) name, readable or not."""
    count = 0
    for value in values:
        try:
            pairs = getaddresses([_clean(value)])
        except (RecursionError, ValueError, IndexError):
            pairs = [("", m) for m in _BARE_ADDRESS.findall(value)] or [("", value)]
        count += sum(1 for name, address in pairs if (name + address).strip())
    return count


def _msgids(values: list[str]) -> tuple[str, ...]:
    """The distinct Message-IDs of VALUES in order, in linear time, at most MAX_REFERENCES.

    Beyond the cap, the first (the thread's root) and the latest are kept: a header of a
    hundred thousand IDs is a stranger's attack, not a conversation.
    """
    ids: dict[str, None] = {}
    for value in values:
        for match in _MSGID.finditer(value):
            msgid = f"<{match.group(1)}>"
            if len(msgid) <= MAX_MSGID:
                ids[msgid] = None
    found = list(ids)
    if len(found) > MAX_REFERENCES:
        found = [found[0], *found[len(found) - MAX_REFERENCES + 1 :]]
    return tuple(found)


def _html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    return converter.handle(html).strip()


class _LatestReply(ReplySplitter):  # type: ignore[misc]  # the library has no types
    """mail-parser-reply's splitter, for the latest reply alone.

    ``parse_reply`` returns the first reply's ``content``, which keeps its signature and
    disclaimers; yet the library runs its signature and disclaimer patterns over every reply,
    and builds its patterns again for every message: most of its cost. This one skips that
    pass, and is given the header pattern built once (see :func:`_reply_headers`).
    """

    def _process_signatures_disclaimers(self, text: str) -> tuple[list[str], str]:
        return [], ""


@functools.cache
def _reply_headers() -> tuple[list[str], re.Pattern[str]]:
    """The library's languages and reply-header pattern for REPLY_LANGUAGES, built once."""
    languages = EmailReplyParser(languages=list(REPLY_LANGUAGES)).languages
    return languages, _LatestReply(text="", languages=list(languages)).HEADER_REGEX


def extract_reply(text: str) -> str:
    """Return what the writer added to TEXT: quoted history and signature removed."""
    if not text.strip():
        return ""
    body = _SIGNATURE.split(text, 1)[0]  # the library keeps signatures
    try:
        languages, headers = _reply_headers()
        splitter = _LatestReply(text=body, languages=list(languages), _header_regex=headers)
        reply = splitter.read().latest_reply
    except Exception:  # a heuristic library: never let it lose the message
        reply = ""
    reply = _MOBILE_SIGNATURE.sub("", (reply or "").strip()).strip()
    return reply if reply else text.strip()


def _attachments(items: list[dict[str, Any]]) -> tuple[tuple[Attachment, ...], str]:
    """Decode mail-parser's attachments, unpacking Outlook's winmail.dat (TNEF).

    Returns the attachments and the text body a TNEF blob carried (Outlook sometimes puts
    the whole message there), '' when none did.
    """
    found: list[Attachment] = []
    tnef_text = ""
    for item in items:
        attachment = _attachment(item)
        if is_tnef(attachment.name, attachment.type):
            files, text = expand_tnef(attachment.data)
            if files or text:
                tnef_text = tnef_text or text
                found.extend(
                    Attachment(
                        name=_clean(name)[:255],
                        type=ctype,
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        data=data,
                    )
                    for name, ctype, data in files
                )
                continue
        found.append(attachment)
    return tuple(found), tnef_text


def _attachment(item: dict[str, Any]) -> Attachment:
    payload = item.get("payload") or ""
    data: bytes
    if item.get("binary"):
        try:
            data = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            data = str(payload).encode("utf-8", "replace")
    else:
        data = str(payload).encode("utf-8", "replace")
    return Attachment(
        name=_clean(str(item.get("filename") or "unnamed"))[:255],
        type=_clean(str(item.get("mail_content_type") or "application/octet-stream")).lower(),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
    )


class _MailParser(mailparser.MailParser):  # type: ignore[misc]  # the library has no types
    """mail-parser's parser, building its ``mail`` and ``mail_partial`` dicts when first read.

    Its ``parse()`` ends by building both, every header decoded again, for every message: a
    quarter of its time, for dicts :func:`parse_message` never reads.
    """

    _mail: dict[str, Any] | None
    _mail_partial: dict[str, Any] | None

    def _make_mail(self, complete: bool = True) -> dict[str, Any] | None:
        return None  # see the properties below

    @property
    def mail(self) -> dict[str, Any]:
        if self._mail is None:
            self._mail = super()._make_mail()
        assert self._mail is not None
        return self._mail

    @property
    def mail_partial(self) -> dict[str, Any]:
        if self._mail_partial is None:
            self._mail_partial = super()._make_mail(complete=False)
        assert self._mail_partial is not None
        return self._mail_partial


def synthetic_message_id(sender: str, date: str, body: str) -> str:
    """Return a stable Message-ID for mail without one: a hash of From, Date and body."""
    digest = hashlib.sha256(f"{sender}\0{date}\0{body}".encode("utf-8", "replace")).hexdigest()
    return f"<{digest[:40]}@no-message-id.helpdeskd.invalid>"


def _too_deep(exc: BaseException) -> bool:
    """Whether EXC is a RecursionError, or mail-parser's wrapper around one."""
    return isinstance(exc, RecursionError) or isinstance(exc.__cause__, RecursionError)


# mail-parser decodes the display names in these itself, and raises HeaderParseError on a
# truncated base64 encoded word ("From: =?utf-8?B?A?= <a@b>"); parse_message reads them raw.
_MAILPARSER_ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to", "delivered-to")


def _recover(raw: bytes, too_deep: bool) -> tuple[Any, Any]:
    """Return (mail-parser's view, the headers) of RAW, which mail-parser could not parse.

    mail-parser sees RAW without the address headers it chokes on; when the MIME tree is too
    deep for the stdlib parser (it recurses once per level and exhausts the stack about 1000
    deep), it sees the top-level headers alone, with an empty body. The raw bytes are kept
    anyway; the headers still make a ticket, thread it and classify it, rather than losing the
    message to quarantine.
    """
    headers = email.parser.BytesHeaderParser().parsebytes(raw)
    if not too_deep:
        body = email.message_from_bytes(raw)
        for name in _MAILPARSER_ADDRESS_HEADERS:
            del body[name]
        body.defects.append(email.errors.MessageDefect("an address header mail-parser refused"))
        try:
            return _MailParser(body), headers
        except Exception as exc:
            if not _too_deep(exc):
                raise
    body = email.parser.BytesHeaderParser().parsebytes(raw)
    body.set_payload("")
    for name in _MAILPARSER_ADDRESS_HEADERS:
        del body[name]
    body.defects.append(email.errors.MessageDefect("MIME tree nested too deep to parse"))
    return _MailParser(body), headers


def _mailparser(raw: bytes) -> tuple[Any, Any]:
    """Return (mail-parser's view of RAW, the stdlib message whose headers parse_message reads)."""
    try:
        try:
            mail = _MailParser.from_bytes(raw)
        except AttributeError:
            # mail-parser reads the top-level epilogue when a part's start boundary is missing
            # and crashes when a truncated message has none: give it the empty epilogue it means.
            message = email.message_from_bytes(raw)
            if message.epilogue is not None or not message.is_multipart():
                raise
            message.epilogue = ""
            mail = _MailParser(message)
        return mail, mail.message
    except Exception as exc:  # RecursionError is an Exception; mail-parser wraps it in its own
        if _too_deep(exc):
            return _recover(raw, too_deep=True)
        if isinstance(exc, email.errors.HeaderParseError):
            return _recover(raw, too_deep=False)
        raise


def _part_types(message: Any) -> tuple[str, ...]:
    try:
        if not message.is_multipart():
            return ()
        parts = message.get_payload()[:50]
        return tuple(_clean(str(part.get_content_type())).lower() for part in parts)
    except Exception:
        return ()


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse RAW (a whole RFC 5322 message) into a ParsedMessage."""
    # Windows tools may save .eml files with a UTF-8 byte order mark, which hides the first header.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    mail, message = _mailparser(raw)
    header_pairs: list[tuple[str, str]] = []
    for key, value in message.items():
        header_pairs.append((str(key).lower(), _decode(_header_text(value))))

    def values(name: str) -> list[str]:
        return [value for key, value in header_pairs if key == name]

    def raw_values(name: str) -> list[str]:
        return _raw_values(message, name)

    text_plain = "\n".join(part for part in mail.text_plain if part)
    html_parts = [part for part in mail.text_html if part]
    html = "\n".join(html_parts) if html_parts else None
    full_text = text_plain.strip()
    if not full_text and html:
        # Only the HTML we keep (html2text takes ~2 s a megabyte): a 10 MB newsletter would
        # otherwise run past the worker's timeout for text that is cut to MAX_TEXT anyway.
        full_text = _html_to_text(html[:MAX_TEXT])
    attachments, tnef_text = _attachments(mail.attachments)
    if not full_text and tnef_text:
        full_text = tnef_text  # Outlook put the whole message into winmail.dat
    full_text = full_text.replace("\r\n", "\n").replace("\x00", "")[:MAX_TEXT]

    date: datetime | None = mail.date if isinstance(mail.date, datetime) else None
    if date is not None and date.tzinfo is None:
        date = date.replace(tzinfo=UTC)  # mail-parser reports dates in UTC, without tzinfo

    message_ids = _msgids(values("message-id"))
    from_values = raw_values("from")
    if message_ids:
        message_id, has_id = message_ids[0], True
    else:
        date_values = values("date")
        message_id = synthetic_message_id(",".join(from_values), ",".join(date_values), full_text)
        has_id = False

    content_type = "text/plain"
    with contextlib.suppress(Exception):
        content_type = _clean(mail.message.get_content_type() or content_type).lower()
    thread_indexes = values("thread-index")
    thread_index = thread_indexes[0] if thread_indexes else None
    subject = (values("subject") or [""])[0]
    return ParsedMessage(
        message_id=message_id,
        has_message_id=has_id,
        from_=_addresses(from_values),
        from_written=_written(from_values),
        to=tuple(a for _, a in _addresses(raw_values("to"))),
        cc=tuple(a for _, a in _addresses(raw_values("cc"))),
        reply_to=tuple(a for _, a in _addresses(raw_values("reply-to"))),
        delivered_to=tuple(
            a for _, a in _addresses(raw_values("delivered-to") + raw_values("x-original-to"))
        ),
        subject=subject[:2000],
        date=date,
        in_reply_to=_msgids(values("in-reply-to")),
        references=_msgids(values("references")),
        thread_index=_clean(thread_index) if thread_index else None,
        content_type=content_type,
        text=extract_reply(full_text)[:MAX_TEXT],
        full_text=full_text,
        html=html[:MAX_TEXT] if html else None,
        attachments=attachments,
        headers=tuple(header_pairs),
        defects=len(mail.defects or []),
        part_types=_part_types(mail.message),
        auth_results=tuple(raw_values("authentication-results")),
    )


def parse_messages(raws: Sequence[bytes]) -> list[ParsedMessage | None]:
    """Parse each of RAWS (in a worker); None for one that failed, to be parsed alone."""
    found: list[ParsedMessage | None] = []
    for raw in raws:
        try:
            found.append(parse_message(raw))
        except Exception:
            found.append(None)
    return found


def address_of(value: str) -> str:
    """Return the lower-cased address in a header value like 'Name <a@b>'."""
    return parseaddr(_clean(value))[1].lower()
