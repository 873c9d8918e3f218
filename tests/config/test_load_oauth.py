"""Reading ``auth = "oauth2"`` and the ``[mailbox.oauth]`` / ``[smtp.oauth]`` tables: provider
defaults, the client secret read like every secret, http only on loopback, one-line errors that
name the key, and the old fixed-token ``auth = "xoauth2"`` refused with the new way."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_config
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import (
    GOOGLE_SCOPE,
    MICROSOFT_APP_SCOPE,
    MICROSOFT_DELEGATED_SCOPE,
    Config,
)
from helpdeskd.errors import ConfigError
from tests.config.support import PASSWORD, SECRET_TEXT, good_config

CLIENT_SECRET = "oauth-client-secret-0123456789"


def oauth_config(
    mailbox: dict[str, Any] | None = None, smtp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return good_config() with the mailbox (and, if SMTP is given, [smtp]) on OAuth."""
    data = copy.deepcopy(good_config())
    box = data["mailbox"][0]
    box.pop("password_file")
    box.update(
        auth="oauth2",
        oauth={"provider": "microsoft", "client_id": "app-1", "token_file": "oauth/support.json"},
    )
    box["oauth"].update(mailbox or {})
    if smtp is not None:
        data["smtp"].pop("password_file")
        data["smtp"].update(auth="oauth2", oauth=smtp)
    return data


def load(base: Path, data: dict[str, Any]) -> Config:
    return parse_config(data, base)


def test_microsoft_defaults(base: Path) -> None:
    config = load(base, oauth_config())
    mailbox = config.mailboxes[0]
    assert mailbox.auth == "oauth2" and mailbox.password is None
    oauth = mailbox.oauth
    assert oauth is not None
    assert oauth.provider == "microsoft" and oauth.tenant == "organizations"
    assert oauth.client_id == "app-1" and oauth.client_secret is None  # a public client
    assert oauth.grant == "refresh_token" and oauth.mechanism == "xoauth2"
    assert oauth.token_file == base / "oauth" / "support.json"  # from the config's folder
    base_url = "https://login.microsoftonline.com/organizations/oauth2/v2.0"
    assert oauth.token_url == f"{base_url}/token"
    assert oauth.device_authorization_url == f"{base_url}/devicecode"
    assert oauth.authorization_url == f"{base_url}/authorize"
    assert oauth.scope == MICROSOFT_DELEGATED_SCOPE
    assert "offline_access" in oauth.scope
    assert config.smtp is not None and config.smtp.auth == "password"
    assert config.smtp.oauth is None


def test_microsoft_tenant_and_app_only_access(base: Path) -> None:
    (base / "oauth-secret").write_text(CLIENT_SECRET + "\n")
    config = load(
        base,
        oauth_config(
            {
                "tenant": "acme.onmicrosoft.com",
                "grant": "client_credentials",
                "client_secret_file": "oauth-secret",
                "mechanism": "oauthbearer",
            }
        ),
    )
    oauth = config.mailboxes[0].oauth
    assert oauth is not None
    assert oauth.token_url.startswith("https://login.microsoftonline.com/acme.onmicrosoft.com/")
    assert oauth.scope == MICROSOFT_APP_SCOPE
    assert oauth.client_secret == Secret(CLIENT_SECRET)
    assert CLIENT_SECRET not in repr(config)
    assert oauth.mechanism == "oauthbearer"


def test_google_has_no_device_flow(base: Path) -> None:
    oauth = load(base, oauth_config({"provider": "google"})).mailboxes[0].oauth
    assert oauth is not None
    assert oauth.token_url == "https://oauth2.googleapis.com/token"
    assert oauth.authorization_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert oauth.device_authorization_url is None
    assert oauth.scope == GOOGLE_SCOPE and oauth.tenant is None


