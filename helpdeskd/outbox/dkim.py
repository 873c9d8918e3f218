"""DKIM-sign outgoing mail (RFC 6376) so List-Unsubscribe and its friends are covered.

Where the relay does not sign, helpdeskd signs its own mail with dkimpy: relaxed/relaxed
canonicalisation, ``rsa-sha256`` for RSA keys (2048 bits or more) and ``ed25519-sha256`` for
Ed25519 keys (RFC 8463; needs PyNaCl, dkimpy's ``ed25519`` extra). From and List-Unsubscribe are
oversigned: ``h=`` names them once more than they occur, so nobody can add a second one (or, to
a critical notice, a first one) without breaking the signature. The private key lives in a
:class:`~helpdeskd.config.settings.Secret` and never reaches a log, repr or error message.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto

from helpdeskd.config.settings import _LENIENT_CREDENTIALS, Secret
from helpdeskd.errors import ConfigError

DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
)
# Signed once more than they occur, so none can be added after signing (RFC 6376 section 8.15).
OVERSIGNED = frozenset({"from", "list-unsubscribe"})
# RFC 6376 section 5.4.1: relays add or rewrite these; dkimpy refuses to sign them.
_NEVER_SIGNED = frozenset(
    {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature"}
)
RSA_MIN_BITS = 2048

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_DKNEWKEY_ED25519 = re.compile(r"[A-Za-z0-9+/]{43}=")  # dknewkey's Ed25519 file: base64 seed
_OID_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_OID_ED25519 = bytes.fromhex("2b6570")  # 1.3.101.112 (RFC 8410)
_KEY_SOURCES = ("key_file", "key_env", "key_credential")
_KEYS = frozenset({"domain", "selector", *_KEY_SOURCES})


@dataclass(frozen=True)
class DkimConfig:
    domain: str  # d=
    selector: str  # s=
    private_key: Secret  # PEM (RSA 2048+ or Ed25519 per RFC 8463), never logged
    headers: tuple[str, ...] = DEFAULT_HEADERS  # what to sign, where present

    def __post_init__(self) -> None:
        names = {name.lower() for name in self.headers}
        if "from" not in names:
            raise ValueError("DKIM headers must include From (RFC 6376 section 5.4)")
        never = sorted(names & _NEVER_SIGNED)
        if never:
            raise ValueError(f"DKIM headers must not include {never[0]} (RFC 6376 section 5.4.1)")


@dataclass(frozen=True)
class _Key:
    algorithm: bytes  # a= for dkimpy: rsa-sha256 | ed25519-sha256
    material: bytes = field(repr=False)  # what dkim.sign takes as privkey: PEM or base64 seed


# --- signing -------------------------------------------------------------------------------


def sign(message: bytes, config: DkimConfig) -> bytes:
    """Return MESSAGE with a DKIM-Signature header field prepended.

    Raises ValueError when the From domain is not CONFIG.domain or a subdomain of it (the
    signature would not count for DMARC), when the message has no single From header field, or
    when the key cannot sign; ConfigError when the key is a credential this process cannot read.
    """
    key = _load_key(config.private_key.reveal())
    _check_from(message, config.domain)
    linesep = b"\r\n" if message.partition(b"\n")[0].endswith(b"\r") else b"\n"
    try:
        headers, _ = dkim.rfc822_parse(message)
        present = [name.lower() for name, _value in headers]
        include: list[bytes] = []
        seen: set[bytes] = set()
        for header in config.headers:
            name = header.lower().encode("ascii")
            if name in seen:
                continue
            seen.add(name)
            count = present.count(name) + (1 if header.lower() in OVERSIGNED else 0)
            include.extend([name] * count)
        signature: bytes = dkim.sign(
            message,
            config.selector.encode("ascii"),
            config.domain.lower().rstrip(".").encode("ascii"),
            key.material,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=key.algorithm,
            include_headers=include,
            linesep=linesep,
        )
    except dkim.DKIMException as exc:
        raise ValueError(f"DKIM signing failed: {exc}") from None
    return signature + message


def aligned(from_domain: str, dkim_domain: str) -> bool:
    """Return whether FROM_DOMAIN is DKIM_DOMAIN or a subdomain of it (relaxed DMARC alignment)."""
    got, want = _ascii_domain(from_domain), _ascii_domain(dkim_domain)
    if not got or not want:
        return False
    return got == want or got.endswith("." + want)


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _check_from(message: bytes, dkim_domain: str) -> None:
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(message)
    fields = parsed.get_all("From") or []
    if len(fields) != 1:
        raise ValueError(f"cannot DKIM-sign a message with {len(fields)} From header fields")
    addresses = getattr(fields[0], "addresses", ())
    if not addresses:
        raise ValueError("cannot DKIM-sign a message whose From has no address")
    for address in addresses:
        if not aligned(address.domain, dkim_domain):
            raise ValueError(
                f"From domain {address.domain!r} is not {dkim_domain!r} or a subdomain of it: "
                "the DKIM signature would not align for DMARC"
            )


# --- keys ----------------------------------------------------------------------------------


def _load_key(text: str) -> _Key:
    """Parse a private key; errors say what is wrong and never quote the key."""
    blocks = [(label, body) for label, body in _PEM.findall(text) if "PRIVATE KEY" in label]
    if not blocks:
        raw = "".join(text.split())
        if _DKNEWKEY_ED25519.fullmatch(raw):
            return _ed25519(base64.b64decode(raw))
        raise ValueError("not a PEM private key")
    if len(blocks) > 1:
        raise ValueError("holds more than one private key")
    label, body = blocks[0]
    if label == "ENCRYPTED PRIVATE KEY" or "Proc-Type:" in body:  # PKCS#8 or OpenSSL legacy
        raise ValueError(
            "the private key is encrypted; store it unencrypted with tight permissions "
            "(openssl pkey -in KEY -out PLAIN)"
        )
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except binascii.Error:
        raise ValueError("not a PEM private key (bad base64)") from None
    if label == "RSA PRIVATE KEY":
        return _rsa(der)
    if label != "PRIVATE KEY":
        raise ValueError(
            f"{label.lower()}s cannot sign DKIM; use RSA ({RSA_MIN_BITS} bits or more) or Ed25519"
        )
    try:
        oid, private = _pkcs8(der)
    except ValueError:
        raise ValueError("not a PKCS#8 private key") from None
    if oid == _OID_RSA:
        return _rsa(der)
    if oid == _OID_ED25519:
        try:
            tag, seed, end = _der(private)
        except ValueError:
            tag, seed, end = 0, b"", 0
        if tag != 0x04 or end != len(private):
            raise ValueError("not an Ed25519 private key (RFC 8410)")
        return _ed25519(seed)
    raise ValueError(f"keys of this type cannot sign DKIM; use RSA ({RSA_MIN_BITS}+) or Ed25519")


def _rsa(der: bytes) -> _Key:
    try:
        parsed = dkim.crypto.parse_private_key(der)
    except (dkim.crypto.UnparsableKeyError, IndexError, TypeError):
        raise ValueError("cannot parse the RSA private key") from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < RSA_MIN_BITS:
        raise ValueError(f"the RSA key has {bits} bits; use {RSA_MIN_BITS} or more")
    pem = b"-----BEGIN PRIVATE KEY-----\n%b-----END PRIVATE KEY-----\n" % base64.encodebytes(der)
    return _Key(b"rsa-sha256", pem)


def _ed25519(seed: bytes) -> _Key:
    if len(seed) != 32:
        raise ValueError("not an Ed25519 private key (the seed must be 32 bytes)")
    if importlib.util.find_spec("nacl") is None:
        raise ValueError("Ed25519 keys need PyNaCl (pip install 'dkimpy[ed25519]')")
    return _Key(b"ed25519-sha256", base64.b64encode(seed))


def _der(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Read one DER TLV at POS: (tag, contents, position after it)."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or pos + size > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def _pkcs8(der: bytes) -> tuple[bytes, bytes]:
    """Return (algorithm OID, privateKey octets) of a PKCS#8 PrivateKeyInfo (RFC 5958)."""
    tag, info, end = _der(der)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a SEQUENCE")
    tag, _version, pos = _der(info)
    if tag != 0x02:
        raise ValueError("no version")
    tag, algorithm, pos = _der(info, pos)
    if tag != 0x30:
        raise ValueError("no AlgorithmIdentifier")
    tag, oid, _ = _der(algorithm)
    if tag != 0x06:
        raise ValueError("no algorithm OID")
    tag, private, _ = _der(info, pos)
    if tag != 0x04:
        raise ValueError("no privateKey")
    return oid, private


