"""Heroku-forwarded tickets (DESIGN.md "Heroku-forwarded tickets"): recognised by the desk's
sender addresses from config only, subject and body patterns from config, and, where an
authserv-id is configured, an aligned dkim=pass in our own trusted Authentication-Results.

The fixtures in tests/fixtures/heroku/ are illustrations, not captured Heroku mail."""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_heroku_config
from helpdeskd.config.settings import (
    DEFAULT_REQUESTER_PATTERN,
    DEFAULT_SUBJECT_PATTERN,
    HerokuConfig,
)
from helpdeskd.errors import ConfigError
from helpdeskd.mail.parse import parse_message
from helpdeskd.triage.heroku import HerokuTicket, dkim_aligned, examine, recognise
from tests.mailgen import customer_mail

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "heroku"
DOC = ROOT / "docs" / "heroku.md"
DESK = "support@heroku-desk.example"
OURS = "mx.acme.test"
CONFIG = HerokuConfig(
    senders=(DESK, "desk@eu.heroku-desk.example"),
    reply_address=DESK,
    agent_address="heroku-agent@acme.test",
)
DKIM_CONFIG = replace(CONFIG, authserv_id=OURS)
SUBJECT = "[Heroku Support] Ticket #500001: Slow queries on premium-0"
BODY = (
    "A ticket has been assigned to your add-on agent account.\n\n"
    "Ticket #500001: Slow queries on premium-0\n"
    "Requester: Sam Lee <sam.lee@example.com>\n"
    "App: sam-api\n\n"
    "Our p95 went from 20 ms to 900 ms overnight.\n"
)


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _desk_mail(
    *,
    sender: str = DESK,
    name: str = "Heroku Support",
    subject: str = SUBJECT,
    body: str = BODY,
    html: bool = False,
) -> bytes:
    return customer_mail(1, sender=sender, name=name, subject=subject, body=body, html=html)


def _with_from(raw: bytes, *values: str) -> bytes:
    """Replace the From field of RAW by one From field per VALUE."""
    fields = b"".join(b"From: " + v.encode() + b"\r\n" for v in values)
    return re.sub(rb"(?m)^From: .*\r?\n", lambda _: fields, raw, count=1)


def _on_top(raw: bytes, *auth_results: str) -> bytes:
    """Prepend Authentication-Results fields to RAW, topmost first, as MTAs add them."""
    return b"".join(f"Authentication-Results: {v}\r\n".encode() for v in auth_results) + raw


def _html_only(body_html: str) -> bytes:
    return (
        f"From: Heroku Support <{DESK}>\r\nTo: support@acme.test\r\nSubject: {SUBJECT}\r\n"
        "Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <html-only.1@heroku-desk.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n"
        f"{body_html}\r\n"
    ).encode()


# --- the fixtures ---------------------------------------------------------------------------

FIXTURE_CASES = [
    # file, config, ticket number, requester email, requester name
    ("01-new-ticket.eml", CONFIG, "482913", "jane.doe@example.com", "Jane Doe"),
    ("02-customer-update.eml", CONFIG, "482913", "jane.doe@example.com", "Jane Doe"),
    ("03-ticket-solved.eml", CONFIG, "482913", None, None),
    ("04-dkim-new-ticket.eml", DKIM_CONFIG, "483120", "j.weiss@example.net", "Jürgen Weiß"),
    ("04-dkim-new-ticket.eml", CONFIG, "483120", "j.weiss@example.net", "Jürgen Weiß"),
]


def test_the_fixture_folder_holds_the_examples() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(
        {case[0] for case in FIXTURE_CASES}
    )


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.eml")))
def test_fixtures_are_labelled_illustrations_with_message_ids(name: str) -> None:
    parsed = parse_message(_fixture(name))
    assert "illustration" in (parsed.header("x-helpdeskd-fixture") or "")
    assert parsed.has_message_id and parsed.message_id.endswith("@heroku-desk.example>")
    assert parsed.sender == DESK


@pytest.mark.parametrize(("name", "config", "ticket", "email", "who"), FIXTURE_CASES)
def test_fixture_is_recognised(
    name: str, config: HerokuConfig, ticket: str, email: str | None, who: str | None
) -> None:
    parsed = parse_message(_fixture(name))
    assert recognise(parsed, config) == HerokuTicket(
        ticket_number=ticket, requester_email=email, requester_name=who, subject=parsed.subject
    )


