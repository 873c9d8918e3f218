"""Engines, sessions and the schema check.

SQLite is set up as DESIGN.md asks: WAL, ``synchronous=FULL``, foreign keys on, and SQLAlchemy's
documented aiosqlite hook that hands BEGIN to us, so every transaction is ``BEGIN IMMEDIATE``
(writers never deadlock on a lock upgrade) and SAVEPOINT works. The writers of one process
take turns as they begin (:class:`_Turn`); a reader (:func:`reading`) waits for none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from helpdeskd import __version__
from helpdeskd.config.settings import PACKAGE_DIR
from helpdeskd.errors import DatabaseUnreachable, SchemaError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = structlog.get_logger(__name__)

SessionMaker = async_sessionmaker[AsyncSession]
# The newest migration's revision, which check_schema asks of the database. Known here, the
# check needs no alembic (its import and reading the migrations take a command a third of a
# second); a test holds it to migrations/.
SCHEMA_HEAD = "0013"

# Statements the SQLite driver keeps prepared, per connection (its default is 128). Every
# length of an IN list (a batch's Message-IDs) is a statement of its own, and long ones are
# large prepared; the outbox's lists are one parameter each (store/valuelist.py). In a
# backlog of 20,000 mails the daemon's peak RSS was 243 MiB with 128 and 196 MiB with 48, at
# the same speed. With 16, the statements every batch runs were prepared again and again, and
# the backlog went a third slower.
SQLITE_STATEMENT_CACHE = 48


def async_url(url: str) -> str:
    """Return URL with the async driver helpdeskd uses for its dialect."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine for URL, with the SQLite settings applied."""
    full = async_url(url)
    if full.startswith("sqlite"):
        database = make_url(full).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 60, "cached_statements": SQLITE_STATEMENT_CACHE}
        engine = create_async_engine(full, connect_args=connect_args, **kwargs)
        _configure_sqlite(engine)
        return engine
    if make_url(full).query.get("prepared_statement_cache_size") == "0":
        # Behind a transaction pooler (PgBouncer before 1.21), a statement prepared in one
        # transaction is gone in the next (another server connection): prepare each one afresh,
        # under a name no other client's statement has.
        kwargs.setdefault("connect_args", {}).update(
            statement_cache_size=0, prepared_statement_name_func=_statement_name
        )
    return create_async_engine(full, pool_pre_ping=True, **kwargs)


def _statement_name() -> str:
    return f"__helpdeskd_{uuid.uuid4().hex}__"


