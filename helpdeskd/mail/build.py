"""Build outgoing RFC 5322 messages: pure functions from plain data to bytes."""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import quoprimime
from email.header import Header
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

from helpdeskd.mail.parse import is_address
from helpdeskd.mail.render import one_line

MAX_REFERENCES = 20
MAX_LINE = 998  # RFC 5322 section 2.1.1


class _Headers(HeaderRegistry):
    """The stdlib's header factory, remembering what it made.

    Stock HeaderRegistry makes a new header class for every header it is asked for, then parses
    the value; most of our mail repeats the same headers (Content-Type, MIME-Version, the
    Auto-Submitted group, the support address), so both are kept: the class per name, and the
    parsed header (immutable, a str) per (name, str value) for the most recent values.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}
        self._made = lru_cache(maxsize=1024)(self._make)

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        found = self._classes.get(key)
        if found is None:
            found = self._classes[key] = super().__getitem__(name)
        return found

    def _make(self, name: str, value: str) -> BaseHeader:
        return self[name](name, value)

    def __call__(self, name: str, value: Any) -> BaseHeader:
        if type(value) is str:
            return self._made(name, value)
        return self[name](name, value)


# Headers we set verbatim (refold_source="none" leaves str values set with set_raw alone).
_POLICY = SMTP.clone(refold_source="none", header_factory=_Headers())
_POLICY_UTF8 = _POLICY.clone(utf8=True)
_MAX_BODY_LINE = _POLICY.max_line_length or MAX_LINE  # set_content's limit for 7bit/8bit
# Text that looks like an RFC 2047 encoded word. The stdlib's header parser decodes these in any
# value it is handed (a subject, a display name, even an addr-spec or a quoted string) and, before
# the CVE-2024-6923 fix, writes what they decode to, CR LF included, back out verbatim: a
# customer whose name or subject reads "=?utf-8?q?x=0D=0ABcc:_...?=" once decoded could add
# headers to our mail. Such text is encoded by us instead (see _set_text).
_ENCODED_WORD = re.compile(r"=\?.*\?=", re.DOTALL)
# A quoted display name longer than this may need folding inside the quotes, where the stdlib
# (3.11) drops them: "Eve <eve@evil.test>, xxx…" would become a second From mailbox.
_MAX_PLAIN_NAME = 60
# An RFC 5322 phrase that needs no quoting: atext words, one space between them.
_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
FOLD = 78  # RFC 5322 section 2.1.1: lines SHOULD be no longer
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")  # RFC 2045 token: a MIME type's halves


def new_message_id(domain: str) -> str:
    """Return a fresh Message-ID with 144 random bits."""
    return f"<{secrets.token_urlsafe(18)}@{domain}>"


def thread_headers(
    parent_id: str | None, parent_references: Sequence[str], parent_in_reply_to: str | None = None
) -> tuple[str | None, list[str]]:
    """Return (In-Reply-To, References) for a reply, per RFC 5322 section 3.6.4.

    References is the parent's References (or, lacking those, its In-Reply-To) followed by the
    parent's Message-ID; long chains keep the first and the latest entries.
    """
    if parent_id is None:
        return None, []
    chain = list(parent_references) or ([parent_in_reply_to] if parent_in_reply_to else [])
    chain = [ref for ref in chain if ref != parent_id] + [parent_id]
    if len(chain) > MAX_REFERENCES:
        chain = chain[:1] + chain[-(MAX_REFERENCES - 1) :]
    return parent_id, chain


@dataclass(frozen=True)
class OutgoingMail:
    from_addr: str
    from_name: str
    to: tuple[str, ...]
    subject: str
    text: str
    message_id: str
    date: datetime
    cc: tuple[str, ...] = ()
    html: str | None = None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[tuple[str, str, bytes], ...] = ()  # (file name, content type, bytes)


def _address(address: str, name: str = "") -> Address:
    if not is_address(address):
        # The stdlib checks next to nothing here and would write, say, an encoded word or a
        # stray "<" out as header syntax (see _ENCODED_WORD).
        raise ValueError(f"not a mail address: {address[:80]!r}")
    local, _, domain = address.rpartition("@")
    return Address(display_name=one_line(name), username=local, domain=domain)


@lru_cache(maxsize=512)  # the same few senders and reply addresses, mail after mail
def _mailbox(address: str, name: str = "") -> str:
    """Return ADDRESS with display NAME as header text: the name plain, quoted or encoded.

    What the stdlib's Address would write, without its parse-and-refold of every header.
    """
    spec = _address(address).addr_spec  # checked: no specials, no encoded word, no space
    name = one_line(name)
    if not name:
        return spec
    escaped = len(name) + name.count('"') + name.count("\\")
    if not name.isascii() or escaped > _MAX_PLAIN_NAME or _ENCODED_WORD.search(name):
        return f"{_encode_text('From', name)} <{spec}>"
    if _PHRASE.fullmatch(name):
        return f"{name} <{spec}>"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{spec}>'


def _set_mailboxes(msg: EmailMessage, name: str, mailboxes: Sequence[str]) -> None:
    """Set address header NAME to MAILBOXES (from _mailbox), folded between them."""
    lines = [""]
    for mailbox in mailboxes:
        first, _, rest = mailbox.partition("\n")  # an encoded name may span lines
        if lines[-1] and len(name) + 2 + len(lines[-1]) + 2 + len(first) > FOLD:
            lines[-1] += ","
            lines.append("")
        lines[-1] = f"{lines[-1]}, {first}" if lines[-1] else first
        if rest:
            lines.extend(rest.split("\n"))
    msg.set_raw(name, "\n ".join(line.lstrip(" ") for line in lines))


def _encode_text(name: str, value: str) -> str:
    """Return VALUE as RFC 2047 encoded words that decode to exactly VALUE, folded."""
    return Header(value, "utf-8", header_name=name).encode(linesep="\n")


def _set_text(msg: EmailMessage, name: str, value: str) -> None:
    """Set unstructured header NAME to the text VALUE, which is never decoded again."""
    value = one_line(value)
    if value.isascii() and len(name) + 2 + len(value) <= FOLD and "=?" not in value:
        msg.set_raw(name, value)  # nothing to encode or fold
    elif _ENCODED_WORD.search(value):
        msg.set_raw(name, _encode_text(name, value))
    else:
        msg[name] = value


def _set_verbatim(msg: EmailMessage, name: str, value: str, width: int = MAX_LINE) -> None:
    """Set an ASCII structured header (message ids, List-* URLs) as given, never encoded.

    The stdlib would turn any word longer than a folded line (an Outlook Message-ID, an
    unsubscribe URL) into RFC 2047 encoded words, which no client decodes in In-Reply-To,
    References or List-Unsubscribe: replies would not thread and one-click unsubscribe would
    break. A line longer than WIDTH is folded between words (by default only past RFC 5322's
    hard limit, so List-Unsubscribe stays on one line as DESIGN.md asks).
    """
    value = one_line(value)
    if not value.isascii():
        _set_text(msg, name, value)
        return
    lines = [""]
    for word in value.split():
        if lines[-1] and len(name) + 2 + len(lines[-1]) + 1 + len(word) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}" if lines[-1] else word
    msg.set_raw(name, "\n ".join(lines))


def _set_text_body(msg: EmailMessage, text: str) -> str | None:
    """Make TEXT the whole body of MSG as ``set_content`` would, and return the payload set;
    None where set_content would pick base64 (then it is left to set_content).

    set_content's choice (``email.contentmanager``): 7bit, or 8bit when not ASCII, if no line
    is longer than the policy's limit; else quoted-printable, unless base64 is shorter for the
    first ten lines. Made here with the same encoder, without the parse and refold of its
    Content-Type and Content-Transfer-Encoding headers (most of the cost of a short mail);
    tests/mail/test_build.py checks the two agree.
    """
    data = text.encode("utf-8")
    lines = data.splitlines()
    if max(map(len, lines), default=0) <= _MAX_BODY_LINE:
        cte = "7bit" if data.isascii() else "8bit"
        # 8bit rides in the str payload as surrogate escapes, as set_content carries it.
        payload = b"\n".join(lines).decode("ascii", "surrogateescape") + "\n"
    else:
        sniff = b"\r\n".join(lines[:10]) + b"\r\n"  # the policy's line ends, as the stdlib's
        payload = quoprimime.body_encode(sniff.decode("latin-1"), _MAX_BODY_LINE)
        if len(payload) > len(binascii.b2a_base64(sniff)):
            return None
        cte = "quoted-printable"
        if len(lines) > 10:
            body = (b"\n".join(lines) + b"\n").decode("latin-1")
            payload = quoprimime.body_encode(body, _MAX_BODY_LINE)
    msg.set_raw("Content-Type", 'text/plain; charset="utf-8"')
    msg.set_raw("Content-Transfer-Encoding", cte)
    msg.set_payload(payload)
    return payload


def build_message(mail: OutgoingMail) -> bytes:
    """Return MAIL as bytes ready for SMTP (CRLF line ends)."""
    return _build(mail)


@lru_cache(maxsize=16)  # the mails of one run, or one notice, share their moment
def _date(when: datetime) -> str:
    return format_datetime(when)


def _build(mail: OutgoingMail, *, direct: bool = True) -> bytes:
    """build_message; DIRECT writes a single text part itself (see _set_text_body), and its
    bytes too when its headers are plain ASCII (see _plain_bytes); without, the stdlib does."""
    addresses = (mail.from_addr, *mail.to, *mail.cc, mail.reply_to or "")
    # An internationalised address (RFC 6531) is written as UTF-8 (RFC 6532): no encoded word
    # may stand in an addr-spec. The outbox sends such mail only where the relay has SMTPUTF8.
    msg = EmailMessage(policy=_POLICY if all(map(str.isascii, addresses)) else _POLICY_UTF8)
    # A customer's name reaches From ("NAME via SERVICE"): _mailbox quotes or encodes it.
    _set_mailboxes(msg, "From", [_mailbox(mail.from_addr, mail.from_name)])
    _set_mailboxes(msg, "To", [_mailbox(a) for a in mail.to])
    if mail.cc:
        _set_mailboxes(msg, "Cc", [_mailbox(a) for a in mail.cc])
    if mail.reply_to:
        _set_mailboxes(msg, "Reply-To", [_mailbox(mail.reply_to)])
    _set_text(msg, "Subject", mail.subject)
    msg.set_raw("Date", _date(mail.date))
    _set_verbatim(msg, "Message-ID", mail.message_id)
    if mail.in_reply_to:
        _set_verbatim(msg, "In-Reply-To", mail.in_reply_to)
    if mail.references:
        _set_verbatim(msg, "References", " ".join(mail.references), width=78)
    for name, value in mail.extra_headers.items():
        _set_verbatim(msg, name, value)
    msg.set_raw("MIME-Version", "1.0")
    payload = None
    if direct and not (mail.html or mail.attachments):
        payload = _set_text_body(msg, mail.text)
    if payload is None:
        msg.set_content(mail.text, charset="utf-8")
    elif (plain := _plain_bytes(msg, payload)) is not None:
        return plain
    if mail.html:
        msg.add_alternative(mail.html, subtype="html", charset="utf-8")
    for name, content_type, data in mail.attachments:
        maintype, _, subtype = content_type.partition("/")
        if (
            not _TOKEN.fullmatch(maintype)
            or not _TOKEN.fullmatch(subtype)
            or maintype.lower() in ("multipart", "message")
        ):
            maintype, subtype = "application", "octet-stream"
        # As (charset, language, value) the name is written per RFC 2231 or plainly quoted, and
        # never read back as encoded words (see _ENCODED_WORD).
        filename = ("utf-8", "", one_line(name))
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


_NEWLINE = re.compile(r"\r\n|\r|\n")  # email.generator's NLCRE
_CRLF = "\r\n"


def _plain_bytes(msg: EmailMessage, payload: str) -> bytes | None:
    """The bytes ``msg.as_bytes()`` writes for MSG, a single text part whose body is PAYLOAD as
    _set_text_body set it; None for a payload it did not write.

    What the stdlib's BytesGenerator does for such a message under our policy
    (``refold_source="none"``, CRLF, 8bit): each header as EmailPolicy.fold_binary writes it
    (a raw one as set, with CRLF line ends; an encoded subject folded by its header object), a
    blank line, the body's lines joined by CRLF (8bit text rides in the payload as surrogate
    escapes, written back as its bytes). Written directly it costs a fraction of the
    generator's walk (most of the cost of a short mail such as an acknowledgement or a
    notice); tests/mail/test_build.py checks the two agree.
    """
    policy = msg.policy
    head = []
    for name, value in msg.raw_items():
        if type(value) is str:  # set raw: the policy's fold writes it as it is, CRLF ends
            head.append(f"{name}: {_CRLF.join(value.splitlines())}{_CRLF}")
        else:  # a header object (an encoded subject): folded as the generator folds it
            head.append(value.fold(policy=policy))
    head.append(_CRLF)
    try:
        body = _CRLF.join(_NEWLINE.split(payload)).encode("ascii", "surrogateescape")
        charset = "utf8" if policy is _POLICY_UTF8 else "ascii"  # as fold_binary encodes
        return "".join(head).encode(charset, "surrogateescape") + body
    except UnicodeEncodeError:  # not ours; the generator raises or writes it
        return None