def test_updates_and_the_solved_notice_carry_the_same_ticket_number() -> None:
    names = ["01-new-ticket.eml", "02-customer-update.eml", "03-ticket-solved.eml"]
    tickets = [recognise(parse_message(_fixture(n)), CONFIG) for n in names]
    assert [t.ticket_number if t else None for t in tickets] == ["482913"] * 3
    # The desk's subject is kept intact (our replies keep it), "solved" wording and all.
    assert tickets[2] is not None and tickets[2].subject.startswith("[Heroku Support] Ticket #4")


# --- recognised and not ---------------------------------------------------------------------

RECOGNISED = [
    # id, raw, config, ticket, requester email, requester name
    ("synthetic", _desk_mail(), CONFIG, "500001", "sam.lee@example.com", "Sam Lee"),
    (
        "sender-case-folded",
        _desk_mail(sender="Support@Heroku-Desk.EXAMPLE"),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "bare-from",
        _with_from(_desk_mail(), DESK),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "second-listed-sender",
        _desk_mail(sender="desk@eu.heroku-desk.example"),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "reply-prefix-in-subject",
        _desk_mail(subject="Re: " + SUBJECT),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "encoded-subject",
        _desk_mail(subject="[Heroku Support] Ticket #500002: Verbindung schlägt fehl – dringend"),
        CONFIG,
        "500002",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "alternative-parts",
        _desk_mail(html=True),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "html-only",
        _html_only(
            "<html><body><p>Ticket #500001</p>"
            "<p>Requester: Sam Lee &lt;sam.lee@example.com&gt;</p></body></html>"
        ),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "requester-without-name",
        _desk_mail(body="Requester: SAM.LEE@example.com\n\nHelp.\n"),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        None,
    ),
    (
        "requester-quoted-name",
        _desk_mail(body='Requested by: "Lee, Sam" <sam.lee@example.com>\n\nHelp.\n'),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Lee, Sam",
    ),
    (
        "no-requester-line",
        _desk_mail(body="Ticket #500001 was updated by Heroku Support.\n"),
        CONFIG,
        "500001",
        None,
        None,
    ),
    (
        "requester-is-the-desk-itself",
        _desk_mail(body=f"Requester: Heroku Support <{DESK}>\n"),
        CONFIG,
        "500001",
        None,
        None,
    ),
    (
        "requester-not-an-address",
        _desk_mail(body="Requester: Sam Lee <sam.lee@localhost>\n"),
        CONFIG,
        "500001",
        None,
        None,
    ),
    (
        "first-requester-line-wins",
        _desk_mail(body=BODY + "\nRequester: mallory@example.org\n"),
        CONFIG,
        "500001",
        "sam.lee@example.com",
        "Sam Lee",
    ),
    (
        "operator-adapted-patterns",
        _desk_mail(
            subject="[HK-77120] Addon acme-postgres: connection limit",
            body="Customer email: sam.lee@example.com\nCustomer: Sam Lee\n",
        ),
        replace(
            CONFIG,
            subject_pattern=r"^\[(?P<ticket>HK-\d+)\]",
            requester_pattern=r"(?m)^Customer email: (?P<email>\S+)$",
        ),
        "HK-77120",
        "sam.lee@example.com",
        None,
    ),
]


@pytest.mark.parametrize(
    ("raw", "config", "ticket", "email", "who"),
    [pytest.param(*case[1:], id=case[0]) for case in RECOGNISED],
)
def test_recognised(
    raw: bytes, config: HerokuConfig, ticket: str, email: str | None, who: str | None
) -> None:
    parsed = parse_message(raw)
    found = recognise(parsed, config)
    assert found == HerokuTicket(ticket, email, who, parsed.subject)