def _configure_sqlite(engine: AsyncEngine) -> None:
    turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = weakref.WeakKeyDictionary()

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from issuing BEGIN itself; the "begin" hook below does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        # A writer takes the write lock at once, in its turn; a reader (READ_ONLY) reads a WAL
        # snapshot and waits for nobody, not even a batch being stored.
        if conn.get_execution_options().get(_READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        loop = asyncio.get_running_loop()
        turn = turns.get(loop)
        if turn is None:
            turn = turns[loop] = _Turn(loop)
        holder = _dbapi(conn.connection)
        turn.take(holder)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            turn.give_back(holder)
            raise

    # The turn ends with the transaction: its COMMIT or ROLLBACK (the pool's too, when a
    # connection goes back to it), or its connection's close.
    dialect = engine.sync_engine.dialect
    for name in ("do_commit", "do_rollback", "do_close", "do_terminate"):
        setattr(dialect, name, _ending(getattr(dialect, name), turns))


TURN_WAIT = 60.0  # seconds a writer waits for its turn, as long as for SQLite's lock after it


class _Turn:
    """This process's turn to write to one SQLite database, on one event loop.

    SQLite has one writer at a time, and a writer that finds the lock taken sleeps and retries
    (busy_timeout): one that commits and begins again at once, as the ingest does through a
    backlog, takes the lock back before a sleeper wakes. Left to it, the outbox's
    acknowledgements trailed a backlog by minutes, a mailbox lease's renewal lost every race
    until the lease ran out, and an unsubscribe, the heartbeat, housekeeping and the scheduler
    could each wait up to a minute. So every write transaction of the process takes its turn as
    it begins (the "begin" hook), and writers queue in arrival order (an asyncio.Lock is first
    come, first served): the sender's records are written between two batches (meanwhile its
    journal keeps them: helpdeskd.outbox.journal). Other processes (a CLI command) still wait
    as SQLite makes them. PostgreSQL locks rows, not the database: no turns there.

    A writer that waits TURN_WAIT seconds goes on without its turn, to wait for the lock as
    SQLite makes it: a transaction begun inside another one of the same task (which SQLite
    would refuse after busy_timeout anyway) fails as it did, and never hangs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)  # not kept alive by its turn (they are kept by loop)
        self.lock = asyncio.Lock()
        self.holder: object | None = None  # the DBAPI connection whose transaction has it

    def take(self, holder: object) -> None:
        """Wait for the turn (in the greenlet of SQLAlchemy's asyncio bridge) and give it to
        HOLDER's transaction. A free turn is taken at once, without a task to wait in."""
        lock = self.lock
        if lock.locked():
            try:
                await_only(asyncio.wait_for(lock.acquire(), TURN_WAIT))
            except TimeoutError:
                log.warning("sqlite_write_turn_not_taken", waited=TURN_WAIT)
                return
        else:
            await_only(lock.acquire())
        self.holder = holder

    def give_back(self, holder: object) -> None:
        """HOLDER's transaction ended: the next writer's turn. (A connection the garbage
        collector closes may end it on another thread: the loop's own thread releases it.)"""
        if self.holder is not holder:
            return
        self.holder = None
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        loop = self.loop()
        if here is not None and here is loop:
            self.lock.release()
        elif loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.lock.release)


def _dbapi(connection: Any) -> object:
    """The driver's connection: a pooled connection's, or CONNECTION itself."""
    return getattr(connection, "dbapi_connection", None) or connection


def _ending(
    step: Callable[[Any], None], turns: weakref.WeakKeyDictionary[Any, _Turn]
) -> Callable[[Any], None]:
    """STEP (a dialect's commit, rollback or close), after which the turn of the transaction
    it ends, if it had one, is given back."""

    def end(dbapi_connection: Any) -> None:
        try:
            step(dbapi_connection)
        finally:
            holder = _dbapi(dbapi_connection)
            for turn in list(turns.values()):
                turn.give_back(holder)

    return end


_READ_ONLY = "helpdeskd_read_only"
READ_ONLY: dict[str, Any] = {_READ_ONLY: True}
"""Execution options for a transaction that only reads: ``await session.connection(
execution_options=READ_ONLY)`` before its first query (or :func:`reading`). It must not write
(on SQLite a write would have to upgrade its lock); PostgreSQL ignores it."""


@contextlib.asynccontextmanager
async def reading(sessions: SessionMaker) -> AsyncIterator[AsyncSession]:
    """A session whose transaction only reads (READ_ONLY): on SQLite it reads a WAL snapshot
    and waits for no writer, so a listing, a health check or a page is never held up by a
    batch being stored or a notice being queued. Its transaction is rolled back at the end."""
    async with sessions() as session:
        await session.connection(execution_options=READ_ONLY)
        yield session


def sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: SessionMaker) -> AsyncEngine:
    """The engine SESSIONS are bound to (sessionmaker binds one)."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    return engine


# --- migrations ------------------------------------------------------------------------------


def _data_path(name: str) -> Path:
    packaged = PACKAGE_DIR / "_data" / name
    return packaged if packaged.exists() else PACKAGE_DIR.parent / name


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig(str(_data_path("alembic.ini")))
    cfg.set_main_option("script_location", str(_data_path("migrations")))
    # Percent signs in a password would be taken for interpolation by configparser.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    """The newest revision in migrations/, as alembic reads it."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision alembic's version table records, None for a database without one."""

    def read(connection: Connection) -> str | None:
        if not inspect(connection).has_table("alembic_version"):
            return None
        found = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        if len(found) > 1:
            raise SchemaError(f"database schema has several heads: {sorted(r[0] for r in found)}")
        return found[0][0] if found else None

    async with engine.connect() as conn:
        await conn.execution_options(**READ_ONLY)  # a CLI listing waits for no writer
        return await conn.run_sync(read)


