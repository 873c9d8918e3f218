"""Our trusted Authentication-Results (DESIGN.md "Agents by email", "Loops, backscatter"): only the
topmost field carrying our authserv-id counts, and one that does not parse fails closed.

Real-world shapes first (Gmail, Microsoft 365/EOP, Postfix with OpenDKIM and OpenDMARC, rspamd,
Fastmail, Amavis, Exim), then the attacks: our field made unreadable, or odd, by what a sender
can get our MTA to copy into it, with a forged ``dkim=pass`` for the victim's domain below.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpdeskd.mail.authresults import (
    MAX_VALUE,
    Result,
    Trusted,
    _escape,
    _unescape,
    authserv_id_of,
    dkim_aligned,
    dmarc_failed,
    parse,
    sender_verified,
    trusted,
)
from helpdeskd.mail.parse import ParsedMessage, parse_message

OURS = "mx.acme.test"
JANE = "jane@example.org"
CEO = "ceo@victim.example"


def mail(*fields: str, sender: str = JANE, extra: str = "") -> ParsedMessage:
    """Return a parsed mail with FIELDS as its Authentication-Results, topmost first."""
    head = "".join(f"Authentication-Results: {f}\r\n" for f in fields)
    body = (
        f"{head}Received: from mail.example.org by {OURS}\r\n{extra}"
        f"From: Sender <{sender}>\r\nTo: support@acme.test\r\nSubject: help\r\n"
        "Message-ID: <m1@example.org>\r\n\r\nhello\r\n"
    )
    return parse_message(body.encode())


class Expect(NamedTuple):
    state: str  # what trusted() says
    dkim: bool  # dkim_aligned
    dmarc_failed: bool
    verified: bool  # sender_verified


PASS_ALL = Expect("parsed", True, False, True)

# --- Real-world fields -------------------------------------------------------------------

GMAIL = (
    "mx.google.com;\r\n"
    "       dkim=pass header.i=@example.org header.s=20230601 header.b=Ab1+Cd/E;\r\n"
    "       arc=pass (i=1 spf=pass spfdomain=example.org dkim=pass dkdomain=example.org "
    "dmarc=pass fromdomain=example.org);\r\n"
    "       spf=pass (google.com: domain of jane@example.org designates 2a00:1450:4864:20::42f "
    "as permitted sender) smtp.mailfrom=jane@example.org;\r\n"
    "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.org"
)
GMAIL_DMARC_FAIL = (
    "mx.google.com;\r\n"
    "       spf=softfail (google.com: domain of transitioning ceo@victim.example does not "
    "designate 192.0.2.66 as permitted sender) smtp.mailfrom=ceo@victim.example;\r\n"
    "       dmarc=fail (p=REJECT sp=REJECT dis=REJECT) header.from=victim.example"
)
# Microsoft 365/EOP writes no authserv-id: the field opens with a result.
M365 = (
    "spf=pass (sender IP is 203.0.113.5) smtp.mailfrom=example.org; dkim=pass (signature was "
    "verified) header.d=example.org;dmarc=pass action=none header.from=example.org;"
    "compauth=pass reason=100"
)
# Postfix with OpenDMARC, OpenDKIM and policyd-spf: a field each, OpenDMARC's on top.
OPENDMARC = f"{OURS}; dmarc=pass (p=reject dis=none) header.from=example.org"
OPENDKIM = (
    f"{OURS};\r\n\tdkim=pass (2048-bit key; unprotected) header.d=example.org "
    "header.i=@example.org header.a=rsa-sha256 header.s=s1 header.b=AbCdEfGh;\r\n"
    "\tdkim-atps=neutral"
)
POLICYD_SPF = f"{OURS}; spf=pass (sender SPF authorized) smtp.mailfrom=example.org"
RSPAMD = (
    f"{OURS};\r\n\tdkim=pass header.d=example.org header.s=s1 header.b=AbCd;\r\n"
    "\tdmarc=pass (policy=reject) header.from=example.org;\r\n"
    f"\tspf=pass ({OURS}: domain of jane@example.org designates 203.0.113.5 as permitted "
    "sender) smtp.mailfrom=jane@example.org"
)
RSPAMD_BAD_SIGNATURE = (
    f'{OURS};\r\n\tdkim=fail ("headers rsa verify failed") header.d=example.org header.s=s1 '
    'header.b=AbCd;\r\n\tdmarc=fail reason="SPF not aligned (relaxed), DKIM not aligned '
    '(relaxed)" header.from=example.org (policy=reject);\r\n'
    "\tspf=pass (mx.acme.test: domain of bounce@esp.example designates 198.51.100.7 as "
    "permitted sender) smtp.mailfrom=bounce@esp.example"
)
FASTMAIL = (
    "mx6.messagingengine.com;\r\n"
    "    dkim=pass (2048-bit rsa key sha256) header.d=example.org header.i=@example.org "
    "header.b=AbCd header.a=rsa-sha256 header.s=s1 x-bits=2048;\r\n"
    "    dmarc=pass policy.published-domain-policy=none policy.applied-disposition=none "
    "policy.evaluated-disposition=none (p=none,d=none,d.eval=none) policy.policy-from=p "
    "header.from=example.org;\r\n"
    "    iprev=pass smtp.remote-ip=2001:db8::25 (mail.example.org);\r\n"
    "    spf=pass smtp.mailfrom=jane@example.org smtp.helo=mail.example.org;\r\n"
    "    x-aligned-from=pass (Address match);\r\n"
    "    x-return-mx=pass header.domain=example.org policy.is_org=yes (MX Records found: "
    "mx.example.org);\r\n"
    "    x-tls=pass smtp.version=TLSv1.3 smtp.cipher=TLS_AES_256_GCM_SHA384 smtp.bits=256/256;\r\n"
    "    x-vs=clean score=0 state=0"
)
AMAVIS = (
    f'{OURS} (amavisd-new);\r\n\tdkim=pass (2048-bit key) reason="pass (just generated, '
    'assumed good)" header.d=example.org'
)
EXIM_IPV6 = (
    f"{OURS};\r\n\tiprev=pass (mail.example.org) smtp.remote-ip=2001:db8::25;\r\n"
    "\tspf=pass smtp.mailfrom=example.org;\r\n"
    "\tdkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256;\r\n"
    "\tdmarc=pass header.from=example.org;\r\n\tarc=none"
)

REAL_WORLD = [
    # id, our authserv-id, fields topmost first, From address, expected
    ("gmail", "mx.google.com", [GMAIL], JANE, PASS_ALL),
    ("gmail-dmarc-fail", "mx.google.com", [GMAIL_DMARC_FAIL], CEO, Expect("parsed", 0, 1, 0)),
    ("gmail-not-ours", OURS, [GMAIL], JANE, Expect("absent", 0, 0, 0)),
    # Without an authserv-id Microsoft's field cannot be ours: do not set authserv_id there.
    ("m365-compauth", "acme.onmicrosoft.com", [M365], JANE, Expect("absent", 0, 0, 0)),
    (
        "m365-compauth-fail",
        "acme.onmicrosoft.com",
        [M365.replace("dmarc=pass", "dmarc=fail").replace("compauth=pass", "compauth=fail")],
        JANE,
        Expect("absent", 0, 0, 0),
    ),
    # Only the topmost field counts: OpenDKIM's below OpenDMARC's is not read (docs/heroku.md).
    ("opendmarc-on-top", OURS, [OPENDMARC, OPENDKIM, POLICYD_SPF], JANE, Expect("parsed", 0, 0, 1)),
    ("opendkim-alone", OURS, [OPENDKIM], JANE, PASS_ALL),
    ("policyd-spf-alone", OURS, [POLICYD_SPF], JANE, Expect("parsed", 0, 0, 1)),
    (
        "opendmarc-fail",
        OURS,
        [OPENDMARC.replace("dmarc=pass", "dmarc=fail"), OPENDKIM],
        JANE,
        Expect("parsed", 0, 1, 0),
    ),
    ("rspamd", OURS, [RSPAMD], JANE, PASS_ALL),
    ("rspamd-bad-signature", OURS, [RSPAMD_BAD_SIGNATURE], JANE, Expect("parsed", 0, 1, 0)),
    ("fastmail", "mx6.messagingengine.com", [FASTMAIL], JANE, PASS_ALL),
    ("amavis", OURS, [AMAVIS], JANE, PASS_ALL),
    ("exim-over-ipv6", OURS, [EXIM_IPV6], JANE, PASS_ALL),
    ("none", OURS, [f"{OURS} 1; none"], JANE, Expect("parsed", 0, 0, 0)),
    ("no-field-at-all", OURS, [], JANE, Expect("absent", 0, 0, 0)),
    # sender_verified without a DMARC verdict: aligned SPF or DKIM.
    (
        "spf-aligned-no-dmarc",
        OURS,
        [f"{OURS}; spf=pass smtp.mailfrom=bounce@example.org; dkim=none"],
        JANE,
        Expect("parsed", 0, 0, 1),
    ),
    (
        "spf-domain-only",
        OURS,
        [f"{OURS}; spf=pass smtp.mailfrom=example.org"],
        JANE,
        Expect("parsed", 0, 0, 1),
    ),
    (
        "spf-from-a-parent-domain",
        OURS,
        [f"{OURS}; spf=pass smtp.mailfrom=example.org"],
        "jane@eu.example.org",
        Expect("parsed", 0, 0, 1),
    ),
    (
        "spf-from-a-child-domain",  # no public suffix list: only the domain or a parent aligns
        OURS,
        [f"{OURS}; spf=pass smtp.mailfrom=x@bounce.example.org"],
        JANE,
        Expect("parsed", 0, 0, 0),
    ),
    (
        "spf-unaligned-esp",
        OURS,
        [f"{OURS}; spf=pass smtp.mailfrom=bounces@esp.example"],
        JANE,
        Expect("parsed", 0, 0, 0),
    ),
    (
        "spf-softfail-aligned",
        OURS,
        [f"{OURS}; spf=softfail smtp.mailfrom=jane@example.org"],
        JANE,
        Expect("parsed", 0, 0, 0),
    ),
    (
        "spf-helo-only",
        OURS,
        [f"{OURS}; spf=pass smtp.helo=example.org"],
        JANE,
        Expect("parsed", 0, 0, 0),
    ),
    (
        "dmarc-none-dkim-aligned",
        OURS,
        [f"{OURS}; dkim=pass header.d=example.org; dmarc=none header.from=example.org"],
        JANE,
        PASS_ALL,
    ),
    (
        "dmarc-bestguesspass-spf-aligned",
        OURS,
        [
            f"{OURS}; spf=pass smtp.mailfrom=example.org; "
            "dmarc=bestguesspass header.from=example.org"
        ],
        JANE,
        Expect("parsed", 0, 0, 1),
    ),
    (
        "dmarc-pass-for-another-domain",
        OURS,
        [f"{OURS}; dmarc=pass header.from=evil.example"],
        JANE,
        Expect("parsed", 0, 0, 0),
    ),
    (
        "dmarc-pass-without-header-from",
        OURS,
        [f"{OURS}; dmarc=pass"],
        JANE,
        Expect("parsed", 0, 0, 0),
    ),
    (
        "dmarc-fail-beats-aligned-dkim",
        OURS,
        [f"{OURS}; dkim=pass header.d=example.org; dmarc=fail header.from=example.org"],
        JANE,
        Expect("parsed", 1, 1, 0),
    ),
    (
        "smtputf8-sender",
        OURS,
        [f"{OURS}; spf=pass smtp.mailfrom=jörg@exämple.org; dmarc=pass header.from=exämple.org"],
        "jörg@exämple.org",
        Expect("parsed", 0, 0, 1),
    ),
    (
        "case-and-final-dot",
        OURS,
        ["MX.Acme.Test; DMARC=Pass header.from=Example.ORG."],
        JANE,
        Expect("parsed", 0, 0, 1),
    ),
]


def check(found: ParsedMessage, authserv_id: str, expect: Expect) -> None:
    assert trusted(found, authserv_id).state == expect.state
    assert dkim_aligned(found, authserv_id) is bool(expect.dkim)
    assert dmarc_failed(found, authserv_id) is bool(expect.dmarc_failed)
    assert sender_verified(found, authserv_id) is bool(expect.verified)


@pytest.mark.parametrize(
    ("authserv_id", "fields", "sender", "expect"),
    [pytest.param(*case[1:], id=case[0]) for case in REAL_WORLD],
)
def test_real_world_fields(
    authserv_id: str, fields: list[str], sender: str, expect: Expect
) -> None:
    check(mail(*fields, sender=sender), authserv_id, expect)


def test_real_world_results_are_read_in_full() -> None:
    [dkim, dmarc, iprev, spf, *_] = parse(FASTMAIL).results
    assert dkim == Result(
        "dkim",
        "pass",
        {
            "header.d": "example.org",
            "header.i": "@example.org",
            "header.b": "AbCd",
            "header.a": "rsa-sha256",
            "header.s": "s1",
        },
    )
    assert (dmarc.method, dmarc.properties["header.from"]) == ("dmarc", "example.org")
    assert iprev.properties == {"smtp.remote-ip": "2001:db8::25"}
    assert spf.properties["smtp.mailfrom"] == JANE
    assert [r.method for r in parse(GMAIL).results] == ["dkim", "arc", "spf", "dmarc"]


def test_nothing_is_trusted_without_an_authserv_id() -> None:
    found = mail(f"{OURS}; dmarc=fail header.from=example.org")
    assert not dmarc_failed(found, None) and not sender_verified(found, None)
    assert not sender_verified(mail(RSPAMD), "")


def test_several_from_mailboxes_are_never_verified() -> None:
    found = mail(RSPAMD, extra="From: Other <boss@example.org>\r\n")
    assert len(found.from_) == 2
    assert not sender_verified(found, OURS) and not dkim_aligned(found, OURS)


# --- Attacks ----------------------------------------------------------------------------

# A forgery of our own field, as a sender writes it into the mail it sends: it sits below ours.
FORGED = (
    f"{OURS}; dkim=pass header.d=victim.example; spf=pass smtp.mailfrom=ceo@victim.example; "
    "dmarc=pass header.from=victim.example"
)
# Our MTA's field for the forged mail, with what it copied from the sender's HELO and MAIL FROM.
OUR_FIELD = f"{OURS}; spf=softfail smtp.helo={{helo}} smtp.mailfrom={{mailfrom}}; dkim=none"
UNREADABLE = Expect("unreadable", 0, 1, 0)
ODD = Expect("parsed", 0, 0, 0)  # read, and nothing in it passes for the victim

TRICKS = [
    # id, HELO, MAIL FROM, expected
    ("helo-unclosed-comment", "(evil", "ceo@victim.example", UNREADABLE),
    ("helo-unclosed-comment-escaped", "(evil\\)", "ceo@victim.example", UNREADABLE),
    ("helo-unterminated-quote", '"evil', "ceo@victim.example", UNREADABLE),
    ("helo-semicolon", "evil;x", "ceo@victim.example", UNREADABLE),
    ("helo-trailing-semicolon", "evil;", "ceo@victim.example", UNREADABLE),
    ("helo-deep-comment", "h " + "(" * 3000 + ")" * 3000, "ceo@victim.example", UNREADABLE),
    ("helo-address-literal", "[192.0.2.1]", "ceo@victim.example", ODD),
    ("helo-ipv6-literal", "[IPv6:2001:db8::1]", "ceo@victim.example", ODD),
    ("helo-quoted-with-semicolon", '"evil; dkim=pass header.d=victim.example"', "x@y.example", ODD),
    ("helo-comment-with-semicolon", "h (x; dkim=pass header.d=victim.example)", "x@y.ex", ODD),
    (
        "helo-encoded-word",  # decoded, it would read "x; dkim=pass header.d=victim.example"
        "=?utf-8?q?x=3B_dkim=3Dpass_header.d=3Dvictim.example?=",
        "ceo@victim.example",
        ODD,
    ),
    ("mailfrom-null", "mail.evil.example", "<>", ODD),
    ("mailfrom-angle-brackets", "mail.evil.example", "<ceo@victim.example>", ODD),
    ("mailfrom-utf8", "mail.evil.example", "cëo@victim.example", ODD),
    ("mailfrom-utf8-domain", "mail.evil.example", "ceo@vïctim.example", ODD),
    (
        "mailfrom-encoded-word",
        "mail.evil.example",
        "=?utf-8?q?x=3B_dkim=3Dpass_header.d=3Dvictim.example_=28?=@evil.example",
        ODD,
    ),
]


@pytest.mark.parametrize(
    ("helo", "mailfrom", "expect"), [pytest.param(*case[1:], id=case[0]) for case in TRICKS]
)
def test_our_field_made_odd_never_lets_a_forgery_below_count(
    helo: str, mailfrom: str, expect: Expect
) -> None:
    ours = OUR_FIELD.format(helo=helo, mailfrom=mailfrom)
    found = mail(ours, FORGED, sender=CEO)
    check(found, OURS, expect)
    # The forgery alone would pass: it is only ours on top that keeps it out.
    check(mail(FORGED, sender=CEO), OURS, PASS_ALL)


BROKEN = [
    # id, our field (it names our authserv-id), why it cannot be read
    ("version-2", f"{OURS} 2; dkim=none", "version"),
    ("trailing-semicolon", f"{OURS}; dkim=none;", "method"),
    ("empty-result", f"{OURS}; dkim= (none)", "result"),
    ("result-not-an-atom", f"{OURS}; dkim=@pass header.d=example.org", "expected result"),
    ("none-and-results", f"{OURS}; dkim=fail; none", "attribute"),
    ("no-results", f"{OURS}", "resinfo"),
    ("quoted-authserv-id", f'"{OURS}"; dkim=none', "authserv-id"),
    ("authserv-id-with-a-port", f"{OURS}:25; dkim=none", "read two ways"),
    ("unclosed-comment-after-id", f"{OURS} (ours; dkim=none", "left open"),
    ("unclosed-comment-in-result", f"{OURS}; dkim=none (no sig; dmarc=fail", "left open"),
    ("nul", f"{OURS}; spf=none smtp.helo=a\x00b", "control"),
    ("header-d-twice", f"{OURS}; dkim=pass header.d=evil.example header.d=x.example", "twice"),
    ("too-long", f"{OURS}; spf=none smtp.helo=" + "a" * MAX_VALUE, "longer"),
]


@pytest.mark.parametrize(
    ("field", "reason"), [pytest.param(*case[1:], id=case[0]) for case in BROKEN]
)
def test_an_unreadable_field_of_ours_fails_closed(field: str, reason: str) -> None:
    found = parse(field)
    assert found.state == "unreadable" and not found.results
    assert reason.lower() in found.reason.lower()
    check(mail(field, FORGED, sender=CEO), OURS, UNREADABLE)


def test_an_unclosed_quote_does_not_swallow_a_dmarc_fail() -> None:
    # authres alone would skip from the open quote to the end and read only "spf=none".
    field = f'{OURS}; spf=none smtp.helo="evil; dmarc=fail header.from=victim.example'
    assert parse(field).state == "unreadable"
    assert dmarc_failed(mail(field, sender=CEO), OURS)


def test_encoded_words_in_our_field_are_not_decoded() -> None:
    # A valid MAIL FROM (a dot-atom local part) for the sender's own domain, where SPF passes.
    mailfrom = "=?utf-8?q?x=3B_dkim=3Dpass_header.d=3Dacme.test_header.s=3D?=@evil.example"
    found = mail(f"{OURS}; dkim=none; spf=pass smtp.mailfrom={mailfrom}", sender="alice@acme.test")
    # Decoded (for display) the field spells an aligned pass; the raw one we trust does not.
    decoded = found.header("authentication-results") or ""
    assert "; dkim=pass header.d=acme.test header.s=@evil.example" in decoded
    dkim, spf = trusted(found, OURS).results
    assert (dkim.result, spf.properties) == ("none", {"smtp.mailfrom": mailfrom})
    assert not dkim_aligned(found, OURS) and not sender_verified(found, OURS)


ORDER = [
    # id, fields topmost first, expected for From ceo@victim.example
    ("two-of-ours-fail-on-top", [f"{OURS}; dkim=fail header.d=victim.example", FORGED], ODD),
    ("two-of-ours-pass-on-top", [FORGED, f"{OURS}; dmarc=fail"], PASS_ALL),
    ("unreadable-of-ours-on-top", [f"{OURS}; dkim=(", FORGED], UNREADABLE),
    (
        "strangers-pass-above-ours",
        [FORGED.replace(OURS, "relay.evil.example"), f"{OURS}; dkim=none"],
        ODD,
    ),
    (
        "ours-below-a-stranger-prefixed-with-our-id",
        [FORGED.replace(OURS, f"{OURS}.evil.example"), f"{OURS}; dmarc=fail"],
        Expect("parsed", 0, 1, 0),
    ),
    (
        "only-a-strangers-pass",
        [FORGED.replace(OURS, "relay.evil.example")],
        Expect("absent", 0, 0, 0),
    ),
]


@pytest.mark.parametrize(
    ("fields", "expect"), [pytest.param(*case[1:], id=case[0]) for case in ORDER]
)
def test_only_the_topmost_field_of_ours_counts(fields: list[str], expect: Expect) -> None:
    check(mail(*fields, sender=CEO), OURS, expect)


# --- The authserv-id, read from the opening alone -------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{OURS}; dkim=pass", OURS),
        (f"{OURS};dkim=pass", OURS),
        (f"  {OURS} 1; none", OURS),
        (f"{OURS}\r\n\t1 (version); none", OURS),
        (f"(comment) {OURS}; none", OURS),
        (f"(nested (one; \\) here)) {OURS}; none", OURS),
        (f'"{OURS}"; none', OURS),
        ('"mx.\\"acme\\".test"; none', 'mx."acme".test'),
        (f'{OURS} (then anything at all: ((( "; x', OURS),
        (f"{OURS}:25; none", OURS),  # ours by its id, and then unreadable
        ("mx.äcme.test; none", "mx.äcme.test"),
        ("spf=pass smtp.mailfrom=example.org", "spf"),  # Microsoft 365's opening
        ("", None),
        ("   ", None),
        ("(only a comment)", None),
        (f"(unclosed {OURS}; none", None),
        ("; dkim=pass", None),
        ('""; none', None),
    ],
)
def test_authserv_id_of(value: str, expected: str | None) -> None:
    assert authserv_id_of(value) == expected


# --- Properties ------------------------------------------------------------------------------


@given(st.text())
def test_escape_reads_back_exactly(text: str) -> None:
    escaped, escape = _escape(text)
    assert escaped.isascii() and _unescape(escaped, escape) == text


PIECES = [*' \t;=()"\\.@<>[]:/aäx1', "dkim", "pass", "header.d", "victim.example", "none"]


@given(st.lists(st.sampled_from(PIECES), max_size=40).map("".join))
def test_parse_never_raises_and_never_invents_a_result(text: str) -> None:
    found = parse(f"{OURS}; {text}")
    assert isinstance(found, Trusted) and found.state in ("parsed", "unreadable")
    if found.state == "parsed":
        # Every result read is one the field spells between its own separators.
        assert len(found.results) <= text.count(";") + 1
