"""Notice benchmark: queueing a notice to many customers, and sending it through the outbox.

    .venv/bin/python -m tests.bench.notices [--recipients 10000] [--send 2000] [--rounds 1]
        [--pg postgresql://postgres@127.0.0.1:5432/test]

Not a test: pytest never collects it (it is not named ``test_*.py``) and nothing here asserts
a speed; it prints figures. One run, one fresh SQLite database (WAL, ``synchronous=FULL``, set by
``helpdeskd.store.db.create_engine``) in a temporary directory, or with ``--pg URL`` a fresh
PostgreSQL database made on URL's server (copies made with ``CREATE DATABASE ... TEMPLATE``), one
aiosmtpd ``SmtpSink``; all are removed, dropped or stopped at the end, on error and on Ctrl-C (or
SIGTERM) alike.

Phases:

1. setup (in a child process, so that its memory does not count in phase 2's peak RSS):
   ``helpdeskd.store.db.upgrade``, then N customers from a generated CSV through
   ``helpdeskd.desk.customers.import_csv`` in one transaction, as ``helpdeskd customers import``;
   when N > 10,000, a second database with the first 10,000 of them the same way.
2. queue: the optional category ``feature_update`` with the shipped template
   ``feature_update`` to every customer (``Audience()``: all), at 10,000 customers (when N is
   more) and then at N, each of two ways: ``queue_notice`` in one transaction (as incidents and
   maintenance notices are queued) and ``send_notice`` (``helpdeskd notice send``: on SQLite
   rendered into a spool on disk under a read-only transaction, then inserted in one
   transaction; on PostgreSQL as ``queue_notice``, in a transaction of its own). Each
   run is a fresh child process (``spawn``) on a fresh copy of its database, so that each peak
   RSS is its own; the last one, ``notice send`` to all N, runs on the database the send phases
   use. Per run: wall time (and each step's, as its progress reports them), recipients/s, CPU,
   the child's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) before and after and the
   growth per recipient, the SQL statements and COMMITs.
3. raw arm: the first M rendered mails (the ``data`` column of their outbox rows) sent over C
   ``aiosmtplib.SMTP`` connections at once (C = ``--connections``, default ``[smtp]
   connections``, 4), each a loop of ``sendmail`` over every C-th mail; timed from the connects
   to the last QUIT.
4. helpdeskd arm: ``OutboxSender(sessions, smtp, recheck=notices.recheck).drain()`` delivering
   those M rows as the daemon does (batch claims, C connections, results recorded in batches),
   flat out like the raw loops: ``[smtp.rates]`` and ``[smtp.domain_rates]`` lifted (a notice's
   rows are all due at its start; those rates alone pace it). The rows after the first M
   stay in the table (a large queue) but are moved a day ahead, so that ``drain()`` stops after
   M; on PostgreSQL the dead row versions that move leaves are vacuumed before the arms run,
   as autovacuum would have. Send rate, CPU ms/mail and SQL statements/mail (the raw loops run
   none); on PostgreSQL also the server's side (:class:`PgCost`): its backends' CPU per mail,
   and with ``pg_stat_statements`` the executor's time and WAL per mail, and by statement.
5. raw arm again; the raw figure used for the ratio is the mean of the two runs. With
   ``--rounds R``, phases 4 and 5 run R times, the same M rows made due and untried again (and
   on PostgreSQL vacuumed) before each sender's arm: a ratio per round, each against the raw
   runs either side of it, and their median. The first round's sender starts on fresh
   database connections; later ones on the warm connections of a daemon that has been running.
6. incident: the first ``--incident`` rows of the notice (default 10,000; 0 skips it) made due
   again at once and their notice an ``incident`` (critical), sent at the default rates
   (``[smtp.rates] critical``, ``[smtp.domain_rates] default``): the time to hand them all to
   the relay.

The sink runs in its own process (``--inproc-sink`` puts it in a thread of this one, as the
tests do), so its work does not compete with the sender for this process's GIL. Each send arm
also says how busy the sink was (its process's CPU time over the arm's wall time): a raw loop
that keeps the sink busy all the time runs at the sink's own speed, and a sender that leaves it
waiting shows it there. A line under each arm says what share of the arm the sink's threads,
and this process's, spent ready to run but waiting for a CPU (``/proc/PID/task/*/schedstat``):
on a machine of two cores the sink, the sender and the database server take turns, and the
sink can wait for a core as well as for commands. On PostgreSQL the server's CPU is also given
as a share of one core over the arm. helpdeskd logs as the daemon does
(``helpdeskd.daemon.logs.configure``: JSON lines, INFO) but to ``/dev/null``.
``CPU ms/mail`` is this process's CPU time (all its threads, aiosqlite's included) over the
arm, which does not depend on how busy the (possibly shared) machine is; ``machine busy`` says
how busy all cores were meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy import event, func, select, text, update

from tests.bench.databases import Databases
from tests.bench.procstat import busy_since, cpu_seconds, machine_ticks, waited_seconds

SERVICE_NAME = "Acme Postgres add-on"
DAY = timedelta(days=1)
ROOT = Path(__file__).resolve().parents[2]


class BenchError(RuntimeError):
    """The benchmark could not run as intended (wrong counts, a server that failed)."""


def say(line: str = "") -> None:
    print(line, flush=True)


# --- process and machine accounting -----------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Span:
    """Wall and CPU time of one measured stretch, how busy the machine was, and how long this
    process's threads waited for a CPU meanwhile (None: not known here)."""

    wall: float = 0.0
    cpu: float = 0.0
    busy: float = 0.0
    waited: float | None = None