def _newer(revision: str, head: str) -> bool:
    """Whether REVISION comes after HEAD (revisions are numbered: 0001, 0002, ...)."""
    return revision.isdigit() and head.isdigit() and int(revision) > int(head)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaError unless the database is at the migration head, naming what to run."""
    current = await current_revision(engine)
    head = SCHEMA_HEAD
    if current == head:
        return
    if current is not None and _newer(current, head):
        # A newer release upgraded it (a rolling upgrade): this one must not write to it.
        raise SchemaError(
            f"database schema is at revision {current}, newer than this helpdeskd "
            f"{__version__} knows (head {head}): install the release that upgraded it on this "
            "host too (docs/admin.md, 'Running several daemons')"
        )
    where = "empty" if current is None else f"at revision {current}"
    raise SchemaError(f"database schema is {where}, not at head {head}: run 'helpdeskd db upgrade'")


UPGRADE_LOCK = 0x68656C7064657364  # "helpdesd": the advisory lock key of 'helpdeskd db upgrade'
UPGRADE_WAIT = 600  # seconds a 'db upgrade' waits for another one before it gives up


def upgrade(url: str, revision: str = "head", *, waiting: Callable[[], None] | None = None) -> None:
    """Migrate URL's database to REVISION, in one transaction that first takes the upgrade lock.

    A second ``db upgrade`` meanwhile waits for the first (WAITING is called when it starts
    to), then finds nothing left to do. On PostgreSQL the lock is a transaction-level advisory
    lock (it works through PgBouncer's transaction pooling); on SQLite the transaction begins
    IMMEDIATE, which takes the database's write lock.
    """
    from alembic import command

    cfg = alembic_config(url)

    def migrate(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            lock = {"k": UPGRADE_LOCK}
            if not connection.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), lock):
                if waiting is not None:
                    waiting()
                connection.execute(text(f"SET LOCAL lock_timeout = '{UPGRADE_WAIT}s'"))
                try:
                    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), lock)
                except DBAPIError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                        raise
                    raise SchemaError(
                        f"another 'helpdeskd db upgrade' still runs after {UPGRADE_WAIT} s "
                        "of waiting for it: let it finish, then run this one again"
                    ) from None
                connection.execute(text("SET LOCAL lock_timeout = 0"))
        else:
            connection.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock, now
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async def main() -> None:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(migrate)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


# --- opening the database for a command ------------------------------------------------------


def _missing_folder(url: str) -> Path | None:
    """Return the folder of a SQLite URL's file when that folder does not exist, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    folder = Path(str(parsed.database)).parent
    return None if folder.is_dir() else folder


def _unreachable(exc: Exception) -> DatabaseUnreachable:
    """Return DatabaseUnreachable with the first line the driver gave about EXC."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return DatabaseUnreachable(
        f"cannot reach the database: {lines[0] if lines else type(cause).__name__}"
    )


def _refuse_missing_folder(url: str) -> None:
    # create_engine would make the folder, and SQLite an empty database in it: for a command,
    # a missing folder is a typo in the URL, not a request for a new database.
    folder = _missing_folder(url)
    if folder is not None:
        raise DatabaseUnreachable(f"cannot reach the database: the folder {folder} does not exist")


async def ensure_reachable(url: str) -> None:
    """Raise DatabaseUnreachable unless URL's database accepts a connection now."""
    _refuse_missing_folder(url)
    engine = create_engine(url)
    try:
        async with engine.connect():
            pass
    except (OSError, DBAPIError) as exc:
        raise _unreachable(exc) from None
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def open_database(url: str) -> AsyncIterator[SessionMaker]:
    """Yield sessions on URL's database once it answers and is at the migration head.

    Raise DatabaseUnreachable or SchemaError before that, each one line a person can act on;
    the engine is disposed of at the end.
    """
    _refuse_missing_folder(url)
    engine = create_engine(url)
    try:
        try:
            await check_schema(engine)
        except (OSError, DBAPIError) as exc:
            raise _unreachable(exc) from None
        yield sessionmaker(engine)
    finally:
        await engine.dispose()
