"""Reply tokens (DESIGN.md "Threading" step 1): signing, verification, rotation, extraction,
and agent tokens' issue days, expiry and confirmations ("Agents by email"); VERP return paths
per recipient, and the per-row form of mail sent before them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from helpdeskd.config.secrets import Secret
from helpdeskd.mail.tokens import (
    CONFIRM_DAYS,
    TOKEN_EPOCH,
    UNDATED_AGENT_TOKENS,
    BounceToken,
    ReplyToken,
    UnsubscribeToken,
    agent_token_expired,
    bounce_address,
    confirmation_code,
    issue_day,
    reply_address,
    sign_bounce,
    sign_reply,
    sign_unsubscribe,
    token_days,
    tokens_in,
    verify_bounce,
    verify_reply,
    verify_unsubscribe,
)

DAY = date(2026, 12, 5)
CODE = confirmation_code("<draft-1@acme.test>")
OLD = ("k1", Secret("old-secret-key-0123456789abcdef"))
NEW = ("k2", Secret("new-secret-key-0123456789abcdef"))
KEYS = (OLD,)
SUPPORT = "support@acme.test"


def _swap_mac_char(text: str) -> str:
    """Return TEXT with the last MAC character changed (still valid base32)."""
    return text[:-1] + ("a" if text[-1] != "a" else "b")


@pytest.mark.parametrize(
    "token",
    [
        ReplyToken("HD-1042"),
        ReplyToken("HD-1"),
        ReplyToken("ACME-99999999"),
        ReplyToken("HD-1042", agent_id=3),
        ReplyToken("HD-7", agent_id=12345),
        ReplyToken("HD-1042", agent_id=3, issued=DAY),
        ReplyToken("HD-1042", agent_id=3, issued=TOKEN_EPOCH),
        ReplyToken("HD-1042", agent_id=3, issued=DAY, confirms=CODE),
    ],
    ids=str,
)
def test_sign_verify_round_trip(token: ReplyToken) -> None:
    text = sign_reply(KEYS, token)
    assert verify_reply(KEYS, text) == token
    # The token travels in an address local part: nothing there may need quoting.
    assert all(c.isalnum() or c in ".-" for c in text)


def test_reply_address_is_a_plus_address_of_the_support_address() -> None:
    address = reply_address(SUPPORT, KEYS, ReplyToken("HD-1042"))
    local, _, domain = address.rpartition("@")
    assert domain == "acme.test"
    assert local.startswith("support+HD-1042.k1.")
    assert tokens_in([address], SUPPORT) == [local.partition("+")[2]]
    assert verify_reply(KEYS, tokens_in([address], SUPPORT)[0]) == ReplyToken("HD-1042")


AGENT = sign_reply(KEYS, ReplyToken("HD-1042", agent_id=3))
PLAIN = sign_reply(KEYS, ReplyToken("HD-1042"))
DATED = sign_reply(KEYS, ReplyToken("HD-1042", agent_id=3, issued=DAY))
CONFIRMS = sign_reply(KEYS, ReplyToken("HD-1042", agent_id=3, issued=DAY, confirms=CODE))
PLAIN_MAC = PLAIN.rsplit(".", 1)[1]
AGENT_MAC = AGENT.rsplit(".", 1)[1]
DATED_MAC = DATED.rsplit(".", 1)[1]
CONFIRMS_MAC = CONFIRMS.rsplit(".", 1)[1]
N = (DAY - TOKEN_EPOCH).days


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (_swap_mac_char(PLAIN), "tampered MAC"),
        (PLAIN[:-1], "truncated MAC"),
        (PLAIN + "a", "MAC too long"),
        (f"HD-1043.k1.{PLAIN_MAC}", "MAC of another ticket"),
        (f"HD-10420.k1.{PLAIN_MAC}", "ref with a digit appended"),
        (f"XX-1042.k1.{PLAIN_MAC}", "other prefix"),
        (f"HD-1042.k9.{PLAIN_MAC}", "unknown key id"),
        (f"HD-1042.{PLAIN_MAC}", "no key id"),
        (f"HD-1042.a4.k1.{AGENT_MAC}", "agent token moved to another agent"),
        (f"HD-1042.k1.{AGENT_MAC}", "agent binding stripped"),
        (f"HD-1042.a3.k1.{PLAIN_MAC}", "agent binding added to a customer token"),
        ("HD-1042", "bare ref"),
        ("", "empty"),
        ("HD-1042.k1.0000000000", "not base32"),
        (f"HD-1042.k1.{PLAIN_MAC}.extra", "trailing junk"),
        (f"HD-1042.a3.d{N + 100}.k1.{DATED_MAC}", "issue day moved later"),
        (f"HD-1042.a3.d0{N}.k1.{DATED_MAC}", "issue day with a leading zero"),
        (f"HD-1042.a3.k1.{DATED_MAC}", "issue day stripped"),
        (f"HD-1042.a3.d{N}.k1.{AGENT_MAC}", "issue day added to an undated token"),
        (f"HD-1042.a4.d{N}.k1.{DATED_MAC}", "dated token moved to another agent"),
        (f"HD-1042.d{N}.k1.{DATED_MAC}", "issue day on a customer token"),
        (f"HD-1042.a3.d{N}.c{CODE}.k1.{DATED_MAC}", "confirmation added to an agent token"),
        (f"HD-1042.a3.d{N}.k1.{CONFIRMS_MAC}", "confirmation stripped"),
        (f"HD-1042.a3.d{N}.caaaaaa.k1.{CONFIRMS_MAC}", "confirmation of another held reply"),
        (f"HD-1042.a3.c{CODE}.k1.{CONFIRMS_MAC}", "confirmation without an issue day"),
        (f"HD-1042.a3.d{N}.c{CODE}a.k1.{CONFIRMS_MAC}", "confirmation code too long"),
    ],
    ids=lambda v: v if " " in str(v) else None,
)
def test_refused(text: str, why: str) -> None:
    assert verify_reply(KEYS, text) is None, why


def test_key_id_names_the_key_that_signed() -> None:
    """A MAC made with k1 but relabelled k2 is refused even though k2 is configured."""
    keys = (OLD, NEW)
    old_text = sign_reply((OLD,), ReplyToken("HD-5"))
    relabelled = old_text.replace(".k1.", ".k2.")
    assert verify_reply(keys, old_text) == ReplyToken("HD-5")
    assert verify_reply(keys, relabelled) is None


@pytest.mark.parametrize(
    ("signing", "verifying", "valid"),
    [
        ((OLD,), (OLD,), True),
        ((OLD,), (NEW, OLD), True),  # rotated: the old key is still listed second
        ((NEW, OLD), (NEW, OLD), True),
        ((NEW, OLD), (NEW,), True),
        ((OLD,), (NEW,), False),  # the old key was removed
        ((NEW,), (OLD,), False),
        # Same key id, different secret (a key replaced without a new id).
        ((OLD,), (("k1", Secret("another-secret-0123456789abcdef")),), False),
    ],
)
@pytest.mark.parametrize(
    "token",
    [
        ReplyToken("HD-1042", agent_id=2),
        ReplyToken("HD-1042", agent_id=2, issued=DAY),
        ReplyToken("HD-1042", agent_id=2, issued=DAY, confirms=CODE),
    ],
    ids=["undated", "dated", "confirmation"],
)
def test_key_rotation(
    signing: tuple[tuple[str, Secret], ...],
    verifying: tuple[tuple[str, Secret], ...],
    valid: bool,
    token: ReplyToken,
) -> None:
    text = sign_reply(signing, token)
    assert text.split(".")[-2] == signing[0][0]  # the first key signs
    expected = token if valid else None
    assert verify_reply(verifying, text) == expected


@pytest.mark.parametrize(
    "transform",
    [
        str.lower,  # parsing lower-cases every address
        lambda t: t.replace("HD-", "hd-"),
        lambda t: t.replace("HD-", "Hd-"),
        lambda t: f"  {t}  ",
    ],
    ids=["lower", "lower-ref", "mixed-ref", "spaces"],
)
def test_ref_is_case_insensitive(transform: Callable[[str], str]) -> None:
    text = sign_reply(KEYS, ReplyToken("HD-1042", agent_id=3))
    assert verify_reply(KEYS, transform(text)) == ReplyToken("HD-1042", agent_id=3)


def test_signing_a_lower_case_ref_gives_the_upper_case_token() -> None:
    assert sign_reply(KEYS, ReplyToken("hd-1042")) == sign_reply(KEYS, ReplyToken("HD-1042"))


@pytest.mark.parametrize("kid", ["K1", "Key2026", "k1"])
def test_key_id_survives_lower_casing(kid: str) -> None:
    """Parsing lower-cases addresses, so a key id configured with capitals must still verify."""
    keys = ((kid, Secret("a-secret-key-0123456789abcdef")),)
    text = sign_reply(keys, ReplyToken("HD-9"))
    assert verify_reply(keys, text.lower()) == ReplyToken("HD-9")
    assert verify_reply(keys, text.upper()) == ReplyToken("HD-9")


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["support+HD-1.k1.abc@acme.test"], ["HD-1.k1.abc"]),
        (["Support+HD-1.k1.abc@ACME.TEST"], ["HD-1.k1.abc"]),
        (["support@acme.test"], []),
        (["support+@acme.test"], []),
        (["support+HD-1.k1.abc@other.test"], []),  # not the support domain
        (["support+HD-1.k1.abc@sub.acme.test"], []),
        (["support+HD-1.k1.abc@acme.test.evil.test"], []),
        (["sales+HD-1.k1.abc@acme.test"], []),  # not the support local part
        (["xsupport+HD-1.k1.abc@acme.test"], []),
        (["support-HD-1.k1.abc@acme.test"], []),
        (["HD-1.k1.abc"], []),
        (
            ["jane@example.org", "support+HD-1.k1.abc@acme.test", "support+HD-2.k1.def@acme.test"],
            ["HD-1.k1.abc", "HD-2.k1.def"],
        ),
    ],
)
def test_tokens_in(addresses: list[str], expected: list[str]) -> None:
    assert tokens_in(addresses, SUPPORT) == expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (ReplyToken("HD-1042"), "HD-1042.k1.ysbuqms5pt"),
        (ReplyToken("HD-1042", agent_id=3), "HD-1042.a3.k1.5opwc2ksaq"),
        (ReplyToken("HD-1042", agent_id=3, issued=DAY), "HD-1042.a3.d2530.k1.fvh77rn6yl"),
        (
            ReplyToken("HD-1042", agent_id=3, issued=DAY, confirms=confirmation_code("<a@b>")),
            "HD-1042.a3.d2530.c7vbkqt.k1.askf3b2ttx",
        ),
        (UnsubscribeToken(17, "maintenance"), "17-maintenance.k1.rcrdbekakv"),
    ],
    ids=str,
)
def test_tokens_already_sent_stay_valid(
    token: ReplyToken | UnsubscribeToken, expected: str
) -> None:
    """Known answers: the signature of a token is fixed, or every reply address and unsubscribe
    link in customers' mailboxes would stop working with an upgrade."""
    keys = (("k1", Secret("correct horse battery staple")),)
    if isinstance(token, ReplyToken):
        assert sign_reply(keys, token) == expected
        assert verify_reply(keys, expected) == token
    else:
        assert sign_unsubscribe(keys, token) == expected
        assert verify_unsubscribe(keys, expected) == token


