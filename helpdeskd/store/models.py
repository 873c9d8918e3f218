"""The database schema: SQLAlchemy 2 declarative models.

Alembic migrations in ``migrations/`` build exactly these tables; a test checks that
autogenerate finds no difference on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from helpdeskd.vocab import Priority, State


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that refuses naive datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: Dialect) -> Any:
        """On SQLite, process_bind_param and the dialect's DATETIME text in one step: the
        same text (``2031-03-02 09:00:00.000000``), written by ``isoformat`` in C instead of
        a %-format of seven fields (every row an ingest writes has several timestamps)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            stamp = self.process_bind_param(value, dialect)
            return None if stamp is None else stamp.isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is UTC:  # PostgreSQL's (asyncpg's): as it is
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def columns(row: Base) -> dict[str, Any]:
    """ROW's column values by column name: the plain data the pure functions take."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # lower-cased
    name: Mapped[str | None] = mapped_column(String(200))
    # Suspended for bouncing: no notices, acknowledgements or reminders (ticket replies still go).
    undeliverable: Mapped[bool] = mapped_column(Boolean, default=False)
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)  # bounces of our mail, all time
    # Mailman's bounce score (helpdeskd.triage.bouncescore): the day of the last scored bounce and
    # what that day counted (the highest bounce of a day counts), and what the bounce said.
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    last_bounce_on: Mapped[date | None] = mapped_column(Date)
    last_bounce_weight: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    bounce_reason: Mapped[str | None] = mapped_column(Text)
    # An ARF complaint: no more automatic or optional mail to this address.
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Customer data from `customers import`; status None: a correspondent, not a customer.
    plan: Mapped[str | None] = mapped_column(String(100))
    app: Mapped[str | None] = mapped_column(String(200))
    addon_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(20), index=True)  # active | deprovisioned
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    state: Mapped[State] = mapped_column(String(16), default="new", index=True)
    # When the ticket entered its state: set on every change (see the listener below).
    state_since: Mapped[datetime | None] = mapped_column()
    priority: Mapped[Priority] = mapped_column(String(16), default="normal")
    queue: Mapped[str | None] = mapped_column(String(100))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    requester_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16), default="email")
    external_ref: Mapped[str | None] = mapped_column(String(100), index=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    solved_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()
    first_response_at: Mapped[datetime | None] = mapped_column()
    # When retention removed its bodies and attachments (helpdeskd.desk.retention).
    purged_at: Mapped[datetime | None] = mapped_column()

    requester: Mapped[Contact] = relationship(foreign_keys=[requester_id], lazy="raise")
    assignee: Mapped[Agent | None] = relationship(foreign_keys=[assignee_id], lazy="raise")


@event.listens_for(Ticket.state, "set")
def _state_changed(target: Ticket, value: str, oldvalue: object, _initiator: object) -> None:
    """Stamp state_since whenever a ticket's state changes, wherever the change is made."""
    if value != oldvalue:
        target.state_since = utcnow()