@contextmanager
def measure() -> Iterator[Span]:
    span = Span()
    ticks = machine_ticks()
    waited = waited_seconds(os.getpid())
    cpu = time.process_time()
    start = time.perf_counter()
    try:
        yield span
    finally:
        span.wall = time.perf_counter() - start
        span.cpu = time.process_time() - cpu
        span.busy = busy_since(ticks)
        span.waited = since(waited, waited_seconds(os.getpid()))


def since(before: float | None, after: float | None) -> float | None:
    """AFTER - BEFORE, two readings of a counter; None when either is. Never below 0 (a
    thread that ended meanwhile takes its count with it)."""
    if before is None or after is None:
        return None
    return max(0.0, after - before)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem PATH is on (fsync costs nothing on tmpfs)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


# --- the SMTP sink ----------------------------------------------------------------------------


def _sink_main(conn: Connection) -> None:
    """Child process: run an SmtpSink and answer "count" until told "stop"."""
    from tests.servers.smtp import SmtpSink

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it, Ctrl-C or not

    sink = SmtpSink(keep=False)
    sink.start()
    try:
        conn.send((sink.host, sink.port))
        while True:
            command = conn.recv()
            if command == "count":
                conn.send(sink.received)
            else:
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        sink.stop()


class Sink:
    """An SmtpSink in a child process (default) or in a thread of this process, that counts
    the mails it accepts and keeps none: one that kept them all would grow by hundreds of MiB
    over the arms and slow down as it grew (its garbage collector walks what it holds), so
    that each arm would meet a slower relay than the one before."""

    def __init__(self, *, inproc: bool) -> None:
        self._local: Any = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        if inproc:
            from tests.servers.smtp import SmtpSink

            self._local = SmtpSink(keep=False)
            self._local.start()
            self.host, self.port = self._local.host, self._local.port
            return
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_sink_main, args=(child,), daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(30):
            raise BenchError("the SMTP sink did not start within 30 s")
        self.host, self.port = self._conn.recv()

    def _pid(self) -> int | None:
        """The sink's process; None when it runs in this one."""
        return None if self._process is None else self._process.pid

    def cpu(self) -> float | None:
        """The CPU seconds the sink's process has used so far; None when it runs in this one."""
        pid = self._pid()
        return None if pid is None else cpu_seconds(pid)

    def waited(self) -> float | None:
        """The seconds the sink's threads have waited for a CPU so far (waited_seconds); None
        when it runs in this process."""
        pid = self._pid()
        return None if pid is None else waited_seconds(pid)

    def reading(self) -> tuple[float | None, float | None]:
        """Its counters now, for use(): CPU seconds, seconds waited for a CPU."""
        return self.cpu(), self.waited()

    def use(self, before: tuple[float | None, float | None], span: Span) -> SinkUse:
        """What the sink did over SPAN, from a reading() BEFORE it."""
        cpu, waited = since(before[0], self.cpu()), since(before[1], self.waited())
        if cpu is None or span.wall <= 0:
            return SinkUse(None, waited)
        return SinkUse(cpu / span.wall, waited)

    def count(self) -> int:
        if self._local is not None:
            return self._local.received
        assert self._conn is not None
        self._conn.send("count")
        return int(self._conn.recv())

    def close(self) -> None:
        if self._local is not None:
            self._local.stop()
            self._local = None
        if self._process is not None:
            try:
                assert self._conn is not None
                self._conn.send("stop")
            except (OSError, ValueError):
                pass
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None


@dataclass
class SinkUse:
    """The sink over one arm (None: not measured, as when it runs in this process): its CPU
    time over the arm's wall time, and the seconds its threads spent ready to run but waiting
    for a CPU. A raw loop keeps the sink busy nearly all the time, and it runs at the sink's
    speed; where the sink is less busy, it waited either for commands or for a core (the
    database server, the sender and the sink taking turns on a small machine)."""

    busy: float | None
    waited: float | None


# --- setup: config, database, customers -------------------------------------------------------


def write_config(workdir: Path, url: str, host: str, port: int) -> Path:
    secret = workdir / "secret.key"
    secret.write_text("k1 bench-secret-key-0123456789abcdef\n")
    secret.chmod(0o600)
    lines = [
        "[service]",
        f'name = "{SERVICE_NAME}"',
        'support_address = "support@acme.test"',
        'public_url = "https://support.acme.test"',
        'ticket_prefix = "HD"',
        f'secret_key_file = "{secret}"',
        f'state_dir = "{workdir / "state"}"',
        "",
        "[database]",
        f'url = "{url}"',
        "",
        "[smtp]",
        f'host = "{host}"',
        f"port = {port}",
        'security = "none"',
        "timeout = 30",
        "",
        "[[agent]]",
        'email = "alice@acme.test"',
        'name = "Alice"',
        "",
        "[notices]",
        'postal_address = "Acme Inc., 1 Main St, Springfield"',
        "",
    ]
    path = workdir / "helpdeskd.toml"
    path.write_text("\n".join(lines))
    return path


def write_customers(path: Path, count: int) -> None:
    plans = ("basic", "standard", "premium", "enterprise")
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,plan,app,addon_id,status\n")
        for i in range(count):
            out.write(
                f"customer{i:06d}@customer{i % 97:02d}.example,Customer {i:06d},"
                f"{plans[i % len(plans)]},app-{i:06d},addon-{i:06d},active\n"
            )