ATTACKER = "attacker@example.net"
NOT_RECOGNISED = [
    # id, raw, config, reason fragment, suspicious (a desk address was involved)
    ("unlisted-sender", _desk_mail(sender=ATTACKER), CONFIG, "not a desk address", False),
    (
        "lookalike-domain",
        _desk_mail(sender="support@heroku-desk.example.evil.test"),
        CONFIG,
        "not a desk address",
        False,
    ),
    (
        "desk-address-as-display-name",
        _with_from(_desk_mail(), f'"{DESK}" <{ATTACKER}>'),
        CONFIG,
        "not a desk address",
        False,
    ),
    (
        "fixture-from-unlisted-sender",
        _with_from(_fixture("01-new-ticket.eml"), f"Heroku Support <{ATTACKER}>"),
        CONFIG,
        "not a desk address",
        False,
    ),
    (
        "two-mailboxes-desk-first",
        _with_from(_desk_mail(), f"Heroku Support <{DESK}>, {ATTACKER}"),
        CONFIG,
        "exactly one From",
        True,
    ),
    (
        "two-mailboxes-desk-second",
        _with_from(_desk_mail(), f"{ATTACKER}, Heroku Support <{DESK}>"),
        CONFIG,
        "not a desk address",
        False,
    ),
    (
        "two-from-fields",
        _with_from(_desk_mail(), DESK, ATTACKER),
        CONFIG,
        "exactly one From",
        True,
    ),
    (
        "second-from-field-without-an-address",
        _with_from(_desk_mail(), DESK, "Mallory"),
        CONFIG,
        "exactly one From",
        True,
    ),
    (
        "desk-mail-with-other-subject",
        _desk_mail(subject="Your agent account password was changed"),
        CONFIG,
        "subject does not match",
        False,
    ),
    (
        "ticket-number-too-long",
        _desk_mail(subject="[Heroku Support] Ticket #" + "9" * 101),
        CONFIG,
        "subject does not match",
        False,
    ),
    (
        "ticket-group-did-not-take-part",
        _desk_mail(subject="[Heroku Support] Welcome to the agent portal"),
        replace(CONFIG, subject_pattern=r"\[Heroku Support\](?:.*?#(?P<ticket>\d+))?"),
        "subject does not match",
        False,
    ),
    ("feature-off", _desk_mail(), replace(CONFIG, senders=()), "not configured", False),
    (
        "dkim-required-but-absent",
        _fixture("01-new-ticket.eml"),
        DKIM_CONFIG,
        "no aligned dkim=pass",
        True,
    ),
]


@pytest.mark.parametrize(
    ("raw", "config", "reason", "suspicious"),
    [pytest.param(*case[1:], id=case[0]) for case in NOT_RECOGNISED],
)
def test_not_recognised(raw: bytes, config: HerokuConfig, reason: str, suspicious: bool) -> None:
    parsed = parse_message(raw)
    assert recognise(parsed, config) is None
    found = examine(parsed, config)
    assert found.ticket is None
    assert reason in found.reason
    assert found.suspicious is suspicious


# --- DKIM alignment -------------------------------------------------------------------------

PASS = f"{OURS}; dkim=pass header.d=heroku-desk.example header.s=desk2026"
FAIL = f"{OURS}; dkim=fail (signature did not verify) header.d=heroku-desk.example"
DKIM_CASES = [
    # id, Authentication-Results topmost first, From address, aligned
    ("none-at-all", [], DESK, False),
    ("pass-aligned", [PASS], DESK, True),
    ("fail", [FAIL], DESK, False),
    ("neutral", [f"{OURS}; dkim=neutral header.d=heroku-desk.example"], DESK, False),
    ("none-result", [f"{OURS}; none"], DESK, False),
    ("spf-and-dmarc-pass-but-no-dkim", [f"{OURS}; spf=pass; dmarc=pass"], DESK, False),
    ("pass-for-another-domain", [f"{OURS}; dkim=pass header.d=evil.example"], DESK, False),
    (
        "pass-for-a-suffix-that-is-not-a-parent",
        [f"{OURS}; dkim=pass header.d=desk.example"],
        DESK,
        False,
    ),
    (
        "pass-for-a-child-of-the-from-domain",
        [f"{OURS}; dkim=pass header.d=mail.heroku-desk.example"],
        DESK,
        False,
    ),
    (
        "pass-for-a-parent-of-the-from-domain",
        [f"{OURS}; dkim=pass header.d=heroku-desk.example"],
        "desk@eu.heroku-desk.example",
        True,
    ),
    ("pass-for-a-tld", [f"{OURS}; dkim=pass header.d=example"], DESK, False),
    (
        "foreign-pass-above-our-fail",
        ["relay.evil.example; dkim=pass header.d=heroku-desk.example", FAIL],
        DESK,
        False,
    ),
    (
        "foreign-fail-above-our-pass",
        ["relay.heroku-desk.example; dkim=fail header.d=heroku-desk.example", PASS],
        DESK,
        True,
    ),
    (
        "only-foreign-pass",
        ["relay.evil.example; dkim=pass header.d=heroku-desk.example"],
        DESK,
        False,
    ),
    (
        "authserv-id-with-our-id-as-prefix",
        [f"{OURS}.evil.example; dkim=pass header.d=heroku-desk.example"],
        DESK,
        False,
    ),
    ("topmost-of-ours-counts-fail-above-pass", [FAIL, PASS], DESK, False),
    ("topmost-of-ours-counts-pass-above-fail", [PASS, FAIL], DESK, True),
    (
        "pass-only-in-a-comment",
        [f"{OURS}; dkim=fail (would be dkim=pass header.d=heroku-desk.example)"],
        DESK,
        False,
    ),
    (
        "semicolon-and-nesting-in-comments",
        [
            f'{OURS}; dkim=pass (2048-bit key; "unprotected) (x"; (nested; one)) '
            "header.d=heroku-desk.example"
        ],
        DESK,
        True,
    ),
    ("case-insensitive", ["MX.Acme.Test; DKIM=Pass header.d=Heroku-Desk.Example."], DESK, True),
    ("version-and-spaces", [f"{OURS} 1; dkim = pass header.d = heroku-desk.example"], DESK, True),
    ("quoted-domain", [f'{OURS}; dkim=pass header.d="heroku-desk.example"'], DESK, True),
    ("header-i-without-header-d", [f"{OURS}; dkim=pass header.i=@heroku-desk.example"], DESK, True),
    (
        "one-of-two-signatures-passes-aligned",
        [f"{OURS}; dkim=fail header.d=heroku-desk.example; dkim=pass header.d=heroku-desk.example"],
        DESK,
        True,
    ),
    (
        "aligned-fails-misaligned-passes",
        [f"{OURS}; dkim=fail header.d=heroku-desk.example; dkim=pass header.d=esp.example"],
        DESK,
        False,
    ),
    ("other-dkim-method", [f"{OURS}; dkim-atps=pass header.d=heroku-desk.example"], DESK, False),
]


