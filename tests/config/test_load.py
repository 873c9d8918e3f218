"""Reading the config (DESIGN.md "Configuration", "Operations"): every error names its key; the
secret key file's first key signs and all verify; a DKIM key the signer could not use fails the
load."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpdeskd.config.load import parse_config, parse_dkim_config
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import Config
from helpdeskd.errors import ConfigError
from helpdeskd.mail.tokens import ReplyToken, sign_reply, verify_reply
from tests.config.support import (
    ENV,
    PASSWORD,
    SECRET_TEXT,
    dkim_table,
    good_config,
    needs_openssl,
    openssl,
)


def test_good_config_loads(base: Path) -> None:
    config = parse_config(good_config(), base)
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
        (lambda d: d["http"].update(admin_token="x" * 20), "http.admin_token", "unknown key"),
        (
            lambda d: d["http"].update(admin_token_file="no-such-file"),
            "http.admin_token_file",
            "cannot read",
        ),
        (lambda d: d["agent"][0].update(nmae="A"), "agent[0].nmae", "unknown key"),
        (lambda d: d["agent"][0].update(email="alice"), "agent[0].email", ""),
        (lambda d: d["agent"][0].pop("name"), "agent[0].name", "missing"),
        (lambda d: d.update(agent={"email": "a@acme.test", "name": "A"}), "agent", "[[agent]]"),
        (lambda d: d.update(agent=["alice@acme.test"]), "agent[0]", "table"),
        (lambda d: d.update(bogus=1), "bogus", "unknown key"),
    ],
)
def test_errors_name_the_key(base: Path, mutate: Mutation, key: str, words: str) -> None:
    data = copy.deepcopy(good_config())
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base)
    message = str(caught.value)
    assert message.startswith(f"{key}:") or message.startswith(f"{key} "), message
    assert words in message
    assert "\n" not in message  # one line a person can act on
    assert PASSWORD not in message and SECRET_TEXT not in message


def test_admin_token_is_read_as_a_secret(base: Path) -> None:
    assert parse_config(good_config(), base).http.admin_token is None
    (base / "admin-token").write_text("op-token-0123456789abcdef\n")
    data = good_config()
    data["http"].update(admin_token_file="admin-token", metrics_listen="127.0.0.1:9025")
    http = parse_config(data, base).http
    assert http.admin_token == Secret("op-token-0123456789abcdef")  # stripped of the newline
    assert "0123456789abcdef" not in repr(http)
    assert http.metrics_listen == "127.0.0.1:9025"


@pytest.mark.parametrize("token", ["short", "sixteen chars ok", "non-ascii-tökén-0123456789"])
def test_a_weak_or_unsendable_admin_token_is_refused(base: Path, token: str) -> None:
    (base / "admin-token").write_text(token + "\n")
    data = good_config()
    data["http"].update(admin_token_file="admin-token")
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base)
    assert str(caught.value).startswith("http.admin_token: at least 16 printable ASCII")
    assert token not in str(caught.value)


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
    data = good_config()
    data["mailbox"][0].update(mailbox)
    data["smtp"].update(host=smtp_host, security="none" if smtp_host != "smtp.acme.test" else "tls")
    config = parse_config(data, base)
    assert config.mailboxes[0].security == mailbox.get("security", "tls")


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
    keys = parse_config(good_config(), base).service.secret_keys
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
        parse_config(good_config(), base)


# --- [dkim] -------------------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"domain": None}, "dkim.domain: required key is missing"),
        ({"domain": 5}, "dkim.domain: expected a string, got int"),
        ({"domain": "localhost"}, "dkim.domain: 'localhost' is not a domain name"),
        ({"domain": "bücher.example"}, "dkim.domain: 'bücher.example': use the ASCII (xn--)"),
        ({"selector": "s 1"}, "dkim.selector: 's 1' is not a valid selector"),
        ({"selector": ""}, "dkim.selector: must not be empty"),
        ({"key_file": None}, "dkim.key: required; set key_file, key_env or key_credential"),
        ({"key_env": "X"}, "dkim.key: give only one of key_file, key_env or key_credential"),
        ({"key_file": True}, "dkim.key_file: expected a string, got a boolean"),
        (
            {"key_file": "/nonexistent/dkim.key"},
            "dkim.key_file: cannot read /nonexistent/dkim.key: No such file or directory",
        ),
        ({"key_file": "."}, "dkim.key_file: cannot read {base}: Is a directory"),
        (
            {"key_file": None, "key_env": "HELPDESKD_TEST_UNSET"},
            "dkim.key_env: environment variable HELPDESKD_TEST_UNSET is not set",
        ),
        (
            {"key_file": None, "key_credential": "dkim"},
            "dkim.key_credential: $CREDENTIALS_DIRECTORY is not set",
        ),
        ({"key_file": None, "key": "-----BEGIN"}, "dkim.key: keep the private key out"),
        ({"algorithm": "rsa"}, "dkim.algorithm: unknown key"),
    ],
)
def test_dkim_errors_name_the_key(dkim_base: Path, changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dkim_config(dkim_table(**changes), dkim_base)
    assert str(caught.value).startswith(error.format(base=dkim_base))


def _bad_keys() -> list[tuple[str, bytes, str]]:
    pem = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024")
    ec = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    return [
        ("text", b"not a key\n", "not a PEM private key"),
        ("binary", b"\xff\xfe", "not a PEM private key"),
        ("public", openssl("pkey", "-pubout", data=pem), "not a PEM private key"),
        ("rsa-1024", pem, "the RSA key has 1024 bits; use 2048 or more"),
        ("ec-pkcs8", ec, "keys of this type cannot sign DKIM"),
        ("ec-sec1", openssl("ec", data=ec), "ec private keys cannot sign DKIM"),
        (
            "encrypted",
            openssl("pkey", "-aes256", "-passout", "pass:secret", data=pem),
            "the private key is encrypted",
        ),
        ("two-keys", pem + pem, "holds more than one private key"),
        (
            "bad-base64",
            b"-----BEGIN PRIVATE KEY-----\nnot*base64\n-----END PRIVATE KEY-----\n",
            "not a PEM private key (bad base64)",
        ),
        (
            "not-pkcs8",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a PKCS#8 private key",
        ),
    ]


@needs_openssl
def test_bad_dkim_keys_are_refused_naming_the_key(dkim_base: Path) -> None:
    for name, content, error in _bad_keys():
        (dkim_base / "dkim.key").write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            parse_dkim_config(dkim_table(), dkim_base)
        assert str(caught.value).startswith(f"dkim.key_file: {error}"), name
        # The message never quotes the key.
        body = [line for line in content.splitlines() if line and not line.startswith(b"-")]
        assert not any(line.decode("latin-1") in str(caught.value) for line in body[1:]), name