def _setup_main(url: str, csv_path: str, conn: Connection) -> None:
    """Child process: migrate the database and import the customers, as the CLI does."""
    from helpdeskd.desk.customers import import_csv
    from helpdeskd.store.db import create_engine, sessionmaker, upgrade

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent kills it on Ctrl-C

    start = time.perf_counter()
    upgrade(url)
    migrated = time.perf_counter() - start

    async def load() -> tuple[int, int]:
        engine = create_engine(url)
        try:
            async with sessionmaker(engine)() as session, session.begin():
                report = await import_csv(session, Path(csv_path))
            return report.created, report.updated
        finally:
            await engine.dispose()

    start = time.perf_counter()
    created, updated = asyncio.run(load())
    conn.send((migrated, created, updated, time.perf_counter() - start, peak_rss_mb()))


def setup_database(url: str, csv_path: Path) -> tuple[float, int, int, float, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_setup_main, args=(url, str(csv_path), child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(1800):
            raise BenchError("the database setup took longer than 30 minutes")
        result: tuple[float, int, int, float, float] = parent.recv()
        process.join(10)
    except EOFError:
        raise BenchError(f"the database setup failed (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    return result


# --- the queue phase: each measurement in a child process of its own --------------------------

QUEUE_WAYS = {
    "notice send": "send_notice: on SQLite rendered into a spool under a read-only "
    "transaction, then inserted in one transaction; on PostgreSQL as queue_notice",
    "queue_notice": "queue_notice in one transaction (as incidents and maintenance do)",
}
FIRST_SIZE = 10_000  # the first measurement; then the full --recipients


@dataclass
class QueueRun:
    """One queue measurement, as the child reports it."""

    way: str
    report: dict[str, Any]  # NoticeReport's fields
    wall: float
    cpu: float
    busy: float
    phases: dict[str, float]  # progress label ("rendering", "queueing") -> seconds
    rss_before: float  # peak RSS before queueing (imports, engine, a first connection)
    rss_now: float  # current RSS then
    rss_after: float  # peak RSS after the commit
    statements: int
    commits: int
    renderers_cpu: float  # CPU seconds of the processes that rendered it (a large notice)
    renderers_rss: float  # the largest peak RSS among them, MiB (0: none ran)


def _children(*, reaped: bool = False) -> tuple[float, float]:
    """CPU seconds of this process's children that ended so far, and the largest peak RSS among
    them (MiB); REAPED: once every child has ended (the renderer processes are not waited for
    when a notice is queued, and count only once reaped)."""
    while reaped and multiprocessing.active_children():
        time.sleep(0.01)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def queue_child(config_path: str, url: str, way: str) -> None:
    """Child process: queue the notice one WAY, as ``notice send`` does, and print its QueueRun
    as JSON."""
    import dataclasses

    from helpdeskd.config.load import load_config
    from helpdeskd.daemon.logs import configure
    from helpdeskd.desk.noticequeue import queue_notice, send_notice
    from helpdeskd.desk.notices import Audience
    from helpdeskd.mail.render import Renderer
    from helpdeskd.store.db import create_engine, sessionmaker
    from helpdeskd.store.models import utcnow

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent kills it on Ctrl-C
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the process ends after this
    configure(json=True, level="INFO", stream=devnull)
    config = load_config(Path(config_path))
    config = dataclasses.replace(config, database=dataclasses.replace(config.database, url=url))
    phases: dict[str, float] = {}

    @contextmanager
    def timed(label: str, _total: int | None) -> Iterator[Any]:
        start = time.perf_counter()
        try:
            yield lambda _n: None
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - start

    async def run() -> QueueRun:
        engine = create_engine(url)
        counter = StatementCounter(engine)
        sessions = sessionmaker(engine)
        renderer = Renderer(config.paths.templates)
        extra = {"message": "Connection pooling is here."}
        try:
            async with engine.connect() as warm:
                await warm.exec_driver_sql("SELECT 1")
            rss_before, rss_now = peak_rss_mb(), current_rss_mb()
            statements0 = counter.reading()
            children0 = _children()
            with measure() as span:
                if way == "notice send":
                    report = await send_notice(
                        sessions,
                        config,
                        renderer,
                        category="feature_update",
                        template="feature_update",
                        audience=Audience(),
                        extra=extra,
                        progress=timed,
                    )
                else:
                    async with sessions() as session, session.begin():
                        report = await queue_notice(
                            session,
                            config,
                            renderer,
                            category="feature_update",
                            template="feature_update",
                            audience=Audience(),
                            now=utcnow(),
                            extra=extra,
                            progress=timed,
                        )
            statements = counter.reading()
            children = await asyncio.to_thread(_children, reaped=True)
            return QueueRun(
                way,
                dataclasses.asdict(report),
                span.wall,
                span.cpu,
                span.busy,
                phases,
                rss_before,
                rss_now,
                peak_rss_mb(),
                statements[0] - statements0[0],
                statements[1] - statements0[1],
                children[0] - children0[0],
                children[1] if children[1] > children0[1] else 0.0,
            )
        finally:
            await engine.dispose()

    print(json.dumps(dataclasses.asdict(asyncio.run(run()))))


def queue_in_child(config_path: Path, url: str, way: str) -> QueueRun:
    """Run queue_child in a ``python -c`` process, as the command line runs: the processes that
    render a large notice then import the notice's modules only (spawn imports the parent's
    main module again in each, and that would be this bench with all its imports)."""
    code = "import sys; from tests.bench.notices import queue_child; queue_child(*sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(config_path), url, way],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=3600)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{way}: queueing took longer than an hour") from None
    finally:
        if process.poll() is None:  # its renderers die with it
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"{way}: the queue child failed (exit code {process.returncode})")
    return QueueRun(**json.loads(out.splitlines()[-1]))  # its last line


def queue_line(run: QueueRun) -> str:
    queued = run.report["queued"]
    phases = ", ".join(f"{label} {seconds:.2f} s" for label, seconds in run.phases.items())
    renderers = (
        f" + {run.renderers_cpu:.2f} s in the renderer processes, each at most "
        f"{run.renderers_rss:.1f} MiB peak RSS"
        if run.renderers_rss
        else ""
    )
    return (
        f"  {run.way:<13} {queued:>7} {run.wall:7.2f} s = {rate(queued, run.wall):7.0f} "
        f"recipients/s ({phases}; CPU {run.cpu:.2f} s{renderers}, machine "
        f"{100 * run.busy:.0f}% busy)\n"
        f"  {'':<13} {'':>7} peak RSS +{run.rss_after - run.rss_before:.1f} MiB "
        f"({run.rss_before:.1f} MiB peak, {run.rss_now:.1f} MiB current before; "
        f"{run.rss_after:.1f} MiB after), "
        f"{1024 * (run.rss_after - run.rss_before) / max(1, queued):.2f} KiB/recipient; "
        f"{run.statements} SQL statements, {run.commits} COMMIT"
    )


def queue_phase(
    args: argparse.Namespace,
    config_path: Path,
    databases: Databases,
    url: str,
    small_url: str | None,
) -> Any:
    """Queue the notice at FIRST_SIZE (on SMALL_URL's database) and at --recipients, each way
    in a fresh child process on a fresh copy of the database; the last, ``notice send`` to
    every customer, on URL's database itself, which the send phase then uses. Return its
    NoticeReport."""
    from helpdeskd.desk.notices import NoticeReport

    sizes = [(FIRST_SIZE, small_url)] if small_url is not None else []
    sizes.append((args.recipients, url))
    say()
    say("queue: feature_update (optional, shipped template) to every customer, each run in a")
    say("fresh child process (peak RSS its own) on a fresh copy of the database:")
    for way, what in QUEUE_WAYS.items():
        say(f"  {way}: {what}")
    report: Any = None
    for count, source in sizes:
        say(f"  -- {count} customers")
        for way in ("queue_notice", "notice send"):
            last = source == url and way == "notice send"
            target = source if last else databases.copy(source, f"copy-{count}-{way[:5]}")
            try:
                run = queue_in_child(config_path, target, way)
            finally:
                if not last:
                    databases.remove(target)
            if run.report["queued"] != count or run.report["notice_id"] is None:
                raise BenchError(f"{way}: queued {run.report} of {count}")
            say(queue_line(run))
            if last:
                report = NoticeReport(**run.report)
    return report


# --- the raw arm ------------------------------------------------------------------------------


async def raw_send(
    host: str, port: int, mails: list[tuple[str, str, bytes]], connections: int
) -> Span:
    """Send MAILS over CONNECTIONS aiosmtplib connections at once, each a loop of sendmail
    over its share of them (every CONNECTIONS-th mail); timed from connect to the last QUIT."""

    async def loop(share: list[tuple[str, str, bytes]]) -> None:
        client = aiosmtplib.SMTP(
            hostname=host, port=port, timeout=30, use_tls=False, start_tls=False
        )
        await client.connect()
        try:
            for sender, recipient, data in share:
                await client.sendmail(sender, [recipient], data)
        finally:
            await client.quit()

    with measure() as span:
        await asyncio.gather(*(loop(mails[i::connections]) for i in range(connections)))
    return span


async def send_phase(
    args: argparse.Namespace,
    config: Any,
    sessions: Any,
    counter: StatementCounter,
    sink: Sink,
    notice_id: int | None,
    queued: int,
) -> None:
    """Phases 3 to 6: the raw loops, the sender, the raw loops again (the first M rows of the
    notice); then the whole notice as an incident at the default rates."""
    from helpdeskd.config.settings import SendRates, SmtpConfig
    from helpdeskd.store.db import engine_of
    from helpdeskd.store.models import Notice, Outbox, OutboxRecipient, utcnow

    assert config.smtp is not None and notice_id is not None
    # The queue phase's children wrote the database while this process held a pooled
    # connection opened before; SQLite may have removed the WAL behind it: start afresh.
    await engine_of(sessions).dispose()
    # --- keep only the first M rows due ------------------------------------------------------
    send = min(args.send, queued)
    async with sessions() as session, session.begin():
        # The first M rows as a subquery, not a list of ids: PostgreSQL takes at most 32,767
        # parameters in a statement.
        first = (
            select(Outbox.id)
            .where(Outbox.notice_id == notice_id)
            .order_by(Outbox.next_attempt_at, Outbox.id)
            .limit(send)
            .scalar_subquery()
        )
        await session.execute(
            update(Outbox)
            .where(Outbox.notice_id == notice_id, Outbox.id.not_in(first))
            .values(next_attempt_at=utcnow() + DAY)
        )
        await session.execute(
            update(Outbox).where(Outbox.id.in_(first)).values(next_attempt_at=utcnow())
        )
        rows = (
            await session.execute(
                select(Outbox.id, Outbox.envelope_from, OutboxRecipient.address, Outbox.data)
                .join(OutboxRecipient, OutboxRecipient.outbox_id == Outbox.id)
                .where(Outbox.notice_id == notice_id, Outbox.next_attempt_at <= utcnow())
                .order_by(Outbox.next_attempt_at, Outbox.id)
            )
        ).all()
    ids = [int(row_id) for row_id, _, _, _ in rows]
    mails = [(str(s), str(a), bytes(d)) for _, s, a, d in rows]
    if len(mails) != send:
        raise BenchError(f"expected {send} rendered mails, read {len(mails)}")
    # Moving the rows after the first M left as many dead row versions, ahead of the due ones
    # in the claim's index: vacuumed now, as autovacuum would have, so that the sender is
    # measured and not this benchmark's own setup.
    await _vacuum(sessions)

    connections = args.connections or config.smtp.connections
    # Flat out, as the raw loops: no rate (the rates' own phase is the incident's, below).
    flat = replace(
        config.smtp,
        connections=connections,
        rates=SendRates(critical=None, optional=None, transactional=None),
        domain_rates=(),
        domain_rate=None,
    )
    say()
    say(
        f"send: the first {send} of the {queued} queued mails to an aiosmtpd sink "
        f"({'in this process' if args.inproc_sink else 'in its own process'}), "
        f"no DKIM, no TLS, {connections} SMTP connections in both arms, no rate limits"
    )

    async def raw(label: str) -> Span:
        before, sink_before = sink.count(), sink.reading()
        span = await raw_send(config.smtp.host, config.smtp.port, mails, connections)
        sink_use = sink.use(sink_before, span)
        got = sink.count() - before
        if got != send:
            raise BenchError(f"{label}: the sink got {got} mails, not {send}")
        say(arm_line(label, send, span, sink_use) + ", 0 SQL statements/mail")
        if line := wait_line(span, sink_use):
            say(line)
        return span

    pg = await PgCost.of(engine_of(sessions))
    pg_used: list[PgUse] = []

    async def desk(label: str) -> Span:
        run = await _drain(sessions, flat, sink, counter, pg, args, notice_id)
        if run.got != send or run.states.get("sent") != send:
            raise BenchError(
                f"{label}: the sink got {run.got} mails, outbox states {run.states}, expected "
                f"{send} sent (raise --drain-limit, now {args.drain_limit:g} s?)"
            )
        say(
            arm_line(label, send, run.span, run.sink)
            + f", {run.statements / send:.2f} SQL statements/mail"
        )
        say(
            f"  {'':<22} {run.statements} SQL statements and {run.commits} COMMITs in all; "
            f"{run.connections} SMTP connections opened"
        )
        if run.pg is not None:
            say(pg_line(run.pg, send, run.span))
            pg_used.append(run.pg)
        if line := wait_line(run.span, run.sink):
            say(line)
        return run.span

    raws = [await raw("raw aiosmtplib (1)")]
    desks: list[Span] = []
    for n in range(1, args.rounds + 1):
        if n > 1:  # the same mails again: due and untried, as before the first round
            async with sessions() as session, session.begin():
                await _make_due(session, ids, utcnow())
            await _vacuum(sessions)
        desks.append(await desk("helpdeskd OutboxSender" + (f" ({n})" if args.rounds > 1 else "")))
        raws.append(await raw(f"raw aiosmtplib ({n + 1})"))

    say()
    ratios = []
    for n, span in enumerate(desks):
        raw_rate = (rate(send, raws[n].wall) + rate(send, raws[n + 1].wall)) / 2
        raw_cpu = (raws[n].cpu + raws[n + 1].cpu) / 2
        ratios.append(rate(send, span.wall) / raw_rate)
        which = f"round {n + 1}: raw = mean of runs {n + 1} and {n + 2}"
        say(
            f"ratio helpdeskd/raw at {connections} connections: "
            f"{ratios[-1]:.3f} by rate "
            f"({rate(send, span.wall):.1f} / {raw_rate:.1f} mails/s, "
            + (which if args.rounds > 1 else "raw = mean of both runs")
            + f"); CPU per mail {span.cpu / max(raw_cpu, 1e-9):.2f}x the raw loop's "
            f"({1000 * span.cpu / send:.2f} / {1000 * raw_cpu / send:.2f} ms)"
        )
    if args.rounds > 1:
        say(
            f"ratio over {args.rounds} rounds: median {statistics.median(ratios):.3f}, "
            f"{min(ratios):.3f} to {max(ratios):.3f}"
        )
    if pg_used and pg_used[0].statements:
        total = pg_used[0]
        for use in pg_used[1:]:
            total = total.add(use)
        say(f"PostgreSQL's executor over the sender's {len(pg_used)} arm(s), by statement:")
        for line in pg_statements(total, send * len(pg_used)):
            say(line)

    # --- the whole notice as an incident, at the default rates --------------------------------
    count = min(args.incident, queued)
    if not count:
        return
    async with sessions() as session, session.begin():
        chosen = list(
            await session.scalars(
                select(Outbox.id)
                .where(Outbox.notice_id == notice_id)
                .order_by(Outbox.id)
                .limit(count)
            )
        )
        now = utcnow()
        await session.execute(
            update(Outbox).where(Outbox.notice_id == notice_id).values(next_attempt_at=now + DAY)
        )
        await _make_due(session, chosen, now)
        await session.execute(
            update(Notice).where(Notice.id == notice_id).values(category="incident", critical=True)
        )
    defaults = SendRates()
    smtp = replace(config.smtp, connections=connections)  # the default rates
    say()
    say(
        f"incident: {count} recipients over 97 domains, all due at once, at the default rates "
        f"([smtp.rates] critical = {defaults.critical:g}/s, [smtp.domain_rates] default = "
        f"{SmtpConfig.domain_rate:g}/s)"
    )
    run = await _drain(sessions, smtp, sink, counter, pg, args, notice_id)
    span = run.span
    # Both phases took the notice's first rows by id: sent now, those of the larger.
    if run.got != count or run.states.get("sent") != max(count, send):
        raise BenchError(f"incident: the sink got {run.got} mails, outbox states {run.states}")
    say(
        f"  handed to the relay in {span.wall:.1f} s = {rate(count, span.wall):.1f} mails/s "
        f"(the rate allows {count / (defaults.critical or 1):.1f} s); CPU "
        f"{1000 * span.cpu / count:.2f} ms/mail, {run.statements / count:.2f} SQL "
        f"statements/mail, machine {100 * span.busy:.0f}% busy"
    )
    if run.pg is not None:
        say(pg_line(run.pg, count, span))


@dataclass
class Drained:
    """One drain of the outbox: its span, the mails the sink got, the notice's rows by state,
    the SQL statements and COMMITs run, the SMTP connections opened, and what PostgreSQL spent
    (None on SQLite)."""

    span: Span
    sink: SinkUse
    got: int
    states: dict[str, int]
    statements: int
    commits: int
    connections: int
    pg: PgUse | None


async def _drain(
    sessions: Any,
    smtp: Any,
    sink: Sink,
    counter: StatementCounter,
    pg: PgCost | None,
    args: argparse.Namespace,
    notice_id: int,
) -> Drained:
    """Send what is due with an OutboxSender over SMTP (its rates and connections), as the
    daemon does (notices' opt-outs looked up again; on SQLite its records through the
    journal), until nothing is left or ``--drain-limit`` seconds."""
    from helpdeskd.desk import notices
    from helpdeskd.outbox.journal import FILENAME
    from helpdeskd.outbox.sender import OutboxSender

    journal = Path(args.workdir) / FILENAME
    sender = OutboxSender(sessions, smtp, recheck=notices.recheck, journal=journal)
    pg_before = None if pg is None else await pg.reading()
    before_count, before_sql = sink.count(), counter.reading()
    sink_before = sink.reading()
    with measure() as span:
        await sender.drain(limit=args.drain_limit)
    sink_use = sink.use(sink_before, span)
    await sender.close()
    got = sink.count() - before_count
    sql = counter.reading()
    pg_use = None if pg is None or pg_before is None else pg.spent(pg_before, await pg.reading())
    states = await _states(sessions, notice_id)
    return Drained(
        span,
        sink_use,
        got,
        states,
        sql[0] - before_sql[0],
        sql[1] - before_sql[1],
        sender.connections_opened,
        pg_use,
    )


async def _make_due(session: Any, ids: list[int], now: Any) -> None:
    """Make the rows IDS due at NOW and untried, and their recipients pending, in SESSION's
    transaction (in parts: PostgreSQL takes at most 32,767 parameters in a statement)."""
    from helpdeskd.store.models import Outbox, OutboxRecipient

    for start in range(0, len(ids), 5000):
        part = ids[start : start + 5000]
        await session.execute(
            update(Outbox)
            .where(Outbox.id.in_(part))
            .values(state="pending", attempts=0, next_attempt_at=now, sent_at=None)
        )
        await session.execute(
            update(OutboxRecipient)
            .where(OutboxRecipient.outbox_id.in_(part))
            .values(state="pending", attempts=0, sent_at=None)
        )


async def _vacuum(sessions: Any) -> None:
    """PostgreSQL: vacuum and analyze the outbox's tables (the dead row versions a bulk update
    of the benchmark's own leaves behind); nothing on SQLite."""
    from helpdeskd.store.db import engine_of

    engine = engine_of(sessions)
    if engine.dialect.name != "postgresql":
        return
    async with engine.connect() as connection:
        auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("VACUUM ANALYZE outbox, outbox_recipients")


async def _states(sessions: Any, notice_id: int) -> dict[str, int]:
    from helpdeskd.store.models import Outbox

    async with sessions() as session:
        found = await session.execute(
            select(Outbox.state, func.count(Outbox.id))
            .where(Outbox.notice_id == notice_id)
            .group_by(Outbox.state)
        )
        return {str(state): int(n) for state, n in found}


# --- the benchmark ----------------------------------------------------------------------------


class StatementCounter:
    """Count the SQL statements and COMMITs an engine runs."""

    def __init__(self, engine: Any) -> None:
        self.statements = 0
        self.commits = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)
        event.listen(engine.sync_engine, "commit", self._commit)

    def _statement(self, *_args: Any) -> None:
        self.statements += 1

    def _commit(self, *_args: Any) -> None:
        self.commits += 1

    def reading(self) -> tuple[int, int]:
        return self.statements, self.commits


