"""The test OAuth 2.0 servers behave like the real ones: the authorization server's grants,
rotation, expiry and revocation over plain HTTP, and Dovecot's and the SMTP sink's SASL
XOAUTH2 / OAUTHBEARER checked against it (stdlib clients only, so nothing here leans on
helpdeskd's own OAuth code)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import imaplib
import json
import secrets
import smtplib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD, SUPPORT_USER
from tests.servers.oauth import AuthServer, AuthServerError, is_loopback_redirect
from tests.servers.smtp import AuthAttempt, SmtpSink, parse_oauth_response

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CONFIDENTIAL = (AuthServer.CLIENT_ID, AuthServer.CLIENT_SECRET)


# --- helpers ----------------------------------------------------------------------------------


def post(url: str, form: dict[str, str], auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    """POST FORM to URL (HTTP Basic client auth with AUTH); return (status, JSON body)."""
    req = urllib.request.Request(url, urllib.parse.urlencode(form).encode())
    if auth is not None:
        basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def refresh(server: AuthServer, refresh_token: str) -> tuple[int, Any]:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return post(server.token_url, form, auth=CONFIDENTIAL)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s")
        time.sleep(0.05)


@contextlib.contextmanager
def loopback_listener() -> Iterator[tuple[str, list[str]]]:
    """A tiny redirect_uri listener on 127.0.0.1: yields its URL and the paths it was sent."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"You may close this window.")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/callback", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str, port: int) -> bytes:
    return f"n,a={user},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


# --- the authorization server -----------------------------------------------------------------


def test_device_flow_from_pending_to_tokens(auth_server: AuthServer) -> None:
    status, device = post(
        auth_server.device_authorization_url,
        {"client_id": AuthServer.PUBLIC_CLIENT_ID, "scope": "mail offline_access"},
    )
    assert status == 200
    assert device["verification_uri"] == auth_server.base_url + "/device"
    assert device["interval"] == 1
    assert auth_server.pending_user_codes() == [device["user_code"]]
    poll = {
        "grant_type": DEVICE_GRANT,
        "device_code": device["device_code"],
        "client_id": AuthServer.PUBLIC_CLIENT_ID,
    }

    assert post(auth_server.token_url, poll) == (400, {"error": "authorization_pending"})
    auth_server.device_slow_down = 1
    assert post(auth_server.token_url, poll) == (400, {"error": "slow_down"})
    auth_server.approve_device(device["user_code"].lower(), SUPPORT_USER)  # as typed by a user
    status, tokens = post(auth_server.token_url, poll)

    assert status == 200
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "mail offline_access"
    assert tokens["refresh_token"]
    assert auth_server.pending_user_codes() == []
    assert auth_server.device_polls == 3
    info = auth_server.introspect(tokens["access_token"])
    assert info["active"] is True
    assert info["username"] == info["sub"] == SUPPORT_USER
    assert info["client_id"] == AuthServer.PUBLIC_CLIENT_ID
    # a device code gives tokens once
    assert post(auth_server.token_url, poll)[1]["error"] == "invalid_grant"


def test_device_flow_denied_and_expired(auth_server: AuthServer) -> None:
    def start() -> dict[str, Any]:
        form = {"client_id": AuthServer.CLIENT_ID, "client_secret": AuthServer.CLIENT_SECRET}
        return post(auth_server.device_authorization_url, form)[1]  # type: ignore[no-any-return]

    def poll(device: dict[str, Any]) -> str:
        form = {"grant_type": DEVICE_GRANT, "device_code": device["device_code"]}
        return post(auth_server.token_url, form, auth=CONFIDENTIAL)[1]["error"]  # type: ignore[no-any-return]

    denied = start()
    auth_server.deny_device(denied["user_code"])
    assert poll(denied) == "access_denied"

    auth_server.device_lifetime = 1
    expiring = start()
    assert expiring["expires_in"] == 1
    wait_until(lambda: poll(expiring) == "expired_token")
    with pytest.raises(AuthServerError, match="expired"):
        auth_server.approve_device(expiring["user_code"], SUPPORT_USER)
    with pytest.raises(AuthServerError, match="no device login"):
        auth_server.approve_device("XXXX-XXXX", SUPPORT_USER)


