"""Secrets (DESIGN.md "Operations"): read from *_file, *_env or systemd credentials, one way for
every secret; they never show themselves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_config, parse_dkim_config
from helpdeskd.config.secrets import Secret
from helpdeskd.errors import ConfigError
from tests.config.support import ENV, PASSWORD, KeyPair, dkim_table, good_config, needs_openssl


@pytest.mark.parametrize("render", [repr, str, "{}".format, "%s".__mod__, "%r".__mod__])
def test_secret_never_shows_its_value(render: Callable[[Any], str]) -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in render(secret)
    assert PASSWORD not in render([secret])
    assert PASSWORD not in render({"password": secret})
    assert secret.reveal() == PASSWORD


def test_password_from_env(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-the-environment")
    data = good_config()
    del data["mailbox"][0]["password_file"]
    data["mailbox"][0]["password_env"] = ENV
    config = parse_config(data, base)
    assert config.mailboxes[0].password == Secret("from-the-environment")


def test_password_from_systemd_credential(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = base / "creds"
    creds.mkdir()
    (creds / "imap").write_text("from-a-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    data = good_config()
    del data["mailbox"][0]["password_file"]
    data["mailbox"][0]["password_credential"] = "imap"
    assert parse_config(data, base).mailboxes[0].password == Secret("from-a-credential")


@needs_openssl
def test_dkim_key_from_env_and_credential(
    dkim_base: Path, rsa_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPDESKD_TEST_DKIM_KEY", rsa_key.pem)
    table = dkim_table(key_file=None, key_env="HELPDESKD_TEST_DKIM_KEY")
    config = parse_dkim_config(table, dkim_base)
    assert config.private_key == Secret(rsa_key.pem.strip())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(dkim_base))
    config = parse_dkim_config(dkim_table(key_file=None, key_credential="dkim.key"), dkim_base)
    assert config.private_key == Secret(rsa_key.pem.strip())


@needs_openssl
def test_a_missing_credential_names_the_key(
    dkim_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(dkim_base))
    with pytest.raises(ConfigError, match=r"^dkim\.key_credential: cannot read credential nope: "):
        parse_dkim_config(dkim_table(key_file=None, key_credential="nope"), dkim_base)