# --- configuration -------------------------------------------------------------------------


def parse_dkim_config(data: Mapping[str, Any], base: Path) -> DkimConfig:
    """Build a :class:`DkimConfig` from the TOML table ``[dkim]``; key_file is taken from BASE.

    Keys: ``domain`` (d=), ``selector`` (s=) and exactly one of ``key_file``, ``key_env`` or
    ``key_credential`` (a systemd credential). Errors name the key, as in helpdeskd.config.settings.
    """
    if "key" in data:
        raise ConfigError(
            "dkim.key: keep the private key out of the config file; "
            "set key_file, key_env or key_credential"
        )
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"dkim.{unknown[0]}: unknown key")
    domain = _string(data, "domain").strip().rstrip(".").lower()
    if not domain.isascii():
        raise ConfigError(f"dkim.domain: {domain!r}: use the ASCII (xn--) form")
    if not _DOMAIN.fullmatch(domain):
        raise ConfigError(f"dkim.domain: {domain!r} is not a domain name")
    selector = _string(data, "selector").strip().lower()
    if not selector.isascii() or not _SELECTOR.fullmatch(selector):
        raise ConfigError(f"dkim.selector: {selector!r} is not a valid selector")
    source, private_key = _read_key(data, base)
    if private_key.available:
        try:
            _load_key(private_key.reveal())
        except ValueError as exc:
            raise ConfigError(f"dkim.{source}: {exc}") from None
    return DkimConfig(domain=domain, selector=selector, private_key=private_key)