def test_authorization_code_with_pkce_on_a_loopback_redirect(auth_server: AuthServer) -> None:
    verifier, challenge = pkce_pair()
    with loopback_listener() as (redirect_uri, hits):
        params = {
            "response_type": "code",
            "client_id": AuthServer.PUBLIC_CLIENT_ID,
            "redirect_uri": redirect_uri,
            "scope": "https://mail.google.com/",
            "state": "st4te",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        url = auth_server.authorization_url + "?" + urllib.parse.urlencode(params)

        final = auth_server.authorize(url, SUPPORT_USER)

        assert final.startswith(redirect_uri + "?")
        assert hits == ["/callback?" + urllib.parse.urlsplit(final).query]
        answer = query(final)
        assert answer["state"] == "st4te"
        exchange = {
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": redirect_uri,
            "client_id": AuthServer.PUBLIC_CLIENT_ID,
        }
        wrong = post(auth_server.token_url, {**exchange, "code_verifier": pkce_pair()[0]})
        assert wrong == (
            400,
            {"error": "invalid_grant", "error_description": "Code challenge failed."},
        )
        status, tokens = post(auth_server.token_url, {**exchange, "code_verifier": verifier})
        assert status == 200
        assert tokens["scope"] == "https://mail.google.com/"
        assert auth_server.introspect(tokens["access_token"])["username"] == SUPPORT_USER
        # the code is spent
        again = post(auth_server.token_url, {**exchange, "code_verifier": verifier})
        assert again[1]["error"] == "invalid_grant"

        # a public client without PKCE, or with "plain", is sent back with an error
        no_pkce = {k: v for k, v in params.items() if not k.startswith("code_challenge")}
        refused = auth_server.authorize(
            auth_server.authorization_url + "?" + urllib.parse.urlencode(no_pkce), SUPPORT_USER
        )
        assert query(refused)["error"] == "invalid_request"
        plain = {**params, "code_challenge": verifier, "code_challenge_method": "plain"}
        refused = auth_server.authorize(
            auth_server.authorization_url + "?" + urllib.parse.urlencode(plain), SUPPORT_USER
        )
        assert query(refused)["error"] == "invalid_request"
        denied = auth_server.deny(url)
        assert query(denied)["error"] == "access_denied"

    # a redirect_uri off the loopback is never redirected to
    evil = {**params, "redirect_uri": "https://evil.example/callback"}
    with pytest.raises(AuthServerError, match="not supported"):
        auth_server.authorize(
            auth_server.authorization_url + "?" + urllib.parse.urlencode(evil), SUPPORT_USER
        )


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("http://127.0.0.1:53124/callback", True),
        ("http://127.0.0.1:1/", True),
        ("http://[::1]:8080/cb", True),
        ("http://localhost:8080/", True),
        ("http://127.0.0.1/no-port", False),
        ("https://127.0.0.1:8080/", False),
        ("http://10.0.0.1:8080/", False),
        ("http://127.0.0.1:8080/#frag", False),
    ],
)
def test_loopback_redirects(uri: str, ok: bool) -> None:
    assert is_loopback_redirect(uri) is ok


def test_refresh_tokens_rotate_and_reuse_is_counted(auth_server: AuthServer) -> None:
    first = auth_server.issue_refresh_token(SUPPORT_USER)

    status, tokens = refresh(auth_server, first)

    assert status == 200
    assert set(tokens) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
    second = tokens["refresh_token"]
    assert second != first
    assert refresh(auth_server, first) == (400, {"error": "invalid_grant"})
    assert auth_server.reused_refresh_tokens == 1
    status, tokens = refresh(auth_server, second)
    assert status == 200
    assert auth_server.refreshes == 2
    assert auth_server.reused_refresh_tokens == 1
    assert auth_server.introspect(first, "refresh_token") == {"active": False}
    assert auth_server.introspect(tokens["refresh_token"], "refresh_token")["active"] is True
    # a refresh token is no access token to a resource server
    assert auth_server.introspect(tokens["refresh_token"]) == {"active": False}
    # it belongs to its client
    public = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    public["client_id"] = AuthServer.PUBLIC_CLIENT_ID
    assert post(auth_server.token_url, public)[1]["error"] == "invalid_grant"


