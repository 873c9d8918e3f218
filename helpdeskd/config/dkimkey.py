"""Read a DKIM private key: RSA (2048 bits or more) or Ed25519 (RFC 8463), PEM or dknewkey's.

The config checks the key when it is loaded and the signer reads it the same way when it signs,
so a key that loads is a key dkimpy can sign with. Errors say what is wrong with the key and
never quote it.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import re
from dataclasses import dataclass, field

RSA_MIN_BITS = 2048

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_DKNEWKEY_ED25519 = re.compile(r"[A-Za-z0-9+/]{43}=")  # dknewkey's Ed25519 file: base64 seed
_OID_RSA = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
_OID_ED25519 = bytes.fromhex("2b6570")  # 1.3.101.112 (RFC 8410)


@dataclass(frozen=True)
class DkimKey:
    """A private key as dkimpy signs with it."""

    algorithm: bytes  # a= for dkimpy: rsa-sha256 | ed25519-sha256
    material: bytes = field(repr=False)  # what dkim.sign takes as privkey: PEM or base64 seed


def load_dkim_key(text: str) -> DkimKey:
    """Parse the private key TEXT; raise ValueError saying what is wrong, never quoting it."""
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


def _rsa(der: bytes) -> DkimKey:
    # dkimpy's own parser decides what it can sign with. Importing dkimpy pulls in dnspython
    # (about 70 ms), and most commands load a config that has no [dkim] table at all.
    import dkim.crypto

    try:
        parsed = dkim.crypto.parse_private_key(der)
    except (dkim.crypto.UnparsableKeyError, IndexError, TypeError):
        raise ValueError("cannot parse the RSA private key") from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < RSA_MIN_BITS:
        raise ValueError(f"the RSA key has {bits} bits; use {RSA_MIN_BITS} or more")
    pem = b"-----BEGIN PRIVATE KEY-----\n%b-----END PRIVATE KEY-----\n" % base64.encodebytes(der)
    return DkimKey(b"rsa-sha256", pem)


def _ed25519(seed: bytes) -> DkimKey:
    if len(seed) != 32:
        raise ValueError("not an Ed25519 private key (the seed must be 32 bytes)")
    if importlib.util.find_spec("nacl") is None:
        raise ValueError("Ed25519 keys need PyNaCl (pip install 'dkimpy[ed25519]')")
    return DkimKey(b"ed25519-sha256", base64.b64encode(seed))


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
