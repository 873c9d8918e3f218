"""The aioimaplib adapter against a real private Dovecot, driven by the watcher (no IMAP mocks).

Each test covers one of the workarounds listed in :mod:`helpdeskd.imap.client`: response
shapes, mailbox-name quoting, EXISTS outside IDLE, IDLE keepalives, logout and lost
connections, STARTTLS and XOAUTH2.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from helpdeskd.config.settings import MailboxConfig
from helpdeskd.imap.watcher import LoginRefused, MailboxWatcher
from helpdeskd.imap.wire import ImapError
from helpdeskd.oauth import OAuthError
from tests.imap.support import (
    DovecotFactory,
    RecordingSink,
    eventually,
    mailbox,
    message,
    ok_polls,
    watching,
)
from tests.oauth.support import Tokens, unused_oauth
from tests.servers.dovecot import Dovecot
from tests.servers.fixtures import SUPPORT_PASSWORD as PASSWORD
from tests.servers.fixtures import SUPPORT_USER as USER
from tests.servers.oauth import AuthServer

# --- response shapes and arguments -------------------------------------------------------------


TRICKY_BODIES = [
    # lines a line-based parser would take for responses, tags, continuations or literals
    "* 1 FETCH (UID 99 BODY[] {5}\r\nhello)\r\n* 7 EXISTS\r\n",
    "A0001 OK FETCH completed\r\n)\r\n+ idling\r\n* BYE see you\r\n",
    "a literal marker at the end of a line {12}\r\n(((\r\n",
    "no final line break, ends in a paren )",
    "8bit: caf\u00e9 \u00fcber \u2603\r\n",
]


async def test_bodies_that_look_like_imap_responses_arrive_intact(dovecot: Dovecot) -> None:
    raws = [message(n, body) for n, body in enumerate(TRICKY_BODIES)]
    raws.append(message(50, body="0123456789abcdef" * 20_000 + "\r\n"))  # 320 kB: many reads
    for raw in raws:
        dovecot.append(USER, PASSWORD, raw)
    sink = RecordingSink()
    watcher = MailboxWatcher(mailbox(dovecot), sink, stop=asyncio.Event())

    assert await watcher.run_once() == len(raws)

    assert sink.raws() == set(raws)
    assert len(sink.batches) == 1  # all in one multi-message FETCH


async def test_a_folder_name_with_a_space_is_created_and_used(dovecot: Dovecot) -> None:
    dovecot.append(USER, PASSWORD, message(1))
    sink = RecordingSink()
    config = mailbox(dovecot, processed_folder="Helpdesk Done")

    assert await MailboxWatcher(config, sink, stop=asyncio.Event()).run_once() == 1
    assert len(dovecot.list_uids(USER, PASSWORD, "Helpdesk Done")) == 1


async def test_mail_arriving_during_a_catch_up_is_handled_in_it(dovecot: Dovecot) -> None:
    dovecot.append(USER, PASSWORD, message(1))

    class AppendingSink(RecordingSink):
        async def store_batch(self, prepared: Any) -> None:
            await super().store_batch(prepared)
            if len(self.mails) == 1:
                await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(2))

    sink = AppendingSink()
    watcher = MailboxWatcher(mailbox(dovecot, processed_folder=None), sink, stop=asyncio.Event())

    assert await watcher.run_once() == 2
    assert sink.raws() == {message(1), message(2)}


# --- IDLE, logout and lost connections ---------------------------------------------------------


async def test_idle_keepalives_and_re_idle_periods_are_weathered(dovecot: Dovecot) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    # this Dovecot says "* OK Still here" every 2 s; re-IDLE every second
    config = mailbox(dovecot, poll_interval=600.0, idle_interval=1.0)
    watcher = MailboxWatcher(config, sink, stop=stop)

    async with watching(watcher, stop):
        await eventually(lambda: ok_polls(sink) >= 1)
        await asyncio.sleep(2.5)
        assert ok_polls(sink) >= 3  # a catch-up after every re-IDLE
        await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(4))
        took = await eventually(lambda: message(4) in sink.raws(), timeout=5.0)

    assert took < 2.0
    assert all(ok for ok, _ in sink.polls)


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "poll"])
async def test_stop_makes_run_return_promptly_after_logout(dovecot: Dovecot, idle: bool) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    watcher = MailboxWatcher(mailbox(dovecot, idle=idle, poll_interval=600.0), sink, stop=stop)
    task = asyncio.create_task(watcher.run())
    await eventually(lambda: ok_polls(sink) >= 1)
    await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    start = loop.time()
    stop.set()
    await asyncio.wait_for(task, 5)

    assert loop.time() - start < 2.0
    await eventually(lambda: "Disconnected: Logged out" in dovecot.log_tail(), timeout=2.0)


async def test_run_survives_a_dovecot_restart(dovecot: Dovecot) -> None:
    sink = RecordingSink()
    stop = asyncio.Event()
    watcher = MailboxWatcher(mailbox(dovecot), sink, stop=stop)

    with capture_logs() as logs:
        async with watching(watcher, stop):
            await eventually(lambda: ok_polls(sink) >= 1)
            await asyncio.to_thread(dovecot.restart)
            await eventually(lambda: any(not ok for ok, _ in sink.polls))
            await asyncio.to_thread(dovecot.append, USER, PASSWORD, message(7))
            await eventually(lambda: message(7) in sink.raws(), timeout=10.0)

    events = [e["event"] for e in logs]
    assert "imap_disconnected" in events
    assert events.count("imap_connected") >= 2
    assert dovecot.list_uids(USER, PASSWORD, "INBOX") == []


# --- TLS and XOAUTH2 ---------------------------------------------------------------------------


async def test_starttls_and_implicit_tls(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(tls=True)
    assert server.tls_port is not None
    trust = ssl.create_default_context(cafile=str(server.cert_path))
    server.append(USER, PASSWORD, message(1))
    server.append(USER, PASSWORD, message(2))

    starttls = mailbox(server, security="starttls", batch_size=1)
    sink = RecordingSink()
    watcher = MailboxWatcher(starttls, sink, stop=asyncio.Event(), ssl_context=trust)
    # one message per session: a batch of one, then stop
    assert await watcher.run_once() == 2

    server.append(USER, PASSWORD, message(3))
    tls = mailbox(server, security="tls", port=server.tls_port)
    assert await MailboxWatcher(tls, sink, stop=asyncio.Event(), ssl_context=trust).run_once() == 1

    assert sink.raws() == {message(1), message(2), message(3)}
    logins = [line for line in server.log_tail(200).splitlines() if "Login: user=<" in line]
    assert len([line for line in logins if ", TLS," in line]) >= 2


async def test_starttls_never_falls_back_to_plain_text(dovecot: Dovecot) -> None:
    config = mailbox(dovecot, security="starttls")
    sink = RecordingSink()

    with pytest.raises(ImapError, match="does not offer STARTTLS"):
        await MailboxWatcher(config, sink, stop=asyncio.Event()).run_once()

    assert "Login: user=<" not in dovecot.log_tail(200)
    assert sink.polls and not sink.polls[0][0]


async def test_an_untrusted_certificate_is_refused(dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(tls=True)
    config = mailbox(server, security="starttls")

    with pytest.raises(ssl.SSLCertVerificationError):
        await MailboxWatcher(config, RecordingSink(), stop=asyncio.Event()).run_once()


def oauth_mailbox(server: Dovecot, mechanism: str, **overrides: Any) -> MailboxConfig:
    config = mailbox(server, password=None, **overrides)
    return replace(config, auth="oauth2", oauth=unused_oauth(mechanism))


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
async def test_oauth_login_with_a_token_the_server_checks(
    oauth_dovecot: Dovecot, auth_server: AuthServer, mechanism: str
) -> None:
    oauth_dovecot.append(USER, PASSWORD, message(1))
    config = oauth_mailbox(oauth_dovecot, mechanism)
    tokens = Tokens(auth_server.issue_access_token(USER))
    watcher = MailboxWatcher(config, RecordingSink(), stop=asyncio.Event(), token_source=tokens)
    assert await watcher.run_once() == 1
    assert f"method={mechanism.upper()}" in oauth_dovecot.log_tail()


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
async def test_a_refused_token_is_answered_and_reported_with_its_fix(
    oauth_dovecot: Dovecot, auth_server: AuthServer, mechanism: str
) -> None:
    # The server sends its error as a "+" challenge and waits: unanswered, the login would
    # hang until the session's timeout (an ImapDisconnected), not end in a refusal.
    token = auth_server.issue_access_token(USER)
    auth_server.revoke_account(USER)
    sink = RecordingSink()
    config = oauth_mailbox(oauth_dovecot, mechanism, timeout=30.0)
    watcher = MailboxWatcher(config, sink, stop=asyncio.Event(), token_source=Tokens(token))
    with pytest.raises(LoginRefused, match=f"{mechanism} login as {USER} refused") as refused:
        await watcher.run_once()
    assert "(status " in str(refused.value)  # the challenge, decoded: 401 or invalid_token
    assert refused.value.urgent and refused.value.fix == "helpdeskd oauth login support"
    assert sink.urgent == [True] and sink.fixes == ["helpdeskd oauth login support"]


INVALID_GRANT = OAuthError(
    "refresh refused: invalid_grant", code="invalid_grant", fix="helpdeskd oauth login support"
)


@pytest.mark.parametrize(
    ("error", "urgent"),
    [(INVALID_GRANT, True), (OAuthError("no answer", code="unreachable"), False)],
)
async def test_a_token_that_cannot_be_had_fails_the_poll_urgent_only_when_a_person_must_act(
    oauth_dovecot: Dovecot, error: OAuthError, urgent: bool
) -> None:
    sink = RecordingSink()
    config = oauth_mailbox(oauth_dovecot, "xoauth2")
    watcher = MailboxWatcher(config, sink, stop=asyncio.Event(), token_source=Tokens(error=error))
    with pytest.raises(LoginRefused):
        await watcher.run_once()
    assert sink.urgent == [urgent]
    assert sink.fixes == [error.fix]
    assert sink.polls[0][1] is not None and str(error) in sink.polls[0][1]
