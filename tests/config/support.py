"""Helpers shared by the config and DKIM tests: a good config, its secrets, DKIM test keys."""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

SECRET_TEXT = "first-secret-0123456789abcdef"
PASSWORD = "hunter2-imap-password"
ENV = "HELPDESKD_TEST_UNIT_PASSWORD"

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command makes the test keys"
)


def good_config() -> dict[str, Any]:
    """Return a valid parsed TOML config; its secret files are written by the ``base`` fixture."""
    return {
        "service": {
            "name": "Acme Postgres add-on",
            "support_address": "support@acme.test",
            "public_url": "https://support.acme.test",
            "ticket_prefix": "HD",
            "secret_key_file": "secret",
            "timezone": "Europe/Berlin",
        },
        "database": {"url": "sqlite:///helpdeskd.db"},
        "mailbox": [
            {
                "name": "support",
                "host": "imap.acme.test",
                "port": 993,
                "security": "tls",
                "username": "support@acme.test",
                "password_file": "imap-password",
            }
        ],
        "smtp": {
            "host": "smtp.acme.test",
            "port": 587,
            "security": "starttls",
            "username": "support@acme.test",
            "password_file": "imap-password",
        },
        "http": {"listen": "127.0.0.1:8025"},
        "agent": [{"email": "Alice@acme.test", "name": "Alice"}],
    }


def dkim_table(**changes: Any) -> dict[str, Any]:
    """Return a ``[dkim]`` table reading dkim.key; a change to None drops that key."""
    table: dict[str, Any] = {"domain": "Example.COM.", "selector": "s1", "key_file": "dkim.key"}
    table.update(changes)
    return {key: value for key, value in table.items() if value is not None}


@dataclass(frozen=True)
class KeyPair:
    pem: str
    record: bytes  # the DNS TXT record that publishes its public half


def openssl(*args: str, data: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], input=data, capture_output=True, check=True).stdout


def rsa_key_pair(bits: int = 2048) -> KeyPair:
    pem = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}")
    spki = openssl("pkey", "-pubout", "-outform", "DER", data=pem)
    return KeyPair(pem.decode(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki))
