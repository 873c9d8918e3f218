"""One SMTP connection to the relay: opened when first needed, logged in, kept open and reused.

The outbox sender holds ``[smtp] connections`` of these, one per sending task. A connection
that fails is closed and opened again for the next mail. With ``auth = "oauth2"`` it logs in
with SASL XOAUTH2 or OAUTHBEARER and an access token from its :class:`TokenSource`.

:meth:`Relay.send` reports, per recipient, whether the relay accepted the mail, refused it for
now (4xx, or the connection failed) or for good (5xx); which of the temporary refusals were 4xx
answers about the recipient's mail (so its domain backs off); and it fails at once, with the
reason, a non-ASCII address that a relay without SMTPUTF8 cannot carry (RFC 6531), sending the
mail to the other recipients.

Each reply in a mail's transaction must come within ``[smtp] timeout`` seconds of its command
(:class:`_Deadline`); a relay that falls silent fails the connection, which is dropped, and the
mail's recipients wait to be tried again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPStatus

from helpdeskd.config.settings import SmtpConfig
from helpdeskd.mail.parse import is_address
from helpdeskd.oauth import OAuthError, TokenSource, login_command
from helpdeskd.oauth.sasl import FAILED_SASL_RESPONSE, sasl_error, sasl_initial_response

NO_SMTPUTF8 = "the relay does not offer SMTPUTF8, needed for a non-ASCII address"


class LoginFailed(Exception):
    """The relay could not be logged in to; FIX, when known, is the command that mends it."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class RelayDown(Exception):
    """The relay could not be reached (refused, timed out, a TLS or greeting failure)."""


# Told of a failed SMTP login (message, fix), once per failure streak; and of the recovery.
LoginReport = Callable[[str | None, str | None], Awaitable[None]]


@dataclass(frozen=True)
class SendResult:
    """What the relay made of one mail, by recipient."""

    accepted: tuple[str, ...]
    temporary: dict[str, str]
    permanent: dict[str, str]
    # The temporary refusals that were 4xx answers about the mail (not a lost connection).
    throttled: tuple[str, ...] = field(default=())


