"""Talk to an IMAP server through aioimaplib, with timeouts and fixes it lacks.

A :class:`Session` is one connection; the watcher sends its commands through it. aioimaplib
2.0.3 needs care, and this module works around it:

- Pending commands are not failed when the connection drops, and several calls have no timeout
  of their own (``uid('move')``, ``idle_start``, which hangs when the server answers IDLE with
  BYE). Every await goes through :meth:`Session.call`: a timeout, raced against a
  connection-lost event; either ends the session (:class:`ImapDisconnected`).
- It has no STARTTLS (the command is only in its table): :meth:`Session.starttls` sends it,
  upgrades the transport with ``loop.start_tls`` and asks for CAPABILITY again.
- It drops untagged EXISTS that arrive outside IDLE; :class:`_Protocol` counts them
  (:attr:`Session.exists_seen`), so mail reported at the end of a catch-up's last command is
  fetched now, not at the next re-IDLE.
- It sends arguments as they are: mailbox names are encoded and quoted by
  :func:`helpdeskd.imap.wire.encode_mailbox`.
- Its CAPABILITY from a LOGIN response keeps ``[``, ``]`` and the text after them:
  :meth:`Session.refresh_capabilities` asks again after authenticating.
- It never answers the ``+`` challenge a server sends when XOAUTH2 fails, and hangs, and it
  has no OAUTHBEARER: :meth:`Session.authenticate` sends any SASL mechanism with its initial
  response (SASL-IR, or after the server's empty challenge without it), keeps the error
  challenge and answers it with the mechanism's own failure response, so the server says NO.
- It logs every line it sends at DEBUG, scrubbing only the raw password: the XOAUTH2 string
  (the bearer token in base64) and escaped passwords leaked. :class:`_Protocol` does not log.
- It parses each read recursively, a frame or more per response line, each frame keeping a
  copy of the rest of the read, and its FETCH completeness check is quadratic: a FETCH asks for
  at most :data:`MAX_FETCH` messages and about :data:`FETCH_BYTES` of them.
- Its FETCH response lines keep each literal apart, as a ``bytearray``:
  :func:`helpdeskd.imap.wire.parse_fetch` relies on that shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aioimaplib

from helpdeskd.imap.wire import ImapError, SelectInfo

MAX_FETCH = 100  # messages per FETCH: aioimaplib parses a read recursively, line by line
# Message bytes asked for per FETCH (at least one message). aioimaplib's recursive parse keeps a
# copy of the rest of each read per response line it has passed: a 256 kB read full of small
# messages briefly holds tens of MB. Smaller responses keep that small, for a round trip more.
FETCH_BYTES = 64 * 1024
LOGOUT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 1.0

T = TypeVar("T")

_UNTAGGED_EXISTS = re.compile(rb"\* \d+ EXISTS\b")


class ImapDisconnected(ImapError):
    """The connection dropped or the server stopped answering: the session is over."""


def response_text(response: Any) -> str:
    """Return the status text of RESPONSE (its last line) on one short line."""
    lines = list(response.lines)
    last = bytes(lines[-1]) if lines else b""
    return " ".join(last.decode("utf-8", "replace").split())[:200]


def require_ok(response: Any, what: str) -> Any:
    """Return RESPONSE if it is OK, else raise ImapError naming WHAT."""
    if response.result != "OK":
        raise ImapError(f"{what} failed: {response.result} {response_text(response)}".strip())
    return response


@dataclass
class _Sasl:
    """One AUTHENTICATE exchange: what to answer the server's challenges with, what it said."""

    initial: bytes | None  # base64 initial response still to send (no SASL-IR), or None
    failure: bytes  # base64 response to an error challenge
    challenge: bytes | None = None  # the server's error challenge, as sent (base64)


