"""Parsing (DESIGN.md "Parts and the path of a message"): every real corpus file, addresses,
one-line headers, HTML-only mail, quoted-history removal and synthetic Message-IDs."""

from __future__ import annotations

import mailbox
import pickle
import re
import shutil
from pathlib import Path

import pytest
from mailparser import MailParser, parse_from_bytes

from helpdeskd.mail.parse import ParsedMessage, _MailParser, extract_reply, parse_message
from tests.conftest import CORPUS, CORPUS_NOT_MAIL
from tests.mailgen import customer_mail

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")


def _messages() -> list[Path]:
    """Every corpus file that is one message: not licences, bare bodies or mbox files."""
    if not CORPUS.is_dir():
        return []
    return sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file()
        and p.name not in CORPUS_NOT_MAIL
        and not re.fullmatch(r"body\.\d+\.txt", p.name)  # bare bodies, per the corpus README
        and "mbox" not in p.parts  # split below, as ingest does
    )


def _mboxes() -> list[Path]:
    return sorted(CORPUS.glob("*/mbox/*.mbox.txt")) if CORPUS.is_dir() else []


def _rel(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def _check_invariants(parsed: ParsedMessage) -> None:
    for name, value in parsed.headers:
        assert "\r" not in value and "\n" not in value, name
        assert name == name.lower()
    one_line = [parsed.subject, parsed.message_id, parsed.sender_name, parsed.content_type]
    one_line += list(parsed.to + parsed.cc + parsed.reply_to + parsed.delivered_to)
    one_line += [a for _, a in parsed.from_] + [n for n, _ in parsed.from_]
    one_line += list(parsed.in_reply_to + parsed.references)
    for value in one_line:
        assert "\r" not in value and "\n" not in value, value
    assert re.fullmatch(r"<[^<>\s]+>", parsed.message_id), parsed.message_id
    for address in parsed.recipients + tuple(a for _, a in parsed.from_):
        assert "@" in address and address == address.lower() and " " not in address
    assert "\x00" not in parsed.full_text
    assert parsed.date is None or parsed.date.tzinfo is not None
    # The parser runs in worker processes: the result must cross a process boundary.
    assert pickle.loads(pickle.dumps(parsed)) == parsed


# Files whose parse raises: none. mimekit/mbox/simple.mbox.txt used to raise AttributeError
# inside mail-parser when read as one message (a part without its start boundary and no
# top-level epilogue, as in any truncated mail); parsing.py now gives mail-parser the empty
# epilogue, so a truncated customer mail becomes a ticket instead of a quarantine entry.
@needs_corpus
@pytest.mark.parametrize("path", _messages(), ids=_rel)
def test_corpus_message_parses(path: Path) -> None:
    _check_invariants(parse_message(path.read_bytes()))


@needs_corpus
@pytest.mark.parametrize("path", _mboxes(), ids=_rel)
def test_corpus_mbox_messages_parse(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / path.name  # mailbox opens its file for writing: leave the corpus alone
    shutil.copyfile(path, copy)
    box = mailbox.mbox(copy, create=False)
    try:
        raws = [box.get_bytes(key) for key in box.iterkeys()]
    finally:
        box.close()
    assert raws
    # unmunged.mbox.txt has unescaped "From " body lines, so some pieces are body fragments
    # without headers: they must still parse.
    senders = []
    for raw in raws:
        parsed = parse_message(raw)
        _check_invariants(parsed)
        senders.append(parsed.sender)
    assert any(senders)


@needs_corpus
def test_corpus_selection() -> None:
    names = {_rel(p) for p in _messages()}
    assert len(names) > 180
    assert "mimekit/messages/body.1.txt" not in names
    assert "mimekit/messages/delivery-status.txt" in names
    assert not any(n.endswith(("LICENSE", "NOTICE", "README.md")) for n in names)


def test_truncated_multipart_parses() -> None:
    """A nested part whose boundary never starts, and no closing boundary: mail cut short."""
    raw = (
        b"From: Jane <jane@example.org>\nTo: support@acme.test\nSubject: truncated\n"
        b"Message-ID: <t1@example.org>\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="x"\n\n'
        b'--x\nContent-Type: multipart/alternative; boundary="y"\n\n'
        b"hello, the y boundary never starts\n"
    )
    parsed = parse_message(raw)
    assert parsed.sender == "jane@example.org"
    assert parsed.subject == "truncated"
    _check_invariants(parsed)


def test_byte_order_mark_does_not_hide_the_first_header() -> None:
    raw = customer_mail(1, sender="jane@example.org", subject="With BOM")
    parsed = parse_message(b"\xef\xbb\xbf" + raw)
    assert parsed.sender == "jane@example.org"
    assert parsed.subject == "With BOM"
    assert parsed == parse_message(raw)


# --- addresses ------------------------------------------------------------------------------


def _with_header(raw: bytes, name: bytes, value: bytes) -> bytes:
    return re.sub(rb"(?m)^" + name + rb": .*$", name + b": " + value, raw, count=1)


@pytest.mark.parametrize(
    ("from_value", "expected"),
    [
        (b"=?UTF-8?B?Rm9vLCBCYXI=?= <foo@example.org>", (("Foo, Bar", "foo@example.org"),)),
        (b"=?UTF-8?Q?Foo=2C_Bar?= <foo@example.org>", (("Foo, Bar", "foo@example.org"),)),
        (
            b"=?UTF-8?Q?M=C3=BCller=2C_Hans?= <hans@example.de>",
            (("Müller, Hans", "hans@example.de"),),
        ),
        (b'"Doe, Jane" <Jane.Doe@Example.ORG>', (("Doe, Jane", "jane.doe@example.org"),)),
        (b"jane@example.org", (("", "jane@example.org"),)),
        (b"jane@example.org (Jane Doe)", (("Jane Doe", "jane@example.org"),)),
        (
            b"Jane <jane@example.org>, Joe <joe@example.org>",
            (("Jane", "jane@example.org"), ("Joe", "joe@example.org")),
        ),
        (b"undisclosed-recipients:;", ()),
        (b"not an address", ()),
        (b"", ()),
    ],
)
def test_from_addresses(from_value: bytes, expected: tuple[tuple[str, str], ...]) -> None:
    raw = _with_header(customer_mail(1), b"From", from_value)
    parsed = parse_message(raw)
    assert parsed.from_ == expected
    assert parsed.sender == (expected[0][1] if expected else "")


@pytest.mark.xfail(
    strict=True,
    reason="mail-parser's decode_header_part joins decode_header() chunks without the space "
    "RFC 2047 keeps between an encoded word and plain text after a fold",
)
def test_space_after_a_folded_encoded_word_is_kept() -> None:
    raw = _with_header(customer_mail(1), b"Subject", b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n aus Bonn")
    assert parse_message(raw).subject == "Grüße aus Bonn"


def test_encoded_display_name_with_a_comma_is_one_mailbox() -> None:
    raw = _with_header(customer_mail(1), b"From", b"=?UTF-8?B?Rm9vLCBCYXI=?= <foo@example.org>")
    parsed = parse_message(raw)
    assert len(parsed.from_) == 1
    assert parsed.sender_name == "Foo, Bar"


def test_recipients_collect_to_cc_and_delivered_to() -> None:
    raw = customer_mail(
        1,
        to="Support <Support@Acme.test>",
        cc=("Bob <bob@example.org>", "carol@example.org"),
        headers={"Delivered-To": "support+HD-1.k1.abc@acme.test", "X-Original-To": "x@acme.test"},
    )
    parsed = parse_message(raw)
    assert parsed.to == ("support@acme.test",)
    assert parsed.cc == ("bob@example.org", "carol@example.org")
    assert parsed.delivered_to == ("support+hd-1.k1.abc@acme.test", "x@acme.test")


# --- headers are one line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"Subject", b"first line\r\n second line"),  # folded
        (b"Subject", b"=?UTF-8?Q?with=0D=0ABcc=3A_x=40y?="),  # CR LF smuggled in an encoded word
        (b"Subject", b"=?UTF-8?B?bGluZTEKbGluZTI=?="),  # "line1\nline2", base64
        (b"To", b"=?UTF-8?Q?a=0Ab?= <support@acme.test>"),
        (b"Subject", b"tab\there and a bell \x07"),
    ],
)
def test_header_values_never_carry_line_breaks(name: bytes, value: bytes) -> None:
    raw = _with_header(customer_mail(1), name, value)
    parsed = parse_message(raw)
    _check_invariants(parsed)
    assert parsed.header("bcc") is None
    assert not re.search(r"[\x00-\x1f]", parsed.subject)


# --- HTML-only mail -------------------------------------------------------------------------

HTML_ONLY = (
    b"From: Jane <jane@example.org>\r\nTo: support@acme.test\r\nSubject: html\r\n"
    b"Message-ID: <h1@example.org>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><head><style>p { color: red }</style><script>alert(1)</script></head><body>"
    b"<p>Hello support,</p><p>my <b>database</b> is down &amp; I&#39;m stuck.</p>"
    b"<div>Second<br>line</div><img src='cid:logo'></body></html>\r\n"
)


def test_html_only_mail_gives_readable_text() -> None:
    parsed = parse_message(HTML_ONLY)
    assert parsed.html is not None and "<b>database</b>" in parsed.html
    for expected in ("Hello support,", "my database is down & I'm stuck.", "Second", "line"):
        assert expected in parsed.full_text
    for unwanted in ("<", "&amp;", "&#39;", "color: red", "alert(1)", "cid:logo"):
        assert unwanted not in parsed.full_text
    assert "database is down" in parsed.text


def test_plain_part_wins_over_html() -> None:
    parsed = parse_message(customer_mail(1, body="Plain words.\n", html=True))
    assert parsed.full_text == "Plain words."
    assert parsed.html is not None


# --- extract_reply --------------------------------------------------------------------------

QUOTE = "Hello,\nplease restart the dyno.\n"
QUOTED = "".join(f"> {line}\n" for line in QUOTE.splitlines())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Thanks, that fixed it.\n\nOn Mon, Nov 2, 2026 at 10:15 AM Acme Support "
            f"<support@acme.test> wrote:\n{QUOTED}",
            "Thanks, that fixed it.",
            id="gmail",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\nOn Mon, Nov 2, 2026 at 10:15 AM Acme Support <\n"
            f"support@acme.test> wrote:\n\n{QUOTED}",
            "Thanks, that fixed it.",
            id="gmail-wrapped-attribution",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\n________________________________\n"
            "From: Acme Support <support@acme.test>\nSent: Monday, November 2, 2026 10:15 AM\n"
            f"To: Jane Doe <jane@example.org>\nSubject: RE: [HD-12] Database down\n\n{QUOTE}",
            "Thanks, that fixed it.",
            id="outlook-from-sent-block",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\nFrom: Acme Support <support@acme.test>\n"
            "Sent: Monday, November 2, 2026 10:15 AM\nTo: Jane Doe\n"
            f"Subject: RE: Database down\n\n{QUOTE}",
            "Thanks, that fixed it.",
            id="outlook-from-sent-no-rule",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\n-----Original Message-----\n"
            "From: Acme Support [mailto:support@acme.test]\n"
            "Sent: Monday, November 02, 2026 10:15 AM\nTo: Jane Doe\n"
            f"Subject: RE: Database down\n\n{QUOTE}",
            "Thanks, that fixed it.",
            id="outlook-original-message",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\n> On 2 Nov 2026, at 10:15, Acme Support "
            f"<support@acme.test> wrote:\n> \n{QUOTED}",
            "Thanks, that fixed it.",
            id="apple-mail",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\nOn 11/2/26 10:15 AM, Acme Support wrote:\n" + QUOTED,
            "Thanks, that fixed it.",
            id="thunderbird",
        ),
        pytest.param(
            "Thanks, that fixed it.\n\nOn 02.11.26 10:15, Acme Support wrote:\n" + QUOTED,
            "Thanks, that fixed it.",
            id="thunderbird-eu-date",
        ),
        pytest.param(
            "Danke, das hat geholfen.\n\nAm Mo., 2. Nov. 2026 um 10:15 Uhr schrieb Acme "
            "Support <support@acme.test>:\n> Hallo,\n> bitte den Dyno neu starten.\n",
            "Danke, das hat geholfen.",
            id="german-gmail",
        ),
        pytest.param(
            "Danke, das hat geholfen.\n\nAm 02.11.26 um 10:15 schrieb Acme Support:\n"
            "> Hallo,\n> bitte den Dyno neu starten.\n",
            "Danke, das hat geholfen.",
            id="german-thunderbird",
        ),
        pytest.param(
            "Danke, das hat geholfen.\n\nVon: Acme Support <support@acme.test>\n"
            "Gesendet: Montag, 2. November 2026 10:15\nAn: Jane Doe\nBetreff: AW: Datenbank\n\n"
            "Hallo,\nbitte den Dyno neu starten.\n",
            "Danke, das hat geholfen.",
            id="german-outlook",
        ),
        pytest.param("Thanks!\n\n-- \nJane Doe\nACME Corp\n", "Thanks!", id="rfc3676-signature"),
        pytest.param(
            "Thanks!\n-- \nJane\n\nOn Mon, Nov 2, 2026 at 10:15 AM Acme Support "
            f"<support@acme.test> wrote:\n{QUOTED}",
            "Thanks!",
            id="signature-then-quote",
        ),
        pytest.param("Two lines\nof text.\n", "Two lines\nof text.", id="nothing-to-remove"),
        pytest.param(
            "Line one\n--\nstill the writer's text\n",
            "Line one\n--\nstill the writer's text",
            id="dash-dash-without-space-is-text",
        ),
        # Nothing left after stripping: keep everything rather than lose the message.
        pytest.param(QUOTED, QUOTED.strip(), id="only-quoted"),
        pytest.param("", "", id="empty"),
        pytest.param("  \n ", "", id="blank"),
    ],
)
def test_extract_reply(text: str, expected: str) -> None:
    assert extract_reply(text) == expected


