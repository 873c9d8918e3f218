"""Remove mail from the mailboxes: an erased person's copies, and old processed mail.

The desk keeps a copy of every mail it took in the mailbox's processed folder (or, without
one, in the watched folder with the keyword ``$Helpdeskd``). Two things remove them here:

- **Erasure** (helpdeskd.desk.erasure) leaves a ``pending_deletions`` row per Message-ID;
  :func:`expunge_pending` finds each copy with ``UID SEARCH HEADER Message-ID`` and removes it
  with ``UID STORE +FLAGS.SILENT (\\Deleted)`` and ``UID EXPUNGE``, which touches no other mail.
  A server without UIDPLUS has no UID EXPUNGE, and a plain EXPUNGE would remove whatever else
  is flagged: the copies are flagged ``\\Deleted`` and listed for the admin instead.
- **Retention** (``processed_mail_days``): :func:`sweep_processed` removes what arrived before
  the cutoff, except mail of tickets under legal hold; once a day for the whole fleet.

Each mailbox has a session of its own (:class:`helpdeskd.imap.client.Session`, as the watcher
uses it); one that cannot be reached is reported and tried again later, the others go on.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from helpdeskd.config.settings import Config, MailboxConfig
from helpdeskd.desk import privacy
from helpdeskd.desk.retention import claim_run
from helpdeskd.imap.client import Session, require_ok, response_text
from helpdeskd.imap.watcher import KEYWORD
from helpdeskd.imap.wire import ImapError, encode_mailbox, parse_search, parse_select, uid_set
from helpdeskd.oauth import OAuthError, TokenSource
from helpdeskd.oauth.sasl import FAILED_SASL_RESPONSE, sasl_error, sasl_initial_response
from helpdeskd.store.db import SessionMaker
from helpdeskd.store.models import Message, PendingDeletion, RawMessage, Ticket

log = structlog.get_logger(__name__)

SWEEP = "processed_sweep"  # privacy_state: the last sweep of the processed folders
SWEEP_EVERY = timedelta(days=1)
UIDS_PER_COMMAND = 500
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Tokens = Callable[[str], TokenSource | None]  # a mailbox's name to its OAuth token source


@dataclass(frozen=True)
class Left:
    """A copy that is still in a mailbox: for the admin to remove by hand."""

    mailbox: str
    folder: str
    uids: tuple[int, ...]
    message_id: str | None
    reason: str

    def as_json(self) -> dict[str, object]:
        return {
            "mailbox": self.mailbox,
            "folder": self.folder,
            "uids": list(self.uids),
            "message_id": self.message_id,
            "reason": self.reason,
        }


@dataclass
class Expunged:
    """What a round removed, what it left for the admin, and the mailboxes it could not reach."""

    expunged: int = 0
    left: list[Left] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "NAME: error", one line each

    def as_json(self) -> dict[str, object]:
        return {
            "expunged": self.expunged,
            "left": [item.as_json() for item in self.left],
            "failed": self.failed,
        }


def where(mailbox: MailboxConfig) -> str:
    """The folder that holds MAILBOX's processed mail."""
    return mailbox.processed_folder or mailbox.folder


def imap_date(moment: datetime) -> str:
    """MOMENT's day as IMAP's SEARCH BEFORE takes it (RFC 3501 date: 5-Dec-2026)."""
    return f"{moment.day}-{MONTHS[moment.month - 1]}-{moment.year}"


def quoted(value: str) -> str:
    """VALUE as an IMAP quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- a session on one mailbox --------------------------------------------------------------


@contextlib.asynccontextmanager
async def opened(
    mailbox: MailboxConfig,
    *,
    token_source: TokenSource | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Session]:
    """A logged-in session with MAILBOX's processed folder selected read-write."""
    context: ssl.SSLContext | None = None
    if mailbox.security in ("tls", "starttls"):
        context = ssl_context or ssl.create_default_context()
    session = Session(
        mailbox.host,
        mailbox.port,
        timeout=mailbox.timeout,
        ssl_context=context if mailbox.security == "tls" else None,
    )
    async with session:
        await session.call(session.client.wait_hello_from_server())
        if mailbox.security == "starttls":
            assert context is not None
            if not session.has("STARTTLS"):
                raise ImapError(f"{mailbox.host}:{mailbox.port} does not offer STARTTLS")
            await session.starttls(context, server_hostname=mailbox.host)
        await _login(session, mailbox, token_source)
        await session.refresh_capabilities()
        folder = where(mailbox)
        response = await session.call(session.client.select(encode_mailbox(folder)))
        require_ok(response, f"SELECT {folder}")
        if parse_select(response.lines).read_only:
            raise ImapError(f"{folder} is read-only for {mailbox.username}")
        yield session