# --- agent tokens: issue days, expiry, confirmations ---------------------------------------------


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("token", "age", "days", "expired"),
    [
        (ReplyToken("HD-1", 3, issued=DAY), 0, 90, False),
        (ReplyToken("HD-1", 3, issued=DAY), 90, 90, False),  # valid through its 90th day
        (ReplyToken("HD-1", 3, issued=DAY), 91, 90, True),
        (ReplyToken("HD-1", 3, issued=DAY), 31, 30, True),  # agent_token_days configured
        (ReplyToken("HD-1", 3, issued=DAY), -3, 90, False),  # another daemon's clock ahead
        (ReplyToken("HD-1"), 10_000, 90, False),  # a customer's token never expires
        (ReplyToken("HD-1", 3, issued=DAY, confirms=CODE), CONFIRM_DAYS, 90, False),
        (ReplyToken("HD-1", 3, issued=DAY, confirms=CODE), CONFIRM_DAYS + 1, 90, True),
        (ReplyToken("HD-1", 3, issued=DAY, confirms=CODE), 3, 2, True),  # never past the rest
    ],
)
def test_agent_token_expiry(token: ReplyToken, age: int, days: int, expired: bool) -> None:
    issued = token.issued or DAY
    assert agent_token_expired(token, at(issued + timedelta(days=age)), days) is expired