def test_without_rotation_the_refresh_token_stays() -> None:
    with AuthServer(rotate=False) as server:
        token = server.issue_refresh_token(SUPPORT_USER)
        for _ in range(2):
            status, tokens = refresh(server, token)
            assert status == 200
            assert "refresh_token" not in tokens
        assert server.reused_refresh_tokens == 0


def test_client_credentials_for_an_app_client(auth_server: AuthServer) -> None:
    auth_server.app_client("app-1", "app-secret", "shared@acme.test")
    form = {"grant_type": "client_credentials", "scope": "https://outlook.office365.com/.default"}

    status, tokens = post(auth_server.token_url, form, auth=("app-1", "app-secret"))

    assert status == 200
    assert "refresh_token" not in tokens
    assert auth_server.introspect(tokens["access_token"])["username"] == "shared@acme.test"
    assert post(auth_server.token_url, form, auth=("app-1", "wrong"))[0] == 401
    # the user clients may not use it
    assert post(auth_server.token_url, form, auth=CONFIDENTIAL)[1]["error"] == "unauthorized_client"


def test_access_tokens_expire() -> None:
    with AuthServer(access_lifetime=1) as server:
        status, tokens = refresh(server, server.issue_refresh_token(SUPPORT_USER))
        assert (status, tokens["expires_in"]) == (200, 1)
        info = server.introspect(tokens["access_token"])
        assert info["active"] is True
        assert info["exp"] - info["iat"] == 1

        wait_until(lambda: server.introspect(tokens["access_token"]) == {"active": False})

        # the refresh token outlives it
        assert refresh(server, tokens["refresh_token"])[0] == 200


def test_revocation(auth_server: AuthServer) -> None:
    first = refresh(auth_server, auth_server.issue_refresh_token(SUPPORT_USER))[1]

    # an access token alone
    revoke = {"token": first["access_token"], "token_type_hint": "access_token"}
    assert post(auth_server.revocation_url, revoke, auth=CONFIDENTIAL) == (200, {})
    assert auth_server.introspect(first["access_token"]) == {"active": False}
    second = refresh(auth_server, first["refresh_token"])[1]
    assert auth_server.introspect(second["access_token"])["active"] is True

    # a refresh token, and with it every access token of that login
    revoke = {"token": second["refresh_token"]}
    assert post(auth_server.revocation_url, revoke, auth=CONFIDENTIAL) == (200, {})
    assert auth_server.introspect(second["access_token"]) == {"active": False}
    assert refresh(auth_server, second["refresh_token"]) == (400, {"error": "invalid_grant"})
    assert auth_server.reused_refresh_tokens == 0  # revoked is not rotated

    # everything of one account, at the server's side
    other = auth_server.issue_access_token("other@acme.test")
    kept = auth_server.issue_access_token("kept@acme.test")
    auth_server.revoke_account("other@acme.test")
    assert auth_server.introspect(other) == {"active": False}
    assert auth_server.introspect(kept)["active"] is True


def test_failing_and_stopped_token_endpoint(auth_server: AuthServer) -> None:
    token = auth_server.issue_refresh_token(SUPPORT_USER)
    auth_server.fail_token_requests(1)
    assert refresh(auth_server, token) == (503, {"error": "temporarily_unavailable"})

    auth_server.stop()
    with pytest.raises(urllib.error.URLError):
        refresh(auth_server, token)
    auth_server.start()  # same port, same tokens

    assert refresh(auth_server, token)[0] == 200
    assert auth_server.token_requests == ["refresh_token", "refresh_token"]


# --- Dovecot with passdb oauth2 ---------------------------------------------------------------


def imap_auth(
    server: Dovecot, mechanism: str, response: bytes
) -> tuple[str | None, list[bytes], str]:
    """AUTHENTICATE with RESPONSE; answer an error challenge as a client must. Return (error or
    None, the challenges seen, the INBOX SELECT answer or "")."""
    challenges: list[bytes] = []

    def answer(challenge: bytes) -> bytes:
        challenges.append(challenge)
        if not challenge:
            return response
        return b"" if mechanism == "XOAUTH2" else b"\x01"  # RFC 7628 3.2.3

    with imaplib.IMAP4(server.host, server.port, timeout=10) as imap:
        try:
            imap.authenticate(mechanism, answer)
        except imaplib.IMAP4.error as error:
            return str(error), challenges, ""
        typ, _ = imap.select("INBOX")
        return None, challenges, typ