@dataclass(frozen=True)
class SaslOutcome:
    """How AUTHENTICATE ended: OK or not, the status text, and the server's error challenge."""

    ok: bool
    text: str
    challenge: bytes | None


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol: counts EXISTS, answers SASL challenges, logs no secrets."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn_lost_cb: Callable[[Exception | None], None] | None,
    ) -> None:
        super().__init__(loop, conn_lost_cb)
        self.exists_seen = 0
        self.sasl: _Sasl | None = None

    def _untagged_response(self, line: bytes) -> Any:
        # aioimaplib drops an EXISTS that comes outside IDLE; count it so nothing new waits
        if _UNTAGGED_EXISTS.match(line):
            self.exists_seen += 1
        return super()._untagged_response(line)

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        sasl = self.sasl
        if command is None or command.name != "AUTHENTICATE" or sasl is None:
            super()._continuation(line)
            return
        if sasl.initial is not None:  # no SASL-IR: the first challenge is empty, asking for it
            reply, sasl.initial = sasl.initial, None
        else:
            # after the initial response a challenge carries the error (RFC 7628 3.2.2), and
            # the server waits for the failure response before it says NO
            sasl.challenge = bytes(line[1:]).strip()
            reply = sasl.failure
        self.transport.write(reply + b"\r\n")

    def send(self, line: str, scrub: str | None = None) -> None:
        # aioimaplib logs each sent line at DEBUG and scrubs only the raw password
        self.transport.write(f"{line}\r\n".encode())


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client on :class:`_Protocol`; TLS from the start when given a context."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class Session:
    """One connection: every aioimaplib await runs through :meth:`call`.

    ``async with session:`` logs out when the block ends normally or fails, and just closes
    the connection when it is cancelled.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Start connecting to HOST:PORT, with TLS from the start when given SSL_CONTEXT.

        TIMEOUT bounds each :meth:`call`. Await the greeting next
        (``session.call(session.client.wait_hello_from_server())``).
        """
        self.lost = asyncio.Event()
        self.client: Any = _Client(
            host,
            port,
            timeout=timeout,
            conn_lost_cb=lambda exc: self.lost.set(),
            ssl_context=ssl_context,
        )
        self.timeout = timeout
        self.broken = False
        self.info: SelectInfo | None = None  # the selected folder's, once selected

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None or issubclass(exc_type, Exception):
            await self.close()
        else:  # cancelled: do not wait for a logout
            self.abort()

    @property
    def exists_seen(self) -> int:
        """Count the untagged EXISTS responses seen so far, inside IDLE or not."""
        count: int = self.client.protocol.exists_seen
        return count

    def has(self, capability: str) -> bool:
        """Say whether the server announced CAPABILITY."""
        return bool(self.client.has_capability(capability))

    async def call(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Await AWAITABLE within TIMEOUT; a timeout or a lost connection ends the session."""
        limit = self.timeout if timeout is None else timeout
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            async with asyncio.timeout(limit):
                await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            self.broken = True
            raise ImapDisconnected(f"no answer from the server within {limit:.0f} s") from None
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if not task.done():
            self.broken = True
            raise ImapDisconnected("connection lost")
        try:
            return task.result()
        except (TimeoutError, aioimaplib.CommandTimeout):
            self.broken = True
            raise ImapDisconnected(f"no answer from the server within {limit:.0f} s") from None

    async def authenticate(self, mechanism: str, initial: bytes, failure: bytes) -> SaslOutcome:
        """Run AUTHENTICATE MECHANISM with the INITIAL client response.

        FAILURE is the client's answer to an error challenge (XOAUTH2: empty; OAUTHBEARER:
        ``\\x01``). The command goes through :meth:`call`, so it never waits past the
        timeout; the outcome carries the server's error challenge, if any, as sent.
        """
        protocol = self.client.protocol
        encoded = base64.b64encode(initial)
        sasl_ir = self.has("SASL-IR")
        protocol.sasl = _Sasl(
            initial=None if sasl_ir else encoded, failure=base64.b64encode(failure)
        )
        args = [mechanism, encoded.decode("ascii")] if sasl_ir else [mechanism]
        command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        try:
            response = await self.call(protocol.execute(command))
        finally:
            sasl, protocol.sasl = protocol.sasl, None
        ok = response.result == "OK"
        if ok:
            protocol.state = aioimaplib.AUTH
        return SaslOutcome(ok, response_text(response), sasl.challenge if sasl else None)

    async def refresh_capabilities(self) -> None:
        """Ask for CAPABILITY again: after STARTTLS, and after a login whose list is garbled."""
        await self.call(self.client.protocol.capability())

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Send STARTTLS, upgrade the connection with CONTEXT, then ask for CAPABILITY again."""
        protocol = self.client.protocol
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        require_ok(await self.call(protocol.execute(command)), "STARTTLS")
        if protocol.incomplete_line:
            # bytes after the OK were sent in plain text and could be an injected response
            raise ImapError("the server sent data after agreeing to STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await self.call(
            loop.start_tls(protocol.transport, protocol, context, server_hostname=server_hostname)
        )
        protocol.transport = transport
        # RFC 3501 6.2.1: forget what was said before the handshake
        await self.refresh_capabilities()

    async def start_idle(self, interval: float) -> asyncio.Future[Any]:
        """Send IDLE, to be ended within INTERVAL seconds; return the future of its answer."""
        queue = self.client.protocol.idle_queue
        while not queue.empty():  # pushes left over from the previous IDLE
            queue.get_nowait()
        idle: asyncio.Future[Any] = await self.call(self.client.idle_start(timeout=interval))
        return idle

    async def wait_push(
        self, idle: asyncio.Future[Any], stop: asyncio.Event, timeout: float
    ) -> list[bytes] | None:
        """Return the next lines pushed during IDLE; None on timeout, stop or IDLE's end."""
        push = asyncio.ensure_future(self.client.wait_server_push(timeout=timeout))
        stopped = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            # wait_server_push is bounded by its own timeout; the others end it sooner
            done, _ = await asyncio.wait(
                {push, stopped, lost, idle}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (push, stopped, lost):
                if not waiter.done():
                    waiter.cancel()
        if lost in done:
            self.broken = True
            raise ImapDisconnected("connection lost while idling")
        if push in done:
            try:
                lines: list[bytes] = push.result()
            except TimeoutError:
                return None
            if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                return None  # aioimaplib's own IDLE timer ran out
            return lines
        return None

    async def end_idle(self, idle: asyncio.Future[Any]) -> None:
        """Send DONE and wait for IDLE's answer (IDLE's future, from :meth:`start_idle`)."""
        self.client.idle_done()
        require_ok(await self.call(idle), "IDLE")

    async def close(self) -> None:
        """Log out politely if the connection still works, then close it."""
        state = self.client.protocol.state
        if not self.broken and not self.lost.is_set() and state in ("NONAUTH", "AUTH", "SELECTED"):
            with contextlib.suppress(Exception):
                await self.call(self.client.logout(), timeout=min(self.timeout, LOGOUT_TIMEOUT))
        transport = self.client.protocol.transport
        if transport is not None and not self.lost.is_set():
            # a TLS close waits for the server's close_notify; give it a moment, then abort
            transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.lost.wait()
        self.abort()

    def abort(self) -> None:
        """Close the connection now and cancel aioimaplib's helper tasks."""
        client = self.client
        if client._idle_waiter is not None:
            client._idle_waiter.cancel()
        tasks = [*client.tasks, *client.protocol.tasks, client._client_task]
        for task in tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" at exit
        transport = client.protocol.transport
        if transport is not None:
            transport.abort()  # at once, TLS included: nothing is left for the loop to finish