@pytest.mark.parametrize(("age", "expired"), [(0, False), (90, False), (91, True)])
def test_undated_agent_tokens_count_as_issued_on_the_upgrade(age: int, expired: bool) -> None:
    """Agent tokens from before issue days stay bounded: they expire like one issued that day."""
    token = verify_reply(KEYS, AGENT)
    assert token == ReplyToken("HD-1042", agent_id=3)  # it still verifies
    now = at(UNDATED_AGENT_TOKENS + timedelta(days=age))
    assert agent_token_expired(token, now, 90) is expired


def test_token_days() -> None:
    assert token_days(ReplyToken("HD-1", 3, issued=DAY), 90) == 90
    assert token_days(ReplyToken("HD-1", 3, issued=DAY, confirms=CODE), 90) == CONFIRM_DAYS


def test_the_issue_day_is_the_utc_date() -> None:
    late = datetime(2026, 12, 5, 23, 30, tzinfo=UTC)
    assert issue_day(late) == DAY
    assert issue_day(late.astimezone(timezone(timedelta(hours=3)))) == DAY  # 02:30 the next day


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"issued": DAY}, "only an agent's token"),
        ({"confirms": CODE}, "only an agent's token"),
        ({"agent_id": 3, "confirms": CODE}, "needs an issue day"),
        ({"agent_id": 3, "issued": DAY, "confirms": "ABC"}, "base32"),
        ({"agent_id": 3, "issued": date(2019, 12, 31)}, "on or after"),
    ],
)
def test_a_token_that_cannot_be_written_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReplyToken("HD-1", **kwargs)