def test_parsed_text_is_the_extracted_reply() -> None:
    body = (
        "Thanks, that fixed it.\n\nOn Mon, Nov 2, 2026 at 10:15 AM Acme Support "
        f"<support@acme.test> wrote:\n{QUOTED}"
    )
    parsed = parse_message(customer_mail(1, body=body))
    assert parsed.text == "Thanks, that fixed it."
    assert "please restart the dyno" in parsed.full_text


# --- synthetic Message-ID -------------------------------------------------------------------


def _without_id(**kwargs: object) -> bytes:
    raw = customer_mail(1, **kwargs)  # type: ignore[arg-type]
    return re.sub(rb"(?m)^Message-ID: .*\r?\n", b"", raw, count=1)


BASE = _without_id(sender="jane@example.org", body="My database is down.\n")


@pytest.mark.parametrize(
    ("other", "same"),
    [
        # The same mail delivered to two mailboxes: other trace headers, same message.
        (
            b"Received: from mx2.acme.test by imap.acme.test\r\nDelivered-To: help@acme.test\r\n"
            + BASE,
            True,
        ),
        (_with_header(BASE, b"To", b"help@acme.test"), True),
        (_with_header(BASE, b"Subject", b"another subject"), True),
        (_without_id(sender="joe@example.org", body="My database is down.\n"), False),
        (_without_id(sender="jane@example.org", body="My database is up.\n"), False),
        (_with_header(BASE, b"Date", b"Mon, 02 Nov 2026 10:00:00 +0000"), False),
    ],
)
def test_synthetic_message_id(other: bytes, same: bool) -> None:
    base, parsed = parse_message(BASE), parse_message(other)
    assert not base.has_message_id and not parsed.has_message_id
    assert base.message_id == parse_message(BASE).message_id  # stable
    assert (parsed.message_id == base.message_id) is same
    assert base.message_id.endswith("@no-message-id.helpdeskd.invalid>")


