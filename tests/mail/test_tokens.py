"""Reply tokens (DESIGN.md "Threading" step 1): signing, verification, rotation, extraction."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpdeskd.config.secrets import Secret
from helpdeskd.mail.tokens import (
    ReplyToken,
    UnsubscribeToken,
    reply_address,
    sign_reply,
    sign_unsubscribe,
    tokens_in,
    verify_reply,
    verify_unsubscribe,
)

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
PLAIN_MAC = PLAIN.rsplit(".", 1)[1]
AGENT_MAC = AGENT.rsplit(".", 1)[1]


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
def test_key_rotation(
    signing: tuple[tuple[str, Secret], ...],
    verifying: tuple[tuple[str, Secret], ...],
    valid: bool,
) -> None:
    text = sign_reply(signing, ReplyToken("HD-1042", agent_id=2))
    assert text.split(".")[2] == signing[0][0]  # the first key signs
    expected = ReplyToken("HD-1042", agent_id=2) if valid else None
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