@pytest.mark.parametrize(
    ("auth_results", "sender", "aligned"),
    [pytest.param(*case[1:], id=case[0]) for case in DKIM_CASES],
)
def test_dkim_alignment(auth_results: list[str], sender: str, aligned: bool) -> None:
    parsed = parse_message(_on_top(_desk_mail(sender=sender), *auth_results))
    assert dkim_aligned(parsed, OURS) is aligned
    found = recognise(parsed, DKIM_CONFIG)
    assert (found is not None) is aligned
    # Without an authserv_id there is nothing to check: the sender and subject decide.
    assert recognise(parsed, CONFIG) is not None


def test_dkim_fixture_trusts_only_our_authserv_id() -> None:
    parsed = parse_message(_fixture("04-dkim-new-ticket.eml"))
    assert dkim_aligned(parsed, OURS)
    assert not dkim_aligned(parsed, "relay.heroku-desk.example")  # dkim=none there
    assert recognise(parsed, replace(CONFIG, authserv_id="mx.other.example")) is None


def test_dkim_needs_exactly_one_from_mailbox() -> None:
    raw = _on_top(_with_from(_desk_mail(), f"{DESK}, {ATTACKER}"), PASS)
    assert not dkim_aligned(parse_message(raw), OURS)


def test_dkim_failure_from_a_desk_address_is_suspicious() -> None:
    found = examine(parse_message(_on_top(_desk_mail(), FAIL)), DKIM_CONFIG)
    assert found.ticket is None and found.suspicious
    assert OURS in found.reason


# --- configuration --------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "senders": ["Support@Heroku-Desk.example", "support@heroku-desk.example"],
    "reply_address": "support@heroku-desk.example",
    "agent_address": "heroku-agent@acme.test",
    "authserv_id": "mx.acme.test",
}


def test_config_reads_the_table() -> None:
    config = parse_heroku_config(GOOD)
    assert config == HerokuConfig(
        senders=("support@heroku-desk.example",),  # lower-cased, duplicates dropped
        reply_address="support@heroku-desk.example",
        agent_address="heroku-agent@acme.test",
        subject_pattern=DEFAULT_SUBJECT_PATTERN,
        requester_pattern=DEFAULT_REQUESTER_PATTERN,
        solve_line=None,
        authserv_id="mx.acme.test",
    )
    assert config.enabled


def test_no_table_means_the_feature_is_off() -> None:
    config = parse_heroku_config({})
    assert not config.enabled and config.senders == ()
    assert recognise(parse_message(_fixture("01-new-ticket.eml")), config) is None


def test_the_solve_line_is_off_unless_an_operator_sets_it() -> None:
    assert HerokuConfig(senders=(DESK,), reply_address=DESK, agent_address=DESK).solve_line is None
    assert parse_heroku_config(GOOD).solve_line is None
    enabled = parse_heroku_config({**GOOD, "solve_line": " #status solved "})
    assert enabled.solve_line == "#status solved"


def test_default_patterns_carry_their_groups() -> None:
    assert "ticket" in re.compile(DEFAULT_SUBJECT_PATTERN).groupindex
    assert {"email", "name"} <= set(re.compile(DEFAULT_REQUESTER_PATTERN).groupindex)


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


