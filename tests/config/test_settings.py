"""Configuration (DESIGN.md "Configuration", "Operations"): every error names its key; secrets
never show themselves; the secret key file's first key signs and all verify."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.settings import Config, Secret, parse_config
from helpdeskd.errors import ConfigError
from helpdeskd.mail.tokens import ReplyToken, sign_reply, verify_reply

SECRET_TEXT = "first-secret-0123456789abcdef"
PASSWORD = "hunter2-imap-password"
ENV = "HELPDESKD_TEST_UNIT_PASSWORD"


def _good() -> dict[str, Any]:
    return {
        "service": {
            "name": "Acme Postgres add-on",
            "support_address": "support@acme.test",
            "public_url": "https://support.acme.test",
            "ticket_prefix": "HD",
            "secret_key_file": "secret",
            "timezone": "Europe/Berlin",
        },
        "database": {"url": "sqlite:///helpdeskd.store.db"},
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


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "secret").write_text(f"k1 {SECRET_TEXT}\n")
    (tmp_path / "imap-password").write_text(PASSWORD + "\n")
    monkeypatch.delenv(ENV, raising=False)
    return tmp_path


def test_good_config_loads(base: Path) -> None:
    config = parse_config(_good(), base)
    assert isinstance(config, Config)
    assert config.service.support_address == "support@acme.test"
    assert config.service.tz.key == "Europe/Berlin"
    assert config.mailboxes[0].password == Secret(PASSWORD)  # stripped of the newline
    assert config.agents[0].email == "alice@acme.test"
    assert config.agent("ALICE@acme.test") is not None
    assert "support@acme.test" in config.own_addresses()


Mutation = Callable[[dict[str, Any]], object]


def _drop(table: str, key: str) -> Mutation:
    return lambda d: d[table].pop(key)


def _mailbox(**changes: Any) -> Mutation:
    return lambda d: d["mailbox"][0].update(changes)


def _mailbox_drop(key: str, **changes: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        d["mailbox"][0].pop(key)
        d["mailbox"][0].update(changes)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (_drop("service", "support_address"), "service.support_address", "missing"),
        (_drop("service", "public_url"), "service.public_url", "missing"),
        (_drop("service", "secret_key_file"), "service.secret_key", "required"),
        (lambda d: d.pop("service"), "service", "missing"),
        (lambda d: d.pop("database"), "database", "missing"),
        (lambda d: d["service"].update(support_address="support"), "service.support_address", ""),
        (lambda d: d["service"].update(support_address=42), "service.support_address", "string"),
        (lambda d: d["service"].update(public_url="support.acme.test"), "service.public_url", ""),
        (lambda d: d["service"].update(ticket_prefix="H-D"), "service.ticket_prefix", ""),
        (lambda d: d["service"].update(timezone="Mars/Olympus"), "service.timezone", "Mars"),
        (lambda d: d["service"].update(timezone="../../etc/passwd"), "service.timezone", ""),
        (lambda d: d["service"].update(timezone=""), "service.timezone", ""),
        (lambda d: d["service"].update(colour="blue"), "service.colour", "unknown key"),
        (lambda d: d["database"].update(url="mysql://x"), "database.url", ""),
        (_mailbox(port="993"), "mailbox[0].port", "integer"),
        (_mailbox(port=True), "mailbox[0].port", "boolean"),
        (_mailbox(idle="yes"), "mailbox[0].idle", "true or false"),
        (_mailbox(hots="imap.acme.test"), "mailbox[0].hots", "unknown key"),
        (_mailbox(security="ssl"), "mailbox[0].security", "tls, starttls, none"),
        (_mailbox(security="TLS"), "mailbox[0].security", ""),
        (_mailbox(security="none"), "mailbox[0].security", "loopback"),
        (_mailbox(security="none", host="10.0.0.1"), "mailbox[0].security", "loopback"),
        (_mailbox(password_file="nope"), "mailbox[0].password_file", "cannot read"),
        (_mailbox(password_file="."), "mailbox[0].password_file", "cannot read"),  # a folder
        (
            _mailbox_drop("password_file", password_env=ENV),
            "mailbox[0].password_env",
            ENV,
        ),
        (_mailbox(password_env="HOME"), "mailbox[0].password", "only one of"),
        (_mailbox(password="inline"), "mailbox[0].password", "only one of"),
        (_mailbox_drop("password_file"), "mailbox[0].password", "required"),
        (_mailbox(idle_interval=1741), "mailbox[0].idle_interval", "1740"),
        (_mailbox(idle_interval=3600.5), "mailbox[0].idle_interval", "1740"),
        (_mailbox(idle_interval=0), "mailbox[0].idle_interval", "greater than 0"),
        (_mailbox(poll_interval=-1), "mailbox[0].poll_interval", "greater than 0"),
        (lambda d: d["mailbox"].append(dict(d["mailbox"][0])), "mailbox", "twice"),
        (lambda d: d.update(mailbox={"name": "x"}), "mailbox", "[[mailbox]]"),
        (lambda d: d.update(mailbox=["x"]), "mailbox[0]", "table"),
        (lambda d: d["smtp"].update(port="587"), "smtp.port", "integer"),
        (lambda d: d["smtp"].update(security="none"), "smtp.security", "loopback"),
        (lambda d: d["smtp"].update(security="ssl"), "smtp.security", ""),
        (lambda d: d["smtp"].update(pasword_file="x"), "smtp.pasword_file", "unknown key"),
        (lambda d: d["http"].update(listen="8025"), "http.listen", "HOST:PORT"),
        (lambda d: d["agent"][0].update(nmae="A"), "agent[0].nmae", "unknown key"),
        (lambda d: d["agent"][0].update(email="alice"), "agent[0].email", ""),
        (lambda d: d["agent"][0].pop("name"), "agent[0].name", "missing"),
        (lambda d: d.update(agent={"email": "a@acme.test", "name": "A"}), "agent", "[[agent]]"),
        (lambda d: d.update(agent=["alice@acme.test"]), "agent[0]", "table"),
        (lambda d: d.update(bogus=1), "bogus", "unknown key"),
    ],
)
def test_errors_name_the_key(base: Path, mutate: Mutation, key: str, words: str) -> None:
    data = copy.deepcopy(_good())
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base)
    message = str(caught.value)
    assert message.startswith(f"{key}:") or message.startswith(f"{key} "), message
    assert words in message
    assert "\n" not in message  # one line a person can act on
    assert PASSWORD not in message and SECRET_TEXT not in message


@pytest.mark.parametrize(
    ("mailbox", "smtp_host"),
    [
        ({"security": "none", "host": "127.0.0.1"}, "127.0.0.1"),
        ({"security": "none", "host": "localhost"}, "localhost"),
        ({"security": "none", "host": "::1"}, "::1"),
        ({"security": "starttls", "port": 143}, "smtp.acme.test"),
        ({"idle_interval": 1740}, "smtp.acme.test"),
    ],
)
def test_accepted_edge_values(base: Path, mailbox: dict[str, Any], smtp_host: str) -> None:
    data = _good()
    data["mailbox"][0].update(mailbox)
    data["smtp"].update(host=smtp_host, security="none" if smtp_host != "smtp.acme.test" else "tls")
    config = parse_config(data, base)
    assert config.mailboxes[0].security == mailbox.get("security", "tls")


def test_password_from_env(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-the-environment")
    data = _good()
    del data["mailbox"][0]["password_file"]
    data["mailbox"][0]["password_env"] = ENV
    config = parse_config(data, base)
    assert config.mailboxes[0].password == Secret("from-the-environment")


def test_password_from_systemd_credential(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = base / "creds"
    creds.mkdir()
    (creds / "imap").write_text("from-a-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    data = _good()
    del data["mailbox"][0]["password_file"]
    data["mailbox"][0]["password_credential"] = "imap"
    assert parse_config(data, base).mailboxes[0].password == Secret("from-a-credential")


@pytest.mark.parametrize("render", [repr, str, "{}".format, "%s".__mod__, "%r".__mod__])
def test_secret_never_shows_its_value(render: Callable[[Any], str]) -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in render(secret)
    assert PASSWORD not in render([secret])
    assert PASSWORD not in render({"password": secret})
    assert secret.reveal() == PASSWORD


def test_config_repr_shows_no_secret(base: Path) -> None:
    config = parse_config(_good(), base)
    for text in (repr(config), str(config), repr(config.mailboxes), repr(config.service)):
        assert PASSWORD not in text
        assert SECRET_TEXT not in text


@pytest.mark.parametrize(
    ("content", "ids"),
    [
        (f"k1 {SECRET_TEXT}\n", ["k1"]),
        (f"{SECRET_TEXT}\n", ["k1"]),  # a bare secret gets the id k1
        (f"k2 second-secret-0123456789abcdef\nk1 {SECRET_TEXT}\n", ["k2", "k1"]),
        (
            f"# rotated 2026-11\n\nk2 second-secret-0123456789abcdef\n  k1 {SECRET_TEXT}  \n",
            ["k2", "k1"],
        ),
    ],
)
def test_secret_key_file(base: Path, content: str, ids: list[str]) -> None:
    (base / "secret").write_text(content)
    keys = parse_config(_good(), base).service.secret_keys
    assert [kid for kid, _ in keys] == ids
    assert all(isinstance(key, Secret) for _, key in keys)
    text = sign_reply(keys, ReplyToken("HD-1"))
    assert text.split(".")[1] == ids[0]  # the first key signs
    for index in range(len(keys)):
        # Every key verifies what it signed, while it is still listed.
        assert verify_reply(keys, sign_reply(keys[index:], ReplyToken("HD-1"))) is not None


@pytest.mark.parametrize(
    "content",
    ["", "# only a comment\n", "k1 short\n", "k-1 " + SECRET_TEXT + "\n", "tooshort\n"],
)
def test_bad_secret_key_file(base: Path, content: str) -> None:
    (base / "secret").write_text(content)
    with pytest.raises(ConfigError, match=r"^service\.secret_key"):
        parse_config(_good(), base)
