"""The transactional outbox: rows written with the change that caused them, delivered later.

:func:`enqueue` adds a fully rendered mail to the session of the caller's transaction.
:class:`OutboxSender` claims due rows (one at a time with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several daemons share the work; a batch at a time on SQLite, which serves one
daemon), sends each to the recipients that have not accepted it yet, and records delivery per
recipient, each mail in a transaction of its own: a 4xx or a connection error retries with
exponential backoff and jitter, a 5xx fails that recipient. A recipient who accepted a mail is
never sent it again. A recipient that cannot be addressed (no address a mail can carry, or a
non-ASCII one where the relay lacks SMTPUTF8) fails at once with the reason; the others still go.

With ``auth = "oauth2"`` the sender logs in with SASL XOAUTH2 or OAUTHBEARER and an access
token from its :class:`TokenSource`. A login that fails (no token, a token the provider will not
refresh, a token the relay refuses) is nobody's mail's fault: no row is claimed or charged an
attempt; the sender reports it once (``on_login``) and tries again later, backing off. That
holds for a refused password too: a wrong password is no recipient's fault either.

The sender reads its clock once for each step that looks at the time, and passes that moment
down: picking the due rows, a mail just before it goes (has it expired?), and a mail's result
(when it was sent, when to try again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

import aiosmtplib
import structlog
from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import DkimConfig, SmtpConfig
from helpdeskd.mail.parse import is_address
from helpdeskd.oauth import OAuthError, TokenSource, login_command
from helpdeskd.oauth.sasl import FAILED_SASL_RESPONSE, sasl_error, sasl_initial_response
from helpdeskd.outbox.dkim import sign
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.models import Base, Event, Outbox, OutboxRecipient

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

CLAIM_BATCH = 20
CLAIM_BYTES = 8 * 1024 * 1024  # on SQLite, the mails of a batch held in memory at once, at most

_OUTBOX = Base.metadata.tables[Outbox.__tablename__]
_RECIPIENTS = Base.metadata.tables[OutboxRecipient.__tablename__]
# One recipient's delivery, by its id: an executemany over the recipients a send touched.
_RECORD_RECIPIENT = (
    update(_RECIPIENTS)
    .where(_RECIPIENTS.c.id == bindparam("rcpt"))
    .values(
        state=bindparam("s"),
        attempts=bindparam("n"),
        last_error=bindparam("e"),
        sent_at=bindparam("t"),
    )
)

# Given a claimed row, return the recipients to skip now, with the reason.
Recheck = Callable[[AsyncSession, Outbox], Awaitable[dict[str, str]]]

UNADDRESSABLE = "cannot be addressed: not a mail address a message can carry"
LOGIN_RETRY_BASE = 30.0  # seconds before trying a failed SMTP login again; doubles per failure
LOGIN_RETRY_MAX = 600.0
NO_SMTPUTF8 = "the relay does not offer SMTPUTF8, needed for a non-ASCII address"


def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    message_id: str,
    envelope_from: str,
    recipients: Sequence[str],
    data: bytes,
    ticket_id: int | None = None,
    expires_at: datetime | None = None,
    not_before: datetime | None = None,
) -> Outbox:
    """Add an outgoing mail to SESSION; it is sent only once the caller commits.

    It is due at NOT_BEFORE; without one, at once (the column's default stamps the row).
    """
    unique = list(dict.fromkeys(r.lower() for r in recipients))
    row = Outbox(
        ticket_id=ticket_id,
        kind=kind,
        message_id=message_id,
        envelope_from=envelope_from,
        data=data,
        state="pending",
        attempts=0,
        expires_at=expires_at,
        recipients=[OutboxRecipient(address=a, state="pending", attempts=0) for a in unique],
    )
    if not_before is not None:
        row.next_attempt_at = not_before
    session.add(row)
    return row


def enqueue_failed(
    session: AsyncSession,
    *,
    kind: str,
    message_id: str,
    envelope_from: str,
    address: str,
    reason: str,
    now: datetime,
) -> Outbox:
    """Add to SESSION, at NOW, a mail that cannot go to ADDRESS: a failed row and recipient,
    with REASON, and the ``delivery_failed`` event a failure at the relay would leave.

    For a recipient no message can even be written to: nothing is built, so the row holds no
    mail (``outbox retry`` of it fails again at once, in :meth:`OutboxSender._send`).
    """
    address = address[:320]  # the column's size: a bad address may be longer
    row = Outbox(
        kind=kind,
        message_id=message_id,
        envelope_from=envelope_from,
        data=b"",
        state="failed",
        attempts=0,
        last_error=reason,
        next_attempt_at=now,
        created_at=now,
        recipients=[
            OutboxRecipient(address=address, state="failed", attempts=0, last_error=reason)
        ],
    )
    session.add(row)
    session.add(
        Event(
            ticket_id=None,
            type="delivery_failed",
            actor="system",
            detail={"recipient": address, "error": reason, "message_id": message_id},
            created_at=now,
        )
    )
    log.error("recipient_unaddressable", recipient=address, error=reason, message_id=message_id)
    return row


def backoff(attempts: int, base: float, cap: float) -> float:
    """Return the delay before attempt ATTEMPTS+1: exponential, capped, with full jitter."""
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


class LoginFailed(Exception):
    """The relay could not be logged in to; FIX, when known, is the command that mends it."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


# Told of a failed SMTP login (message, fix), once per failure streak; and of the recovery.
LoginReport = Callable[[str | None, str | None], Awaitable[None]]


@dataclass(frozen=True)
class SendResult:
    accepted: tuple[str, ...]
    temporary: dict[str, str]
    permanent: dict[str, str]


@dataclass(frozen=True)
class _Claim:
    """A due row's mail, and the recipients it goes to now."""

    row_id: int
    message_id: str
    ticket_id: int | None
    envelope_from: str
    pending: list[str]
    data: bytes


def _due_first(query: Select[_T], now: datetime) -> Select[_T]:
    """QUERY over the rows due at NOW, the longest due first."""
    return query.where(Outbox.state == "pending", Outbox.next_attempt_at <= now).order_by(
        Outbox.next_attempt_at, Outbox.id
    )


def _bound(claim: _Claim) -> contextlib.AbstractContextManager[object]:
    """Log lines about CLAIM's mail carry its row, Message-ID and ticket."""
    return structlog.contextvars.bound_contextvars(
        outbox_id=claim.row_id, message_id=claim.message_id, ticket_id=claim.ticket_id
    )


class OutboxSender:
    """Deliver due outbox rows over SMTP until stopped."""

    def __init__(
        self,
        sessions: SessionMaker,
        smtp: SmtpConfig,
        *,
        wakeup: asyncio.Event | None = None,
        idle_poll: float = 5.0,
        recheck: Recheck | None = None,
        dkim: DkimConfig | None = None,
        clock: Clock = system_clock,
        token_source: TokenSource | None = None,
        on_login: LoginReport | None = None,
    ) -> None:
        """TOKEN_SOURCE gives the access tokens for ``auth = "oauth2"``. ON_LOGIN hears of a
        failed login (its message and fix) when a streak of failures starts, and of the first
        login that works after one (``None, None``)."""
        self.sessions = sessions
        self.clock = clock
        self.token_source = token_source
        self.on_login = on_login
        self._login_failures = 0
        self._login_retry_at: datetime | None = None  # no sending before it (a failed login)
        self.recheck = recheck
        self.dkim = dkim
        self.smtp = smtp
        self.wakeup = wakeup or asyncio.Event()
        self.idle_poll = idle_poll
        self._client: aiosmtplib.SMTP | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Send until STOP is set; the row in hand is finished first."""
        try:
            while not stop.is_set():
                sent = await self.run_once()
                if sent:
                    continue
                await self._close()
                self.wakeup.clear()
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self.wakeup.wait()),
                ]
                _done, pending = await asyncio.wait(
                    waiters, timeout=await self._until_due(), return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
        finally:
            await self._close()

    async def run_once(self) -> int:
        """Attempt the due rows once (at most a batch); return how many were attempted.

        While a failed login is backed off, nothing is attempted.
        """
        if self._login_wait() > 0:
            return 0
        try:
            async with self.sessions() as session:
                if session.bind is None or session.bind.dialect.name != "postgresql":
                    return await self._deliver_batch(session)
                attempted = 0
                while attempted < CLAIM_BATCH and await self._deliver_next(session):
                    attempted += 1
                return attempted
        except LoginFailed as exc:  # raised before any row was charged: they wait as they are
            await self._login_failed(exc)
            return 0

    def _login_wait(self) -> float:
        """Seconds left before a failed login may be tried again (0 when it may)."""
        if self._login_retry_at is None:
            return 0.0
        return max(0.0, (self._login_retry_at - self.clock()).total_seconds())

    async def _login_failed(self, exc: LoginFailed) -> None:
        await self._close()
        delay = backoff(self._login_failures + 1, LOGIN_RETRY_BASE, LOGIN_RETRY_MAX)
        self._login_retry_at = self.clock() + timedelta(seconds=delay)
        log.error("smtp_login_failed", error=str(exc), fix=exc.fix, retry_in=round(delay, 1))
        if self._login_failures == 0 and self.on_login is not None:
            await self.on_login(str(exc), exc.fix)
        self._login_failures += 1

    async def _until_due(self) -> float:
        """Seconds until the next row is due (a retry's backoff), at most idle_poll; or until
        a failed login may be tried again."""
        if wait := self._login_wait():
            return wait
        async with reading(self.sessions) as session:  # waits for no batch being stored
            due = await session.scalar(
                select(func.min(Outbox.next_attempt_at)).where(Outbox.state == "pending")
            )
        if due is None:
            return self.idle_poll
        return min(self.idle_poll, max(0.05, (due - self.clock()).total_seconds()))

    async def drain(self, limit: float = 30.0) -> None:
        """Send until nothing is due (for the CLI and tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            if not await self.run_once():
                break
        await self._close()

    async def _deliver_next(self, session: AsyncSession) -> bool:
        """PostgreSQL: claim one due row, send it and record the result; False when none is due.

        The row stays locked (``FOR UPDATE SKIP LOCKED``) in one transaction from claim to
        record, so another daemon skips it, and a daemon that dies mid-send releases it at once.
        """
        async with session.begin():
            now = self.clock()
            rows = await self._due(session, 1, now)
            if not rows:
                return False
            claim = await self._claim(session, rows[0], now)
            if claim is not None:
                with _bound(claim):
                    result = await self._send_claim(claim)
                    await self._record(session, claim.row_id, result, self.clock())
            return True

    async def _deliver_batch(self, session: AsyncSession) -> int:
        """SQLite: claim up to CLAIM_BATCH due rows, send each and record it; return how many.

        SQLite serves one daemon, so nothing else sends these rows: they are read in one short
        transaction, and each mail's result is recorded in a transaction of its own as soon as
        SMTP has answered (the write lock is never held while SMTP talks). What may have changed
        since is checked again just before each send: an expiry that has passed, and, for a
        notice, an opt-out (the recheck, in the database). Most rows are acknowledgements and
        notifications: they cost three reads a batch and one write transaction a mail, where a
        claim transaction of their own cost as much again (each statement is several trips to
        aiosqlite's thread, the sender's main cost).
        """
        async with session.begin():
            now = self.clock()
            rows = await self._due_batch(session, now)
            claims = [await self._claim(session, row, now, recheck=False) for row in rows]
        for row, claim in zip(rows, claims, strict=True):
            if claim is None:
                continue
            now = self.clock()  # this mail's turn: the batch's earlier mails took time
            expired = row.expires_at is not None and row.expires_at <= now
            if expired or (self.recheck is not None and row.notice_id is not None):
                async with session.begin():
                    claim = await self._claim(session, row, now)
                if claim is None:
                    continue
            with _bound(claim):
                result = await self._send_claim(claim)
                async with session.begin():
                    await self._record(session, claim.row_id, result, self.clock())
        return len(rows)

    async def _send_claim(self, claim: _Claim) -> SendResult:
        """Send CLAIM's mail; recipients no mail can be addressed to fail without a try."""
        unaddressable = {r: UNADDRESSABLE for r in claim.pending if not is_address(r)}
        addressable = [r for r in claim.pending if r not in unaddressable]
        if not addressable:  # nothing to sign or send (a row of enqueue_failed holds no mail)
            return SendResult((), {}, unaddressable)
        result = await self._send(claim.envelope_from, addressable, await self._sign(claim.data))
        return replace(result, permanent={**result.permanent, **unaddressable})

    async def _due(self, session: AsyncSession, limit: int, now: datetime) -> Sequence[Outbox]:
        """The next LIMIT rows due at NOW, oldest due first, locked where the database can."""
        rows = await session.scalars(
            _due_first(select(Outbox), now).limit(limit).with_for_update(skip_locked=True)
        )
        return rows.all()

    async def _due_batch(self, session: AsyncSession, now: datetime) -> Sequence[Outbox]:
        """The next CLAIM_BATCH rows due at NOW, as many as fit in CLAIM_BYTES (at least one)."""
        sizes = await session.execute(
            _due_first(select(Outbox.id, func.length(Outbox.data)), now).limit(CLAIM_BATCH)
        )
        ids: list[int] = []
        total = 0
        for row_id, size in sizes:
            total += size or 0
            if ids and total > CLAIM_BYTES:
                break
            ids.append(row_id)
        if not ids:
            return []
        rows = await session.scalars(
            select(Outbox).where(Outbox.id.in_(ids)).order_by(Outbox.next_attempt_at, Outbox.id)
        )
        return rows.all()

    async def _claim(
        self, session: AsyncSession, row: Outbox, now: datetime, *, recheck: bool = True
    ) -> _Claim | None:
        """What to send of ROW now; None, with ROW settled, if it expired or has nobody left
        to send to. RECHECK: look up suppression again first (see :attr:`recheck`)."""
        if self.recheck is not None and recheck:
            # Suppression is checked again at send time: an opt-out since queueing counts.
            skip = await self.recheck(session, row)
            for rcpt in row.recipients:
                if rcpt.state == "pending" and rcpt.address in skip:
                    rcpt.state, rcpt.last_error = "skipped", skip[rcpt.address]
        pending = [r.address for r in row.recipients if r.state == "pending"]
        if row.expires_at is not None and row.expires_at <= now:
            row.state = "expired"
            for rcpt in row.recipients:
                if rcpt.state == "pending":
                    rcpt.state = "expired"
            log.info("outbox_expired", outbox_id=row.id, message_id=row.message_id)
            return None
        if not pending:
            states = {r.state for r in row.recipients}
            row.state = (
                "sent" if "sent" in states else "skipped" if "skipped" in states else "failed"
            )
            return None
        return _Claim(row.id, row.message_id, row.ticket_id, row.envelope_from, pending, row.data)

    async def _sign(self, data: bytes) -> bytes:
        """DKIM-sign DATA when configured (in a thread: RSA in pure Python takes ~20 ms)."""
        if self.dkim is None:
            return data
        try:
            return await asyncio.to_thread(sign, data, self.dkim)
        except ValueError as exc:  # a From outside the signing domain: send it as it is
            log.warning("dkim_not_signed", reason=str(exc))
            return data

    async def _send(self, sender: str, recipients: list[str], data: bytes) -> SendResult:
        wide: dict[str, str] = {}
        try:
            client = await self._connect()
            # A non-ASCII address needs SMTPUTF8 (RFC 6531) on the relay.
            wants_utf8 = not all(a.isascii() for a in [sender, *recipients])
            try:
                refused, _ = await client.sendmail(
                    sender, recipients, data, mail_options=["SMTPUTF8"] if wants_utf8 else []
                )
            except aiosmtplib.SMTPNotSupported:
                # Raised before MAIL FROM: the relay lacks SMTPUTF8 and no retry will give
                # it. The ASCII addresses still go.
                wide = {
                    r: NO_SMTPUTF8 for r in recipients if not r.isascii() or not sender.isascii()
                }
                recipients = [r for r in recipients if r not in wide]
                if not recipients:
                    return SendResult((), {}, wide)
                refused, _ = await client.sendmail(sender, recipients, data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _split_refused(
                {e.recipient: (e.code, e.message) for e in exc.recipients}, recipients
            )
        except aiosmtplib.SMTPResponseException as exc:
            await self._close()
            reason = f"{exc.code} {exc.message}"
            if 500 <= exc.code < 600:
                return SendResult((), {}, dict.fromkeys(recipients, reason))
            return SendResult((), dict.fromkeys(recipients, reason), {})
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._close()
            reason = f"{type(exc).__name__}: {exc}".strip()
            return SendResult((), dict.fromkeys(recipients, reason[:300]), {})
        result = _split_refused(
            {addr: (resp.code, resp.message) for addr, resp in refused.items()}, recipients
        )
        return replace(result, permanent={**result.permanent, **wide})

    async def _record(
        self, session: AsyncSession, row_id: int, result: SendResult, now: datetime
    ) -> None:
        """Record RESULT, known at NOW, for row ROW_ID, recipient by recipient, in SESSION's
        transaction.

        The row is read again (``outbox retry`` may have changed it since it was claimed) and
        written with three Core statements, whatever the number of recipients.
        """
        found = (
            await session.execute(
                select(
                    Outbox.attempts,
                    Outbox.kind,
                    Outbox.ticket_id,
                    Outbox.message_id,
                    _RECIPIENTS.c.id,
                    _RECIPIENTS.c.address,
                    _RECIPIENTS.c.state,
                    _RECIPIENTS.c.attempts,
                    _RECIPIENTS.c.last_error,
                    _RECIPIENTS.c.sent_at,
                )
                .join(_RECIPIENTS, _RECIPIENTS.c.outbox_id == Outbox.id)
                .where(Outbox.id == row_id)
                .order_by(_RECIPIENTS.c.id)
            )
        ).all()
        attempts, kind, ticket_id, message_id = found[0][:4]
        attempts += 1
        changes = []
        states = []
        for *_, rcpt_id, address, state, tries, error, sent_at in found:
            if address in result.accepted:
                state, sent_at = "sent", now
            elif address in result.permanent:
                state, error = "failed", result.permanent[address]
            elif address in result.temporary:
                error = result.temporary[address]
                if tries + 1 >= self.smtp.max_attempts:
                    state = "failed"
            else:
                states.append(state)
                continue
            changes.append({"rcpt": rcpt_id, "s": state, "n": tries + 1, "e": error, "t": sent_at})
            states.append(state)
        if changes:
            await session.execute(_RECORD_RECIPIENT, changes)
        row: dict[str, object] = {"attempts": attempts}
        if "pending" in states:
            retry_at = now + timedelta(
                seconds=backoff(attempts, self.smtp.retry_base, self.smtp.retry_max)
            )
            error = next(iter(result.temporary.values()), None)
            row.update(next_attempt_at=retry_at, last_error=error)
            log.warning(
                "smtp_deferred", attempts=attempts, retry_at=retry_at.isoformat(), error=error
            )
        else:
            sent = "sent" in states
            row.update(state="sent" if sent else "failed", sent_at=now if sent else None)
        await session.execute(update(_OUTBOX).where(_OUTBOX.c.id == row_id).values(row))
        for address, reason in result.permanent.items():
            session.add(
                Event(
                    ticket_id=ticket_id,
                    type="delivery_failed",
                    actor="system",
                    detail={"recipient": address, "error": reason, "message_id": message_id},
                    created_at=now,
                )
            )
            log.error("smtp_failed", recipient=address, error=reason)
        if result.accepted:
            log.info("mail_sent", recipients=list(result.accepted), kind=kind)

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        cfg = self.smtp
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            use_tls=cfg.security == "tls",
            # "starttls" means STARTTLS or fail, never opportunistic; "none" never upgrades.
            start_tls=cfg.security == "starttls",
        )
        await client.connect()
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
        except BaseException:
            client.close()
            raise
        if self._login_failures:
            self._login_failures, self._login_retry_at = 0, None
            log.info("smtp_login_recovered")
            if self.on_login is not None:
                await self.on_login(None, None)
        self._client = client
        return client

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

    async def close(self) -> None:
        """Close the SMTP connection, if one is open."""
        await self._close()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await asyncio.wait_for(client.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()


def _split_refused(refused: dict[str, tuple[int, str]], recipients: list[str]) -> SendResult:
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
    return SendResult(tuple(accepted), temporary, permanent)