async def _login(session: Session, mailbox: MailboxConfig, tokens: TokenSource | None) -> None:
    if mailbox.auth != "oauth2":
        if mailbox.password is None:
            raise ImapError(f"mailbox {mailbox.name}: no password configured")
        response = await session.call(
            session.client.login(mailbox.username, mailbox.password.reveal())
        )
        if response.result != "OK":
            raise ImapError(f"login as {mailbox.username} refused: {response_text(response)}")
        return
    if tokens is None or mailbox.oauth is None:
        raise ImapError(f"mailbox {mailbox.name} uses OAuth 2.0 but has no token source")
    try:
        token = await tokens.access_token()
    except OAuthError as exc:
        raise ImapError(str(exc)) from None
    mechanism = mailbox.oauth.mechanism
    initial = sasl_initial_response(
        mechanism, mailbox.username, token, host=mailbox.host, port=mailbox.port
    )
    outcome = await session.authenticate(
        mechanism.upper(), initial, FAILED_SASL_RESPONSE[mechanism]
    )
    if not outcome.ok:
        detail = f" ({sasl_error(outcome.challenge)})" if outcome.challenge else ""
        raise ImapError(f"{mechanism} login as {mailbox.username} refused: {outcome.text}{detail}")


async def search(session: Session, mailbox: MailboxConfig, *criteria: str) -> list[int]:
    """UID SEARCH the selected folder for CRITERIA among the desk's processed mail."""
    marked = () if mailbox.processed_folder else ("KEYWORD", KEYWORD)
    response = await session.call(
        session.client.uid_search("UNDELETED", *marked, *criteria, charset=None)
    )
    return parse_search(require_ok(response, "UID SEARCH").lines)


async def remove(session: Session, uids: Sequence[int]) -> bool:
    """Flag UIDS \\Deleted and, with UIDPLUS, expunge exactly them; False without UIDPLUS."""
    for start in range(0, len(uids), UIDS_PER_COMMAND):
        chosen = uid_set(uids[start : start + UIDS_PER_COMMAND])
        response = await session.call(
            session.client.uid("store", chosen, "+FLAGS.SILENT", r"(\Deleted)")
        )
        require_ok(response, "UID STORE")
        if session.has("UIDPLUS"):
            require_ok(await session.call(session.client.uid("expunge", chosen)), "UID EXPUNGE")
    return session.has("UIDPLUS")


