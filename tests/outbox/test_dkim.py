"""DKIM signing of outgoing mail: notices verify, and their List-* headers cannot be changed."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim
import pytest

from helpdeskd.config.load import parse_dkim_config
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import DEFAULT_HEADERS, DkimConfig
from helpdeskd.errors import ConfigError
from helpdeskd.mail.build import OutgoingMail, build_message
from helpdeskd.outbox.dkim import Signer, aligned, sign
from helpdeskd.triage.loops import automatic_headers
from tests.config.support import KeyPair, dkim_table, needs_openssl, openssl, rsa_key_pair

pytestmark = needs_openssl

UNSUBSCRIBE_URL = "https://desk.example.com/unsubscribe/TOKEN123"
LIST_UNSUBSCRIBE = f"<{UNSUBSCRIBE_URL}>, <mailto:unsubscribe+TOKEN123@example.com>"
LIST_ID = "Example feature-update notices <feature-update.notices.example.com>"
DnsFunc = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return rsa_key_pair()


def _config(key: KeyPair, **changes: Any) -> DkimConfig:
    values: dict[str, Any] = {
        "domain": "example.com",
        "selector": "s1",
        "private_key": Secret(key.pem),
        **changes,
    }
    return DkimConfig(**values)


def _dns(key: KeyPair, name: bytes = b"s1._domainkey.example.com.") -> DnsFunc:
    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return key.record if qname == name else None

    return lookup


def _verify(message: bytes, key: KeyPair) -> bool:
    result: bool = dkim.verify(message, dnsfunc=_dns(key))
    return result


def _notice(from_addr: str = "notices@example.com", *, critical: bool = False) -> bytes:
    """A notice built the way helpdeskd.desk.notices builds them."""
    headers = dict(automatic_headers("support@example.com", "auto-generated"))
    headers["List-Id"] = LIST_ID
    if not critical:
        headers["List-Unsubscribe"] = LIST_UNSUBSCRIBE
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return build_message(
        OutgoingMail(
            from_addr=from_addr,
            from_name="Example",
            to=("customer@example.org",),
            subject="New: widgets in every plan",
            text=f"Widgets are here.\n\nTo stop these mails: {UNSUBSCRIBE_URL}\n",
            html=f'<p>Widgets are here.</p><p><a href="{UNSUBSCRIBE_URL}">Unsubscribe</a></p>',
            message_id="<notice-1@example.com>",
            date=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
            reply_to="support@example.com",
            extra_headers=headers,
        )
    )


def _tags(signed: bytes) -> dict[str, str]:
    assert signed.startswith(b"DKIM-Signature: ")
    field = re.match(rb"DKIM-Signature: (.*?\r?\n)(?![ \t])", signed, re.DOTALL)
    assert field is not None
    value = re.sub(r"\s+", "", field.group(1).decode())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def _signed_names(signed: bytes) -> list[str]:
    return _tags(signed)["h"].split(":")


# --- signing and verifying ----------------------------------------------------------------------


def test_a_notice_verifies_with_its_list_headers_signed(rsa_key: KeyPair) -> None:
    message = _notice()
    signed = sign(message, _config(rsa_key))
    assert signed.endswith(message)
    assert _verify(signed, rsa_key)
    tags = _tags(signed)
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        "example.com",
        "s1",
    )
    names = _signed_names(signed)
    assert names.count("from") == 2  # oversigned
    assert names.count("list-unsubscribe") == 2  # oversigned
    for name in ("list-unsubscribe-post", "list-id", "auto-submitted", "reply-to", "date"):
        assert names.count(name) == 1, name
    for name in ("message-id", "subject", "to", "mime-version", "content-type"):
        assert name in names
    assert "x-loop" not in names and "cc" not in names  # not in DEFAULT_HEADERS / not present


def test_a_pkcs1_rsa_key_works(rsa_key: KeyPair) -> None:
    pkcs1 = openssl("pkey", "-traditional", data=rsa_key.pem.encode()).decode()
    assert "BEGIN RSA PRIVATE KEY" in pkcs1
    signed = sign(_notice(), _config(rsa_key, private_key=Secret(pkcs1)))
    assert _verify(signed, rsa_key)


def test_lf_line_ends_sign_and_verify(rsa_key: KeyPair) -> None:
    message = _notice().replace(b"\r\n", b"\n")
    signed = sign(message, _config(rsa_key))
    assert b"\r\n" not in signed
    assert _verify(signed, rsa_key)


def test_the_wrong_public_key_fails(rsa_key: KeyPair) -> None:
    signed = sign(_notice(), _config(rsa_key))
    assert not _verify(signed, rsa_key_pair())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (UNSUBSCRIBE_URL.encode(), b"https://evil.example/unsubscribe/TOKEN123"),
        (b"<mailto:unsubscribe+TOKEN123@", b"<mailto:unsubscribe+TOKEN999@"),
        (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b""),
        (LIST_ID.encode(), b"Example other notices <other.notices.example.com>"),
        (b"Widgets are here.", b"Gadgets are here."),
    ],
    ids=["unsubscribe-url", "unsubscribe-mailto", "drop-post", "list-id", "body"],
)
def test_tampering_after_signing_fails(rsa_key: KeyPair, old: bytes, new: bytes) -> None:
    signed = sign(_notice(), _config(rsa_key))
    assert old in signed
    assert not _verify(signed.replace(old, new, 1), rsa_key)


def test_an_added_list_unsubscribe_fails_because_it_is_oversigned(rsa_key: KeyPair) -> None:
    signed = sign(_notice(), _config(rsa_key))
    extra = b"List-Unsubscribe: <https://evil.example/unsubscribe>\r\n"
    assert not _verify(extra + signed, rsa_key)
    assert not _verify(b"From: Eve <eve@example.com>\r\n" + signed, rsa_key)
    # The control: Subject is signed once, not oversigned, and a second one added on top
    # still verifies. So it is the oversigning that catches the List-Unsubscribe above.
    assert _verify(b"Subject: an added subject\r\n" + signed, rsa_key)


def test_a_critical_notice_cannot_gain_a_list_unsubscribe(rsa_key: KeyPair) -> None:
    signed = sign(_notice(critical=True), _config(rsa_key))
    assert _verify(signed, rsa_key)
    assert _signed_names(signed).count("list-unsubscribe") == 1  # signed as absent
    extra = b"List-Unsubscribe: <https://evil.example/unsubscribe>\r\n"
    assert not _verify(extra + signed, rsa_key)


def test_only_the_configured_headers_are_signed(rsa_key: KeyPair) -> None:
    signed = sign(_notice(), _config(rsa_key, headers=("From", "Subject", "subject")))
    assert _signed_names(signed) == ["from", "from", "subject"]
    assert _verify(signed.replace(LIST_ID.encode(), b"Changed <x.example.com>"), rsa_key)


def test_ed25519_keys_work() -> None:
    pytest.importorskip("nacl", reason="dkimpy signs with Ed25519 only with PyNaCl")
    pem = openssl("genpkey", "-algorithm", "ed25519")
    spki = openssl("pkey", "-pubout", "-outform", "DER", data=pem)
    key = KeyPair(pem.decode(), b"v=DKIM1; k=ed25519; p=" + base64.b64encode(spki[-32:]))
    signed = sign(_notice(), _config(key))
    assert _tags(signed)["a"] == "ed25519-sha256"
    assert _verify(signed, key)
    changed = signed.replace(UNSUBSCRIBE_URL.encode(), b"https://evil.example/u", 1)
    assert not _verify(changed, key)
    assert not _verify(b"List-Unsubscribe: <https://evil.example/u>\r\n" + signed, key)


def test_an_ed25519_key_from_dknewkey_works() -> None:
    nacl_signing = pytest.importorskip("nacl.signing")
    signing_key = nacl_signing.SigningKey.generate()
    seed = base64.b64encode(bytes(signing_key)).decode()  # what `dknewkey --ktype ed25519` writes
    public = base64.b64encode(bytes(signing_key.verify_key))
    key = KeyPair(seed + "\n", b"v=DKIM1; k=ed25519; p=" + public)
    assert _verify(sign(_notice(), _config(key)), key)


# --- alignment ------------------------------------------------------------------------------


def test_a_from_subdomain_aligns(rsa_key: KeyPair) -> None:
    signed = sign(_notice("notices@mail.example.com"), _config(rsa_key))
    assert _verify(signed, rsa_key)


@pytest.mark.parametrize(
    "from_addr", ["notices@example.net", "notices@badexample.com", "notices@example.com.evil.test"]
)
def test_a_from_outside_the_domain_raises(rsa_key: KeyPair, from_addr: str) -> None:
    with pytest.raises(ValueError, match=re.escape("not 'example.com' or a subdomain")):
        sign(_notice(from_addr), _config(rsa_key))


def test_two_from_fields_raise(rsa_key: KeyPair) -> None:
    with pytest.raises(ValueError, match="2 From header fields"):
        sign(b"From: a@example.com\r\n" + _notice(), _config(rsa_key))


@pytest.mark.parametrize(
    ("from_domain", "dkim_domain", "expected"),
    [
        ("example.com", "example.com", True),
        ("Mail.EXAMPLE.com.", "example.com", True),
        ("example.com", "mail.example.com", False),
        ("notexample.com", "example.com", False),
        ("bücher.example", "xn--bcher-kva.example", True),
        ("", "example.com", False),
    ],
)
def test_aligned(from_domain: str, dkim_domain: str, expected: bool) -> None:
    assert aligned(from_domain, dkim_domain) is expected


# --- from the [dkim] table to a signature --------------------------------------------------


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: KeyPair) -> Path:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "dkim.key").write_text(rsa_key.pem)
    return tmp_path


def test_config_from_a_key_file(base: Path, rsa_key: KeyPair) -> None:
    config = parse_dkim_config(dkim_table(), base)
    assert (config.domain, config.selector) == ("example.com", "s1")
    assert config.private_key == Secret(rsa_key.pem.strip())
    assert config.headers == DEFAULT_HEADERS
    assert "PRIVATE" not in repr(config) and "***" in repr(config)
    assert _verify(sign(_notice(), config), rsa_key)


def test_an_unreadable_credential_outside_the_service_fails_only_when_used(
    base: Path, rsa_key: KeyPair
) -> None:
    table = dkim_table(key_file=None, key_credential="dkim.key")
    config = parse_dkim_config(table, base, lenient_credentials=True)
    assert not config.private_key.available
    with pytest.raises(ConfigError, match=re.escape("dkim.key_credential: only the service")):
        sign(_notice(), config)


def test_a_bad_key_in_a_direct_config_raises_on_sign(rsa_key: KeyPair) -> None:
    config = _config(rsa_key, private_key=Secret("nonsense"))
    with pytest.raises(ValueError, match="not a PEM private key"):
        sign(_notice(), config)


# --- where the signing runs ------------------------------------------------------------------


async def test_the_signer_signs_rsa_in_a_worker_process(rsa_key: KeyPair) -> None:
    """dkimpy's RSA is pure Python (milliseconds a mail, under the GIL): it goes to a worker
    process, and what comes back verifies."""
    signer = Signer(_config(rsa_key), workers=1)
    try:
        signed = await signer.sign(_notice())
        assert signer.offloaded
        assert _verify(signed, rsa_key)
        with pytest.raises(ValueError, match=r"not 'example\.com'"):  # errors come back as such
            await signer.sign(_notice("notices@elsewhere.example"))
    finally:
        signer.close()


async def test_the_signer_signs_ed25519_in_this_process() -> None:
    pytest.importorskip("nacl", reason="dkimpy signs with Ed25519 only with PyNaCl")
    pem = openssl("genpkey", "-algorithm", "ed25519")
    spki = openssl("pkey", "-pubout", "-outform", "DER", data=pem)
    key = KeyPair(pem.decode(), b"v=DKIM1; k=ed25519; p=" + base64.b64encode(spki[-32:]))
    signer = Signer(_config(key))
    try:
        signed = await signer.sign(_notice())
        assert not signer.offloaded  # cheaper here than a trip to another process
        assert _verify(signed, key)
    finally:
        signer.close()
