"""Taking one person out of text, JSON and stored mail (pure)."""

from __future__ import annotations

import email
import email.policy
import hashlib
from datetime import UTC, datetime

import pytest

from helpdeskd.mail.build import OutgoingMail, build_message
from helpdeskd.mail.scrub import ERASED, Scrubber, lines_of, normalise_line, scrub_mail

ADA = "ada@customer.example"
ALIAS = "erased-0123456789abcdef@erased.invalid"
SCRUB = Scrubber.of(
    ADA,
    ALIAS,
    names=["Ada Lovelace", None, ""],
    lines=lines_of("my zebra database is slow today\nThanks,\n"),
    fragments=["Zebra database slow"],
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Write to ada@customer.example.", f"Write to {ALIAS}."),
        ("Write to ADA@Customer.Example.", f"Write to {ALIAS}."),
        ("Hi Ada,", f"Hi {ERASED},"),
        ("Ada Lovelace wrote:", f"{ERASED} wrote:"),
        ("ada lovelace wrote:", f"{ERASED} wrote:"),
        ("> my zebra database is slow today", f"> {ERASED}"),
        (">> my zebra database is slow today  \r\nok", f">> {ERASED}\r\nok"),
        ("Re: [HD-1] Zebra  database slow", f"Re: [HD-1] {ERASED}"),
        ("Thanks,", "Thanks,"),  # too short to be hers alone
        ("Adamant about Canada", "Adamant about Canada"),  # a part of a name, whole words only
        ("nothing of hers", "nothing of hers"),
    ],
)
def test_text_takes_the_person_out(text, expected):
    assert SCRUB.text(text) == expected


def test_mentions_and_values():
    assert SCRUB.mentions("from ada@customer.example")
    assert not SCRUB.mentions("from bob@customer.example")
    assert not SCRUB.mentions(None)
    assert SCRUB.value({"to": [ADA, "bob@x.example"], "n": 3, "who": {"name": "Ada"}}) == {
        "to": [ALIAS, "bob@x.example"],
        "n": 3,
        "who": {"name": ERASED},
    }
    assert SCRUB.addresses([ADA, "Bob@X.example"]) == [ALIAS, "Bob@X.example"]


def test_lines_are_compared_without_quote_markers():
    assert normalise_line("  > | >  hello there ") == "hello there"
    assert lines_of("hi\n> Thanks,\nmy app is down\n--\n") == {"my app is down"}


def _mail(**overrides):
    fields = dict(
        from_addr="support@acme.test",
        from_name="Ada Lovelace via Acme",
        to=(ADA,),
        cc=("bob@customer.example",),
        subject="Re: [HD-1] Zebra database slow",
        text="Hi Ada,\n\n> my zebra database is slow today\n\nWe fixed it.\n",
        message_id="<m1.ada@customer.example>",
        date=datetime(2026, 11, 2, tzinfo=UTC),
        attachments=(
            ("Ada-1.log", "application/octet-stream", b"her log"),
            ("runbook.pdf", "application/pdf", b"%PDF agents' runbook"),
        ),
    )
    fields.update(overrides)
    return build_message(OutgoingMail(**fields))


def test_scrub_mail_rewrites_headers_text_and_her_attachments():
    data = _mail()
    hers = frozenset({hashlib.sha256(b"her log").hexdigest()})
    out = scrub_mail(data, SCRUB, hers)
    lowered = out.lower()
    for trace in (b"ada@customer.example", b"ada lovelace", b"zebra", b"her log"):
        assert trace not in lowered, trace
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg["To"].addresses[0].addr_spec == ALIAS
    assert msg["Cc"].addresses[0].addr_spec == "bob@customer.example"
    assert msg["From"].addresses[0].display_name == f"{ERASED} via Acme"
    assert msg["Message-ID"] == f"<m1.{ALIAS}>"
    assert msg["Subject"] == f"Re: [HD-1] {ERASED}"
    text = msg.get_body(("plain",)).get_content()
    assert "We fixed it." in text and f"> {ERASED}" in text
    files = {part.get_filename(): part.get_content() for part in msg.iter_attachments()}
    assert files[ERASED].strip() == ERASED
    assert files["runbook.pdf"] == b"%PDF agents' runbook"  # not hers: kept


def test_scrub_mail_leaves_other_mail_alone_and_drops_what_it_cannot_read():
    other = _mail(
        from_name="Acme",
        to=("bob@customer.example",),
        cc=(),
        text="Hello Bob\n",
        subject="Storage",
        message_id="<m2@acme.test>",
        attachments=(),
    )
    assert scrub_mail(other, SCRUB) == other
    assert scrub_mail(b"", SCRUB) == b""