# A reading of PostgreSQL's counters: each backend's CPU seconds so far (None: not readable
# here), and by statement its calls, executor milliseconds and WAL bytes so far.
PgReading = tuple[dict[int, float] | None, dict[str, tuple[int, float, int]]]


@dataclass
class PgUse:
    """What PostgreSQL spent over a stretch: its backends' CPU seconds (None: the server's
    processes cannot be read here), and per statement (with ``pg_stat_statements``) the calls,
    the executor's milliseconds and the WAL bytes written."""

    cpu: float | None
    statements: dict[str, tuple[int, float, int]]

    def add(self, other: PgUse) -> PgUse:
        statements = dict(self.statements)
        for query, (calls, ms, wal) in other.statements.items():
            was = statements.get(query, (0, 0.0, 0))
            statements[query] = (was[0] + calls, was[1] + ms, was[2] + wal)
        cpu = None if self.cpu is None or other.cpu is None else self.cpu + other.cpu
        return PgUse(cpu, statements)


class PgCost:
    """PostgreSQL's side of the sender's work, which the sender's own CPU figure leaves out.

    - The CPU of the server's backends for this database, read from ``/proc`` (the server runs
      on this machine, as in these benchmarks; else not reported).
    - Per statement, the executor's time and the WAL written, when the server has the
      ``pg_stat_statements`` library loaded (``shared_preload_libraries``): the extension is
      then made in the benchmark's own database, which is dropped at the end.
    """

    def __init__(self, engine: Any, statements: bool) -> None:
        self.engine = engine
        self.statements = statements

    @classmethod
    async def of(cls, engine: Any) -> PgCost | None:
        """None on SQLite."""
        if engine.dialect.name != "postgresql":
            return None
        async with engine.connect() as connection:
            auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
            loaded = await auto.scalar(select(func.current_setting("shared_preload_libraries")))
            statements = "pg_stat_statements" in str(loaded)
            if statements:
                await auto.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return cls(engine, statements)

    async def reading(self) -> PgReading:
        """The counters now: the backends of this database, and its statements."""
        async with self.engine.connect() as connection:
            pids = list(
                await connection.scalars(
                    select(text("pid"))
                    .select_from(text("pg_stat_activity"))
                    .where(text("datname = current_database()"))
                )
            )
            found: dict[str, tuple[int, float, int]] = {}
            if self.statements:
                rows = await connection.exec_driver_sql(
                    "SELECT query, calls, total_exec_time, wal_bytes FROM pg_stat_statements "
                    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
                for query, calls, ms, wal in rows:
                    if "pg_stat_statements" in query:  # this reading's own
                        continue
                    was = found.get(query, (0, 0.0, 0))
                    found[query] = (was[0] + calls, was[1] + ms, was[2] + int(wal))
        cpu: dict[int, float] = {}
        for pid in pids:
            used = cpu_seconds(int(pid))
            if used is None:  # the server runs elsewhere (or in another PID namespace)
                return None, found
            cpu[int(pid)] = used
        return cpu, found

    @staticmethod
    def spent(before: PgReading, after: PgReading) -> PgUse:
        """What was spent from BEFORE to AFTER, two readings. A backend that started meanwhile
        counts from nothing; one that ended meanwhile is not counted."""
        cpu = None
        if before[0] is not None and after[0] is not None:
            cpu = sum(now - before[0].get(pid, 0.0) for pid, now in after[0].items())
        statements = {}
        for query, (calls, ms, wal) in after[1].items():
            was = before[1].get(query, (0, 0.0, 0))
            if calls > was[0]:
                statements[query] = (calls - was[0], ms - was[1], wal - was[2])
        return PgUse(cpu, statements)


def pg_line(use: PgUse, count: int, span: Span) -> str:
    """One line: PostgreSQL's CPU per mail (and as a share of one core over SPAN), and its
    executor's time per mail."""
    cpu = "n/a"
    if use.cpu is not None:
        cpu = f"{1e6 * use.cpu / max(1, count):.0f} us/mail"
        if span.wall > 0:
            cpu += f" ({100 * use.cpu / span.wall:.0f}% of a core)"
    line = f"  {'':<22} PostgreSQL: backends' CPU {cpu}"
    if use.statements:
        ms = sum(ms for _, ms, _ in use.statements.values())
        wal = sum(wal for _, _, wal in use.statements.values())
        line += (
            f", executor {1000 * ms / max(1, count):.0f} us/mail, "
            f"WAL {wal / max(1, count):.0f} bytes/mail"
        )
    return line


def pg_statements(use: PgUse, count: int, top: int = 8) -> list[str]:
    """The statements that took the executor longest, per mail."""
    lines = []
    ranked = sorted(use.statements.items(), key=lambda item: -item[1][1])
    for query, (calls, ms, wal) in ranked[:top]:
        shown = " ".join(query.split())
        shown = shown if len(shown) <= 90 else shown[:87] + "..."
        lines.append(
            f"    {1000 * ms / max(1, count):6.1f} us/mail {calls / max(1, count):5.3f} calls/mail "
            f"WAL {wal / max(1, count):6.0f} B/mail  {shown}"
        )
    return lines


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def arm_line(name: str, count: int, span: Span, sink_use: SinkUse | None = None) -> str:
    busy = None if sink_use is None else sink_use.busy
    sink = "" if busy is None else f", sink {100 * busy:3.0f}% busy"
    return (
        f"  {name:<22} {count} mails in {span.wall:6.2f} s = {rate(count, span.wall):7.1f} "
        f"mails/s, CPU {1000 * span.cpu / max(1, count):5.2f} ms/mail, "
        f"machine {100 * span.busy:3.0f}% busy{sink}"
    )


def wait_line(span: Span, sink_use: SinkUse) -> str | None:
    """One line: how long the sink's threads and this process's waited for a CPU, as shares
    of SPAN's wall time (see SinkUse); None when neither is known."""
    parts = [
        f"{who} {100 * waited / span.wall:.1f}%"
        for who, waited in (("sink", sink_use.waited), ("this process", span.waited))
        if waited is not None and span.wall > 0
    ]
    return f"  {'':<22} waiting for a CPU: " + ", ".join(parts) if parts else None


async def bench(args: argparse.Namespace, config_path: Path, sink: Sink) -> None:
    from helpdeskd.config.load import load_config
    from helpdeskd.store.db import create_engine, sessionmaker
    from helpdeskd.store.models import Outbox

    config = load_config(config_path)
    assert config.notices is not None and config.smtp is not None
    engine = create_engine(config.database.url)
    counter = StatementCounter(engine)
    sessions = sessionmaker(engine)
    try:
        async with engine.connect() as conn:
            if args.databases.pg_url is None:
                journal = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
                say(
                    f"SQLite: journal_mode={journal}, synchronous={synchronous} (2 = FULL), "
                    f"on {filesystem_of(Path(args.workdir))}"
                )
            else:
                version = (await conn.exec_driver_sql("SHOW server_version")).scalar()
                commit = (await conn.exec_driver_sql("SHOW synchronous_commit")).scalar()
                say(f"PostgreSQL {version}, synchronous_commit={commit}")
        await engine.dispose()  # a database copied (CREATE DATABASE ... TEMPLATE) has no users

        # --- queue ---------------------------------------------------------------------------
        report = queue_phase(args, config_path, args.databases, config.database.url, args.small_url)
        async with sessions() as session:
            size = await session.scalar(select(func.avg(func.length(Outbox.data))))
        say(f"  {report.queued} outbox rows, {size or 0:.0f} bytes/mail on average")

        # --- send ----------------------------------------------------------------------------
        await send_phase(args, config, sessions, counter, sink, report.notice_id, report.queued)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.notices",
        description="Queue a notice to N customers and send M of them through the outbox.",
    )
    parser.add_argument("--recipients", type=int, default=10_000, help="customers (N)")
    parser.add_argument("--send", type=int, default=2_000, help="mails to send (M)")
    parser.add_argument(
        "--drain-limit", type=float, default=600.0, help="drain()'s time limit, seconds"
    )
    parser.add_argument(
        "--inproc-sink", action="store_true", help="run the SMTP sink in a thread of this process"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=0,
        help="SMTP connections of both send arms (default: [smtp] connections, 4)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="send arms: R rounds of the sender, each followed by a raw run, the same mails "
        "made due again before each; a ratio per round and their median (default 1)",
    )
    parser.add_argument(
        "--incident",
        type=int,
        default=10_000,
        help="recipients of the incident phase at the default rates (0: skip it)",
    )
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="on PostgreSQL instead of SQLite: a server's database URL (fresh databases are "
        "made on that server and dropped at the end)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir")
    args = parser.parse_args(argv)
    if args.recipients < 1 or args.send < 1 or args.rounds < 1:
        parser.error("--recipients, --send and --rounds must be at least 1")

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM as Ctrl-C; and Ctrl-C at once, even inside queue_notice's rendering loop (which
    # never awaits, so asyncio.run's own SIGINT handler would wait until the loop ends).
    previous_sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, interrupt)
    if previous_sigint is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)

    from helpdeskd.daemon.logs import configure

    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    configure(json=True, level="INFO", stream=devnull)
    workdir = Path(tempfile.mkdtemp(prefix="helpdeskd-bench-notices-", dir=args.dir))
    args.workdir = workdir
    args.databases = databases = Databases(workdir, args.pg, prefix="helpdeskd_bench_notices")
    sink: Sink | None = None
    try:
        say(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, work dir {workdir}")
        sink = Sink(inproc=args.inproc_sink)
        url = databases.fresh("helpdeskd", migrate=False)  # migrated in setup's child
        config_path = write_config(workdir, url, sink.host, sink.port)
        csv_path = workdir / "customers.csv"
        write_customers(csv_path, args.recipients)
        migrated, created, _updated, seconds, child_rss = setup_database(url, csv_path)
        if created != args.recipients:
            raise BenchError(f"import_csv created {created} customers, not {args.recipients}")
        say(
            f"setup (child process): migrations {migrated:.1f} s; import_csv of {created} "
            f"customers {seconds:.2f} s = {rate(created, seconds):.0f}/s, "
            f"child peak RSS {child_rss:.1f} MiB"
        )
        args.small_url = None  # the first queue measurement's database, when smaller
        if args.recipients > FIRST_SIZE:
            small_csv = workdir / "customers-small.csv"
            write_customers(small_csv, FIRST_SIZE)
            args.small_url = databases.fresh("helpdeskd-small", migrate=False)
            if setup_database(args.small_url, small_csv)[1] != FIRST_SIZE:
                raise BenchError(f"import_csv did not create {FIRST_SIZE} customers")
            small_csv.unlink()
            say(f"setup: a second database with the first {FIRST_SIZE} of them")
        asyncio.run(bench(args, config_path, sink))
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted; cleaning up")
        return 130
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    finally:
        # Cleaning up takes seconds at most; a second Ctrl-C must not leave a server behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if sink is not None:
            sink.close()
        databases.close()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        devnull.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous_sigint)


if __name__ == "__main__":
    sys.exit(main())