def test_confirmation_codes() -> None:
    codes = {confirmation_code(f"<draft-{n}@acme.test>") for n in range(200)}
    assert len(codes) == 200
    assert all(len(code) == 6 and code.isalnum() and code == code.lower() for code in codes)
    assert confirmation_code("<draft-1@acme.test>") == CODE  # the same held mail, the same code


def test_an_agent_address_stays_short() -> None:
    """A local part has at most 64 octets (RFC 5321); ours stays well under for real refs."""
    keys = (("key2026", Secret("a-secret-key-0123456789abcdef")),)
    token = ReplyToken("HD-99999999", agent_id=99999, issued=date(2047, 1, 1), confirms=CODE)
    address = reply_address(SUPPORT, keys, token)
    local = address.rpartition("@")[0]
    assert len(local) <= 60, local
    typical = reply_address(SUPPORT, KEYS, ReplyToken("HD-1042", agent_id=3, issued=DAY))
    assert len(typical.rpartition("@")[0]) <= 40, typical


# --- VERP return paths ---------------------------------------------------------------------------

RECIPIENT = BounceToken("recipient", 4242)  # an outbox_recipients row
ROW = BounceToken("outbox", 4242)  # an outbox row: the form of mail sent before the upgrade


@pytest.mark.parametrize(
    "token",
    [RECIPIENT, ROW, BounceToken("recipient", 1), BounceToken("recipient", 10**18 - 1)],
    ids=str,
)
def test_bounce_tokens_round_trip(token: BounceToken) -> None:
    text = sign_bounce(KEYS, token)
    assert text.startswith("r" if token.kind == "recipient" else f"{token.id}.")
    assert verify_bounce(KEYS, text) == token
    assert verify_bounce(KEYS, text.upper()) == token  # parsing may change an address's case


