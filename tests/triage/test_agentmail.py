"""An agent's mail (helpdeskd.triage.agentmail): who may reply, for how long, with what proof, and
how often the agent hears of held mail."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import ServiceConfig
from helpdeskd.errors import ConfigError
from helpdeskd.mail.parse import ParsedMessage, parse_message
from helpdeskd.mail.tokens import (
    UNDATED_AGENT_TOKENS,
    ReplyToken,
    confirmation_code,
    reply_address,
    tokens_in,
    verify_reply,
)
from helpdeskd.triage.agentmail import (
    HELD_NOTICE_PERIOD,
    SUMMARY_LINES,
    HeldMail,
    HeldNotice,
    HeldNotices,
    Verdict,
    authenticate,
    held_notice,
)
from helpdeskd.triage.mails import agent_reply_to
from tests.triage.plan_support import make_config, write_secrets

SUPPORT = "support@acme.test"
OLD = ("k1", Secret("old-secret-key-0123456789abcdef"))
NEW = ("k2", Secret("new-secret-key-0123456789abcdef"))
NOW = datetime(2026, 12, 20, 9, 30, tzinfo=UTC)
TODAY = NOW.date()
CODE = confirmation_code("<draft-1@acme.test>")
SERVICE = ServiceConfig(
    name="Acme",
    support_address=SUPPORT,
    public_url="https://support.acme.test",
    ticket_prefix="HD",
    secret_keys=(OLD,),
    timezone="UTC",
    state_dir=Path("/nonexistent"),
    authserv_id="mx.acme.test",
)
DKIM_PASS = "mx.acme.test; dkim=pass header.d=acme.test; spf=pass smtp.mailfrom=acme.test"


def mail(
    *to: str,
    sender: str = "Alice <alice@acme.test>",
    results: str | None = None,
) -> ParsedMessage:
    msg = EmailMessage()
    if results is not None:
        msg["Authentication-Results"] = results
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = "Re: [HD-12] cannot connect"
    msg["Message-ID"] = "<agent-1@acme.test>"
    msg.set_content("Fixed.\n")
    return parse_message(msg.as_bytes(policy=SMTP))


def address(
    ref: str = "HD-12",
    agent: int | None = 1,
    issued: date | None = TODAY,
    confirms: str | None = None,
    keys: tuple[tuple[str, Secret], ...] = (OLD,),
) -> str:
    token = ReplyToken(ref, agent, issued if agent else None, confirms)
    return reply_address(SUPPORT, keys, token)


def days_ago(days: int) -> date:
    return TODAY - timedelta(days=days)


# --- authenticate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "service", "reason"),
    [
        ((address(),), {}, None),
        ((address(issued=days_ago(90)),), {}, None),
        ((address(issued=days_ago(91)),), {}, "the reply address has expired"),
        ((address(issued=days_ago(31)),), {"agent_token_days": 30}, "has expired"),
        ((address(issued=days_ago(400)),), {"agent_token_days": 400}, None),
        # a fresh address next to an expired one: the fresh one counts
        ((address(issued=days_ago(200)), address()), {}, None),
        ((address(issued=None),), {}, None),  # undated, from before issue days: bounded below
        ((address(confirms=CODE, issued=days_ago(7)),), {}, None),
        ((address(confirms=CODE, issued=days_ago(8)),), {}, "last 7 days"),
        # rotation: the old key still listed verifies; a key no longer listed does not
        ((address(keys=(OLD,)),), {"secret_keys": (NEW, OLD)}, None),
        ((address(keys=(OLD,)),), {"secret_keys": (NEW,)}, "not sent to the agent's own"),
        ((address(agent=2),), {}, "not this agent's"),
        ((address(agent=None),), {}, "not this agent's"),  # the customer's address
        ((address(ref="HD-13"),), {}, "another ticket"),
        ((SUPPORT,), {}, "not sent to the agent's own reply address"),
    ],
)
def test_authenticate(to: tuple[str, ...], service: dict[str, Any], reason: str | None) -> None:
    verdict = authenticate(mail(*to), 1, "HD-12", replace(SERVICE, **service), NOW)
    assert verdict.authenticated is (reason is None), verdict
    if reason is not None:
        assert reason in verdict.reason
        assert verdict.token is None and not verdict.strong


def test_an_undated_agent_address_expires_after_the_upgrade() -> None:
    later = datetime.combine(UNDATED_AGENT_TOKENS + timedelta(days=91), datetime.min.time(), UTC)
    verdict = authenticate(mail(address(issued=None)), 1, "HD-12", SERVICE, later)
    assert verdict == Verdict(False, "the reply address has expired (reply addresses last 90 days)")


def test_the_verdict_names_the_token_and_the_proof() -> None:
    plain = authenticate(mail(address()), 1, "HD-12", SERVICE, NOW)
    assert plain == Verdict(True, "signed token", False, ReplyToken("HD-12", 1, TODAY))
    proven = authenticate(mail(address(), results=DKIM_PASS), 1, "HD-12", SERVICE, NOW)
    assert proven.authenticated and proven.strong and proven.reason == "signed token and DKIM"
    confirming = authenticate(mail(address(confirms=CODE)), 1, "HD-12", SERVICE, NOW)
    assert confirming.token is not None and confirming.token.confirms == CODE


@pytest.mark.parametrize(
    ("results", "sender", "strong"),
    [
        (DKIM_PASS, "alice@acme.test", True),
        ("mx.acme.test; dkim=pass header.d=evil.example", "alice@acme.test", False),  # unaligned
        ("mx.acme.test; dkim=fail header.d=acme.test", "alice@acme.test", False),
        ("evil.example; dkim=pass header.d=acme.test", "alice@acme.test", False),  # not ours
        (None, "alice@acme.test", False),
    ],
)
def test_strong_proof_is_our_aligned_dkim_pass(
    results: str | None, sender: str, strong: bool
) -> None:
    verdict = authenticate(mail(address(), sender=sender, results=results), 1, "HD-12", SERVICE)
    assert verdict.authenticated and verdict.strong is strong


def test_no_authserv_id_no_strong_proof() -> None:
    service = replace(SERVICE, authserv_id=None)
    verdict = authenticate(mail(address(), results=DKIM_PASS), 1, "HD-12", service, NOW)
    assert verdict.authenticated and not verdict.strong


def test_token_and_dkim_still_needs_dkim() -> None:
    service = replace(SERVICE, agent_auth="token+dkim")
    assert not authenticate(mail(address()), 1, "HD-12", service, NOW).authenticated
    assert authenticate(mail(address(), results=DKIM_PASS), 1, "HD-12", service, NOW).strong


def test_several_from_mailboxes_never_authenticate() -> None:
    parsed = mail(address(), sender="alice@acme.test, eve@evil.example")
    assert authenticate(parsed, 1, "HD-12", SERVICE, NOW).reason == "several From mailboxes"


def test_without_a_time_the_system_clock_decides() -> None:
    """The intake passes its facts' time; a caller without one gets the system clock's."""
    today = datetime.now(UTC).date()
    assert authenticate(mail(address(issued=today)), 1, "HD-12", SERVICE).authenticated
    old = today - timedelta(days=91)
    assert not authenticate(mail(address(issued=old)), 1, "HD-12", SERVICE).authenticated


# --- the agent's reply address -------------------------------------------------------------------


def test_agent_reply_to_is_dated_and_may_confirm(tmp_path: Path) -> None:
    config = make_config(write_secrets(tmp_path))
    keys = config.service.secret_keys
    [text] = tokens_in([agent_reply_to(config, "HD-12", 1, NOW)], config.service.support_address)
    assert verify_reply(keys, text) == ReplyToken("HD-12", 1, TODAY)
    confirm = agent_reply_to(config, "HD-12", 1, NOW, confirms=CODE)
    [text] = tokens_in([confirm], config.service.support_address)
    assert verify_reply(keys, text) == ReplyToken("HD-12", 1, TODAY, CODE)


@pytest.mark.parametrize(("value", "days"), [(None, 90), (30, 30), (1, 1)])
def test_agent_token_days_is_configured(tmp_path: Path, value: int | None, days: int) -> None:
    extra = {} if value is None else {"agent_token_days": value}
    config = make_config(write_secrets(tmp_path), **extra)
    assert config.service.agent_token_days == days


@pytest.mark.parametrize("value", [0, -1, "90", True])
def test_agent_token_days_must_be_a_positive_whole_number(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="agent_token_days"):
        make_config(write_secrets(tmp_path), agent_token_days=value)


# --- notices about held mail ---------------------------------------------------------------------


def held(minutes_ago: int, ticket: str = "HD-12") -> HeldMail:
    return HeldMail(NOW - timedelta(minutes=minutes_ago), ticket, "not sent to the agent's own")


@pytest.mark.parametrize(
    ("last_told", "send"),
    [
        (None, True),  # never told
        (NOW - timedelta(minutes=59), False),
        (NOW - HELD_NOTICE_PERIOD, True),
        (NOW - timedelta(days=3), True),
        (NOW + timedelta(minutes=5), False),  # another daemon's clock ahead: just told
    ],
)
def test_at_most_one_notice_per_period(last_told: datetime | None, send: bool) -> None:
    assert held_notice(HeldNotices(last_told), NOW).send is send


def test_the_next_notice_sums_up_what_was_held_meanwhile() -> None:
    notices = HeldNotices(NOW - timedelta(minutes=70), 2, (held(50), held(20, "HD-13")))
    assert held_notice(notices, NOW) == HeldNotice(
        True,
        (
            "",
            "2 more mails from your address were held since 2026-12-20 08:20 UTC without a"
            " notice each (you get at most one every 60 minutes):",
            "  - 2026-12-20 08:40 UTC, HD-12: not sent to the agent's own",
            "  - 2026-12-20 09:10 UTC, HD-13: not sent to the agent's own",
        ),
    )


def test_a_long_summary_is_cut() -> None:
    recent = tuple(held(59 - n) for n in range(SUMMARY_LINES + 5))
    notice = held_notice(HeldNotices(NOW - timedelta(hours=2), 500, recent), NOW)
    assert notice.send
    assert len(notice.summary) == 2 + SUMMARY_LINES + 1
    # the newest are listed, oldest first
    assert notice.summary[2:-1] == tuple(held_line(m) for m in recent[-SUMMARY_LINES:])
    assert notice.summary[-1] == f"  - and {500 - SUMMARY_LINES} earlier"


def held_line(mail: HeldMail) -> str:
    return f"  - {mail.at:%Y-%m-%d %H:%M} UTC, {mail.ticket}: {mail.reason}"


def test_a_suppressed_notice_sums_nothing_up() -> None:
    notices = HeldNotices(NOW - timedelta(minutes=5), 3, (held(4), held(3), held(2)))
    assert held_notice(notices, NOW) == HeldNotice(False)


def test_a_notice_without_a_last_one_still_counts_what_was_held() -> None:
    """The lookup looks back only so far: older held mail is counted without a 'since'."""
    notice = held_notice(HeldNotices(None, 1, (held(600),)), NOW)
    assert notice.send and "were held without a notice" in notice.summary[1]


def test_the_period_is_a_parameter() -> None:
    notices = HeldNotices(NOW - timedelta(minutes=20))
    assert held_notice(notices, NOW, timedelta(minutes=15)).send
    assert not held_notice(notices, NOW, timedelta(minutes=30)).send