def test_generic_with_loopback_http_and_a_shared_token_file(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPDESKD_TEST_OAUTH_SECRET", CLIENT_SECRET)
    table = {
        "provider": "generic",
        "client_id": "helpdeskd",
        "client_secret_env": "HELPDESKD_TEST_OAUTH_SECRET",
        "token_file": str(base / "shared.json"),
        "token_url": "http://127.0.0.1:8080/token",
        "device_authorization_url": "http://[::1]:8080/device",
        "authorization_url": "http://localhost:8080/authorize",
        "scope": "  mail   offline ",
    }
    config = load(base, oauth_config(table, smtp={**table, "mechanism": "oauthbearer"}))
    mailbox, smtp = config.mailboxes[0].oauth, config.smtp.oauth if config.smtp else None
    assert mailbox is not None and smtp is not None
    assert mailbox.token_url == "http://127.0.0.1:8080/token"
    assert mailbox.scope == "mail offline"  # whitespace made single
    assert mailbox.client_secret == Secret(CLIENT_SECRET)
    assert smtp.token_file == mailbox.token_file and smtp.mechanism == "oauthbearer"
    assert config.smtp is not None and config.smtp.password is None


def test_generic_scope_defaults_to_none_sent(base: Path) -> None:
    oauth = (
        load(
            base,
            oauth_config({"provider": "generic", "token_url": "https://id.example/token"}),
        )
        .mailboxes[0]
        .oauth
    )
    assert oauth is not None and oauth.scope == "" and oauth.device_authorization_url is None


Mutation = Callable[[dict[str, Any]], object]


def _oauth(**changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["mailbox"][0]["oauth"].update(changes)
        for key, value in changes.items():
            if value is None:
                data["mailbox"][0]["oauth"].pop(key)

    return mutate


def _box(**changes: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["mailbox"][0].update(changes)
        for key, value in changes.items():
            if value is None:
                data["mailbox"][0].pop(key)

    return mutate


def _smtp(**changes: Any) -> Mutation:
    return lambda data: data["smtp"].update(changes)


GENERIC = {"provider": "generic", "token_url": "https://id.example/token"}


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (_box(auth="xoauth2"), "mailbox[0].auth", 'auth = "oauth2"'),
        (_box(auth="xoauth2"), "mailbox[0].auth", "[mailbox.oauth]"),
        (_smtp(auth="xoauth2"), "smtp.auth", "[smtp.oauth]"),
        (_box(auth="OAuth2"), "mailbox[0].auth", "password, oauth2"),
        (_box(oauth=None), "mailbox[0].oauth", "required"),
        (_box(auth="password", password_file="imap-password"), "mailbox[0].oauth", "oauth2"),
        (_box(password_file="imap-password"), "mailbox[0].password_file", "not used"),
        (_box(token="abc"), "mailbox[0].token", "not used"),
        (_box(name="smtp"), "mailbox[0].name", "another name"),
        (_smtp(oauth={"provider": "microsoft"}), "smtp.oauth", "oauth2"),
        (_oauth(provider="yahoo"), "mailbox[0].oauth.provider", "microsoft, google, generic"),
        (_oauth(provider=None), "mailbox[0].oauth.provider", "missing"),
        (_oauth(client_id=None), "mailbox[0].oauth.client_id", "missing"),
        (_oauth(client_id="  "), "mailbox[0].oauth.client_id", "empty"),
        (_oauth(token_file=None), "mailbox[0].oauth.token_file", "missing"),
        (_oauth(grant="password"), "mailbox[0].oauth.grant", "refresh_token"),
        (_oauth(grant="client_credentials"), "mailbox[0].oauth.client_secret", "required"),
        (_oauth(mechanism="plain"), "mailbox[0].oauth.mechanism", "xoauth2, oauthbearer"),
        (_oauth(tenant="a/b"), "mailbox[0].oauth.tenant", "tenant"),
        (_oauth(**GENERIC, tenant="x"), "mailbox[0].oauth.tenant", "microsoft"),
        (_oauth(provider="generic"), "mailbox[0].oauth.token_url", "required"),
        (_oauth(provider="google", grant="client_credentials"), "mailbox[0].oauth.grant", ""),
        (
            _oauth(token_url="http://login.example/token"),
            "mailbox[0].oauth.token_url",
            "loopback",
        ),
        (
            _oauth(device_authorization_url="http://10.0.0.1/device"),
            "mailbox[0].oauth.device_authorization_url",
            "loopback",
        ),
        (_oauth(authorization_url="ftp://x/a"), "mailbox[0].oauth.authorization_url", "https"),
        (_oauth(token_url="https:///token"), "mailbox[0].oauth.token_url", "https"),
        (_oauth(client_secret_file="nope"), "mailbox[0].oauth.client_secret_file", "cannot read"),
        (_oauth(client_secret="inline"), "mailbox[0].oauth.client_secret", "unknown key"),
        (_oauth(refresh_token="x"), "mailbox[0].oauth.refresh_token", "unknown key"),
        (_oauth(scope=["a"]), "mailbox[0].oauth.scope", "string"),
    ],
)
def test_errors_name_the_key(base: Path, mutate: Mutation, key: str, words: str) -> None:
    data = oauth_config()
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        load(base, data)
    message = str(caught.value)
    assert message.startswith(f"{key}:"), message
    assert words in message
    assert "\n" not in message
    assert PASSWORD not in message and SECRET_TEXT not in message


def test_smtp_with_oauth_needs_a_username(base: Path) -> None:
    data = oauth_config(smtp={"provider": "google", "client_id": "c", "token_file": "g.json"})
    data["smtp"].pop("username")
    with pytest.raises(ConfigError, match=r"^smtp\.username: required"):
        load(base, data)


@pytest.mark.parametrize("key", ["client_id", "grant", "scope", "provider"])
def test_a_shared_token_file_holds_one_clients_token(base: Path, key: str) -> None:
    (base / "oauth-secret").write_text(CLIENT_SECRET + "\n")
    table = {
        **GENERIC,
        "client_id": "c",
        "token_file": "shared.json",
        "client_secret_file": "oauth-secret",
    }
    other = dict(table)
    other.update(
        {
            "client_id": {"client_id": "d"},
            "grant": {"grant": "client_credentials"},
            "scope": {"scope": "other"},
            "provider": {"provider": "microsoft", "token_url": None},
        }[key]
    )
    other = {k: v for k, v in other.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        load(base, oauth_config(table, smtp=other))
    assert str(caught.value).startswith("smtp.oauth.token_file: shared with mailbox[0].oauth")
