"""Watch one IMAP mailbox: hand new mail to a sink, then move or mark it on the server.

The path of a message (DESIGN.md, "IMAP facts to respect"): after every (re)connect, UID SEARCH
for everything still unprocessed; fetch ``(UID RFC822.SIZE INTERNALDATE)`` and then
``BODY.PEEK[]`` (never ``\\Seen``) batch by batch; hand each batch to
:meth:`MailSink.prepare_batch` (parsing, which overlaps the storing of the batch before) and then
:meth:`MailSink.store_batch`; and only when that returned, ``UID MOVE`` the batch to the
processed folder (or ``UID COPY`` + ``\\Deleted`` + ``UID EXPUNGE``), or store the keyword
``$Helpdeskd``, while the next batch is stored. Then IDLE (re-IDLE every ``idle_interval``) or
poll, and catch up again. A crash at any point loses nothing: unmarked mail is simply considered
again (the sink dedupes).

Every command goes through a :class:`helpdeskd.imap.client.Session`, which bounds it with a
timeout and works around aioimaplib; :mod:`helpdeskd.imap.wire` parses the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from helpdeskd.config.settings import MailboxConfig
from helpdeskd.errors import HelpdeskError
from helpdeskd.imap.client import (
    FETCH_BYTES,
    MAX_FETCH,
    ImapDisconnected,
    Session,
    require_ok,
    response_text,
)
from helpdeskd.imap.wire import (
    FetchRecord,
    ImapError,
    encode_mailbox,
    is_exists,
    parse_fetch,
    parse_search,
    parse_select,
    uid_set,
)
from helpdeskd.oauth import OAuthError, TokenSource, login_command
from helpdeskd.oauth.sasl import FAILED_SASL_RESPONSE, sasl_error, sasl_initial_response
from helpdeskd.runs import split_runs
from helpdeskd.store.leases import LeaseLost
from helpdeskd.store.spool import sync_directory

log = structlog.get_logger(__name__)

KEYWORD = "$Helpdeskd"
MAX_BATCH_BYTES = 64 * 1024 * 1024  # message bytes held in memory per batch (at least one)
CATCH_UP_TRIES = 3  # fetches of one UID within one catch-up
CATCH_UP_PAUSE = 0.5  # seconds before fetching a UID again
SPOOL_CHUNK = 4 * 1024 * 1024  # bytes per partial FETCH of an oversize message
BYTES_PER_SECOND = 100_000  # a FETCH may take its timeout plus a second per 100 kB


@dataclass(frozen=True)
class FetchedMail:
    """One message taken from the folder, in UID order within its batch."""

    uid: int
    size: int  # RFC822.SIZE
    raw: bytes | None  # None when size > max_message_bytes: then spooled to `path`
    internal_date: str | None = None
    path: str | None = None  # an oversize message's bytes on disk (None: not kept)


class MailSink(Protocol):
    """Where fetched mail goes; the processor implements it."""

    async def prepare_batch(
        self, mailbox: str, uidvalidity: int, mails: Sequence[FetchedMail]
    ) -> Any:
        """Do the work on MAILS that needs no transaction (parsing); return what store_batch
        takes. The watcher runs it while the batch before is being stored, and drops it
        unstored (the mail stays unmarked) when it stops."""
        ...

    async def store_batch(self, prepared: Any) -> None:
        """Commit a prepared batch durably, deduped on (mailbox, uidvalidity, uid).

        Raising means the batch is not committed: it is then neither moved nor marked.
        Raising :class:`~helpdeskd.store.leases.LeaseLost` (another daemon holds the mailbox
        now) also ends the watcher at once, without moving anything more.
        """
        ...

    async def record_poll(
        self,
        mailbox: str,
        *,
        ok: bool,
        error: str | None,
        urgent: bool = False,
        fix: str | None = None,
    ) -> None:
        """Record the outcome of a catch-up (or of a failed session) for `helpdeskd status`.

        URGENT: the failure needs a person, not time (a refused OAuth login), so the agents
        are told at once; FIX is the command that mends it, when there is one.
        """
        ...


class LoginRefused(ImapError):
    """An OAuth 2.0 login failed: no token, or the server refused it.

    URGENT: only a person can mend it (not a provider that is down for a while); FIX is the
    command that does, when there is one.
    """

    def __init__(self, message: str, *, urgent: bool = True, fix: str | None = None) -> None:
        super().__init__(message)
        self.urgent = urgent
        self.fix = fix


def _discard(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of work nobody waits for any more, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def _one_line(exc: BaseException) -> str:
    """Describe EXC on one short line, for logs and `helpdeskd status`."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, HelpdeskError):
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