def _one_line(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


# --- erasure -------------------------------------------------------------------------------


async def expunge_pending(
    sessions: SessionMaker,
    config: Config,
    *,
    tokens: Tokens | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Expunged:
    """Remove the processed copies an erasure left in ``pending_deletions``."""
    done = Expunged()
    async with sessions() as session:
        rows = list(
            await session.scalars(
                select(PendingDeletion)
                .where(PendingDeletion.kind == "imap")
                .order_by(PendingDeletion.id)
            )
        )
    by_mailbox: dict[str, list[PendingDeletion]] = {}
    for row in rows:
        by_mailbox.setdefault(row.mailbox or "", []).append(row)
    mailboxes = {m.name: m for m in config.mailboxes}
    for name, pending in by_mailbox.items():
        mailbox = mailboxes.get(name)
        finished: list[int] = []
        if mailbox is None:  # no longer configured: nothing helpdeskd can reach
            done.left += [
                Left(name, "", (), row.target, "mailbox no longer configured") for row in pending
            ]
            finished = [row.id for row in pending]
        else:
            try:
                finished = await _expunge(mailbox, pending, done, tokens, ssl_context)
            except Exception as exc:  # one mailbox's trouble: the others go on
                done.failed.append(f"{name}: {_one_line(exc)}")
                log.warning("imap_erase_failed", mailbox=name, error=_one_line(exc))
                await _attempted(sessions, [row.id for row in pending], _one_line(exc))
        if finished:
            async with sessions() as session, session.begin():
                await privacy.drop_pending(session, finished)
    return done


async def _expunge(
    mailbox: MailboxConfig,
    pending: Sequence[PendingDeletion],
    done: Expunged,
    tokens: Tokens | None,
    ssl_context: ssl.SSLContext | None,
) -> list[int]:
    source = tokens(mailbox.name) if tokens is not None else None
    finished: list[int] = []
    async with opened(mailbox, token_source=source, ssl_context=ssl_context) as session:
        for row in pending:
            if not row.target.isascii():
                done.left.append(
                    Left(mailbox.name, where(mailbox), (), row.target, "not an ASCII Message-ID")
                )
                finished.append(row.id)
                continue
            uids = await search(session, mailbox, "HEADER", "Message-ID", quoted(row.target))
            if uids and await remove(session, uids):
                done.expunged += len(uids)
            elif uids:
                done.left.append(
                    Left(
                        mailbox.name,
                        where(mailbox),
                        tuple(uids),
                        row.target,
                        "the server has no UIDPLUS: flagged \\Deleted, expunge the folder by hand",
                    )
                )
            finished.append(row.id)
    log.info("imap_erased", mailbox=mailbox.name, copies=len(finished))
    return finished


async def _attempted(sessions: SessionMaker, ids: Sequence[int], error: str) -> None:
    async with sessions() as session, session.begin():
        for row in await session.scalars(
            select(PendingDeletion).where(PendingDeletion.id.in_(list(ids)))
        ):
            row.attempts += 1
            row.last_error = error[:500]


# --- retention -----------------------------------------------------------------------------


async def held_message_ids(sessions: SessionMaker) -> set[str]:
    """The Message-IDs of mail on tickets under legal hold: the sweep keeps those."""
    async with sessions() as session:
        held = select(Ticket.id).where(~privacy.not_held())
        ids = set(
            await session.scalars(select(Message.message_id).where(Message.ticket_id.in_(held)))
        )
        ids.update(
            m
            for m in await session.scalars(
                select(RawMessage.message_id).where(RawMessage.ticket_id.in_(held))
            )
            if m
        )
    return ids


async def sweep_processed(
    sessions: SessionMaker,
    config: Config,
    now: datetime,
    *,
    tokens: Tokens | None = None,
    ssl_context: ssl.SSLContext | None = None,
    force: bool = False,
) -> Expunged | None:
    """Remove processed mail older than ``processed_mail_days`` from every mailbox.

    Once a day for the whole fleet (FORCE: now); None when it was not this one's turn or
    there is no such rule.
    """
    days = config.retention.processed_mail_days
    if days is None or not config.mailboxes:
        return None
    if not await claim_run(sessions, SWEEP, SWEEP_EVERY, now, force=force):
        return None
    before = imap_date(now - timedelta(days=days))
    keep = await held_message_ids(sessions)
    done = Expunged()
    for mailbox in config.mailboxes:
        source = tokens(mailbox.name) if tokens is not None else None
        try:
            async with opened(mailbox, token_source=source, ssl_context=ssl_context) as session:
                uids = await search(session, mailbox, "BEFORE", before)
                held: set[int] = set()
                for message_id in sorted(keep):
                    if uids and message_id.isascii():
                        held.update(
                            await search(
                                session, mailbox, "HEADER", "Message-ID", quoted(message_id)
                            )
                        )
                gone = [uid for uid in uids if uid not in held]
                if gone and await remove(session, gone):
                    done.expunged += len(gone)
                elif gone:
                    done.left.append(
                        Left(
                            mailbox.name,
                            where(mailbox),
                            tuple(gone),
                            None,
                            "the server has no UIDPLUS: flagged \\Deleted, expunge by hand",
                        )
                    )
            log.info("imap_swept", mailbox=mailbox.name, before=before, removed=len(gone))
        except Exception as exc:  # one mailbox's trouble: the others go on
            done.failed.append(f"{mailbox.name}: {_one_line(exc)}")
            log.warning("imap_sweep_failed", mailbox=mailbox.name, error=_one_line(exc))
    return done


PENDING = "imap_pending"  # privacy_state: the last round over the erasures' pending copies
PENDING_EVERY = timedelta(hours=1)


async def keep_mailboxes(
    sessions: SessionMaker,
    config: Config,
    now: datetime,
    *,
    tokens: Tokens | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """The daemon's round: the copies erasures could not remove yet (hourly), and the daily
    sweep of the processed folders; return how many mails were expunged. A failure is logged
    and tried again later: it must not stop the daemon's other duties."""
    try:
        return await _keep_mailboxes(sessions, config, now, tokens, ssl_context)
    except Exception as exc:  # the round's boundary
        log.error("imap_housekeeping_failed", error=_one_line(exc), exc_info=True)
        return 0


async def _keep_mailboxes(
    sessions: SessionMaker,
    config: Config,
    now: datetime,
    tokens: Tokens | None,
    ssl_context: ssl.SSLContext | None,
) -> int:
    expunged = 0
    async with sessions() as session:
        waiting = await session.scalar(
            select(PendingDeletion.id).where(PendingDeletion.kind == "imap").limit(1)
        )
    if waiting is not None and await claim_run(sessions, PENDING, PENDING_EVERY, now):
        done = await expunge_pending(sessions, config, tokens=tokens, ssl_context=ssl_context)
        expunged += done.expunged
        for left in done.left:
            log.warning(
                "imap_copy_left", mailbox=left.mailbox, folder=left.folder, reason=left.reason
            )
    swept = await sweep_processed(sessions, config, now, tokens=tokens, ssl_context=ssl_context)
    if swept is not None:
        expunged += swept.expunged
    return expunged
