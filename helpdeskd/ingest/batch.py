"""Store batches of received mail: each mail decided by the one plan, written by the writer.

One fetched batch is one transaction. A run of mail that needs nothing of the desk (everything
but agents' replies and unsubscribe mail) is looked up, decided and written at once, with one
query per kind of fact and one INSERT per table, in one SAVEPOINT; every other mail, and the mail
of a run that failed, goes alone through the same lookup, decision and writer in a SAVEPOINT of
its own, so one failing mail goes to quarantine (raw bytes, error, traceback) without taking its
batch down. The decision itself is :func:`helpdeskd.triage.plan.decide`: the shapes differ in
how they read facts and write plans, never in what they decide.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.clock import Clock, system_clock
from helpdeskd.config.settings import Config
from helpdeskd.errors import UserError
from helpdeskd.ingest.lookup import Known
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.ingest.writer import SLICE, Writer, give_turn
from helpdeskd.mail.attachments import store as store_attachment
from helpdeskd.mail.parse import ParsedMessage
from helpdeskd.store.contacts import ensure_agents
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.models import MailboxState, Quarantine, RawMessage
from helpdeskd.store.spool import spool
from helpdeskd.triage.decision import decide
from helpdeskd.triage.facts import Needs, Policy, Runtime, needs
from helpdeskd.triage.received import Incoming, Outcome, raw_fields, ticket_ref

log = structlog.get_logger(__name__)

HEADER_READ = 256 * 1024  # bytes read from an oversize mail to find its header block
# Mail whose plan needs the desk after it is written (an agent's reply applies its commands; an
# unsubscribe by mail opts out) is written alone: a run's later mail could not see its effects.
ALONE = frozenset({"agent_reply", "unsubscribe"})
WARNINGS = frozenset(
    {"security_event", "flood_detected", "message_id_clash"}
)  # plan log lines logged as warnings


@dataclass(frozen=True)
class MailboxMark:
    """Mailbox progress written in the same transaction as the batch.

    FENCE, when given, runs in that transaction before the commit and raises to roll the
    batch back (a mailbox lease this daemon no longer holds: helpdeskd.store.leases).
    """

    name: str
    uidvalidity: int
    last_uid: int
    fence: Callable[[AsyncSession], Awaitable[None]] | None = field(default=None, compare=False)


def _read_head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEADER_READ)


@dataclass(frozen=True)
class Prepared:
    """A batch made ready to store: each item, whether its UID was stored before, and its
    parse (a ParsedMessage, the exception parsing raised, or None: nothing to parse)."""

    items: list[Incoming]
    known: list[bool]
    results: list[ParsedMessage | BaseException | None]


class Processor:
    """Store batches of received mail; safe to call from several tasks (one writer at a time)."""

    def __init__(
        self,
        runtime: Runtime,
        sessions: SessionMaker,
        parse_pool: ParsePool,
        *,
        outbox_wakeup: asyncio.Event | None = None,
        fast_lane: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        self.runtime = runtime  # its policy is read once per batch
        self.fast_lane = fast_lane
        self.clock = clock  # read once per batch: the decisions' "now"
        self.lanes: Counter[str] = Counter()  # mail stored by shape; "failed": runs
        self.sessions = sessions
        self.parse_pool = parse_pool
        self.outbox_wakeup = outbox_wakeup
        self._lock = asyncio.Lock()

    # --- the batch ---------------------------------------------------------------------------

    async def process_batch(
        self, items: Sequence[Incoming], mark: MailboxMark | None = None
    ) -> list[Outcome]:
        """Store ITEMS in one transaction and return one outcome per item, in order."""
        return await self.store(await self.prepare(items), mark)

    async def prepare(self, items: Sequence[Incoming]) -> Prepared:
        """Do the work on ITEMS that needs no transaction: spool, dedupe by UID, parse.

        It holds no lock, so the IMAP watcher prepares a batch while the one before it is
        being stored (:meth:`store` looks up everything else inside its own transaction).
        """
        config = self.runtime.policy.config
        items = [self._spool_if_oversize(config, item) for item in items]
        if not items:
            return Prepared([], [], [])
        known = await self._known_raw(items)
        texts = [
            None if seen else await self._text(item)
            for item, seen in zip(items, known, strict=True)
        ]
        parsed = iter(await self.parse_pool.parse_many([t for t in texts if t is not None]))
        results = [None if text is None else next(parsed) for text in texts]
        await asyncio.to_thread(self._keep_attachments, config, results)
        return Prepared(items, known, results)

    async def store(self, prepared: Prepared, mark: MailboxMark | None = None) -> list[Outcome]:
        """Store PREPARED in one transaction and return one outcome per item, in order."""
        items, known, results = prepared.items, prepared.known, prepared.results
        if not items:
            return []
        async with self._lock:
            policy = self.runtime.policy  # the whole batch is decided under one policy
            outcomes: list[Outcome] = []
            async with self.sessions() as session, session.begin():
                # Outside every SAVEPOINT: a run rolled back must not take the agents' ids.
                await ensure_agents(session, policy.config)
                while len(outcomes) < len(items):
                    i = len(outcomes)
                    item, result = items[i], results[i]
                    if known[i]:
                        outcomes.append(
                            Outcome(item.source, None, "duplicate", None, "already received")
                        )
                        continue
                    run = []
                    for later, later_result, seen in zip(
                        items[i:], results[i:], known[i:], strict=True
                    ):
                        if seen or not isinstance(later_result, ParsedMessage):
                            break
                        later_needs = needs(later, later_result, policy)
                        if later_needs.kind.kind in ALONE or not later_needs.parsed.sender:
                            break
                        run.append((later, later_needs))
                    stored = await self._run(session, policy, run)
                    outcomes.extend(stored)
                    if not stored:
                        outcomes.append(await self._store_one(session, policy, item, result))
                        self.lanes["message"] += 1
                if mark is not None:
                    if mark.fence is not None:
                        await mark.fence(session)
                    await self._mark_mailbox(session, mark)
            if self.outbox_wakeup is not None:
                self.outbox_wakeup.set()
            stored_log = log.bind()  # one logger for the batch: the lazy proxy binds per line
            for outcome in outcomes:
                stored_log.info(
                    "message_stored",
                    source=outcome.source,
                    message_id=outcome.message_id,
                    outcome=outcome.outcome,
                    ticket=outcome.ticket,
                    reason=outcome.reason,
                )
            return outcomes

    async def _run(
        self, session: AsyncSession, policy: Policy, run: Sequence[tuple[Incoming, Needs]]
    ) -> list[Outcome]:
        """Store the leading mail of RUN at once, all or nothing; [] when it cannot."""
        if not self.fast_lane or not run:
            return []
        try:
            async with session.begin_nested():
                stored = await self._apply(session, policy, run, run=True)
        except IntegrityError:
            # Another daemon stored one of these a moment ago: mail alone sees it.
            log.info("fast_lane_conflict", messages=len(run))
            self.lanes["conflict"] += 1
            return []
        except Exception as exc:
            log.error("fast_lane_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self.lanes["failed"] += 1
            return []
        self.lanes["fast"] += len(stored)
        return stored

    @staticmethod
    def _keep_attachments(config: Config, results: Sequence[object]) -> None:
        """Store every attachment's bytes content-addressed under the state folder."""
        folder = config.service.state_dir / "attachments"
        for result in results:
            if isinstance(result, ParsedMessage):
                for attachment in result.attachments:
                    if attachment.data:
                        store_attachment(folder, attachment.data)

    @staticmethod
    def _spool_if_oversize(config: Config, item: Incoming) -> Incoming:
        """Move an oversize mail read from a file out of memory into the spool folder."""
        if item.raw is None or item.size <= config.service.max_message_bytes:
            return item
        path = spool(config.service.state_dir / "oversize", item.raw)
        return replace(item, raw=None, path=str(path))

    async def _text(self, item: Incoming) -> bytes | None:
        """What to parse of ITEM: its bytes, an oversize mail's header block, or None."""
        if item.raw is not None:
            return item.raw
        if item.path is None:
            return None
        # Only the header block of an oversize mail is read: enough for a ticket and a reply.
        head = await asyncio.to_thread(_read_head, item.path)
        end = min(
            (i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0), default=len(head)
        )
        return head[:end] + b"\r\n\r\n"

    async def _known_raw(self, items: Sequence[Incoming]) -> list[bool]:
        async with reading(self.sessions) as session:  # beside a batch's commit
            sources = {item.source for item in items}
            rows = await session.execute(
                select(RawMessage.source, RawMessage.uidvalidity, RawMessage.uid).where(
                    RawMessage.source.in_(sources),
                    RawMessage.uidvalidity.in_({item.uidvalidity for item in items}),
                    RawMessage.uid.in_([item.uid for item in items]),
                )
            )
            seen = {tuple(row) for row in rows}
        return [(item.source, item.uidvalidity, item.uid) in seen for item in items]

    async def _store_one(
        self,
        session: AsyncSession,
        policy: Policy,
        item: Incoming,
        result: ParsedMessage | BaseException | None,
    ) -> Outcome:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            text = "".join(traceback.format_exception(result))
            return await self._quarantine(session, item, None, f"parse failed: {result}", text)
        if result is None:
            limit = policy.config.service.max_message_bytes
            return await self._quarantine(
                session, item, None, f"oversize message: {item.size} bytes (limit {limit})", ""
            )
        for attempt in (1, 2):
            try:
                async with session.begin_nested():
                    mail_needs = needs(item, result, policy)
                    return (await self._apply(session, policy, [(item, mail_needs)]))[0]
            except IntegrityError:
                # Another daemon stored the same mail (or contact) a moment ago; looking again
                # now finds it, and the message becomes a duplicate.
                if attempt == 2:
                    text = traceback.format_exc()
                    return await self._quarantine(
                        session, item, result.message_id, "integrity error twice", text
                    )
            except Exception as exc:
                text = traceback.format_exc()
                log.error("message_failed", error=str(exc), message_id=result.message_id)
                return await self._quarantine(
                    session, item, result.message_id, f"{type(exc).__name__}: {exc}", text
                )
        raise AssertionError("unreachable")

    async def _quarantine(
        self,
        session: AsyncSession,
        item: Incoming,
        message_id: str | None,
        error: str,
        text: str,
    ) -> Outcome:
        async with session.begin_nested():
            raw = self._raw_row(item, message_id)
            raw.outcome, raw.reason = "quarantined", error[:2000]
            session.add(raw)
            await session.flush()
            session.add(
                Quarantine(raw_id=raw.id, source=item.source, error=error[:2000], traceback=text)
            )
        log.warning("message_quarantined", source=item.source, error=error[:200])
        return Outcome(item.source, message_id, "quarantined", None, error[:300])

    def _raw_row(self, item: Incoming, message_id: str | None) -> RawMessage:
        return RawMessage(**raw_fields(item, message_id))

    async def _mark_mailbox(self, session: AsyncSession, mark: MailboxMark) -> None:
        state = await session.get(MailboxState, mark.name)
        if state is None:
            state = MailboxState(name=mark.name, last_uid=0)
            session.add(state)
        if state.uidvalidity != mark.uidvalidity:
            state.uidvalidity, state.last_uid = mark.uidvalidity, 0
        state.last_uid = max(state.last_uid or 0, mark.last_uid)

    async def retry_quarantined(self, quarantine_id: int) -> Outcome:
        """Process a quarantined message again from its stored raw bytes."""
        async with self._lock:
            async with self.sessions() as session:
                entry = await session.get(Quarantine, quarantine_id)
                if entry is None or entry.resolved_at is not None:
                    raise UserError(f"no open quarantine entry {quarantine_id}")
                raw = await session.get_one(RawMessage, entry.raw_id)
                if raw.data is None:
                    raise UserError(
                        f"quarantine entry {quarantine_id} has no stored bytes ({raw.reason})"
                    )
                item = Incoming(raw.source, raw.uid, raw.data, raw.size, raw.uidvalidity)
                await session.rollback()
            parsed: ParsedMessage | Exception
            try:
                parsed = await self.parse_pool.parse(item.raw or b"")
            except Exception as exc:
                parsed = exc
            policy = self.runtime.policy
            async with self.sessions() as session, session.begin():
                await ensure_agents(session, policy.config)
                entry = await session.get_one(Quarantine, quarantine_id)
                raw = await session.get_one(RawMessage, entry.raw_id)
                entry.retries += 1
                message_id = raw.message_id
                try:
                    if isinstance(parsed, Exception):
                        raise parsed
                    mail_needs = needs(item, parsed, policy)
                    async with session.begin_nested():
                        stored = await self._apply(
                            session, policy, [(item, mail_needs)], raw_id=raw.id
                        )
                    outcome = stored[0]
                except Exception as exc:
                    # The savepoint's rollback expired what it touched: load the entry afresh.
                    entry = await session.get_one(Quarantine, quarantine_id, populate_existing=True)
                    entry.error = f"{type(exc).__name__}: {exc}"[:2000]
                    entry.traceback = "".join(traceback.format_exception(exc))
                    log.warning("quarantine_retry_failed", quarantine_id=quarantine_id)
                    return Outcome(item.source, message_id, "quarantined", None, entry.error)
                entry.resolved_at = self.clock()
            if self.outbox_wakeup is not None:
                self.outbox_wakeup.set()
            log.info("quarantine_released", quarantine_id=quarantine_id, outcome=outcome.outcome)
            return outcome

    # --- deciding and writing ----------------------------------------------------------------

    async def _apply(
        self,
        session: AsyncSession,
        policy: Policy,
        entries: Sequence[tuple[Incoming, Needs]],
        *,
        raw_id: int | None = None,
        run: bool = False,
    ) -> list[Outcome]:
        """Look up, decide and write ENTRIES; a RUN stops at the first mail it cannot answer for.

        Returns the outcomes of the mail written, in order (a run may write fewer than given).
        """
        known = Known(policy, self.clock())
        await known.load(session, [n for _, n in entries])
        writer = Writer(session, policy, known)
        decided = []
        for n, (item, mail_needs) in enumerate(entries):
            if n and n % SLICE == 0:
                await give_turn()
            try:
                plan = decide(item, mail_needs, known.facts(mail_needs), policy)
            except Exception:
                # A run ends before a mail it cannot answer for (Unknown) or decide: alone,
                # that mail is looked up afresh, or quarantined with the reason.
                if not run:
                    raise
                break
            ticket_id = plan.ticket_id
            if plan.new_ticket:
                ticket_id = await writer.ticket_id()
            known.learn(mail_needs, plan, ticket_id)
            writer.add(item, mail_needs, plan, ticket_id, raw_id=raw_id)
            decided.append((item, mail_needs, plan, ticket_id))
        if not decided:
            return []
        await writer.write()
        outcomes = []
        plan_log = log.bind()  # one logger for the run: the lazy proxy binds per line
        for item, mail_needs, plan, ticket_id in decided:
            if plan.logs:  # the decision logs nothing itself: it is pure
                with structlog.contextvars.bound_contextvars(
                    message_id=mail_needs.parsed.message_id, source=item.source
                ):
                    for event, fields in plan.logs:
                        (plan_log.warning if event in WARNINGS else plan_log.info)(event, **fields)
            ref = ticket_ref(policy.config, ticket_id) if ticket_id is not None else None
            outcomes.append(
                Outcome(
                    item.source,
                    mail_needs.parsed.message_id,
                    plan.outcome,
                    ref,
                    plan.reason,
                )
            )
        return outcomes