def test_the_return_path_names_one_recipient() -> None:
    address = bounce_address("bounces@acme.test", KEYS, 4242)
    local, _, domain = address.rpartition("@")
    assert domain == "acme.test" and local.startswith("bounces+r4242.")
    assert verify_bounce(KEYS, local.removeprefix("bounces+")) == RECIPIENT
    assert len(bounce_address("bounces@acme.test", KEYS, 10**18 - 1).partition("@")[0]) <= 40


def test_bounce_tokens_already_sent_stay_valid() -> None:
    """Known answers: return paths of mail already sent must still verify after an upgrade,
    the per-row form of mail sent before return paths were per recipient among them."""
    keys = (("k1", Secret("correct horse battery staple")),)
    assert sign_bounce(keys, ROW) == "4242.wlz6ilypwj"
    assert verify_bounce(keys, "4242.wlz6ilypwj") == ROW
    assert sign_bounce(keys, RECIPIENT) == "r4242.xac5emo23d"
    assert verify_bounce(keys, "r4242.xac5emo23d") == RECIPIENT


def _other_kind(text: str) -> str:
    return text.removeprefix("r") if text.startswith("r") else f"r{text}"


@pytest.mark.parametrize("token", [RECIPIENT, ROW], ids=str)
@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (_swap_mac_char, "another MAC"),
        (lambda t: t.replace("4242", "4243"), "another id"),
        (lambda t: t.replace("4242", "04242"), "the id as it was not written"),
        (_other_kind, "the other kind with this MAC"),
        (lambda t: t.partition(".")[0], "no MAC"),
        (lambda t: t[:-1], "a short MAC"),
        (lambda t: t.replace(".", ".k1."), "a key id"),
        (lambda t: f"x{t}", "another prefix"),
        (lambda t: "", "nothing"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_tampered_bounce_token_is_refused(
    token: BounceToken, tamper: Callable[[str], str], why: str
) -> None:
    assert verify_bounce(KEYS, tamper(sign_bounce(KEYS, token))) is None, why


def test_a_bounce_token_with_too_long_an_id_is_refused() -> None:
    for token in (BounceToken("recipient", 10**18), BounceToken("outbox", 10**18)):
        text = sign_bounce(KEYS, token)  # 19 digits: no row has such an id
        assert verify_bounce(KEYS, text) is None, text


@pytest.mark.parametrize("token", [RECIPIENT, ROW], ids=str)
@pytest.mark.parametrize(
    ("signing", "verifying", "valid"),
    [
        ((OLD,), (OLD,), True),
        ((OLD,), (NEW, OLD), True),  # rotated: the old key still listed verifies
        ((NEW, OLD), (NEW, OLD), True),
        ((NEW, OLD), (OLD,), False),  # signed with the new key, which this side lacks
        ((OLD,), (NEW,), False),  # the old key no longer listed
    ],
)
def test_bounce_key_rotation(
    signing: tuple[tuple[str, Secret], ...],
    verifying: tuple[tuple[str, Secret], ...],
    valid: bool,
    token: BounceToken,
) -> None:
    assert verify_bounce(verifying, sign_bounce(signing, token)) == (token if valid else None)


def test_a_reply_or_unsubscribe_mac_is_no_bounce_token() -> None:
    """Each kind of token has its own purpose in the MAC: one cannot pass for another."""
    unsubscribe = sign_unsubscribe(KEYS, UnsubscribeToken(4242, "maintenance"))
    mac = unsubscribe.rpartition(".")[2]
    assert verify_bounce(KEYS, f"4242.{mac}") is None
    assert verify_bounce(KEYS, f"r4242.{mac}") is None