CONFIG_ERRORS = [
    # id, table, message (the whole message, or its start)
    ("unknown-key", {**GOOD, "sender": DESK}, "heroku.sender: unknown key"),
    (
        "bad-subject-regex",
        {**GOOD, "subject_pattern": r"\[Heroku Support\] #(?P<ticket>\d+"},
        "heroku.subject_pattern: bad regex: missing ), unterminated subpattern",
    ),
    (
        "subject-without-ticket-group",
        {**GOOD, "subject_pattern": r"\[Heroku Support\] #(\d+)"},
        "heroku.subject_pattern: needs a (?P<ticket>…) group",
    ),
    (
        "subject-pattern-not-a-string",
        {**GOOD, "subject_pattern": 42},
        "heroku.subject_pattern: expected a string, got int",
    ),
    (
        "bad-requester-regex",
        {**GOOD, "requester_pattern": r"Requester: (?P<email>[^\s]+"},
        "heroku.requester_pattern: bad regex:",
    ),
    (
        "requester-without-email-group",
        {**GOOD, "requester_pattern": r"Requester: (?P<name>.*)"},
        "heroku.requester_pattern: needs a (?P<email>…) group",
    ),
    (
        "missing-reply-address",
        _without("reply_address"),
        "heroku.reply_address: required when heroku.senders is set",
    ),
    (
        "missing-agent-address",
        _without("agent_address"),
        "heroku.agent_address: required when heroku.senders is set",
    ),
    (
        "sender-with-display-name",
        {**GOOD, "senders": [f"Heroku Support <{DESK}>"]},
        "heroku.senders[0]: 'Heroku Support <support@heroku-desk.example>' is not an email address",
    ),
    (
        "sender-without-domain",
        {**GOOD, "senders": [DESK, "support@localhost"]},
        "heroku.senders[1]: 'support@localhost' is not an email address",
    ),
    ("senders-as-a-string", {**GOOD, "senders": DESK}, "heroku.senders: expected an array"),
    (
        "sender-not-a-string",
        {**GOOD, "senders": [DESK, 7]},
        "heroku.senders[1]: expected a string, got int",
    ),
    (
        "invalid-reply-address",
        {**GOOD, "reply_address": "support"},
        "heroku.reply_address: 'support' is not an email address",
    ),
    (
        "invalid-agent-address",
        {**GOOD, "agent_address": "agent@@acme.test"},
        "heroku.agent_address: 'agent@@acme.test' is not an email address",
    ),
    (
        "solve-line-two-lines",
        {**GOOD, "solve_line": "#status solved\nBcc: x@example.org"},
        "heroku.solve_line: must be one line of text",
    ),
    ("solve-line-empty", {**GOOD, "solve_line": " "}, "heroku.solve_line: empty;"),
    ("solve-line-not-a-string", {**GOOD, "solve_line": True}, "heroku.solve_line: expected a"),
    ("authserv-id-empty", {**GOOD, "authserv_id": ""}, "heroku.authserv_id: empty;"),
    (
        "authserv-id-a-whole-header",
        {**GOOD, "authserv_id": "mx.acme.test; dkim=pass"},
        "heroku.authserv_id: 'mx.acme.test; dkim=pass' is not an authserv-id",
    ),
]


@pytest.mark.parametrize(
    ("table", "message"), [pytest.param(*case[1:], id=case[0]) for case in CONFIG_ERRORS]
)
def test_config_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_heroku_config(table)
    assert str(caught.value).startswith(message)


def test_addresses_are_not_required_while_the_feature_is_off() -> None:
    config = parse_heroku_config({"subject_pattern": r"#(?P<ticket>\d+)"})
    assert not config.enabled and config.reply_address == ""


# --- the operator's guide -------------------------------------------------------------------


def _doc_example() -> HerokuConfig:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    tables = [tomllib.loads(block) for block in blocks if "[heroku]" in block]
    assert len(tables) == 1, "docs/heroku.md has one complete [heroku] example"
    return parse_heroku_config(tables[0]["heroku"])


@pytest.mark.parametrize(("name", "config", "ticket", "email", "who"), FIXTURE_CASES)
def test_the_documented_example_recognises_the_fixtures(
    name: str, config: HerokuConfig, ticket: str, email: str | None, who: str | None
) -> None:
    example = _doc_example()
    assert example.solve_line is None  # the example keeps the solve line off
    if config.authserv_id is None:
        example = replace(example, authserv_id=None)  # fixtures without Authentication-Results
    found = recognise(parse_message(_fixture(name)), example)
    assert found is not None
    assert (found.ticket_number, found.requester_email, found.requester_name) == (
        ticket,
        email,
        who,
    )
