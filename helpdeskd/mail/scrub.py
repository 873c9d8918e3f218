"""Take one person out of text, JSON values and stored mail: the pure part of an erasure.

A :class:`Scrubber` knows what to look for — the person's address, their names, the lines
and subjects they wrote — and what to put instead: the address becomes a stable pseudonym,
everything else :data:`ERASED`. Lines are compared without their quote markers, so a line of
theirs quoted in an agent's reply (``> my app is down``) is found as well. What it cannot find
is their text re-wrapped or re-encoded by somebody else's mail client: erasure therefore also
deletes any raw mail that mentions the person (helpdeskd.desk.erasure).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

ERASED = "[erased]"
MIN_LINE = 8  # characters a line needs to be recognised as the person's (not "Thanks,")
MIN_WORD = 3  # a part of a name shorter than this is not looked for on its own
_QUOTE = re.compile(r"^[\s>|]*")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})
_KEEP_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})  # only the address changes


def normalise_line(line: str) -> str:
    """LINE without quote markers and surrounding space: how lines are compared."""
    return _QUOTE.sub("", line).strip()


def lines_of(text: str) -> set[str]:
    """The lines of TEXT that are long enough to be recognised elsewhere, normalised."""
    found = set()
    for line in text.splitlines():
        norm = normalise_line(line)
        if len(norm) >= MIN_LINE and any(c.isalnum() for c in norm):
            found.add(norm)
    return found


@dataclass(frozen=True)
class Scrubber:
    """What to take out of a text, and what to put in its place."""

    address: str  # lower-cased
    pseudonym: str
    names: tuple[str, ...] = ()  # full names, found in any case
    lines: frozenset[str] = frozenset()  # whole lines the person wrote (normalised)
    fragments: tuple[str, ...] = ()  # text of theirs found inside a line (subjects), any case
    _compiled: list[tuple[re.Pattern[str], str]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @classmethod
    def of(
        cls,
        address: str,
        pseudonym: str,
        *,
        names: Iterable[str | None] = (),
        lines: Iterable[str] = (),
        fragments: Iterable[str] = (),
    ) -> Scrubber:
        full = {" ".join(n.split()) for n in names if n and len(n.strip()) >= MIN_WORD}
        # Longest first: "Ada Lovelace" goes before "Ada" could cut it in two.
        frags = {" ".join(f.split()) for f in fragments if len(f.strip()) >= MIN_LINE}
        return cls(
            address.lower(),
            pseudonym,
            tuple(sorted(full, key=len, reverse=True)),
            frozenset(lines),
            tuple(sorted(frags, key=len, reverse=True)),
        )

    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        found: list[tuple[re.Pattern[str], str]] = [
            (re.compile(re.escape(self.address), re.IGNORECASE), self.pseudonym)
        ]
        for fragment in self.fragments:
            found.append((_spaced(fragment, re.IGNORECASE), ERASED))
        for name in self.names:
            found.append((_spaced(name, re.IGNORECASE), ERASED))
        words = {w for n in self.names for w in re.split(r"[\s,]+", n) if len(w) >= MIN_WORD}
        for word in sorted(words, key=len, reverse=True):
            # A part of a name on its own ("Hi Ada,"), as written: capitalised, a whole word.
            found.append((re.compile(rf"(?<!\w){re.escape(word)}(?!\w)"), ERASED))
        return found

    def text(self, text: str) -> str:
        """TEXT with the person taken out."""
        if not text:
            return text
        if self.lines:
            out = []
            for line in text.splitlines(keepends=True):
                body = line.rstrip("\r\n")
                if normalise_line(body) in self.lines:
                    prefix = _QUOTE.match(body)
                    line = (prefix.group(0) if prefix else "") + ERASED + line[len(body) :]
                out.append(line)
            text = "".join(out)
        for pattern, replacement in self._compiled:
            text = pattern.sub(replacement, text)
        return text

    def address_only(self, text: str) -> str:
        """TEXT with only the person's address replaced (a Message-ID, say)."""
        return self._compiled[0][0].sub(self.pseudonym, text)

    def mentions(self, text: str | None) -> bool:
        """Whether TEXT holds anything of the person."""
        return bool(text) and self.text(text or "") != text

    def value(self, value: Any) -> Any:
        """VALUE (plain JSON data) with every string in it scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def addresses(self, values: Iterable[Any]) -> list[Any]:
        """A stored address list (plain addresses, or [name, address] pairs) scrubbed."""
        return [self.value(v) for v in values]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", self._patterns())


def _spaced(text: str, flags: int) -> re.Pattern[str]:
    """A pattern for TEXT whose spaces match any run of white space (a folded subject)."""
    return re.compile(r"\s+".join(re.escape(part) for part in text.split()), flags)


def scrub_mail(data: bytes, scrubber: Scrubber, blobs: frozenset[str] = frozenset()) -> bytes:
    """Return stored mail DATA with the person taken out of its headers and text parts.

    An attached file whose SHA-256 is in BLOBS (the person's own attachments) is replaced by a
    short text part. Mail that cannot be read back is dropped whole (b""): it is a copy.
    """
    if not data:
        return data
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        changed = _scrub_headers(msg, scrubber)
        for part in list(msg.walk()):
            if part.is_multipart():
                continue
            assert isinstance(part, EmailMessage)
            changed |= _scrub_part(part, scrubber, blobs)
        if not changed:
            return data
        return msg.as_bytes(policy=email.policy.SMTP)
    except Exception:  # the email package raises assorted errors on damaged mail
        return b""


def _scrub_headers(msg: EmailMessage, scrubber: Scrubber) -> bool:
    changed = False
    spelled: dict[str, str] = {}
    for key in msg:
        spelled.setdefault(key.lower(), key)
    for lower, name in spelled.items():
        if lower in _KEEP_HEADERS:
            continue
        values = [str(v) for v in msg.get_all(name, [])]
        if lower in _ADDRESS_HEADERS:
            new = [_scrub_mailboxes(v, scrubber) for v in values]
        elif lower in _ID_HEADERS:
            new = [scrubber.address_only(v) for v in values]
        else:
            new = [" ".join(scrubber.text(v).split()) for v in values]
        if new != values:
            changed = True
            del msg[name]
            for value in new:
                msg[name] = value
    return changed


def _scrub_mailboxes(value: str, scrubber: Scrubber) -> str:
    out = []
    for name, address in getaddresses([value]):
        if address.lower() == scrubber.address:
            address, name = scrubber.pseudonym, ""
        name = " ".join(scrubber.text(name).split())
        try:
            out.append(str(Address(display_name=name, addr_spec=address)))
        except Exception:  # an address the header parser would not write back: leave it out
            continue
    return ", ".join(out)


def _scrub_part(part: EmailMessage, scrubber: Scrubber, blobs: frozenset[str]) -> bool:
    filename = part.get_filename()
    if part.get_content_maintype() == "text" and not part.is_attachment():
        content = part.get_content()
        new = scrubber.text(content)
        if new == content:
            return False
        part.set_content(new, subtype=part.get_content_subtype(), charset="utf-8")
        return True
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return False
    if hashlib.sha256(payload).hexdigest() not in blobs and not scrubber.mentions(filename):
        return False
    part.set_content(
        ERASED + "\n", subtype="plain", charset="utf-8", disposition="attachment", filename=ERASED
    )
    return True
