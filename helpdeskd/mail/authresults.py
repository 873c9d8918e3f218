"""Read our own trusted Authentication-Results (RFC 8601), failing closed.

Our MTA removes (or renames) incoming fields carrying our authserv-id and prepends its own
(RFC 8601 section 5), so only the topmost field carrying our configured authserv-id counts;
one lower down, or one from another authserv-id, came from elsewhere. That field is read with
the authres library. When it cannot be read — a sender can make it so with what our MTA copies
into it (a HELO with an unclosed comment or quote, a stray semicolon) — the mail is
unauthenticated and its DMARC result is ``fail``: the next field down is never consulted, as it
may be the sender's forgery. The authserv-id itself is found by RFC 8601's grammar alone, so a
field of ours is known as ours even when the rest of it does not parse.

The value is read exactly as our MTA wrote it (``ParsedMessage.auth_results``): an RFC 2047
encoded word in a copied HELO or MAIL FROM, once decoded, could spell ``; dkim=pass …`` itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import authres

from helpdeskd.mail.parse import ParsedMessage

MAX_VALUE = 16 * 1024  # characters: our MTA writes one or two lines, so more is not its field

TrustState = Literal["absent", "parsed", "unreadable"]


@dataclass(frozen=True)
class Result:
    method: str  # dkim, spf, dmarc, ...
    result: str  # pass, fail, ...
    properties: dict[str, str]  # "header.d" -> "example.org"


@dataclass(frozen=True)
class Trusted:
    """What our own topmost Authentication-Results says.

    ``absent``: no field carries our authserv-id; ``parsed``: ours, with its RESULTS;
    ``unreadable``: ours, but it does not parse (REASON says where), so nothing in it counts.
    """

    state: TrustState
    results: tuple[Result, ...] = ()
    reason: str = ""


ABSENT = Trusted("absent")

# RFC 2045 token: printable ASCII without specials; UTF-8 beyond ASCII too (RFC 8616).
_TOKEN = re.compile(r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# What authres cannot read as text although it carries no structure in RFC 8601's grammar (no
# separator, quote or comment): UTF-8 (RFC 8616: an SMTPUTF8 sender's MAIL FROM), the colons of
# an IPv6 address (Exim's "smtp.remote-ip=2001:db8::1"), an address literal ("[192.0.2.1]") and
# angle brackets ("smtp.mailfrom=<>").
_OPAQUE = re.compile(r"[^\x00-\x7f]|[<>\[\]:]")
# Two distinct letters that are not hex digits: an escape "gh" + hex + "gh" cannot be misread
# across its edges (see _escape); 380 of them, so one is absent from any field of sane length.
_ESCAPES = tuple(a + b for a in "ghijklmnopqrstuvwxyz" for b in "ghijklmnopqrstuvwxyz" if a != b)


def _skip_cfws(text: str, pos: int) -> int | None:
    """Return the index after the CFWS at POS (RFC 5322 3.2.2), or None for an unclosed comment."""
    depth = 0
    while pos < len(text):
        char = text[pos]
        if depth and char == "\\":
            pos += 2  # a quoted-pair: the next character is text, whatever it is
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth and char not in " \t\r\n":
            return pos
        pos += 1
    return None if depth else pos


def _quoted(text: str, pos: int) -> tuple[str, int] | None:
    """Return the content of the quoted-string opening at POS and the index after it."""
    content: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            content.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(content), pos + 1
        content.append(char)
        pos += 1
    return None


def authserv_id_of(value: str) -> str | None:
    """Return the authserv-id an Authentication-Results VALUE opens with, or None.

    Read by RFC 8601's grammar for the opening alone — ``[CFWS] authserv-id`` where an
    authserv-id is a token or a quoted-string — so it is known even when what follows it
    (a version, ``; none``, or results) does not parse.
    """
    text = _FOLD.sub("", value)
    pos = _skip_cfws(text, 0)
    if pos is None or pos == len(text):
        return None
    if text[pos] == '"':
        quoted = _quoted(text, pos)
        return quoted[0] if quoted and quoted[0] else None
    token = _TOKEN.match(text, pos)
    return token.group(0) if token else None


def _escape(text: str) -> tuple[str, str]:
    """Return TEXT with each _OPAQUE character as ESCAPE + hex + ESCAPE, and ESCAPE ("" if none).

    The escape is two letters absent from TEXT, never hex digits and never equal, so no
    occurrence of it can straddle an edge between TEXT and an escape, and reading it back is
    exact. Letters are text wherever they stand, so an escape joins neighbouring text into one
    token but never adds a separator, a quote or a comment: the results read are the ones the
    field has. A value holding one reads back as written, and aligns with no real domain.
    """
    if not _OPAQUE.search(text):
        return text, ""
    lowered = text.lower()
    escape = next((e for e in _ESCAPES if e not in lowered), None)
    if escape is None:
        raise ValueError("no escape left for its odd characters")
    return _OPAQUE.sub(lambda m: f"{escape}{ord(m.group(0)):x}{escape}", text), escape


def _unescape(text: str, escape: str) -> str:
    if not escape:
        return text
    return re.sub(f"{escape}([0-9a-f]+){escape}", lambda m: chr(int(m.group(1), 16)), text)


def _segments(text: str) -> list[str] | None:
    """Split TEXT at its semicolons outside comments and quoted-strings; comments become spaces.

    None when a comment or a quoted-string is left open.
    """
    segments: list[str] = []
    current: list[str] = []
    depth, quoted, pos = 0, False, 0
    while pos < len(text):
        char = text[pos]
        if (depth or quoted) and char == "\\":
            if quoted:
                current.append(text[pos : pos + 2])
            pos += 2  # a quoted-pair: the next character is text, whatever it is
            continue
        if depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if not depth:
                current.append(" ")
        elif char == "(" and not quoted:
            depth = 1
        elif char == ";" and not quoted:
            segments.append("".join(current))
            current = []
        else:
            quoted = quoted != (char == '"')
            current.append(char)
        pos += 1
    if depth or quoted:
        return None
    segments.append("".join(current))
    return segments


def parse(value: str) -> Trusted:
    """Read one Authentication-Results VALUE with authres: ``parsed`` or ``unreadable``.

    authres skips what it cannot read in a result's properties, and an unclosed comment or
    quote there takes every later result with it (a ``dmarc=fail`` would vanish). So the
    field is also split at its own separators, and both readings must name the same methods.
    """
    text = _FOLD.sub("", value)
    if len(text) > MAX_VALUE:
        return Trusted("unreadable", reason=f"longer than {MAX_VALUE} characters")
    if _CONTROL.search(text):
        return Trusted("unreadable", reason="a control character")
    segments = _segments(text)
    if segments is None:
        return Trusted("unreadable", reason="a comment or quoted-string left open")
    try:
        ascii_text, escape = _escape(text)
        header = authres.parse_value(ascii_text)
        results = tuple(_result(r, escape) for r in header.results)
    except Exception as exc:  # authres raises its own errors, and stdlib ones on odd input
        return Trusted("unreadable", reason=str(exc)[:200] or type(exc).__name__)
    said = authserv_id_of(text)
    if said is None or _unescape(str(header.authserv_id), escape).casefold() != said.casefold():
        return Trusted("unreadable", reason="authserv-id read two ways")
    methods = [re.split(r"[=/]", s, maxsplit=1)[0].strip().lower() for s in segments[1:]]
    if methods != [r.method for r in results] and not (methods == ["none"] and not results):
        return Trusted("unreadable", reason="results read two ways")
    return Trusted("parsed", results)


def _result(found: authres.core.AuthenticationResult, escape: str) -> Result:
    properties: dict[str, str] = {}
    for prop in found.properties:
        key = f"{prop.type}.{prop.name}".lower()
        value = _unescape(str(prop.value or ""), escape)
        if properties.setdefault(key, value) != value:
            raise ValueError(f"{key} given twice")  # which one was checked is anyone's guess
    method = _unescape(str(found.method), escape).lower()
    return Result(method, _unescape(str(found.result), escape).lower(), properties)


def trusted(parsed: ParsedMessage, authserv_id: str) -> Trusted:
    """Return what the topmost Authentication-Results carrying AUTHSERV_ID says."""
    wanted = authserv_id.casefold()
    for value in parsed.auth_results:
        said = authserv_id_of(value)
        if said is not None and said.casefold() == wanted:
            return parse(value)
    return ABSENT


def _domain(text: str) -> str:
    """Return the domain of an address or a bare domain, lower-cased, without a final dot."""
    return text.rpartition("@")[2].strip(" \t<>").lower().rstrip(".")


def _aligned(domain: str, from_domain: str) -> bool:
    """Whether DOMAIN (a signing or envelope domain) is FROM_DOMAIN or a parent domain of it."""
    domain = _domain(domain)
    # A single label would be a top-level domain: no alignment with a whole TLD.
    if "." not in domain or not from_domain:
        return False
    return from_domain == domain or from_domain.endswith("." + domain)


def _from_domain(parsed: ParsedMessage) -> str | None:
    """Return the domain of the one From mailbox, or None when there is not exactly one."""
    if len(parsed.from_) != 1 or "@" not in parsed.from_[0][1]:
        return None
    return _domain(parsed.from_[0][1]) or None


def _dkim_aligned(results: tuple[Result, ...], from_domain: str) -> bool:
    for result in results:
        if result.method != "dkim" or result.result != "pass":
            continue
        domain = result.properties.get("header.d")
        if domain is None and "header.i" in result.properties:
            domain = result.properties["header.i"]
        if domain is not None and _aligned(domain, from_domain):
            return True
    return False


def dkim_aligned(parsed: ParsedMessage, authserv_id: str) -> bool:
    """Return whether our trusted Authentication-Results shows an aligned ``dkim=pass``.

    Aligned: ``header.d`` (or, without it, the domain of ``header.i``) equals the domain of
    the one From mailbox or is a parent domain of it. An unreadable field of ours shows nothing.
    """
    from_domain = _from_domain(parsed)
    found = trusted(parsed, authserv_id)
    if from_domain is None or found.state != "parsed":
        return False
    return _dkim_aligned(found.results, from_domain)


def dmarc_failed(parsed: ParsedMessage, authserv_id: str | None) -> bool:
    """Return whether our trusted Authentication-Results says ``dmarc=fail``, or is unreadable."""
    if not authserv_id:
        return False
    found = trusted(parsed, authserv_id)
    if found.state == "unreadable":
        return True
    return any(r.method == "dmarc" and r.result == "fail" for r in found.results)


def sender_verified(parsed: ParsedMessage, authserv_id: str | None) -> bool:
    """Return whether our trusted Authentication-Results shows the From domain is genuine.

    Needs exactly one From mailbox and our topmost field, readable. Then any ``dmarc=fail``
    means no; ``dmarc=pass`` with ``header.from`` the From domain means yes; and without a
    DMARC verdict for it (no DMARC result, ``none``, ``temperror``, a local ``bestguesspass``),
    yes when ``spf=pass`` names an ``smtp.mailfrom`` aligned with the From domain or a
    ``dkim=pass`` is aligned (aligned: the From domain or a parent domain of it, as DKIM's).
    """
    from_domain = _from_domain(parsed)
    if not authserv_id or from_domain is None:
        return False
    found = trusted(parsed, authserv_id)
    if found.state != "parsed":
        return False
    dmarc = [r for r in found.results if r.method == "dmarc"]
    if any(r.result == "fail" for r in dmarc):
        return False
    if any(
        r.result == "pass" and _domain(r.properties.get("header.from", "")) == from_domain
        for r in dmarc
    ):
        return True
    spf_aligned = any(
        r.method == "spf"
        and r.result == "pass"
        and _aligned(r.properties.get("smtp.mailfrom", ""), from_domain)
        for r in found.results
    )
    return spf_aligned or _dkim_aligned(found.results, from_domain)
