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
   When ``[smtp] return_path`` is set, each mail's MAIL FROM is its own VERP address
   (``bounces+<row id>.<mac>@…``), so a bounce names the exact row. DKIM signing, when
   configured, runs where it pays (:class:`helpdeskd.outbox.dkim.Signer`).
3. **Record** the results in batches (one transaction, one statement per kind of outcome): a 4xx
   or a lost connection retries with backoff (a 4xx: when the domain's backoff ends), a 5xx
   fails that recipient, a recipient who accepted a mail is never sent it again. A recipient
   that cannot be addressed (no address a mail can carry, or a non-ASCII one where the relay
   lacks SMTPUTF8) fails at once with the reason; the others still go.

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
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.secrets import Secret
from helpdeskd.config.settings import DkimConfig, SmtpConfig
from helpdeskd.mail.parse import is_address
from helpdeskd.mail.tokens import bounce_address
from helpdeskd.oauth import TokenSource
from helpdeskd.outbox import ledger
from helpdeskd.outbox.dkim import Signer
from helpdeskd.outbox.ledger import Claimed, Results
from helpdeskd.outbox.policy import RANK, MailClass, SendingPolicy, backoff, domain_of, mail_class
from helpdeskd.outbox.relay import (
    NO_SMTPUTF8,
    LoginFailed,
    LoginReport,
    Relay,
    RelayDown,
    SendResult,
)
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.models import Event, Outbox, OutboxRecipient

__all__ = [
    "CLAIM_BATCH",
    "CLAIM_BYTES",
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

CLAIM_BATCH = 200  # rows claimed at once
CLAIM_BYTES = 8 * 1024 * 1024  # the mails of a batch held in memory at once, at most
HOLD = 2.0  # seconds a claimed mail may wait in memory for its turn; later ones go back
RECHECK_AGE = 0.5  # seconds a notice's opt-out lookup holds before its mail goes
REFRESH_AHEAD = 64  # the mails of a notice looked up again at once, when theirs is stale
CLAIM_EVERY = 1.0  # while sending, look for newly due mail at least this often (seconds)
# While the daemon sends, results are recorded every FLUSH_ROWS rows or FLUSH_AGE seconds: the
# most a crash can send twice, with the mails in flight.
FLUSH_ROWS = 128
FLUSH_AGE = 0.2
# PostgreSQL: a claim leases its rows for LEASE seconds and renews the lease every RENEW_EVERY
# seconds while it holds them; when no renewal has worked for LEASE_GUARD seconds (the database
# is out of reach) no more mail is handed out, so none is sent after another daemon may have
# taken it. A daemon that dies leaves its rows to the others LEASE seconds later at most.
LEASE = 20.0
RENEW_EVERY = 5.0
LEASE_GUARD = 10.0

# Given a stand-in row of a notice (its notice_id, and as recipients the pending recipients of
# the claimed rows of that notice), return the recipients to skip now, with the reason.
Recheck = Callable[[AsyncSession, Outbox], Awaitable[dict[str, str]]]

UNADDRESSABLE = "cannot be addressed: not a mail address a message can carry"
LOGIN_RETRY_BASE = 30.0  # seconds before trying a failed SMTP login again; doubles per failure
LOGIN_RETRY_MAX = 600.0


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
    ) -> None:
        """TOKEN_SOURCE gives the access tokens for ``auth = "oauth2"``. ON_LOGIN hears of a
        failed login (its message and fix) when a streak of failures starts, and of the first
        login that works after one (``None, None``). KEYS (``[service]``'s secret keys) sign
        the VERP return paths of ``[smtp] return_path``. HOLD: seconds a claimed mail may wait
        in memory for its rate before it is put back in the table."""
        if smtp.return_path is not None and not keys:
            # A wiring mistake, not the admin's: mail still goes, with the From address.
            log.error("verp_disabled", reason="smtp.return_path is set but no keys were given")
        self.sessions = sessions
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
        self._watermark: datetime | None = None  # where the last claim's first step got to
        self._held: set[int] = set()  # rows claimed and not yet recorded (SQLite: excluded)
        self._unrecorded = Results()  # results a failed pass could not record
        self._leasing: bool | None = None  # PostgreSQL: claims lease their rows

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
                    handled = await _Pass(self, refill=True, stop=stop).run()
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
        return await _Pass(self, refill=False, stop=None).run()

    async def drain(self, limit: float = 30.0) -> None:
        """Send as the daemon does until nothing is due, for LIMIT seconds at most (for the
        CLI, tests and benchmarks)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        timer = loop.call_later(limit, stop.set)
        try:
            while not stop.is_set() and not self._paused():
                if await _Pass(self, refill=True, stop=stop).run():
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
        """Close the SMTP connections, and stop the DKIM signing processes, if any."""
        await self._close()
        if self._signer is not None:
            self._signer.close()

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

    async def _until_due(self) -> float:
        """Seconds until the next row is due (a retry's backoff, a rate's turn), at most
        idle_poll; or until a failed login or relay may be tried again."""
        if wait := self._wait_left():
            return wait
        async with reading(self.sessions) as session:  # waits for no batch being stored
            due = await session.scalar(
                select(func.min(Outbox.next_attempt_at)).where(Outbox.state == "pending")
            )
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

    def _return_path(self, row: Claimed) -> str:
        """MAIL FROM for ROW: its own VERP address under ``[smtp] return_path``, if set."""
        if self.smtp.return_path is None or not self.keys:
            return row.envelope_from
        return bounce_address(self.smtp.return_path, self.keys, row.row_id)

    async def _sign(self, data: bytes) -> bytes:
        """DKIM-sign DATA when configured; a From outside the signing domain goes unsigned."""
        if self._signer is None:
            return data
        try:
            return await self._signer.sign(data)
        except ValueError as exc:
            log.warning("dkim_not_signed", reason=str(exc))
            return data


@dataclass(eq=False, slots=True)
class _Mail:
    """A claimed row in the sender's hands."""

    row: Claimed
    kind: MailClass
    order: tuple[int, datetime, int]  # class first, then the longest due
    domains: dict[str, list[str]]  # destination domain -> its pending recipients
    checked: float  # when its opt-outs were looked up (the sender's clock)
    claimed: float  # when it was claimed (the event loop's clock)


def _mail(row: Claimed, checked: float, claimed: float) -> _Mail:
    kind = mail_class(row.notice_id, row.critical)
    domains: dict[str, list[str]] = {}
    for address in row.recipients:
        domains.setdefault(domain_of(address), []).append(address)
    return _Mail(row, kind, (RANK[kind], row.due, row.row_id), domains, checked, claimed)


@dataclass(frozen=True, slots=True)
class _Addressee:
    address: str
    state: str = "pending"


@dataclass(frozen=True, slots=True)
class _StandIn:
    """What a recheck reads of a row (its notice, its recipients' addresses and states), for
    the pending recipients of several rows of one notice at once. Building as many ORM rows
    would cost more than the lookup itself."""

    notice_id: int
    recipients: list[_Addressee]


def _stand_in(notice_id: int, mails: list[_Mail]) -> Outbox:
    """One stand-in row for the recheck: NOTICE_ID's, with the pending recipients of MAILS."""
    addressees = [_Addressee(a) for mail in mails for a in mail.row.recipients]
    return cast(Outbox, _StandIn(notice_id, addressees))


class _Pass:
    """One round of sending: claim, send over every connection, record.

    With REFILL (the daemon), claims go on while there is due mail, and results are recorded
    every FLUSH_ROWS rows or FLUSH_AGE seconds; without (run_once), one batch is claimed and
    its results are recorded at the end, in one transaction.
    """

    def __init__(self, sender: OutboxSender, *, refill: bool, stop: asyncio.Event | None) -> None:
        self.sender = sender
        self.refill = refill
        self.stop = stop
        self.loop = asyncio.get_running_loop()
        self.pool: list[_Mail] = []  # claimed, not yet handed to a connection, in order
        self.results = Results()
        self.handled = 0
        self.idle: collections.deque[asyncio.Future[None]] = collections.deque()
        self.halted = False
        self.login_error: LoginFailed | None = None
        self.exhausted = False  # the last claim found nothing
        self.last_claim = -math.inf
        self.claiming: asyncio.Task[None] | None = None
        self.flushing: asyncio.Task[None] | None = None
        self.renewing: asyncio.Task[None] | None = None
        self.watching: asyncio.Task[None] | None = None
        self.writing = asyncio.Lock()  # a flush and a lease renewal never run at once
        self.renewed = math.inf  # PostgreSQL: when the leases of every row held last worked
        self.oldest: float | None = None  # when the oldest result not yet recorded came
        self.urgent = False  # a transactional result waits: record at once
        self.notices_sent: dict[int, int] = {}  # notice -> mails accepted, not logged yet
        self.finished = False
        self.turn_waiter = False  # a connection waits for the next turn (the others, for news)
        self.lost_lease = False
        self.recheck_lock = asyncio.Lock()
        self.refused = False  # a connection was refused while others worked (logged once)

    async def run(self) -> int:
        sender = self.sender
        await self._recover()
        try:
            await self._claim()
            if sender._leasing:
                self.renewing = asyncio.create_task(self._renew())
            if self.refill:
                self.watching = asyncio.create_task(self._watch())
            if self.pool:
                workers = [asyncio.create_task(self._work(relay)) for relay in sender.relays]
                try:
                    await asyncio.gather(*workers)
                except Exception:
                    # A claim or a record failed (the database out of reach): the other
                    # connections finish the mail in hand rather than drop it mid-send, so its
                    # result is kept (see _flush) and the mail is not sent twice.
                    self.halted = True
                    self._wake()
                    await asyncio.wait(workers, timeout=sender.smtp.timeout)
                    raise
                finally:
                    for worker in workers:
                        worker.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
        finally:
            try:
                await self._finish()
            finally:
                for task in (self.renewing, self.watching):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
        if self.login_error is not None:
            await sender._login_failed(self.login_error)
        return self.handled

    async def _finish(self) -> None:
        """After the connections stop: the untried mail goes back, the results are recorded
        (or kept for the next pass when the database is out of reach)."""
        sender = self.sender
        self.finished = True  # no more records started along the way: the last is this one
        if self.claiming is not None:
            with contextlib.suppress(Exception):
                await self.claiming
        now = sender.clock()
        for mail in self.pool:  # untried: back as they were (a login that failed, a stop)
            if self.lost_lease:  # not ours to write any more: another daemon's now
                sender._held.discard(mail.row.row_id)
            else:
                self._put_back(mail, mail.row.due, now)
        self.pool.clear()
        if self.flushing is not None:
            with contextlib.suppress(Exception):  # its results are kept in sender._unrecorded
                await self.flushing
        await self._flush()

    async def _recover(self) -> None:
        """Before a pass: record what a failed pass could not, and give back the rows it held
        (they may have been sent: at least once)."""
        sender = self.sender
        if len(sender._unrecorded):
            self.results, sender._unrecorded = sender._unrecorded, Results()
            await self._flush()
        if sender._held:
            orphans, sender._held = sorted(sender._held), set()
            if sender._leasing:
                now = sender.clock()
                async with sender.sessions() as session, session.begin():
                    await ledger.release(session, [(row_id, now) for row_id in orphans])
            log.warning("outbox_rows_given_back", rows=len(orphans))

    async def _watch(self) -> None:
        """While the daemon sends: claim at once when new mail is queued (the wakeup), even
        while every connection waits for a rate's turn; and stop at once when told to."""
        wakeup = self.sender.wakeup
        while True:
            waits = [asyncio.ensure_future(wakeup.wait())]
            if self.stop is not None:
                waits.append(asyncio.ensure_future(self.stop.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if self.stop is not None and self.stop.is_set():
                self._wake()  # the connections waiting for a turn see the stop and finish
                return
            if self.claiming is not None and not self.claiming.done():
                await asyncio.wait([self.claiming])
                continue
            if self.claiming is not None and self.claiming.exception() is not None:
                return  # the pass fails with it (see _maybe_claim)
            self._maybe_claim()  # clears the wakeup and claims

    async def _renew(self) -> None:
        """PostgreSQL: renew the leases of the rows held, every RENEW_EVERY seconds."""
        sender = self.sender
        while True:
            await asyncio.sleep(RENEW_EVERY)
            started = self.loop.time()
            try:
                async with self.writing:
                    held = sorted(sender._held)
                    lease = sender.clock() + timedelta(seconds=LEASE)
                    async with sender.sessions() as session, session.begin():
                        await ledger.renew(session, held, lease)
            except Exception as exc:  # the database out of reach: the guard stops the sending
                log.warning("outbox_lease_not_renewed", error=f"{type(exc).__name__}: {exc}")
            else:
                self.renewed = started

    # --- claiming ------------------------------------------------------------------------

    async def _claim(self) -> None:
        """Claim due rows into the pool (and settle those with nothing left to send)."""
        sender = self.sender
        self.last_claim = self.loop.time()
        now = sender.clock()
        t = now.timestamp()
        fifo = len(self.pool) < CLAIM_BATCH // 2  # a pool full of notices waits its turn
        # The rows in hand, copied before the claim reads anything: a row recorded meanwhile
        # (and so no longer in hand) is then recorded in what the claim reads too. Read after
        # the claim's first query, the set could miss a row that its snapshot still shows due.
        held = frozenset(sender._held)
        async with sender._claiming() as session:
            lease = now + timedelta(seconds=LEASE)
            started = self.loop.time()
            claim = await ledger.claim(
                session,
                now,
                limit=CLAIM_BATCH,
                max_bytes=CLAIM_BYTES,
                since=sender._watermark,
                exclude=held,
                lease=lease if sender._leasing else None,
                rest=fifo,
            )
            mails = [_mail(row, t, self.last_claim) for row in claim.rows]
            await self._recheck(session, mails, now)
        sender._watermark = claim.watermark
        sender._held.update(row.row_id for row in claim.rows)
        if sender._leasing and claim.rows:
            self.renewed = min(self.renewed, started)  # the oldest lease not yet renewed
        if fifo:
            self.exhausted = not claim.rows
        fresh = []
        for mail in mails:
            if mail.row.recipients:
                fresh.append(mail)
            else:  # nobody left to send it to: its state follows its recipients'
                self._settle(mail, now)
        if fresh:
            self.pool.extend(fresh)
            self.pool.sort(key=_order)
            self._sweep(now)
        self._wake()

    def _maybe_claim(self) -> None:
        """While the daemon sends: claim again when the pool runs low, when new mail was
        queued (the wakeup), and every CLAIM_EVERY seconds."""
        if self.claiming is not None and not self.claiming.done():
            return
        if self.claiming is not None:
            self.claiming.result()  # a failed claim fails the pass
            self.claiming = None
        wakeup = self.sender.wakeup
        due = self.loop.time() - self.last_claim >= CLAIM_EVERY
        low = len(self.pool) < CLAIM_BATCH // 2 and not self.exhausted
        if wakeup.is_set() or due or low:
            wakeup.clear()
            self.claiming = asyncio.create_task(self._claim())

    async def _recheck(self, session: AsyncSession, mails: list[_Mail], now: datetime) -> None:
        """Look up the opt-outs of MAILS' notices again, one lookup per notice; skip whom
        they name."""
        recheck = self.sender.recheck
        if recheck is None:
            return
        by_notice: dict[int, list[_Mail]] = {}
        for mail in mails:
            if mail.row.notice_id is not None and mail.row.recipients:
                by_notice.setdefault(mail.row.notice_id, []).append(mail)
        t = now.timestamp()
        for notice_id, group in by_notice.items():
            skip = await recheck(session, _stand_in(notice_id, group))
            for mail in group:
                mail.checked = t
                for address in [a for a in mail.row.recipients if a in skip]:
                    rcpt = mail.row.recipients.pop(address)
                    self.results.skipped.append({"rid": rcpt, "e": skip[address]})
                    domain = domain_of(address)
                    mail.domains[domain].remove(address)
                    if not mail.domains[domain]:
                        del mail.domains[domain]

    async def _refresh(self, notice_id: int) -> None:
        """Look up the opt-outs of NOTICE_ID's next mails in the pool again (they are stale):
        those about to go, not the whole pool (a mail further back is looked up again when its
        turn comes near)."""
        sender = self.sender
        async with self.recheck_lock:
            now = sender.clock()
            t = now.timestamp()
            stale = [
                m for m in self.pool if m.row.notice_id == notice_id and t - m.checked > RECHECK_AGE
            ][:REFRESH_AHEAD]
            if not stale:
                return
            async with reading(sender.sessions) as session:
                await self._recheck(session, stale, now)
            for mail in stale:
                if not mail.row.recipients and mail in self.pool:
                    self.pool.remove(mail)
                    self._settle(mail, now)
            self._maybe_flush()

    # --- handing out mail ----------------------------------------------------------------

    async def _next(self) -> tuple[_Mail, list[str], datetime | None] | None:
        """The next mail to send, the recipients it goes to now, and when those of its held
        domains may go (None: none held); None when this connection has nothing more to do
        (and then the next connection waiting is woken to find that out too)."""
        picked = await self._next_or_none()
        if picked is None:
            self._wake(1)
        return picked

    async def _next_or_none(self) -> tuple[_Mail, list[str], datetime | None] | None:
        sender = self.sender
        while True:
            if self.halted or (self.stop is not None and self.stop.is_set()):
                return None
            if self.loop.time() - self.renewed > LEASE_GUARD:
                log.error("outbox_lease_lost", seconds=LEASE_GUARD)
                self.halted = self.lost_lease = True
                return None
            if self.refill:
                self._maybe_claim()
            now = sender.clock()
            picked = self._pick(now)
            if isinstance(picked, tuple):
                mail, open_domains, held = picked
                if (
                    mail.row.notice_id is not None
                    and sender.recheck is not None
                    and now.timestamp() - mail.checked > RECHECK_AGE
                ):
                    self.pool.insert(0, mail)
                    self.pool.sort(key=_order)
                    await self._refresh(mail.row.notice_id)
                    continue
                sender.policy.take(mail.kind, open_domains, now.timestamp())
                go = [a for domain in open_domains for a in mail.domains[domain]]
                return mail, go, held
            if picked is None:  # the pool is empty
                if self.claiming is not None and not self.claiming.done():
                    await asyncio.wait([self.claiming])
                    continue
                if self.refill and not self.exhausted:
                    self.claiming = asyncio.create_task(self._claim())
                    continue
                return None
            # Nothing may go yet: wait for the first turn (or for news: new mail, a halt). What
            # could not go within HOLD seconds went back to the table when it was claimed
            # (_sweep). One connection waits for the turn, the others until woken.
            self._maybe_flush()
            waiting = self.loop.create_future()
            if self.turn_waiter:
                self.idle.append(waiting)
                await waiting
                continue
            self.turn_waiter = True
            self.idle.appendleft(waiting)  # news wakes it first
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiting, timeout=min(picked, sender.hold))
            finally:
                self.turn_waiter = False
            self._wake(1)  # another connection waits for the next turn
            if sender.clock() == now:
                # A clock that stood still while we waited (a test's): what waits for its turn
                # goes back to the table, due when the turn comes on that clock.
                self._sweep(now, everything=True)

    def _pick(self, now: datetime) -> tuple[_Mail, list[str], datetime | None] | float | None:
        """Take the first mail in the pool that may go at NOW, with the domains it goes to now
        and when its held ones may go; else the seconds until one may (a float); None when the
        pool is empty. Expired mail is settled on the way."""
        policy = self.sender.policy
        t = now.timestamp()
        unlimited = policy.unlimited(t)
        soonest = math.inf
        class_wait: dict[MailClass, float] = {}
        i = 0
        while i < len(self.pool):
            mail = self.pool[i]
            expires = mail.row.expires_at
            if expires is not None and expires <= now:
                del self.pool[i]
                self._expire(mail, now)
                continue
            if unlimited:  # no rate, nothing held back: the first mail goes
                del self.pool[i]
                return mail, list(mail.domains), None
            wait = class_wait.get(mail.kind)
            if wait is None:
                wait = class_wait[mail.kind] = policy.class_wait(mail.kind, t)
            if wait > 0:  # none of its class may go: on to the next class (the pool is sorted)
                soonest = min(soonest, wait)
                i = bisect.bisect_left(self.pool, (RANK[mail.kind] + 1, _FIRST, 0), key=_order)
                continue
            held: float | None = None
            open_domains = []
            for domain in mail.domains:
                until = policy.held(domain, t)
                if until is None:
                    open_domains.append(domain)
                else:
                    held = until if held is None else min(held, until)
            if not open_domains:
                assert held is not None
                del self.pool[i]
                self._put_back(mail, _at(policy.later(mail.kind, mail.domains, t, held)), now)
                continue
            wait = policy.wait(mail.kind, open_domains, t)
            if wait > 0:
                soonest = min(soonest, wait)
                i += 1
                continue
            del self.pool[i]
            return mail, open_domains, None if held is None else _at(held)
        return soonest if self.pool else None

    def _sweep(self, now: datetime, *, everything: bool = False) -> None:
        """Put back in the table, each at its turn, the mails whose turn is more than HOLD
        seconds away (EVERYTHING: whose turn has not come)."""
        policy = self.sender.policy
        t = now.timestamp()
        horizon = 0.0 if everything else self.sender.hold
        if policy.unlimited(t):
            return  # no rate, no domain held back: every mail may go at once
        keep: list[_Mail] = []
        for mail in self.pool:
            domains = _open(policy, mail, t)
            turn = t + policy.wait(mail.kind, domains, t)
            if turn - t > horizon:
                self._put_back(mail, _at(policy.later(mail.kind, domains, t, turn)), now)
            else:
                keep.append(mail)
        if len(keep) > 1 and not everything:
            keep = self._queue(keep, t, horizon, now)
        self.pool = keep

    def _queue(self, pool: list[_Mail], t: float, horizon: float, now: datetime) -> list[_Mail]:
        """Of POOL, in order, keep the mails whose turn comes within HORIZON seconds counting
        the mails before them in the same buckets; put back the others at their turn."""
        policy = self.sender.policy
        open_domains = [_open(policy, m, t) for m in pool]
        turns = policy.project([(m.kind, d) for m, d in zip(pool, open_domains, strict=True)], t)
        keep = []
        for mail, domains, turn in zip(pool, open_domains, turns, strict=True):
            if turn - t > horizon:
                self._put_back(mail, _at(policy.later(mail.kind, domains, t, turn)), now)
            else:
                keep.append(mail)
        return keep

    # --- connections ---------------------------------------------------------------------

    async def _recorded(self) -> None:
        """Before a customer's or an agent's mail goes: wait until every result so far is
        recorded. Each connection then holds at most one such mail sent and not recorded, so a
        crash sends again at most one per connection (SQLite's write lock, held by a backlog's
        ingest, must not let sent mail pile up unrecorded)."""
        while self.refill and not self.finished:
            task = self.flushing
            if task is not None and not task.done():
                await asyncio.wait([task])
                continue
            if task is not None and task.cancelled():
                return
            if task is not None and task.exception() is not None:
                task.result()  # the record failed: nothing more is sent, the pass fails with it
            if not (self.urgent and len(self.results)):
                return
            self._flush_due()
            if self.flushing is task:
                return  # no record could start

    async def _work(self, relay: Relay) -> None:
        """Send mail over RELAY until there is none left (or the pass halts)."""
        sender = self.sender
        while (picked := await self._next()) is not None:
            mail, go, held = picked
            row = mail.row
            unaddressable = {r: UNADDRESSABLE for r in go if not is_address(r)}
            addressable = [r for r in go if r not in unaddressable]
            if not addressable:  # nothing to sign or send (a row enqueue_failed left)
                self._done(mail, SendResult((), {}, unaddressable), held, sender.clock())
                continue
            try:
                data = await sender._sign(row.data)
            except Exception as exc:  # a signing process that died: this mail tries again
                reason = f"DKIM signing failed: {type(exc).__name__}: {exc}"[:300]
                log.error("dkim_failed", outbox_id=row.row_id, error=reason)
                failed = SendResult((), dict.fromkeys(addressable, reason), unaddressable)
                self._done(mail, failed, held, sender.clock())
                continue
            if mail.kind == "transactional":
                try:
                    await self._recorded()
                except BaseException:
                    self.pool.insert(0, mail)  # untried: it goes back with the rest
                    raise
            try:
                if not relay.connected:
                    await relay.connect()
                    await sender._connected()
                result = await relay.send(sender._return_path(row), addressable, data)
            except LoginFailed as exc:
                self.login_error = self.login_error or exc
                self._halt(mail)
                return
            except RelayDown as exc:
                if any(r.connected for r in sender.relays if r is not relay):
                    # The relay takes fewer connections than configured: this one stops, the
                    # others go on, the mail waits for one of them.
                    if not self.refused:
                        self.refused = True
                        log.warning("smtp_connection_refused", error=str(exc))
                    self.pool.insert(0, mail)
                    self.pool.sort(key=_order)
                    self._wake(1)
                    return
                if self.halted:  # another connection found it down first: this mail waits
                    self.pool.insert(0, mail)
                    return
                # The relay cannot be reached: the mail that found it so is charged, the rest
                # wait, untried, until the relay's backoff is over.
                down = SendResult((), dict.fromkeys(addressable, str(exc)), unaddressable)
                self._done(mail, down, held, sender.clock())
                sender._relay_down(str(exc))
                self.halted = True
                self._wake()
                return
            if unaddressable:
                result = SendResult(
                    result.accepted,
                    result.temporary,
                    {**result.permanent, **unaddressable},
                    result.throttled,
                )
            self._done(mail, result, held, sender.clock())

    def _halt(self, mail: _Mail) -> None:
        """Stop handing out mail; MAIL, untried, goes back with the rest."""
        self.halted = True
        self.pool.insert(0, mail)
        self._wake()

    def _wake(self, count: int | None = None) -> None:
        """Wake COUNT connections waiting for news (None: all)."""
        while self.idle and (count is None or count > 0):
            waiting = self.idle.popleft()
            if not waiting.done():
                waiting.set_result(None)
                if count is not None:
                    count -= 1

    # --- outcomes ------------------------------------------------------------------------

    def _done(self, mail: _Mail, result: SendResult, held: datetime | None, now: datetime) -> None:
        """Note what the relay made of MAIL at NOW, to be recorded with the batch."""
        sender = self.sender
        policy = sender.policy
        results = self.results
        row = mail.row
        for address in result.accepted:
            results.sent.append(row.recipients[address])
            policy.accepted(domain_of(address))
        if result.accepted:
            if row.notice_id is None:
                log.info(
                    "mail_sent",
                    recipients=list(result.accepted),
                    kind=row.kind,
                    outbox_id=row.row_id,
                    message_id=row.message_id,
                    ticket_id=row.ticket_id,
                )
            else:  # a notice's thousands: one line per record (see _flush), not per mail
                self.notices_sent[row.notice_id] = self.notices_sent.get(row.notice_id, 0) + 1
        # A customer's or an agent's mail is recorded at once: after a crash it goes again only
        # if it was in flight. A notice's thousands are recorded in batches.
        urgent = mail.kind == "transactional"
        if not (result.permanent or result.temporary or held):
            (results.sent_rows if result.accepted else results.done).append(row.row_id)
            self.handled += 1
            self._note_result(urgent=urgent)
            return
        t = now.timestamp()
        fields = {"outbox_id": row.row_id, "message_id": row.message_id, "ticket_id": row.ticket_id}
        for address, reason in result.permanent.items():
            results.failed.append({"rid": row.recipients[address], "e": reason})
            results.events.append(
                {
                    "ticket_id": row.ticket_id,
                    "type": "delivery_failed",
                    "actor": "system",
                    "detail": {"recipient": address, "error": reason, "message_id": row.message_id},
                    "created_at": now,
                }
            )
            log.error("smtp_failed", recipient=address, error=reason, **fields)
        retry: float | None = None
        error = None
        if result.temporary:
            error = next(iter(result.temporary.values()))
            attempts = row.attempts + 1
            for address, reason in result.temporary.items():
                results.deferred.append(
                    {"rid": row.recipients[address], "e": reason, "max": sender.smtp.max_attempts}
                )
            for address in result.throttled:  # a 4xx: the domain waits, not just this mail
                retry = max(retry or t, policy.defer(domain_of(address), t))
            if len(result.throttled) < len(result.temporary):  # the connection failed
                smtp = sender.smtp
                retry = max(retry or t, t + backoff(attempts, smtp.retry_base, smtp.retry_max))
            log.warning(
                "smtp_deferred",
                attempts=attempts,
                retry_at=_at(retry or t).isoformat(),
                error=error,
                **fields,
            )
        at = [x for x in (retry, None if held is None else held.timestamp()) if x is not None]
        if at:  # recipients left for later: deferred, or in a domain that is held back
            results.retry.append({"oid": row.row_id, "e": error, "next": _at(min(at)), "t": now})
        else:
            results.done.append(row.row_id)
        self.handled += 1
        self._note_result(urgent=urgent)

    def _settle(self, mail: _Mail, now: datetime) -> None:
        """MAIL has nobody left to send to (all skipped or done): its row's state follows."""
        self.results.settled.append(mail.row.row_id)
        self.handled += 1
        self._note_result()

    def _expire(self, mail: _Mail, now: datetime) -> None:
        self.results.expired.append(mail.row.row_id)
        log.info("outbox_expired", outbox_id=mail.row.row_id, message_id=mail.row.message_id)
        self.handled += 1
        self._note_result()

    def _put_back(self, mail: _Mail, at: datetime, now: datetime) -> None:
        """MAIL goes back to the table untried, due AT."""
        row = mail.row
        if not self.sender._leasing and at <= row.due:
            self.sender._held.discard(row.row_id)  # nothing to write: it is as it was
            return
        self.results.released.append({"oid": row.row_id, "at": max(at, row.due)})
        self._note_result()

    def _note_result(self, *, urgent: bool = False) -> None:
        self.urgent = self.urgent or urgent
        if self.oldest is None:
            self.oldest = self.loop.time()
            if self.refill:  # recorded FLUSH_AGE seconds from now at the latest
                self.loop.call_later(FLUSH_AGE, self._flush_due)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        """While the daemon sends: record the results when FLUSH_ROWS have come or the oldest
        has waited FLUSH_AGE seconds, one record at a time. A crash sends again at most those
        not recorded yet, and the mails in flight."""
        if self.finished or not self.refill:
            return
        if self.flushing is not None and not self.flushing.done():
            return
        if self.flushing is not None:
            self.flushing.result()  # a failed flush fails the pass
            self.flushing = None
        self._flush_due()

    def _flush_due(self) -> None:
        """Start a record if one is due and none is running (also called by a timer)."""
        if self.finished or (self.flushing is not None and not self.flushing.done()):
            return
        if self.flushing is not None and self.flushing.exception() is not None:
            return  # the pass fails with it (see run)
        oldest = self.oldest
        if (
            len(self.results) >= FLUSH_ROWS
            or (self.urgent and len(self.results))
            or (oldest is not None and self.loop.time() - oldest >= FLUSH_AGE)
        ):
            self.flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Record the results so far, in one transaction."""
        sender = self.sender
        async with self.writing:
            results, self.results = self.results, Results()
            self.oldest, self.urgent = None, False
            sent, self.notices_sent = self.notices_sent, {}
            for notice_id, count in sent.items():
                log.info("notice_mail_sent", notice=notice_id, mails=count)
            if not len(results):
                return
            try:
                async with sender.sessions() as session, session.begin():
                    await ledger.record(session, results, sender.clock())
            except BaseException:
                sender._unrecorded.merge(results)  # the next pass records them
                raise
            sender._held.difference_update(results.row_ids())
        if self.refill and self.oldest is not None:  # results came meanwhile: their turn
            wait = 0.0 if self.urgent else FLUSH_AGE - (self.loop.time() - self.oldest)
            self.loop.call_later(max(0.0, wait), self._flush_due)


def _order(mail: _Mail) -> tuple[int, datetime, int]:
    return mail.order


_FIRST = datetime.min.replace(tzinfo=UTC)  # before any mail of a class, in the pool's order


def _open(policy: SendingPolicy, mail: _Mail, t: float) -> list[str]:
    """MAIL's domains that are not held back at T; all of them if all are."""
    domains = [d for d in mail.domains if policy.held(d, t) is None]
    return domains or list(mail.domains)


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