class MailboxWatcher:
    """Fetch a mailbox's new mail into a sink, then move or mark it; reconnect forever."""

    backoff_initial = 1.0  # seconds before the first reconnect; doubles per failure
    backoff_max = 300.0

    def __init__(
        self,
        config: MailboxConfig,
        sink: MailSink,
        *,
        stop: asyncio.Event,
        ssl_context: ssl.SSLContext | None = None,
        token_source: TokenSource | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        """Watch CONFIG's folder into SINK until STOP is set.

        SPOOL_DIR receives oversize messages (over ``max_message_bytes``), fetched in
        pieces straight to disk so that they never sit in memory whole.

        SSL_CONTEXT replaces the default (system CAs, hostname checked) for ``tls`` and
        ``starttls``. TOKEN_SOURCE, for ``auth = "oauth2"``, gives a fresh access token before
        each login; its failure, or a refused token, is a failed poll that names its fix.
        """
        if config.processed_folder is not None and config.processed_folder == config.folder:
            raise ImapError(f"mailbox {config.name}: processed_folder must differ from folder")
        self.config = config
        self._sink = sink
        self._stop = stop
        self._ssl_context = ssl_context
        self._token_source = token_source
        self._spool_dir = spool_dir
        self._failures = 0
        self._uidvalidity: int | None = None
        self._log = log.bind(mailbox=config.name)

    # --- entry points ---------------------------------------------------------------------

    async def run(self) -> None:
        """Catch up, then IDLE or poll, until stop is set; reconnect after any failure."""
        self._log.info("imap_watcher_started", host=self.config.host, folder=self.config.folder)
        while not self._stop.is_set():
            try:
                session = await self._connect_unless_stopped()
                if session is None:
                    break
                async with session:
                    await self._serve(session)
                break
            except LeaseLost as exc:  # another daemon polls this mailbox now: leave it
                self._log.error("mailbox_lease_lost", error=str(exc))
                break
            except Exception as exc:  # the task boundary: record it, back off, reconnect
                error = _one_line(exc)
                if isinstance(exc, ImapDisconnected | OSError):
                    self._log.warning("imap_disconnected", error=error)
                else:
                    self._log.warning("imap_session_failed", error=error)
                await self._record_failure(exc)
            delay = self._backoff()
            self._log.info("imap_reconnect_scheduled", delay=round(delay, 2))
            if await self._sleep(delay):
                break
        self._log.info("imap_watcher_stopped")

    async def run_once(self) -> int:
        """Connect, catch up on all unprocessed mail, log out; return how many were handled."""
        try:
            async with await self._connect() as session:
                count = await self._catch_up(session)
        except Exception as exc:
            await self._record_failure(exc)
            raise
        await self._record(ok=True, error=None)
        return count

    # --- session --------------------------------------------------------------------------

    async def _connect_unless_stopped(self) -> Session | None:
        """Connect, or give up and return None as soon as stop is set (logins can be slow)."""
        connect = asyncio.ensure_future(self._connect())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({connect, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not connect.done():
                connect.cancel()
                await asyncio.wait({connect})  # _connect closes its connection on the way out
        if connect.cancelled():
            return None
        return connect.result()

    async def _connect(self) -> Session:
        cfg = self.config
        context: ssl.SSLContext | None = None
        if cfg.security in ("tls", "starttls"):
            context = self._ssl_context or ssl.create_default_context()
        session = Session(
            cfg.host,
            cfg.port,
            timeout=cfg.timeout,
            ssl_context=context if cfg.security == "tls" else None,
        )
        try:
            await session.call(session.client.wait_hello_from_server())
            if cfg.security == "starttls":
                assert context is not None
                await self._starttls(session, context)
            await self._login(session)
            # the list that came with the login response is not parsed reliably: ask again
            await session.refresh_capabilities()
            self._log.info(
                "imap_connected",
                host=cfg.host,
                port=cfg.port,
                security=cfg.security,
                idle=session.has("IDLE"),
                move=session.has("MOVE"),
                uidplus=session.has("UIDPLUS"),
            )
            if cfg.processed_folder is not None:
                if not (session.has("MOVE") or session.has("UIDPLUS")):
                    raise ImapError(
                        "the server has neither MOVE nor UIDPLUS, so mail cannot be moved "
                        "safely; leave processed_folder unset to mark with $Helpdeskd"
                    )
                await self._ensure_folder(session, cfg.processed_folder)
            await self._select(session)
        except Exception:
            await session.close()
            raise
        except BaseException:
            session.abort()
            raise
        return session

    async def _starttls(self, session: Session, context: ssl.SSLContext) -> None:
        if not session.has("STARTTLS"):
            raise ImapError(
                f"{self.config.host}:{self.config.port} does not offer STARTTLS "
                '(security = "starttls" never falls back to plain text)'
            )
        await session.starttls(context, server_hostname=self.config.host)
        self._log.debug("imap_starttls_done")

    async def _login(self, session: Session) -> None:
        cfg = self.config
        if cfg.auth == "oauth2":
            await self._oauth_login(session)
            return
        if cfg.password is None:
            raise ImapError(f"mailbox {cfg.name}: no password configured")
        response = await session.call(session.client.login(cfg.username, cfg.password.reveal()))
        if response.result != "OK":
            raise ImapError(f"password login as {cfg.username} refused: {response_text(response)}")

    async def _check_token(self) -> None:
        """Between catch-ups, have the access token refreshed ahead of its expiry; end the
        session when the credential needs a person (a revoked grant), so that they hear now.

        A refresh that fails for a while (the provider unreachable) keeps the session: the
        token it logged in with still works."""
        if self._token_source is None or self.config.auth != "oauth2":
            return
        try:
            await self._token_source.access_token()
        except OAuthError as exc:
            if not exc.temporary:
                raise LoginRefused(str(exc), fix=exc.fix) from None
            self._log.warning("oauth_refresh_failed", error=str(exc))

    async def _oauth_login(self, session: Session) -> None:
        """AUTHENTICATE with SASL XOAUTH2 or OAUTHBEARER and a fresh access token."""
        cfg = self.config
        assert cfg.oauth is not None  # the config ensures it for auth = "oauth2"
        # a token the server refuses may be for another account or lack a scope: log in again
        fix = login_command(cfg.name) if cfg.oauth.grant == "refresh_token" else None
        if self._token_source is None:
            raise LoginRefused(f"mailbox {cfg.name} uses OAuth 2.0 but has no token source")
        try:
            # the token endpoint has its own timeout; the session's would cut a slow refresh
            token = await self._token_source.access_token()
        except OAuthError as exc:
            raise LoginRefused(str(exc), urgent=not exc.temporary, fix=exc.fix) from None
        mechanism = cfg.oauth.mechanism
        if not session.has(f"AUTH={mechanism.upper()}"):
            raise LoginRefused(f"{cfg.host}:{cfg.port} does not offer AUTH={mechanism.upper()}")
        initial = sasl_initial_response(
            mechanism, cfg.username, token, host=cfg.host, port=cfg.port
        )
        outcome = await session.authenticate(
            mechanism.upper(), initial, FAILED_SASL_RESPONSE[mechanism]
        )
        if not outcome.ok:
            detail = f" ({sasl_error(outcome.challenge)})" if outcome.challenge else ""
            raise LoginRefused(
                f"{mechanism} login as {cfg.username} refused: {outcome.text}{detail}", fix=fix
            )

    async def _ensure_folder(self, session: Session, folder: str) -> None:
        client = session.client
        name = encode_mailbox(folder)
        listing = require_ok(await session.call(client.list('""', name)), f"LIST {folder}")
        if any(bytes(line).strip() for line in listing.lines[:-1]):
            return
        require_ok(await session.call(client.create(name)), f"CREATE {folder}")
        with contextlib.suppress(ImapError):  # only so that mail clients show it
            require_ok(await session.call(client.subscribe(name)), f"SUBSCRIBE {folder}")
        self._log.info("imap_folder_created", folder=folder)

    async def _select(self, session: Session) -> None:
        cfg = self.config
        response = require_ok(
            await session.call(session.client.select(encode_mailbox(cfg.folder))),
            f"SELECT {cfg.folder}",
        )
        info = parse_select(response.lines)
        if info.read_only:
            raise ImapError(f"{cfg.folder} is read-only for {cfg.username}")
        if cfg.processed_folder is None and not info.keeps_keyword(KEYWORD):
            raise ImapError(
                f"{cfg.folder} cannot keep the keyword {KEYWORD} (PERMANENTFLAGS "
                f"{' '.join(info.permanent_flags or ())}); set processed_folder instead"
            )
        if self._uidvalidity is not None and info.uidvalidity != self._uidvalidity:
            self._log.warning(
                "imap_uidvalidity_changed", old=self._uidvalidity, new=info.uidvalidity
            )
        self._uidvalidity = info.uidvalidity
        session.info = info
        self._log.info(
            "imap_selected", folder=cfg.folder, uidvalidity=info.uidvalidity, exists=info.exists
        )

    # --- catching up ----------------------------------------------------------------------

    async def _serve(self, session: Session) -> None:
        """Catch up, then IDLE or poll, again and again; return when stop is set."""
        use_idle = self.config.idle and session.has("IDLE")
        if self.config.idle and not use_idle:
            self._log.warning("imap_idle_unsupported", poll_interval=self.config.poll_interval)
        while True:
            await self._catch_up(session)
            self._failures = 0
            await self._record(ok=True, error=None)
            if self._stop.is_set():
                return
            await self._check_token()
            if use_idle:
                await self._idle(session)
            elif await self._sleep(self.config.poll_interval):
                return
            if self._stop.is_set():
                return

    async def _catch_up(self, session: Session) -> int:
        """Handle everything still unprocessed in the folder; return how many."""
        handled = 0
        # A UID the server did not return in full (no size, no body: a race with another
        # client, an odd answer) is tried again a few times before the next wake-up.
        attempts: dict[int, int] = {}
        while True:
            exists_before = session.exists_seen
            uids = await self._search(session)
            fresh = [uid for uid in uids if attempts.get(uid, 0) < CATCH_UP_TRIES]
            if not fresh:
                if uids:
                    self._log.warning("imap_mark_ineffective", uids=uid_set(uids))
                # an EXISTS seen since the search began may be mail the search missed
                if session.exists_seen == exists_before or self._stop.is_set():
                    break
                continue
            if any(uid in attempts for uid in fresh):
                await asyncio.sleep(CATCH_UP_PAUSE)
            for uid in fresh:
                attempts[uid] = attempts.get(uid, 0) + 1
            handled += await self._handle(session, fresh)
            if self._stop.is_set():
                break
        if handled:
            self._log.info("imap_caught_up", count=handled)
        return handled

    async def _search(self, session: Session) -> list[int]:
        if self.config.processed_folder is not None:
            criteria: tuple[str, ...] = ("UNDELETED",)
        else:
            criteria = ("UNDELETED", "UNKEYWORD", KEYWORD)
        response = await session.call(session.client.uid_search(*criteria, charset=None))
        return parse_search(require_ok(response, "UID SEARCH").lines)

    async def _handle(self, session: Session, uids: list[int]) -> int:
        """Fetch UIDS batch by batch, store each batch, then move or mark it.

        A pipeline one batch deep: while a batch is stored, the connection moves (or marks)
        the batch stored before it and fetches the next one, whose preparation (parsing, in
        the worker processes) starts as soon as it is fetched. So the store, the parsing and
        the IMAP round trips overlap; each batch is still marked only after its own commit.
        """
        info = session.info
        assert info is not None
        sizes = await self._fetch_sizes(session, uids)
        batches = self._batches([uid for uid in uids if uid in sizes], sizes)
        handled = 0
        stored: list[FetchedMail] = []  # committed, not yet marked
        ahead = await self._fetch_next(session, batches, sizes)
        try:
            while ahead is not None:
                mails, preparing = ahead
                ahead = None
                imap = asyncio.ensure_future(self._mark_and_fetch(session, stored, batches, sizes))
                try:
                    await self._sink.store_batch(await preparing)
                except LeaseLost:
                    # Rolled back: the mailbox is another daemon's now. Move nothing more.
                    if imap.done() and not imap.cancelled() and imap.exception() is None:
                        ahead = imap.result()
                    else:
                        session.broken = True  # a command may be cut off: no polite logout
                        imap.cancel()
                        imap.add_done_callback(_discard)
                    raise
                except Exception:
                    # The batch before is committed: let its mark finish. The store's error is
                    # the one to report; an IMAP error too ends the session all the same.
                    with contextlib.suppress(Exception):
                        ahead = await imap
                    raise
                except BaseException:  # cancelled: stop the IMAP side too
                    if imap.done() and not imap.cancelled() and imap.exception() is None:
                        ahead = imap.result()
                    else:
                        imap.cancel()
                        imap.add_done_callback(_discard)
                    raise
                ahead = await imap
                stored = mails
                handled += len(mails)
                self._log.info(
                    "imap_batch_stored",
                    uidvalidity=info.uidvalidity,
                    uids=uid_set(m.uid for m in mails),
                    count=len(mails),
                )
                if self._stop.is_set():
                    break  # the batch in hand is finished; the rest waits for the next start
            if stored:
                await self._mark(session, [m.uid for m in stored])
        finally:
            if ahead is not None:  # prepared, never stored: it stays unmarked
                ahead[1].cancel()
                ahead[1].add_done_callback(_discard)
        return handled

    async def _mark_and_fetch(
        self,
        session: Session,
        stored: list[FetchedMail],
        batches: Iterator[list[int]],
        sizes: dict[int, FetchRecord],
    ) -> tuple[list[FetchedMail], asyncio.Task[Any]] | None:
        """Mark the STORED batch, then fetch the next one and start its preparation.

        Once a stop is asked for, nothing more is fetched: the batch in hand is the last.
        """
        if stored:
            await self._mark(session, [m.uid for m in stored])
        if self._stop.is_set():
            return None
        return await self._fetch_next(session, batches, sizes)

    async def _fetch_next(
        self, session: Session, batches: Iterator[list[int]], sizes: dict[int, FetchRecord]
    ) -> tuple[list[FetchedMail], asyncio.Task[Any]] | None:
        """Fetch the next batch with mail in it and start its preparation; None at the end."""
        assert session.info is not None
        uidvalidity = session.info.uidvalidity
        for batch in batches:
            mails = await self._fetch_batch(session, batch, sizes)
            if mails:
                preparing = self._sink.prepare_batch(self.config.name, uidvalidity, mails)
                return mails, asyncio.ensure_future(preparing)
        return None

    async def _fetch_sizes(self, session: Session, uids: list[int]) -> dict[int, FetchRecord]:
        sizes: dict[int, FetchRecord] = {}
        for start in range(0, len(uids), MAX_FETCH):
            chunk = uids[start : start + MAX_FETCH]
            response = await session.call(
                session.client.uid("fetch", uid_set(chunk), "(UID RFC822.SIZE INTERNALDATE)")
            )
            records = parse_fetch(require_ok(response, "UID FETCH RFC822.SIZE").lines)
            wanted = set(chunk)
            for uid, record in records.items():
                if uid in wanted and record.size is not None:
                    sizes[uid] = record
        return sizes

    def _batches(self, uids: list[int], sizes: dict[int, FetchRecord]) -> Iterator[list[int]]:
        limit = max(1, self.config.batch_size)
        largest = self.config.max_message_bytes  # an oversize mail is spooled, not held
        held = [size if (size := sizes[uid].size or 0) <= largest else 0 for uid in uids]
        return split_runs(uids, held, MAX_BATCH_BYTES, limit)

    async def _fetch_batch(
        self, session: Session, batch: list[int], sizes: dict[int, FetchRecord]
    ) -> list[FetchedMail]:
        limit = self.config.max_message_bytes
        wanted = [uid for uid in batch if (sizes[uid].size or 0) <= limit]
        bodies: dict[int, FetchRecord] = {}
        weights = [sizes[uid].size or 0 for uid in wanted]
        for part in split_runs(wanted, weights, FETCH_BYTES, MAX_FETCH):
            total = sum(sizes[uid].size or 0 for uid in part)
            response = await session.call(
                session.client.uid("fetch", uid_set(part), "(UID BODY.PEEK[])"),
                timeout=self.config.timeout + total / BYTES_PER_SECOND,
            )
            bodies.update(parse_fetch(require_ok(response, "UID FETCH BODY.PEEK[]").lines))
        mails: list[FetchedMail] = []
        for uid in batch:
            record = sizes[uid]
            size = record.size or 0
            if size > limit:
                self._log.warning("imap_message_oversize", uid=uid, size=size, limit=limit)
                path = await self._spool(session, uid, size)
                mails.append(FetchedMail(uid, size, None, record.internal_date, path))
                continue
            body = bodies.get(uid)
            if body is None or body.body is None:
                # expunged by someone else meanwhile, or an odd answer: next catch-up decides
                self._log.warning("imap_fetch_missing", uid=uid)
                continue
            mails.append(FetchedMail(uid, size, body.body, record.internal_date))
        return mails

    async def _spool(self, session: Session, uid: int, size: int) -> str | None:
        """Fetch message UID piece by piece into the spool folder; return its path."""
        if self._spool_dir is None:
            return None
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, partial = tempfile.mkstemp(dir=self._spool_dir, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                offset = 0
                while offset < size:
                    response = await session.call(
                        session.client.uid(
                            "fetch", str(uid), f"(UID BODY.PEEK[]<{offset}.{SPOOL_CHUNK}>)"
                        ),
                        timeout=self.config.timeout + SPOOL_CHUNK / BYTES_PER_SECOND,
                    )
                    record = parse_fetch(require_ok(response, "UID FETCH BODY.PEEK[]<>").lines)
                    piece = record[uid].body if uid in record else None
                    if not piece:
                        break
                    out.write(piece)
                    digest.update(piece)
                    offset += len(piece)
                    if len(piece) < SPOOL_CHUNK:
                        break
                if offset != size:
                    # Never keep a part for the whole: the mail stays unmarked and is fetched
                    # again at the next catch-up.
                    raise ImapError(f"UID {uid}: got {offset} of {size} bytes")
                out.flush()
                os.fsync(out.fileno())
            final = self._spool_dir / f"{digest.hexdigest()}.eml"
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        sync_directory(self._spool_dir)  # the rename itself must survive a crash
        self._log.info("imap_message_spooled", uid=uid, size=size, path=str(final))
        return str(final)

    async def _mark(self, session: Session, uids: list[int]) -> None:
        """Move UIDS to the processed folder, or give them the keyword."""
        client = session.client
        uidset = uid_set(uids)
        folder = self.config.processed_folder
        if folder is None:
            response = await session.call(
                client.uid("store", uidset, "+FLAGS.SILENT", f"({KEYWORD})")
            )
            require_ok(response, "UID STORE")
            self._log.info("imap_marked", uids=uidset, keyword=KEYWORD)
            return
        target = encode_mailbox(folder)
        if session.has("MOVE"):
            # uid('move'), not move(): aioimaplib's move() sends sequence numbers
            require_ok(await session.call(client.uid("move", uidset, target)), "UID MOVE")
        else:
            # UIDPLUS (checked at connect): never a plain EXPUNGE, which removes others' mail
            require_ok(await session.call(client.uid("copy", uidset, target)), "UID COPY")
            response = await session.call(
                client.uid("store", uidset, "+FLAGS.SILENT", r"(\Deleted)")
            )
            require_ok(response, "UID STORE")
            require_ok(await session.call(client.uid("expunge", uidset)), "UID EXPUNGE")
        self._log.info("imap_moved", uids=uidset, folder=folder)

    # --- waiting --------------------------------------------------------------------------

    async def _idle(self, session: Session) -> None:
        """IDLE until new mail, the re-IDLE period, or stop; then end the IDLE."""
        interval = self.config.idle_interval
        idle = await session.start_idle(interval)
        self._log.debug("imap_idle_started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + interval
        reason = "timeout"
        while not idle.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            push = await session.wait_push(idle, self._stop, remaining)
            if push is None:
                reason = "stop" if self._stop.is_set() else "timeout"
                break
            if any(is_exists(line) for line in push):
                reason = "exists"
                break
            if any(bytes(line).startswith(b"BYE") for line in push):
                session.broken = True
                raise ImapDisconnected("the server said BYE during IDLE")
            # anything else ("OK Still here", flag changes, expunges) needs no catch-up
        if idle.done():
            session.broken = True
            raise ImapDisconnected("the server ended IDLE by itself")
        await session.end_idle(idle)
        self._log.debug("imap_idle_ended", reason=reason)

    async def _sleep(self, seconds: float) -> bool:
        """Wait SECONDS or until stop is set; return whether stop is set."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()

    def _backoff(self) -> float:
        base = min(self.backoff_max, self.backoff_initial * 2 ** min(self._failures, 20))
        self._failures += 1
        return random.uniform(base / 2, base)

    async def _record_failure(self, exc: Exception) -> None:
        if isinstance(exc, LoginRefused):
            await self._record(ok=False, error=_one_line(exc), urgent=exc.urgent, fix=exc.fix)
        else:
            await self._record(ok=False, error=_one_line(exc))

    async def _record(
        self, *, ok: bool, error: str | None, urgent: bool = False, fix: str | None = None
    ) -> None:
        try:
            await self._sink.record_poll(
                self.config.name, ok=ok, error=error, urgent=urgent, fix=fix
            )
        except Exception as exc:  # bookkeeping must not stop the watcher
            self._log.error("imap_record_poll_failed", error=_one_line(exc))
