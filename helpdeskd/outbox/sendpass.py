"""One round of sending: claim due rows, hand them out over the connections, record results.

:class:`helpdeskd.outbox.sender.OutboxSender` runs one :class:`SendPass` after another (the
steps and guarantees are told there). A pass reads and updates what outlives it, the sender's:
the rows in hand, the results a failed pass could not record, and the backoff of a failed login
or an unreachable relay. The mails it holds, and which of them may go now, are
:mod:`helpdeskd.outbox.pool`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from helpdeskd.mail.parse import is_address
from helpdeskd.outbox import ledger
from helpdeskd.outbox.ledger import Results
from helpdeskd.outbox.policy import backoff, domain_of
from helpdeskd.outbox.pool import Mail, in_hand, pick, pool_order, sweep, utc
from helpdeskd.outbox.relay import LoginFailed, Relay, RelayDown, SendResult
from helpdeskd.store.db import reading

if TYPE_CHECKING:  # the sender runs passes; a pass only needs its type
    from helpdeskd.outbox.sender import OutboxSender

__all__ = [
    "CLAIM_BATCH",
    "CLAIM_BYTES",
    "CLAIM_EVERY",
    "FLUSH_AGE",
    "FLUSH_ROWS",
    "LEASE",
    "LEASE_GUARD",
    "RECHECK_AGE",
    "REFRESH_AHEAD",
    "RENEW_EVERY",
    "UNADDRESSABLE",
    "SendPass",
]

log = structlog.get_logger(__name__)

CLAIM_BATCH = 200  # rows claimed at once
CLAIM_BYTES = 8 * 1024 * 1024  # the mails of a batch held in memory at once, at most
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

UNADDRESSABLE = "cannot be addressed: not a mail address a message can carry"


class SendPass:
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
        self.pool: list[Mail] = []  # claimed, not yet handed to a connection, in order
        self.results = Results()
        # One per customer's or agent's mail whose result is in self.results: resolved when
        # the record that holds that result ends (with its error, None when it was written).
        self.recording: list[asyncio.Future[BaseException | None]] = []
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
        self.recorder: AsyncConnection | None = None  # results are recorded on it (_record)

    async def run(self) -> int:
        try:
            await self._recover()
            await self._send()
        finally:
            await self._put_recorder_back()
        if self.login_error is not None:
            await self.sender._login_failed(self.login_error)
        return self.handled

    async def _send(self) -> None:
        """Claim, send over every connection while there is mail, then finish (_finish)."""
        sender = self.sender
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
        await sender._open_journal()
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
        held = sender._excluded()
        async with sender._claiming() as session:
            lease = now + timedelta(seconds=LEASE)
            started = self.loop.time()
            claimed = await ledger.claim(
                session,
                now,
                limit=CLAIM_BATCH,
                max_bytes=CLAIM_BYTES,
                exclude=held,
                lease=lease if sender._leasing else None,
                rest=fifo,
            )
            mails = [in_hand(row, t, self.last_claim) for row in claimed]
            await self._recheck(session, mails, now)
        sender._held.update(row.row_id for row in claimed)
        if sender._leasing and claimed:
            self.renewed = min(self.renewed, started)  # the oldest lease not yet renewed
        if fifo:
            self.exhausted = not claimed
        fresh = []
        for mail in mails:
            if mail.row.recipients:
                fresh.append(mail)
            else:  # nobody left to send it to: its state follows its recipients'
                self._settle(mail, now)
        if fresh:
            self.pool.extend(fresh)
            self.pool.sort(key=pool_order)
            self._sweep(now)
        self._wake()

    def _maybe_claim(self) -> None:
        """While the daemon sends: claim again when the pool runs low, when new mail was
        queued (the wakeup), and every CLAIM_EVERY seconds. Not once the pass finishes: what
        it claimed then would be held where nobody sends it (leased, on PostgreSQL) until the
        next pass gave it back; mail queued meanwhile is the next pass's."""
        if self.finished:
            return
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

    async def _recheck(self, session: AsyncSession, mails: list[Mail], now: datetime) -> None:
        """Look up the opt-outs of MAILS' notices again, one lookup per kind of notice (its
        category, critical or not: all the decision depends on); skip whom they name."""
        recheck = self.sender.recheck
        if recheck is None:
            return
        by_kind: dict[tuple[str | None, bool], list[Mail]] = {}
        for mail in mails:
            row = mail.row
            if row.notice_id is not None and row.recipients:
                by_kind.setdefault((row.category, bool(row.critical)), []).append(mail)
        t = now.timestamp()
        for (category, critical), group in by_kind.items():
            skip: dict[str, str] = {}
            if category is not None:  # else its notice is gone: nothing to look up
                addresses = [address for mail in group for address in mail.row.recipients]
                skip = await recheck(session, category, critical, addresses)
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

    async def _next(self) -> tuple[Mail, list[str], datetime | None] | None:
        """The next mail to send, the recipients it goes to now, and when those of its held
        domains may go (None: none held); None when this connection has nothing more to do
        (and then the next connection waiting is woken to find that out too)."""
        picked = await self._next_or_none()
        if picked is None:
            self._wake(1)
        return picked

    async def _next_or_none(self) -> tuple[Mail, list[str], datetime | None] | None:
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
                    self.pool.sort(key=pool_order)
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

    def _pick(self, now: datetime) -> tuple[Mail, list[str], datetime | None] | float | None:
        """Take the first mail in the pool that may go at NOW, or say how long until one may
        (:func:`helpdeskd.outbox.pool.pick`); expired mail is settled on the way."""
        return pick(self.pool, self.sender.policy, now, self._expire, self._put_back)

    def _sweep(self, now: datetime, *, everything: bool = False) -> None:
        """Put back in the table, each at its turn, the mails whose turn is more than HOLD
        seconds away (EVERYTHING: whose turn has not come)."""
        policy, hold = self.sender.policy, self.sender.hold
        self.pool = sweep(self.pool, policy, now, hold, self._put_back, everything=everything)

    # --- connections ---------------------------------------------------------------------

    async def _recorded(self, last: asyncio.Future[BaseException | None] | None) -> None:
        """Before a customer's or an agent's mail goes: wait until the last such mail this
        connection sent (LAST: the record that holds its result) is recorded. Each connection
        then holds at most one such mail sent and not recorded, so a crash sends again at most
        one per connection (SQLite's write lock, held by a backlog's ingest, must not let sent
        mail pile up unrecorded). Only its own: a connection that waited for the others'
        results too waited for a second record whenever theirs came during the first, and
        through a backlog on PostgreSQL acknowledgements fell behind the mail they answer."""
        if last is None or not self.refill:
            return
        while not last.done():
            # LAST is the running record's, or the next one's (it is urgent); a record that
            # failed starts none after it (_flush_due), so the pass fails with it.
            waits: list[asyncio.Future[Any]] = [last]
            if (task := self.flushing) is not None:
                if not task.done():
                    waits.append(task)
                elif not task.cancelled() and task.exception() is not None:
                    task.result()
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        error = last.result()
        if error is not None and not isinstance(error, asyncio.CancelledError):
            raise error  # the record failed: nothing more is sent, the pass fails with it

    def _recording(self) -> asyncio.Future[BaseException | None]:
        """A future resolved when the record that holds the result noted last ends."""
        waiter: asyncio.Future[BaseException | None] = self.loop.create_future()
        self.recording.append(waiter)
        return waiter

    async def _work(self, relay: Relay) -> None:
        """Send mail over RELAY until there is none left (or the pass halts)."""
        sender = self.sender
        last: asyncio.Future[BaseException | None] | None = None  # its last such mail's record
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
                    await self._recorded(last)
                except BaseException:
                    self.pool.insert(0, mail)  # untried: it goes back with the rest
                    raise
            try:
                if not relay.connected:
                    await relay.connect()
                    await sender._connected()
                result = await sender._transmit(relay, row, addressable, data)
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
                    self.pool.sort(key=pool_order)
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
            if mail.kind == "transactional":
                last = self._recording()

    def _halt(self, mail: Mail) -> None:
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

    def _done(self, mail: Mail, result: SendResult, held: datetime | None, now: datetime) -> None:
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
            results.events.append(  # a delivery_failed event (ledger.record)
                {
                    "ticket_id": row.ticket_id,
                    "rid": row.recipients[address],
                    "recipient": address,
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
                retry_at=utc(retry or t).isoformat(),
                error=error,
                **fields,
            )
        at = [x for x in (retry, None if held is None else held.timestamp()) if x is not None]
        if at:  # recipients left for later: deferred, or in a domain that is held back
            results.retry.append({"oid": row.row_id, "e": error, "next": utc(min(at)), "t": now})
        else:
            results.done.append(row.row_id)
        self.handled += 1
        self._note_result(urgent=urgent)

    def _settle(self, mail: Mail, now: datetime) -> None:
        """MAIL has nobody left to send to (all skipped or done): its row's state follows."""
        self.results.settled.append(mail.row.row_id)
        self.handled += 1
        self._note_result()

    def _expire(self, mail: Mail, now: datetime) -> None:
        self.results.expired.append(mail.row.row_id)
        log.info("outbox_expired", outbox_id=mail.row.row_id, message_id=mail.row.message_id)
        self.handled += 1
        self._note_result()

    def _put_back(self, mail: Mail, at: datetime, now: datetime) -> None:
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
            waiters, self.recording = self.recording, []
            self.oldest, self.urgent = None, False
            sent, self.notices_sent = self.notices_sent, {}
            for notice_id, count in sent.items():
                log.info("notice_mail_sent", notice=notice_id, mails=count)
            error: BaseException | None = None
            try:
                if len(results):
                    await self._record(results)
                    sender._held.difference_update(results.row_ids())
            except BaseException as exc:
                sender._unrecorded.merge(results)  # the next pass records them
                error = exc
                raise
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(error)
        if self.refill and self.oldest is not None:  # results came meanwhile: their turn
            wait = 0.0 if self.urgent else FLUSH_AGE - (self.loop.time() - self.oldest)
            self.loop.call_later(max(0.0, wait), self._flush_due)

    async def _record(self, results: Results) -> None:
        """Write RESULTS in one transaction, on a connection the pass holds from its first
        record to its end. A transaction on a connection from the pool each time (a session, a
        ping to check the connection) cost twice as much, and a customer's or an agent's mail
        is recorded as soon as it is sent: one or two mails a record through a backlog.

        On PostgreSQL the connection commits each statement, and the common record (every mail
        sent to all it was tried for) is one statement: one round trip instead of four (BEGIN,
        two updates, COMMIT). Through a backlog the event loop is busy with the ingest, each
        round trip waits for it, and each acknowledgement waits for the record of the one
        before it (_recorded). Any other record is one explicit transaction.

        On SQLite the sender's journal keeps the results, to be written at the sender's turn to
        write, and the connections go on (OutboxSender._journaled); without a journal (or when
        it cannot be written) the record takes this process's turn to write."""
        if await self.sender._journaled(results, self.sender.clock()):
            return
        if self.recorder is None:
            recorder = await self.sender.engine.connect()
            if self.sender._leasing:
                await recorder.execution_options(isolation_level="AUTOCOMMIT")
            self.recorder = recorder
        connection, now = self.recorder, self.sender.clock()
        try:
            if not self.sender._leasing:
                async with connection.begin():
                    await ledger.record(connection, results, now)
            elif results.sent_only():
                await ledger.record_sent(connection, results, now)
            else:
                await connection.exec_driver_sql("BEGIN")
                await ledger.record(connection, results, now)
                await connection.exec_driver_sql("COMMIT")
        except BaseException:
            # The next record takes a connection afresh. On PostgreSQL this one may hold the
            # transaction its error left open, which the pool would not roll back (to it, the
            # connection commits each statement): it is discarded, not put back.
            await self._put_recorder_back(discard=bool(self.sender._leasing))
            raise

    async def _put_recorder_back(self, *, discard: bool = False) -> None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            with contextlib.suppress(Exception):  # a connection the database dropped
                if discard:
                    await recorder.invalidate()
                await recorder.close()
