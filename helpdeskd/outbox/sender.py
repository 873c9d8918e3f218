"""The transactional outbox: rows written with the change that caused them, delivered later.

:func:`enqueue` adds a fully rendered mail to the session of the caller's transaction.
:class:`OutboxSender` delivers due rows over ``[smtp] connections`` SMTP connections, kept open
and reused, each fed by a task of its own from the batch in hand:

1. **Claim** a batch of due rows (:mod:`helpdeskd.outbox.ledger`: transactional mail first,
   then the longest due; on PostgreSQL leased with ``UPDATE … RETURNING`` over ``FOR UPDATE
   SKIP LOCKED``, so several daemons share the work and never send a row twice; on SQLite,
   which serves one daemon, read without a lock). A notice's opt-outs are looked up for the
   whole batch at once (:attr:`recheck`), and again just before a mail goes if that lookup is
   more than RECHECK_AGE seconds old.
2. **Send** each mail to the recipients that have not accepted it yet, in the order of its
   class (transactional, critical notices, optional notices) and as fast as the sending policy
   allows (:mod:`helpdeskd.outbox.policy`: rates per class and per destination domain, a domain
   held back after a 4xx). A mail that cannot go within HOLD seconds is put back in the table,
   untried, with the time its turn comes. An expiry that passed is checked just before it goes.
   When ``[smtp] return_path`` is set, each recipient's copy goes with a MAIL FROM of its own,
   a VERP address naming that recipient of that row (``bounces+r<recipient id>.<mac>@…``), so
   a bounce names the exact send and address, and nobody else who received the mail can
   forge one against another: a mail to several recipients goes as one transaction per
   recipient over the same connection, its results taken together as the mail's. Without a
   return path, one transaction takes all of them. DKIM signing, when configured, runs where
   it pays (:class:`helpdeskd.outbox.dkim.Signer`).
3. **Record** the results in batches (one transaction, one statement per kind of outcome): a 4xx
   or a lost connection retries with backoff (a 4xx: when the domain's backoff ends), a 5xx
   fails that recipient, a recipient who accepted a mail is never sent it again. A recipient
   that cannot be addressed (no address a mail can carry, or a non-ASCII one where the relay
   lacks SMTPUTF8) fails at once with the reason; the others still go. On SQLite, where the
   ingest holds the database through a backlog, a record goes to an append-only journal
   flushed to disk, and is written to the database at the sender's next turn to write
   (:mod:`helpdeskd.outbox.journal`).

Guarantees: at least once (a crash between send and record sends again; on PostgreSQL once
the lease of the crashed daemon's rows ends), and never twice otherwise.

With ``auth = "oauth2"`` the sender logs in with SASL XOAUTH2 or OAUTHBEARER and an access
token from its :class:`TokenSource`. A login that fails (no token, a token the provider will not
refresh, a token the relay refuses) is nobody's mail's fault: no row is charged an attempt; the
sender reports it once (``on_login``) and tries again later, backing off. That holds for a
refused password too: a wrong password is no recipient's fault either. A relay that cannot be
reached at all charges the one mail that found it down, and the sender backs off likewise.

The sender reads its clock once for each step that looks at the time, and passes that moment
down: picking the due rows, a mail just before it goes (has it expired? may it go yet?), and a
mail's result (when it was sent, when to try again).

One round of claiming, sending and recording is a :class:`helpdeskd.outbox.sendpass.SendPass`
(with the numbers that tune it); the mails in its hands, and which of them may go now, are
:mod:`helpdeskd.outbox.pool`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import DkimConfig, SmtpConfig
from helpdeskd.mail.tokens import bounce_address
from helpdeskd.oauth import TokenSource
from helpdeskd.outbox.dkim import Signer
from helpdeskd.outbox.journal import Journal
from helpdeskd.outbox.ledger import Claimed, Results
from helpdeskd.outbox.policy import SendingPolicy, backoff
from helpdeskd.outbox.relay import (
    NO_SMTPUTF8,
    LoginFailed,
    LoginReport,
    Relay,
    RelayDown,
    SendResult,
)
from helpdeskd.outbox.sendpass import UNADDRESSABLE, SendPass
from helpdeskd.store.db import SessionMaker, engine_of, reading
from helpdeskd.store.models import Event, Outbox, OutboxRecipient
from helpdeskd.store.valuelist import none_of, values

__all__ = [
    "LOGIN_RETRY_BASE",
    "LOGIN_RETRY_MAX",
    "NO_SMTPUTF8",
    "UNADDRESSABLE",
    "LoginFailed",
    "LoginReport",
    "OutboxSender",
    "Recheck",
    "SendResult",
    "backoff",
    "enqueue",
    "enqueue_failed",
]

log = structlog.get_logger(__name__)

HOLD = 2.0  # seconds a claimed mail may wait in memory for its turn; later ones go back

# Given a notice's category, whether it is critical, and the pending recipients of its claimed
# rows, return the recipients to skip now, with the reason.
Recheck = Callable[[AsyncSession, str, bool, list[str]], Awaitable[dict[str, str]]]

# When the next row is due, of those a pass may claim (not the rows the journal holds): the
# first of the (state, next_attempt_at) index that is not excluded.
_NEXT_DUE = (
    select(Outbox.next_attempt_at)
    .where(Outbox.state == "pending", none_of(Outbox.id, values("exclude", "int")))
    .order_by(Outbox.next_attempt_at)
    .limit(1)
)

LOGIN_RETRY_BASE = 30.0  # seconds before trying a failed SMTP login again; doubles per failure
LOGIN_RETRY_MAX = 600.0
JOURNAL_RETRY = 1.0  # seconds before writing the journal's entries again after a failure
JOURNAL_CLOSE = 5.0  # seconds a stopping sender waits to write them; the file keeps the rest


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
    mail (``outbox retry`` of it fails again at once, untried).
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
        keys: tuple[tuple[str, Secret], ...] = (),
        hold: float = HOLD,
        journal: Path | None = None,
    ) -> None:
        """TOKEN_SOURCE gives the access tokens for ``auth = "oauth2"``. ON_LOGIN hears of a
        failed login (its message and fix) when a streak of failures starts, and of the first
        login that works after one (``None, None``). KEYS (``[service]``'s secret keys) sign
        the VERP return paths of ``[smtp] return_path``. HOLD: seconds a claimed mail may wait
        in memory for its rate before it is put back in the table. JOURNAL: on SQLite, the
        file that keeps the results until the sender's turn to write
        (:mod:`helpdeskd.outbox.journal`)."""
        if smtp.return_path is not None and not keys:
            # A wiring mistake, not the admin's: mail still goes, with the From address.
            log.error("verp_disabled", reason="smtp.return_path is set but no keys were given")
        self.sessions = sessions
        self.engine = engine_of(sessions)
        self.smtp = smtp
        self.clock = clock
        self.token_source = token_source
        self.on_login = on_login
        self.recheck = recheck
        self.dkim = dkim
        self.keys = keys
        self.hold = hold
        self.wakeup = wakeup or asyncio.Event()
        self.idle_poll = idle_poll
        self.policy = SendingPolicy(smtp)
        self.relays = [Relay(smtp, token_source) for _ in range(smtp.connections)]
        self._signer = Signer(dkim) if dkim is not None else None
        self._login_failures = 0
        self._login_retry_at: datetime | None = None  # no sending before it (a failed login)
        self._relay_failures = 0
        self._relay_retry_at: datetime | None = None  # no sending before it (relay unreachable)
        self._held: set[int] = set()  # rows claimed and not yet recorded (SQLite: excluded)
        self._unrecorded = Results()  # results a failed pass could not record
        self._leasing: bool | None = None  # PostgreSQL: claims lease their rows
        self.journal: Journal | None = None
        if journal is not None and self.engine.dialect.name == "sqlite":
            self.journal = Journal(journal)
        self._journal_writer: asyncio.Task[None] | None = None

    @property
    def connections_opened(self) -> int:
        """SMTP connections opened (and logged in) so far."""
        return sum(relay.opened for relay in self.relays)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until STOP is set; the mails in hand are finished and recorded first."""
        try:
            while not stop.is_set():
                handled = 0
                if not self._paused():
                    handled = await SendPass(self, refill=True, stop=stop).run()
                if handled:
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
            await self.close()

    async def run_once(self) -> int:
        """Claim one batch of due rows, send it and record it; return how many rows were
        attempted or settled (those put back untried do not count).

        While a failed login or an unreachable relay is backed off, nothing is attempted.
        """
        if self._paused():
            return 0
        return await SendPass(self, refill=False, stop=None).run()

    async def drain(self, limit: float = 30.0) -> None:
        """Send as the daemon does until nothing is due, for LIMIT seconds at most (for the
        CLI, tests and benchmarks)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        timer = loop.call_later(limit, stop.set)
        try:
            while not stop.is_set() and not self._paused():
                if await SendPass(self, refill=True, stop=stop).run():
                    continue
                # Rows due within HOLD seconds (a notice queued at its rate, a rate's turn) are
                # waited for, while the clock moves; a clock that stands still (a test's) ends it.
                now = self.clock()
                wait = await self._until_due()
                if wait > self.hold or wait >= self.idle_poll:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                if self.clock() == now:
                    break
        finally:
            timer.cancel()
            await self._close()

    async def close(self) -> None:
        """Close the SMTP connections, and stop the DKIM signing processes, if any. The
        journal's entries are written first, if the database takes them within JOURNAL_CLOSE
        seconds; the file keeps the rest for the next start."""
        await self._close()
        if self._signer is not None:
            self._signer.close()
        if (writer := self._journal_writer) is not None:
            await asyncio.wait([writer], timeout=JOURNAL_CLOSE)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self.journal is not None:
            if self.journal.entries:
                log.warning("outbox_journal_left", entries=len(self.journal.entries))
            self.journal.close()

    async def _close(self) -> None:
        await asyncio.gather(*(relay.close() for relay in self.relays))

    # --- backoff of the whole sender: a failed login, an unreachable relay ----------------

    def _paused(self) -> bool:
        return self._wait_left() > 0

    def _wait_left(self) -> float:
        """Seconds left before a failed login or an unreachable relay may be tried again."""
        now = self.clock()
        left = 0.0
        for at in (self._login_retry_at, self._relay_retry_at):
            if at is not None:
                left = max(left, (at - now).total_seconds())
        return left

    async def _login_failed(self, exc: LoginFailed) -> None:
        await self._close()
        delay = backoff(self._login_failures + 1, LOGIN_RETRY_BASE, LOGIN_RETRY_MAX)
        self._login_retry_at = self.clock() + timedelta(seconds=delay)
        log.error("smtp_login_failed", error=str(exc), fix=exc.fix, retry_in=round(delay, 1))
        if self._login_failures == 0 and self.on_login is not None:
            await self.on_login(str(exc), exc.fix)
        self._login_failures += 1

    async def _connected(self) -> None:
        """A connection was opened and logged in: a failed login or relay is over."""
        self._relay_failures, self._relay_retry_at = 0, None
        if self._login_failures:
            self._login_failures, self._login_retry_at = 0, None
            log.info("smtp_login_recovered")
            if self.on_login is not None:
                await self.on_login(None, None)

    def _relay_down(self, reason: str) -> None:
        self._relay_failures += 1
        delay = backoff(self._relay_failures, self.smtp.retry_base, self.smtp.retry_max)
        self._relay_retry_at = self.clock() + timedelta(seconds=delay)
        log.warning("smtp_unreachable", error=reason, retry_in=round(delay, 1))

    # --- the journal (SQLite): results kept until the sender's turn to write ---------------

    def _excluded(self) -> frozenset[int]:
        """The rows no claim may take: those in hand, and those whose results the journal
        holds (SQLite; on PostgreSQL a claim leaves them out by their lease)."""
        if self.journal is None:
            return frozenset(self._held)
        return frozenset(self._held | self.journal.rows)

    async def _open_journal(self) -> None:
        """Before the first claim: load what the journal holds from before a crash (its rows
        stay out of claims) and write it to the database when the turn comes."""
        journal = self.journal
        if journal is None or journal.loaded:
            return
        async with reading(self.sessions) as session:  # beside a batch being stored
            await journal.load(await session.connection())
        if journal.entries:
            log.warning("outbox_journal_recovered", entries=len(journal.entries))
            self._write_journal_soon()

    async def _journaled(self, results: Results, now: datetime) -> bool:
        """SQLite: keep RESULTS, known at NOW, in the journal, to be written at the sender's
        next turn to write; return whether they were. Their rows are the journal's until then.

        Every record goes there, not only those that meet a batch being stored: a record that
        found the turn free a moment before a batch took it waited for the whole batch, and
        its connection with it."""
        journal = self.journal
        if journal is None:
            return False
        try:
            journal.append(results, now)
        except OSError as exc:  # a full disk: the record waits for its turn instead
            log.warning("outbox_journal_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self._held.difference_update(results.row_ids())
        self._write_journal_soon()
        return True

    def _write_journal_soon(self) -> None:
        if self._journal_writer is None or self._journal_writer.done():
            self._journal_writer = asyncio.create_task(self._write_journal())

    async def _write_journal(self) -> None:
        """Write the journal's entries to the database at this process's next turn to write,
        all of them in one transaction; again while entries come (or after a failure)."""
        journal = self.journal
        assert journal is not None
        while journal.entries:
            try:
                async with self.engine.begin() as connection:
                    entries = await journal.write(connection)
                journal.written(entries)
                if any(e.results.released or e.results.retry for e in entries):
                    self.wakeup.set()  # rows to claim again (put back, to retry) are claimable
            except Exception as exc:  # the database out of reach: the file keeps them
                log.warning(
                    "outbox_journal_not_written",
                    entries=len(journal.entries),
                    error=f"{type(exc).__name__}: {exc}",
                )
                await asyncio.sleep(JOURNAL_RETRY)

    async def _until_due(self) -> float:
        """Seconds until the next row is due (a retry's backoff, a rate's turn), at most
        idle_poll; or until a failed login or relay may be tried again."""
        if wait := self._wait_left():
            return wait
        async with reading(self.sessions) as session:  # waits for no batch being stored
            due = await session.scalar(_NEXT_DUE, {"exclude": list(self._excluded())})
        if due is None:
            return self.idle_poll
        return min(self.idle_poll, max(0.05, (due - self.clock()).total_seconds()))

    # --- the pieces a pass uses ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _claiming(self) -> AsyncIterator[AsyncSession]:
        """A session for a claim: PostgreSQL's commits its leases; SQLite's only reads."""
        if self._leasing is None:
            async with self.sessions() as probe:
                bind = probe.bind
                self._leasing = bind is not None and bind.dialect.name == "postgresql"
        if self._leasing:
            async with self.sessions() as session, session.begin():
                yield session
        else:
            async with reading(self.sessions) as session:
                yield session

    def _transactions(self, row: Claimed, recipients: list[str]) -> list[tuple[str, list[str]]]:
        """The SMTP transactions that send ROW to RECIPIENTS, as (MAIL FROM, RCPT TOs): under
        ``[smtp] return_path``, one per recipient with that recipient's own VERP address
        (a return path shared by several would let each forge the others' bounces); else
        one, from the row's envelope sender."""
        if self.smtp.return_path is None or not self.keys:
            return [(row.envelope_from, recipients)]
        return_path = self.smtp.return_path
        return [
            (bounce_address(return_path, self.keys, row.recipients[address]), [address])
            for address in recipients
        ]

    async def _transmit(
        self, relay: Relay, row: Claimed, recipients: list[str], data: bytes
    ) -> SendResult:
        """Send DATA, ROW's signed mail, to RECIPIENTS over RELAY (connected): its
        :meth:`_transactions` one after the other, their results taken together as the mail's.

        The relay drops the connection after a transaction it refused as a whole (a 4xx or
        5xx to the mail) or lost: the next one opens another. If that fails, the recipients
        left wait, as after a lost connection, and what was sent is still recorded; the next
        mail meets the failed login or the unreachable relay and backs off.
        """
        transactions = self._transactions(row, recipients)
        results: list[SendResult] = []
        for n, (return_path, to) in enumerate(transactions):
            if n and not relay.connected:
                try:
                    await relay.connect()
                except (LoginFailed, RelayDown) as exc:
                    left = [address for _, rest in transactions[n:] for address in rest]
                    results.append(SendResult((), dict.fromkeys(left, str(exc)), {}))
                    break
                await self._connected()
            results.append(await relay.send(return_path, to, data))
        if len(results) == 1:
            return results[0]
        return SendResult(
            tuple(address for result in results for address in result.accepted),
            {a: reason for result in results for a, reason in result.temporary.items()},
            {a: reason for result in results for a, reason in result.permanent.items()},
            tuple(address for result in results for address in result.throttled),
        )

    async def _sign(self, data: bytes) -> bytes:
        """DKIM-sign DATA when configured; a From outside the signing domain goes unsigned."""
        if self._signer is None:
            return data
        try:
            return await self._signer.sign(data)
        except ValueError as exc:
            log.warning("dkim_not_signed", reason=str(exc))
            return data