def test_dovecot_takes_good_tokens(oauth_dovecot: Dovecot, auth_server: AuthServer) -> None:
    token = auth_server.issue_access_token(SUPPORT_USER)

    assert imap_auth(oauth_dovecot, "XOAUTH2", xoauth2(SUPPORT_USER, token))[::2] == (None, "OK")
    bearer = oauthbearer(SUPPORT_USER, token, oauth_dovecot.port)
    assert imap_auth(oauth_dovecot, "OAUTHBEARER", bearer)[::2] == (None, "OK")

    log = oauth_dovecot.log_tail()
    assert "method=XOAUTH2" in log
    assert "method=OAUTHBEARER" in log
    # an account that has no password at Dovecot gets in with its token
    other = auth_server.issue_access_token("app@acme.test")
    assert imap_auth(oauth_dovecot, "XOAUTH2", xoauth2("app@acme.test", other))[::2] == (None, "OK")
    # and passwords still work for setting up and looking
    oauth_dovecot.append(SUPPORT_USER, SUPPORT_PASSWORD, b"Subject: hi\r\n\r\nhello\r\n")
    assert oauth_dovecot.list_uids(SUPPORT_USER, SUPPORT_PASSWORD) == [1]


def test_dovecot_refuses_expired_revoked_and_foreign_tokens(
    oauth_dovecot: Dovecot, auth_server: AuthServer
) -> None:
    expired = auth_server.issue_access_token(SUPPORT_USER, lifetime=1)
    revoked = auth_server.issue_access_token(SUPPORT_USER)
    assert imap_auth(oauth_dovecot, "XOAUTH2", xoauth2(SUPPORT_USER, expired))[0] is None
    assert imap_auth(oauth_dovecot, "XOAUTH2", xoauth2(SUPPORT_USER, revoked))[0] is None
    wait_until(lambda: auth_server.introspect(expired) == {"active": False})
    auth_server.revoke_account(SUPPORT_USER)
    foreign = auth_server.issue_access_token("other@acme.test")

    for token, user in [(expired, SUPPORT_USER), (revoked, SUPPORT_USER), (foreign, SUPPORT_USER)]:
        error, challenges, _ = imap_auth(oauth_dovecot, "XOAUTH2", xoauth2(user, token))
        assert error is not None
        assert "AUTHENTICATIONFAILED" in error
        # the "+ <base64 JSON>" continuation, answered with an empty line
        assert json.loads(challenges[1]) == {"status": "401", "schemes": "bearer", "scope": "mail"}
    bearer = oauthbearer(SUPPORT_USER, revoked, oauth_dovecot.port)
    error, challenges, _ = imap_auth(oauth_dovecot, "OAUTHBEARER", bearer)
    assert error is not None
    assert json.loads(challenges[1]) == {"status": "invalid_token"}

    # refusals cost the next login from 127.0.0.1 nothing (no auth penalty), and no cache
    # keeps a good token out either
    fresh = auth_server.issue_access_token(SUPPORT_USER)
    assert imap_auth(oauth_dovecot, "XOAUTH2", xoauth2(SUPPORT_USER, fresh))[0] is None


# --- the SMTP sink ----------------------------------------------------------------------------


def smtp_auth(sink: SmtpSink, mechanism: str, response: bytes) -> smtplib.SMTP:
    """Connect and AUTH with RESPONSE (answering an error challenge as a client must)."""
    smtp = smtplib.SMTP(sink.host, sink.port, timeout=10)
    try:
        smtp.ehlo("client.test")

        def answer(challenge: bytes | None = None) -> str:
            if challenge is None:
                return response.decode()
            return "" if mechanism == "XOAUTH2" else "\x01"

        smtp.auth(mechanism, answer)
    except BaseException:
        smtp.close()
        raise
    return smtp


def send(smtp: smtplib.SMTP, recipient: str) -> None:
    with smtp:
        smtp.sendmail(SUPPORT_USER, [recipient], b"Subject: hi\r\n\r\nhello\r\n")


