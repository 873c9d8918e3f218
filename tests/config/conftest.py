"""Fixtures for the config tests: a folder with the good config's secrets, and a DKIM key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.support import ENV, PASSWORD, SECRET_TEXT, KeyPair, rsa_key_pair


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return the config folder, holding the secret files that good_config() names."""
    (tmp_path / "secret").write_text(f"k1 {SECRET_TEXT}\n")
    (tmp_path / "imap-password").write_text(PASSWORD + "\n")
    monkeypatch.delenv(ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return rsa_key_pair()


@pytest.fixture
def dkim_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: KeyPair) -> Path:
    """Return the config folder holding dkim.key, outside any systemd service."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "dkim.key").write_text(rsa_key.pem)
    return tmp_path