def _string(data: Mapping[str, Any], name: str) -> str:
    if name not in data:
        raise ConfigError(f"dkim.{name}: required key is missing")
    value = data[name]
    if not isinstance(value, str):
        kind = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise ConfigError(f"dkim.{name}: expected a string, got {kind}")
    if not value.strip():
        raise ConfigError(f"dkim.{name}: must not be empty")
    return value


def _read_key(data: Mapping[str, Any], base: Path) -> tuple[str, Secret]:
    """Return (the key that names the source, the private key) like _Table.secret does."""
    given = [name for name in _KEY_SOURCES if name in data]
    if not given:
        raise ConfigError("dkim.key: required; set key_file, key_env or key_credential")
    if len(given) > 1:
        raise ConfigError("dkim.key: give only one of key_file, key_env or key_credential")
    source = given[0]
    value = _string(data, source)
    if source == "key_file":
        path = Path(value)
        path = path if path.is_absolute() else base / path
        return source, Secret(_read_text(path, source, f"cannot read {path}"))
    if source == "key_env":
        if value not in os.environ:
            raise ConfigError(f"dkim.key_env: environment variable {value} is not set")
        return source, Secret(os.environ[value].strip())
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory and _LENIENT_CREDENTIALS.get():
        return source, Secret.unavailable(
            "dkim.key_credential: only the service can read systemd credentials; run this "
            "command through 'systemd-run -p LoadCredential=…' or use key_file"
        )
    if not directory:
        raise ConfigError(
            "dkim.key_credential: $CREDENTIALS_DIRECTORY is not set "
            "(use LoadCredential= in the unit)"
        )
    path = Path(directory) / value
    return source, Secret(_read_text(path, source, f"cannot read credential {value}"))


def _read_text(path: Path, source: str, what: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"dkim.{source}: {what}: {exc.strerror}") from None
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"dkim.{source}: not a PEM private key") from None