def test_real_message_id_is_kept() -> None:
    parsed = parse_message(customer_mail(1, message_id="<Real.ID@Example.org>"))
    assert parsed.has_message_id
    assert parsed.message_id == "<Real.ID@Example.org>"  # case kept: ids are case-sensitive


@pytest.mark.parametrize(
    ("headers", "in_reply_to", "references"),
    [
        ({"In-Reply-To": "<a@x>"}, ("<a@x>",), ()),
        (
            {"In-Reply-To": "<a@x> (comment)", "References": "<r@x>\t<a@x>"},
            ("<a@x>",),
            ("<r@x>", "<a@x>"),
        ),
        ({"References": "<r@x> <r@x> <s@x>"}, (), ("<r@x>", "<s@x>")),
        ({"In-Reply-To": "garbage"}, (), ()),
    ],
)
def test_reply_headers(
    headers: dict[str, str], in_reply_to: tuple[str, ...], references: tuple[str, ...]
) -> None:
    parsed = parse_message(customer_mail(1, headers=headers))
    assert parsed.in_reply_to == in_reply_to
    assert parsed.references == references


@needs_corpus
def test_the_parser_builds_what_mail_parser_builds_when_asked() -> None:
    """Our mail-parser subclass defers its ``mail`` dicts; read, they are the library's own."""
    compared = 0
    for path in _messages():
        raw = path.read_bytes()
        try:
            stock = parse_from_bytes(raw)
        except Exception:  # what parse_message recovers from is tested above
            continue
        ours = _MailParser.from_bytes(raw)
        assert isinstance(stock, MailParser) and isinstance(ours, MailParser)
        assert ours._mail is None, _rel(path)  # not built by parse()
        assert ours.mail == stock.mail, _rel(path)
        assert ours.mail_partial == stock.mail_partial, _rel(path)
        assert ours.mail_json == stock.mail_json, _rel(path)
        assert (ours.text_plain, ours.text_html, ours.defects) == (
            stock.text_plain,
            stock.text_html,
            stock.defects,
        ), _rel(path)
        compared += 1
    assert compared > 100


def test_references_are_capped() -> None:
    """A stranger's References of 100,000 IDs keeps the root and the latest IDs only."""
    ids = [f"<id{n}@example.org>" for n in range(100_000)]
    raw = (
        "From: a@example.org\r\nTo: support@acme.test\r\nSubject: x\r\n"
        "Message-ID: <own@example.org>\r\nReferences: " + " ".join(ids) + "\r\n\r\nhello\r\n"
    ).encode()
    parsed = parse_message(raw)
    assert len(parsed.references) == 100
    assert parsed.references[0] == ids[0]
    assert parsed.references[-1] == ids[-1]
    assert parsed.references[1] == ids[-99]