class Participant(Base):
    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("ticket_id", "contact_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # requester | cc
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RawMessage(Base):
    """Raw bytes of every mail received, keyed by where it came from."""

    __tablename__ = "raw_messages"
    __table_args__ = (UniqueConstraint("source", "uidvalidity", "uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(300))  # mailbox name, or file:PATH
    uidvalidity: Mapped[int] = mapped_column(Integer, default=0)
    uid: Mapped[int] = mapped_column(Integer)  # IMAP UID, or the position within a file
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)  # None: kept on disk (oversize)
    path: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """One mail on a ticket, inbound or outbound; Message-ID is unique."""

    __tablename__ = "messages"
    # The flood breaker counts a sender's recent mail for every message it stores.
    __table_args__ = (Index("ix_messages_from_addr_created_at", "from_addr", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))  # in | out
    kind: Mapped[str] = mapped_column(String(20))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[list[Any]] = mapped_column(JSON, default=list)
    thread_index: Mapped[str | None] = mapped_column(String(200), index=True)
    from_addr: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(200))
    to: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cc: Mapped[list[Any]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    full_text: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[Any]] = mapped_column(JSON, default=list)
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    # Of received mail: SHA-256 of its sender and content, so that a second mail under a stored
    # Message-ID is told apart from the same mail received again (NULL: stored before 0006).
    digest: Mapped[str | None] = mapped_column(String(64))
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("raw_messages.id"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    raw: Mapped[RawMessage | None] = relationship(lazy="raise")


class ThreadRef(Base):
    """A Message-ID that a ticket's mail referred to before we had seen it.

    Two replies to the same original, processed before the original itself (a Cc race), meet
    here: the first opens a ticket and records the IDs it references; the second, or the
    original arriving late, finds the ticket through them.
    """

    __tablename__ = "thread_refs"

    message_id: Mapped[str] = mapped_column(String(998), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    # The From, To and Cc of the mail that referred to it: only mail from one of them may join
    # the ticket through this ID (a Message-ID is not a secret). NULL: stored before 0006.
    addresses: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    type: Mapped[str] = mapped_column(String(50))
    actor: Mapped[str] = mapped_column(String(320))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailboxState(Base):
    __tablename__ = "mailbox_state"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(Integer)
    last_uid: Mapped[int] = mapped_column(Integer, default=0)
    last_poll_at: Mapped[datetime | None] = mapped_column()
    last_ok_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column()
    failing_since: Mapped[datetime | None] = mapped_column()
    alerted_at: Mapped[datetime | None] = mapped_column()  # agents told it is failing


TRANSACTIONAL_DUE = "coalesce(state, '') = 'pending' AND coalesce(notice_id, 0) = 0"


class Outbox(Base):
    """A fully rendered outgoing mail, written in the transaction that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_state_next_attempt_at_id", "state", "next_attempt_at", "id"),
        # The pending transactional mail only: a claim's first step walks it (outbox.ledger).
        Index(
            "ix_outbox_transactional_due",
            "next_attempt_at",
            "id",
            sqlite_where=text(TRANSACTIONAL_DUE),
            postgresql_where=text(TRANSACTIONAL_DUE),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    notice_id: Mapped[int | None] = mapped_column(ForeignKey("notices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    envelope_from: Mapped[str] = mapped_column(String(320))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending|sent|failed|expired
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()

    recipients: Mapped[list[OutboxRecipient]] = relationship(
        back_populates="outbox", lazy="selectin", order_by="OutboxRecipient.id"
    )


class OutboxRecipient(Base):
    __tablename__ = "outbox_recipients"
    __table_args__ = (UniqueConstraint("outbox_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column()

    outbox: Mapped[Outbox] = relationship(back_populates="recipients", lazy="raise")


class OutboxJournalMark(Base):
    """SQLite: the last entry of the sender's journal of results written to the database
    (helpdeskd.outbox.journal). An entry's results and this mark are written in one
    transaction, so an entry the file still holds after a crash is not written twice."""

    __tablename__ = "outbox_journal"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    applied: Mapped[int] = mapped_column(BigInteger)  # the entry's number


class OptOut(Base):
    """A contact's opt-out of one notice category (per category, idempotent)."""

    __tablename__ = "optouts"
    __table_args__ = (UniqueConstraint("contact_id", "category"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    category: Mapped[str] = mapped_column(String(50))
    via: Mapped[str] = mapped_column(String(20))  # web | one-click | mail | cli
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notice(Base):
    """One notice sent to many customers; its mails are outbox rows with its id."""

    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(String(50))
    template: Mapped[str] = mapped_column(String(200))
    audience: Mapped[str] = mapped_column(String(200))  # the --to filter, as given
    critical: Mapped[bool] = mapped_column(Boolean)
    subject: Mapped[str] = mapped_column(Text, default="")
    send_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    skipped: Mapped[int] = mapped_column(Integer, default=0)  # suppressed before queueing
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Maintenance(Base):
    __tablename__ = "maintenances"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text, default="")
    components: Mapped[list[Any]] = mapped_column(JSON, default=list)
    start: Mapped[datetime] = mapped_column()
    end: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default="scheduled")
    forced_reason: Mapped[str | None] = mapped_column(Text)
    reminded_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    impact: Mapped[str] = mapped_column(String(20))  # minor | major | critical
    components: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default="investigating")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column()
    postmortem: Mapped[str | None] = mapped_column(Text)
    postmortem_at: Mapped[datetime | None] = mapped_column()
    reminded_at: Mapped[datetime | None] = mapped_column()  # post-mortem reminder


class IncidentUpdate(Base):
    __tablename__ = "incident_updates"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quarantine(Base):
    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(primary_key=True)
    raw_id: Mapped[int] = mapped_column(ForeignKey("raw_messages.id"), index=True)
    source: Mapped[str] = mapped_column(String(300))
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    resolved_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AutoReplyLog(Base):
    """Every automatic reply sent, to cap them per sender per day."""

    __tablename__ = "autoreply_log"
    __table_args__ = (Index("ix_autoreply_log_address_sent_at", "address", "sent_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    kind: Mapped[str] = mapped_column(String(30))
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)


class OAuthToken(Base):
    """One OAuth token's state on PostgreSQL, shared by every daemon (helpdeskd.oauth).

    Keyed by the configured token_file's path, from which it was seeded. The refresh token is
    encrypted with a key derived from the service's secret key: ``KEY_ID:base64url(nonce +
    AES-GCM ciphertext)``. The access token is never stored.
    """

    __tablename__ = "oauth_tokens"

    token_file: Mapped[str] = mapped_column(String(1024), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    account: Mapped[str | None] = mapped_column(String(320))
    refresh_token: Mapped[str | None] = mapped_column(Text)
    obtained_at: Mapped[datetime | None] = mapped_column()
    last_refresh: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    refresh_expires_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ErasedAddress(Base):
    """An address erased on request, kept only as a salted hash: it is never mailed again.

    The hash and the pseudonym that replaced the address come from helpdeskd.desk.privacy.
    """

    __tablename__ = "erased_addresses"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(320))
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set while tickets under legal hold keep part of the person's data: the contact whose
    # erasure housekeeping finishes once no hold remains.
    held_contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))


class PrivacyState(Base):
    """Small named values of helpdeskd.desk.privacy: the erasure salt, retention's last runs."""

    __tablename__ = "privacy_state"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PendingDeletion(Base):
    """Something to remove outside the database once the transaction that decided it commits.

    A file (an oversize spool file), an attachment blob (by SHA-256, removed only while no
    message refers to it) or a copy of a mail in a mailbox's processed folder (by Message-ID).
    Whoever commits removes them; housekeeping finishes what a crash left.
    """

    __tablename__ = "pending_deletions"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # file | blob | imap
    target: Mapped[str] = mapped_column(Text)  # a path, a SHA-256 or a Message-ID
    mailbox: Mapped[str | None] = mapped_column(String(300))  # imap: the mailbox's name
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailboxLease(Base):
    """Which daemon polls a mailbox, until when (helpdeskd.store.leases).

    The row is keyed by the mailbox's name itself and never deleted: ``token`` grows by one with
    every acquisition, so a holder that lost the lease can never pass the check each of its
    batches makes (the fence).
    """

    __tablename__ = "mailbox_leases"

    mailbox: Mapped[str] = mapped_column(String(100), primary_key=True)
    token: Mapped[int] = mapped_column(Integer, default=1)
    holder: Mapped[str | None] = mapped_column(String(32))  # a daemons.id; None once released
    acquired_at: Mapped[datetime] = mapped_column()
    renewed_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()


class DaemonRecord(Base):
    """A running daemon, registered at its start and removed on a clean stop
    (helpdeskd.store.registry); one whose heartbeat is overdue is stale."""

    __tablename__ = "daemons"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # new at every start
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(50))
    # Who can tell whether pid still runs: the boot and PID namespace the daemon runs in.
    machine: Mapped[str] = mapped_column(String(100))
    state_dir: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()
    stale_at: Mapped[datetime] = mapped_column()  # heartbeat_at plus three heartbeats
