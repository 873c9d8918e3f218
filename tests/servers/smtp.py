"""A real SMTP server (aiosmtpd) on a free loopback port that captures what it is sent.

It can be stopped and started again on the same port (the "sink down" case) and told to refuse
chosen recipients, or every recipient at chosen domains, with a 4xx or 5xx reply
(``handler.refuse``, ``handler.refuse_domains``); it counts the connections made to it
(``connections``) and logs each refused recipient (``refused``).

With ``oauth=`` (a test :class:`~tests.servers.oauth.AuthServer`) it offers only AUTH XOAUTH2
and OAUTHBEARER, wants AUTH before MAIL, checks each token by introspection at that server,
answers a bad token as Gmail and Dovecot do (a ``334`` challenge carrying a base64 JSON error,
then ``535`` once the client has answered it) and records the account behind each delivery.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

if TYPE_CHECKING:
    from tests.servers.oauth import AuthServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Delivery:
    sender: str
    recipients: list[str]
    data: bytes
    account: str | None = None  # the OAuth account that sent it; None without oauth
    mail_options: list[str] = field(default_factory=list)  # MAIL FROM's parameters (SIZE=…)

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH exchange at an OAuth sink."""

    mechanism: str  # XOAUTH2 | OAUTHBEARER
    user: str | None  # the user the client named
    account: str | None  # the token's account, when the token was good
    ok: bool
    reply: bytes | None = None  # the client's answer to the error challenge (decoded)