def test_smtp_sink_takes_both_mechanisms(
    oauth_smtp_sink: SmtpSink, auth_server: AuthServer
) -> None:
    token = auth_server.issue_access_token(SUPPORT_USER)
    with smtplib.SMTP(oauth_smtp_sink.host, oauth_smtp_sink.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        assert smtp.esmtp_features["auth"].split() == ["OAUTHBEARER", "XOAUTH2"]
        assert smtp.mail(SUPPORT_USER)[0] == 530  # no mail before AUTH

    send(smtp_auth(oauth_smtp_sink, "XOAUTH2", xoauth2(SUPPORT_USER, token)), "a@example.test")
    bearer = oauthbearer(SUPPORT_USER, token, oauth_smtp_sink.port)
    send(smtp_auth(oauth_smtp_sink, "OAUTHBEARER", bearer), "b@example.test")
    app = auth_server.issue_access_token("app@acme.test")
    no_user = f"n,,\x01auth=Bearer {app}\x01\x01".encode()  # OAUTHBEARER may leave out a=
    send(smtp_auth(oauth_smtp_sink, "OAUTHBEARER", no_user), "c@example.test")

    deliveries = oauth_smtp_sink.wait_for(3)
    assert [(d.recipients, d.account) for d in deliveries] == [
        (["a@example.test"], SUPPORT_USER),
        (["b@example.test"], SUPPORT_USER),
        (["c@example.test"], "app@acme.test"),
    ]
    assert [(a.mechanism, a.ok) for a in oauth_smtp_sink.auth_log] == [
        ("XOAUTH2", True),
        ("OAUTHBEARER", True),
        ("OAUTHBEARER", True),
    ]


@pytest.mark.parametrize(
    ("mechanism", "status", "reply"),
    [("XOAUTH2", "401", b""), ("OAUTHBEARER", "invalid_token", b"\x01")],
)
def test_smtp_sink_refuses_a_bad_token_with_a_challenge_then_535(
    oauth_smtp_sink: SmtpSink, auth_server: AuthServer, mechanism: str, status: str, reply: bytes
) -> None:
    expired = auth_server.issue_access_token(SUPPORT_USER, lifetime=0)
    foreign = auth_server.issue_access_token("other@acme.test")
    for token in ("garbage", expired, foreign):
        response = (
            xoauth2(SUPPORT_USER, token)
            if mechanism == "XOAUTH2"
            else oauthbearer(SUPPORT_USER, token, oauth_smtp_sink.port)
        )
        with smtplib.SMTP(oauth_smtp_sink.host, oauth_smtp_sink.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            code, challenge = smtp.docmd(
                "AUTH", f"{mechanism} {base64.b64encode(response).decode()}"
            )
            assert code == 334
            assert json.loads(base64.b64decode(challenge)) == {
                "status": status,
                "schemes": "bearer",
                "scope": "mail",
            }
            code, _ = smtp.docmd(base64.b64encode(reply).decode())
            assert code == 535
            assert smtp.mail(SUPPORT_USER)[0] == 530

    assert (
        oauth_smtp_sink.auth_log
        == [AuthAttempt(mechanism, SUPPORT_USER, None, ok=False, reply=reply)] * 3
    )
    assert oauth_smtp_sink.deliveries == []


def test_smtp_sink_without_oauth_is_unchanged(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        assert "auth" not in smtp.esmtp_features
        smtp.sendmail(SUPPORT_USER, ["a@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
    assert smtp_sink.wait_for(1)[0].account is None
    assert smtp_sink.auth_log == []


@pytest.mark.parametrize(
    ("mechanism", "blob", "expected"),
    [
        ("XOAUTH2", b"user=a@b.test\x01auth=Bearer tok\x01\x01", ("a@b.test", "tok")),
        (
            "OAUTHBEARER",
            b"n,a=a@b.test,\x01host=h\x01port=1\x01auth=Bearer tok\x01\x01",
            ("a@b.test", "tok"),
        ),
        ("OAUTHBEARER", b"n,a=x=2Cy=3Dz,\x01auth=bearer tok\x01\x01", ("x,y=z", "tok")),
        ("OAUTHBEARER", b"n,,\x01auth=Bearer tok\x01\x01", (None, "tok")),
        ("XOAUTH2", b"user=a@b.test\x01auth=Basic tok\x01\x01", ("a@b.test", None)),
        ("XOAUTH2", b"\xff\xfe", (None, None)),
    ],
)
def test_parse_oauth_response(
    mechanism: str, blob: bytes, expected: tuple[str | None, str | None]
) -> None:
    assert parse_oauth_response(mechanism, blob) == expected