class Relay:
    """One connection to the relay of SMTP."""

    def __init__(self, smtp: SmtpConfig, token_source: TokenSource | None = None) -> None:
        self.smtp = smtp
        self.token_source = token_source
        self._client: aiosmtplib.SMTP | None = None
        self.opened = 0  # connections made (and logged in) so far

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def connect(self) -> None:
        """Connect and log in; raise RelayDown or LoginFailed."""
        cfg = self.smtp
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            use_tls=cfg.security == "tls",
            # "starttls" means STARTTLS or fail, never opportunistic; "none" never upgrades.
            start_tls=cfg.security == "starttls",
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise RelayDown(_reason(exc)) from None
        try:
            if cfg.auth == "oauth2":
                await self._oauth_login(client)
            elif cfg.username and cfg.password is not None:
                await client.login(cfg.username, cfg.password.reveal())
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            oauth = cfg.oauth
            fix = login_command("smtp") if oauth and oauth.grant == "refresh_token" else None
            raise LoginFailed(
                f"SMTP login as {cfg.username} refused: {exc.code} {exc.message}", fix
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise RelayDown(_reason(exc)) from None
        except BaseException:
            client.close()
            raise
        self._client = client
        self.opened += 1

    async def _oauth_login(self, client: aiosmtplib.SMTP) -> None:
        """SASL XOAUTH2 or OAUTHBEARER with a fresh access token; LoginFailed when refused."""
        cfg = self.smtp
        assert cfg.oauth is not None and cfg.username is not None  # the config ensures both
        if self.token_source is None:
            raise LoginFailed("SMTP uses OAuth 2.0 but the sender was given no token source")
        try:
            token = await self.token_source.access_token()
        except OAuthError as exc:
            raise LoginFailed(str(exc), exc.fix) from exc
        mechanism = cfg.oauth.mechanism
        if mechanism not in client.server_auth_methods:
            await client.ehlo()  # after STARTTLS aiosmtplib may not have asked yet
        if mechanism not in client.server_auth_methods:
            raise LoginFailed(
                f"the relay {cfg.host}:{cfg.port} does not offer AUTH {mechanism.upper()}"
            )
        initial = sasl_initial_response(
            mechanism, cfg.username, token, host=cfg.host, port=cfg.port
        )
        response = await client.execute_command(
            b"AUTH", mechanism.upper().encode(), base64.b64encode(initial)
        )
        detail = ""
        if response.code == 334:  # the error challenge (RFC 7628 3.2.2): answer it, then 535
            detail = sasl_error(response.message.encode("utf-8", "replace"))
            response = await client.execute_command(
                base64.b64encode(FAILED_SASL_RESPONSE[mechanism])
            )
        if response.code != 235:
            reason = f"{response.code} {response.message}" + (f" ({detail})" if detail else "")
            raise aiosmtplib.SMTPAuthenticationError(response.code, reason)

    async def send(self, sender: str, recipients: list[str], data: bytes) -> SendResult:
        """Send DATA from SENDER to RECIPIENTS over this connection (connected first)."""
        client = self._client
        assert client is not None
        wide: dict[str, str] = {}
        try:
            # A non-ASCII address needs SMTPUTF8 (RFC 6531) on the relay; without it no retry
            # will carry it, and the ASCII addresses still go.
            utf8 = not (sender.isascii() and all(a.isascii() for a in recipients))
            if utf8 and not await _offers(client, "smtputf8"):
                wide = {
                    r: NO_SMTPUTF8 for r in recipients if not r.isascii() or not sender.isascii()
                }
                recipients = [r for r in recipients if r not in wide]
                if not recipients:
                    return SendResult((), {}, wide)
                utf8 = False
            async with asyncio.timeout(None) as limit:
                deadline = _Deadline(limit, self.smtp.timeout)
                try:
                    refused = await _transaction(
                        client, sender, recipients, data, utf8=utf8, deadline=deadline
                    )
                finally:
                    deadline.stop()
        except aiosmtplib.SMTPResponseException as exc:
            await self.close()
            reason = f"{exc.code} {exc.message}"
            if 500 <= exc.code < 600:
                return SendResult((), {}, {**dict.fromkeys(recipients, reason), **wide})
            return SendResult(
                (), dict.fromkeys(recipients, reason), wide, throttled=tuple(recipients)
            )
        except TimeoutError:
            # No reply in time: a reply may still come, to be taken for the next command's.
            # The connection is dropped, without QUIT.
            self._drop()
            reason = f"SMTPReadTimeoutError: no reply within {self.smtp.timeout:g} s"
            return SendResult((), dict.fromkeys(recipients, reason), wide)
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return SendResult((), dict.fromkeys(recipients, _reason(exc)), wide)
        result = _split_refused(refused, recipients)
        if wide:
            result = SendResult(
                result.accepted,
                result.temporary,
                {**result.permanent, **wide},
                result.throttled,
            )
        return result

    def _drop(self) -> None:
        """Close the connection at once, without QUIT."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        """Close the connection, if one is open: QUIT, or drop it if QUIT fails."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await asyncio.wait_for(client.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            client.close()  # the socket too, whatever QUIT did (or a cancel left)


async def _offers(client: aiosmtplib.SMTP, extension: str) -> bool:
    """Whether the relay offers EXTENSION, greeted first if it was not yet (EHLO, or HELO
    where EHLO is refused, as aiosmtplib's own commands greet it)."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()
    return client.supports_extension(extension)


class _Deadline:
    """The time limit of a transaction's next reply: SECONDS from its command.

    aiosmtplib limits each reply itself, with an ``asyncio.wait_for`` per reply. That cost a
    tenth of the relay's CPU per mail at the relay's full speed, and a turn of the event loop
    per reply. A transaction's commands go without it (``timeout=None``) inside one
    ``asyncio.timeout`` (LIMIT), which this expires when a reply is late.

    A command only notes when its reply is due (:meth:`start`). One timer watches: when it
    goes off at a due time that a later command has moved on, it is set again for that one;
    when the time it was set for is still the one due, the reply is late and LIMIT expires.
    (Moving LIMIT itself before each command cost a timer per command: about 7 % of the
    event loop's time at the relay's full speed, by sampling; this watch costs less than half
    of that.) :meth:`stop` ends the watch."""

    def __init__(self, limit: asyncio.Timeout, seconds: float) -> None:
        self._limit = limit
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + seconds
        self._set = self._due  # the due time the timer was set for
        self._timer = self._loop.call_at(self._set, self._check)

    def start(self, replies: int = 1) -> None:
        """A command goes now, answered by REPLIES replies (DATA and its message: two)."""
        self._due = self._loop.time() + replies * self._seconds

    def stop(self) -> None:
        """The transaction is over: no reply is waited for any more."""
        self._timer.cancel()

    def _check(self) -> None:
        if self._due > self._set:  # a later command's reply is due later: watch for that
            self._set = self._due
            self._timer = self._loop.call_at(self._set, self._check)
        else:  # the reply awaited when the timer was set has not come in time
            self._limit.reschedule(self._loop.time())


async def _transaction(
    client: aiosmtplib.SMTP,
    sender: str,
    recipients: list[str],
    data: bytes,
    *,
    utf8: bool,
    deadline: _Deadline,
) -> dict[str, tuple[int, str]]:
    """One mail transaction (MAIL, a RCPT per recipient, DATA); return the refused recipients
    (code, message). Raises SMTPResponseException when the mail is refused as a whole.
    DEADLINE times each reply, told of each command here (the commands themselves,
    :func:`_mail` and :func:`_rcpt` included, go with ``timeout=None``); the enclosing
    ``asyncio.timeout`` raises TimeoutError when a reply is late.

    aiosmtplib's ``sendmail`` does the same, and more: it parses and checks every address
    before MAIL, which ``mail`` and ``rcpt`` then do again, and it normalizes the whole mail's
    line endings once more to size it. That was a seventh of the CPU a mail costs at the
    relay's full speed. Every recipient passed :func:`helpdeskd.mail.parse.is_address`, which
    is stricter than those checks, so none fails them after MAIL went; such an address is not
    parsed again at all (:func:`_path`). The envelope is reset when every recipient is refused,
    so that the connection takes the next mail, as ``sendmail`` does."""
    encoding = "utf-8" if utf8 else "ascii"
    options = ["SMTPUTF8"] if utf8 else []
    if await _offers(client, "size"):
        # RFC 1870: octets as sent, every line ending a CRLF (DATA writes them so: a bare LF
        # or CR becomes CRLF).
        crlf = data.count(b"\r\n")
        size = len(data) + (data.count(b"\n") - crlf) + (data.count(b"\r") - crlf)
        options.insert(0, f"SIZE={size}")
    deadline.start()
    await _mail(client, sender, options, encoding)
    refused: dict[str, tuple[int, str]] = {}
    for address in recipients:
        deadline.start()
        if (refusal := await _rcpt(client, address, encoding)) is not None:
            refused[address] = refusal
    if len(refused) == len(recipients):
        deadline.start()
        with contextlib.suppress(aiosmtplib.SMTPResponseException, ConnectionError):
            await client.rset(timeout=None)
        return refused
    deadline.start(2)
    await client.data(data, timeout=None)
    return refused


async def _mail(client: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str) -> None:
    """MAIL FROM SENDER, as aiosmtplib's ``mail`` sends it (see :func:`_path`); raises
    SMTPSenderRefused when the relay refuses it."""
    path = _path(sender, encoding)
    if path is None:
        await client.mail(sender, options=options, encoding=encoding, timeout=None)
        return
    response = await client.execute_command(
        b"MAIL", b"FROM:" + path, *(option.encode("ascii") for option in options), timeout=None
    )
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(client: aiosmtplib.SMTP, address: str, encoding: str) -> tuple[int, str] | None:
    """RCPT TO ADDRESS, as aiosmtplib's ``rcpt`` sends it (see :func:`_path`); the relay's
    refusal (code, message), or None when it took the recipient."""
    path = _path(address, encoding)
    if path is None:
        try:
            await client.rcpt(address, encoding=encoding, timeout=None)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code, exc.message
        return None
    response = await client.execute_command(b"RCPT", b"TO:" + path, timeout=None)
    if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
        return response.code, response.message
    return None


def _path(address: str, encoding: str) -> bytes | None:
    """ADDRESS as the path of a MAIL or RCPT command (``<address>``; ``<>``, the null sender,
    for none) when :func:`helpdeskd.mail.parse.is_address` accepts it: then it has no
    whitespace, control character, angle bracket or other special that could end the path or
    the line, and aiosmtplib's ``mail`` and ``rcpt`` would write it the same, after parsing
    it as an RFC 5322 address list (skipping that parse cut the sender's CPU per mail at the
    relay's full speed by about 6 %). None for any other address: aiosmtplib's own commands
    quote and check it, as before."""
    if address and not is_address(address):
        return None
    return b"<" + address.encode(encoding) + b">"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:300]


def _split_refused(refused: dict[str, tuple[int, str]], recipients: list[str]) -> SendResult:
    if not refused:
        return SendResult(tuple(recipients), {}, {})
    temporary: dict[str, str] = {}
    permanent: dict[str, str] = {}
    lowered = {k.lower(): v for k, v in refused.items()}
    accepted = []
    for address in recipients:
        if address in lowered:
            code, message = lowered[address]
            (permanent if 500 <= code < 600 else temporary)[address] = f"{code} {message}"
        else:
            accepted.append(address)
    return SendResult(tuple(accepted), temporary, permanent, throttled=tuple(temporary))