@dataclass
class _Handler:
    deliveries: list[Delivery] = field(default_factory=list)
    received: int = 0  # mails accepted so far, kept in deliveries or not
    keep: bool = True  # False: count the mails, keep none (a benchmark's sink must not grow)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> "450 ..." / "550 ..."
    refuse_domains: dict[str, str] = field(default_factory=dict)  # domain -> "451 ..."
    refused: list[tuple[str, str]] = field(default_factory=list)  # (address, reply) refused
    connections: int = 0  # connections made to the sink so far
    receiving: int = 0  # mails whose DATA has come (before the delay), accepted or not yet
    delay: float = 0.0  # seconds before DATA's reply
    rcpt_delay: float = 0.0  # seconds before each RCPT's reply
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        lowered = address.lower()
        reply = self.refuse.get(lowered) or self.refuse_domains.get(lowered.rpartition("@")[2])
        if reply:
            with self.lock:
                self.refused.append((address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.receiving += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        content = envelope.original_content or b""
        account = session.auth_data if isinstance(session.auth_data, str) else None
        with self.lock:
            self.received += 1
            if self.keep:
                self.deliveries.append(
                    Delivery(
                        str(envelope.mail_from),
                        [str(r) for r in envelope.rcpt_tos],
                        content,
                        account,
                        list(envelope.mail_options),
                    )
                )
        return "250 Message accepted"


@dataclass
class _OAuthHandler(_Handler):
    """Adds AUTH XOAUTH2 / OAUTHBEARER checked at the test authorization server."""

    oauth: Any = None  # AuthServer
    # not "auth_...": aiosmtpd takes every handler attribute named so for a SASL mechanism
    attempts: list[AuthAttempt] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._authenticate(server, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._authenticate(server, "OAUTHBEARER", args)

    async def _authenticate(self, server: SMTP, mechanism: str, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:  # RFC 4954: "=" is an empty initial response
                blob = b"" if args[1] == "=" else base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            answer = await server.challenge_auth(b"")
            if not isinstance(answer, bytes):  # the client cancelled; aiosmtpd answered it
                return AuthResult(success=False, handled=True)
            blob = answer
        user, token = parse_oauth_response(mechanism, blob)
        account = None
        if token is not None:
            try:
                info = await asyncio.get_running_loop().run_in_executor(
                    None, self.oauth.introspect, token
                )
            except OSError:
                message = "454 4.7.0 Temporary authentication failure"
                return AuthResult(success=False, handled=False, message=message)
            if info.get("active") is True:
                account = str(info.get("username") or "")
        if account and (user is None or user.lower() == account.lower()):
            self._log(AuthAttempt(mechanism, user, account, ok=True))
            return AuthResult(success=True, auth_data=account)
        error = {
            "status": "401" if mechanism == "XOAUTH2" else "invalid_token",
            "schemes": "bearer",
            "scope": self.oauth.DEFAULT_SCOPE,
        }
        reply = await server.challenge_auth(json.dumps(error, separators=(",", ":")))
        if not isinstance(reply, bytes):  # "*" or bad base64: aiosmtpd answered 501
            self._log(AuthAttempt(mechanism, user, None, ok=False))
            return AuthResult(success=False, handled=True)
        self._log(AuthAttempt(mechanism, user, None, ok=False, reply=reply))
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Authentication credentials invalid"
        )

    def _log(self, attempt: AuthAttempt) -> None:
        with self.lock:
            self.attempts.append(attempt)


def parse_oauth_response(mechanism: str, blob: bytes) -> tuple[str | None, str | None]:
    """Return (user, bearer token) from an XOAUTH2 or OAUTHBEARER (RFC 7628) client response."""
    text = blob.decode("utf-8", errors="replace")
    user = None
    if mechanism == "OAUTHBEARER":
        header, _, text = text.partition("\x01")
        for part in header.split(","):
            if part.startswith("a="):
                user = part[2:].replace("=2C", ",").replace("=3D", "=")
    token = None
    for pair in text.split("\x01"):
        key, _, value = pair.partition("=")
        if key == "user" and mechanism == "XOAUTH2":
            user = value
        elif key == "auth":
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "bearer" and credentials:
                token = credentials.strip()
    return user, token


class _CountingController(Controller):
    """A Controller that counts the connections it accepts (one server per connection)."""

    def factory(self) -> SMTP:
        handler = self.handler
        with handler.lock:
            handler.connections += 1
        return super().factory()


class SmtpSink:
    def __init__(
        self,
        port: int | None = None,
        *,
        smtputf8: bool = False,
        oauth: AuthServer | None = None,
        keep: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.smtputf8 = smtputf8  # offer SMTPUTF8 (RFC 6531)
        self.oauth = oauth  # require AUTH XOAUTH2 / OAUTHBEARER, checked at this server
        # KEEP False: the handler only counts the mails it accepts (received)
        self.handler = (
            _Handler(keep=keep) if oauth is None else _OAuthHandler(keep=keep, oauth=oauth)
        )
        self._controller: Controller | None = None

    @property
    def deliveries(self) -> list[Delivery]:
        with self.handler.lock:
            return list(self.handler.deliveries)

    @property
    def received(self) -> int:
        """How many mails the sink accepted since it was made (kept or not)."""
        with self.handler.lock:
            return self.handler.received

    @property
    def connections(self) -> int:
        """How many connections clients made to the sink since it (last) started."""
        with self.handler.lock:
            return self.handler.connections

    @property
    def refused(self) -> list[tuple[str, str]]:
        """Every recipient refused so far, with the reply: (address, reply)."""
        with self.handler.lock:
            return list(self.handler.refused)

    @property
    def auth_log(self) -> list[AuthAttempt]:
        """Every AUTH exchange so far (empty without oauth)."""
        if not isinstance(self.handler, _OAuthHandler):
            return []
        with self.handler.lock:
            return list(self.handler.attempts)

    def start(self) -> None:
        options: dict[str, Any] = {}
        if self.oauth is not None:
            # no TLS here: AUTH must be offered in the clear, and only the OAuth mechanisms
            options = {"auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN", "PLAIN"]}
        self._controller = _CountingController(
            self.handler,
            hostname=self.host,
            port=self.port,
            enable_SMTPUTF8=self.smtputf8,
            **options,
        )
        self._controller.start()
        with self.handler.lock:  # start() made one to check the server answers: not a client's
            self.handler.connections = 0

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        """Wait until at least COUNT mails arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.deliveries
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {count} mails, got {len(self.deliveries)}")

    def by_recipient(self) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {}
        for d in self.deliveries:
            for r in d.recipients:
                out.setdefault(r.lower(), []).append(d)
        return out
