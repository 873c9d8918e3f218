"""Ingest benchmark: ``helpdeskd run`` against a bare aioimaplib + mail-parser + SQLite loop.

    .venv/bin/python -m tests.bench.ingest [--count 2000] [--backlog 0|20000] [--latency 40]
        [--pg postgresql://postgres@127.0.0.1:5432/test]

Not a test: pytest never collects it (it is not named ``test_*.py``) and nothing here asserts
a speed; it prints figures next to their targets. ``tests/bench/README.md`` says what each
figure means. One run, one private Dovecot (root needed), one SMTP sink, temp dirs that are
removed at the end, on Ctrl-C and on error alike.

Phases:

1. raw arm: the same N messages in the folder ``Raw``; one asyncio process fetches them with
   aioimaplib (UID FETCH BODY.PEEK[] by 100), parses each with ``mailparser.parse_from_bytes``
   and inserts it with stdlib sqlite3, one commit per message (WAL, synchronous=FULL).
2. helpdeskd arm: N messages preloaded in INBOX, ``helpdeskd run`` on SQLite with an SMTP
   sink, timed from its ``imap_connected`` event until ``raw_messages`` holds N rows.
3. latency: with the daemon idle in IMAP IDLE (``poll_interval = 600``), M mails APPENDed one
   by one; arrival-to-acknowledgement time at the sink.
4. ``--backlog N``: a fresh daemon and mailbox with N preloaded messages; rate and peak RSS;
   with ``--pg URL``, on a fresh PostgreSQL database made on URL's server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, TextIO

import aioimaplib
import mailparser

from helpdeskd.config.settings import MailboxConfig
from helpdeskd.imap.client import MAX_FETCH
from helpdeskd.imap.wire import encode_mailbox, parse_fetch, parse_search, uid_set
from helpdeskd.store.db import create_engine, upgrade
from tests.bench.databases import Databases
from tests.bench.procstat import busy_since, cpu_seconds, machine_ticks
from tests.mailgen import customer_mail, realistic_mix
from tests.servers.dovecot import Dovecot, ensure_system_user
from tests.servers.smtp import SmtpSink, _Handler

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "support@acme.test", "bench-password"
BACKLOG_USER = "backlog@acme.test"
RAW_FOLDER = "Raw"
POLL = 0.2  # seconds between outbox counts
STORED_POLL = 0.02  # seconds between raw_messages counts: the resolution of the ingest time
STALL = 90.0  # seconds without progress before a phase is declared stuck
MB = 1024.0  # KiB per MiB (VmHWM is in KiB)

TARGET_RATIO = 0.8
TARGET_P95 = 1.0
TARGET_RSS_MB = 150.0
TARGET_FIRST_ACK = 10.0  # s from the first mail stored to its acknowledgement (--backlog)
TARGET_ACK_LAG = 60.0  # s: acknowledgements never trail their mail by more (--backlog)


class BenchError(RuntimeError):
    """The benchmark could not run (a server or the daemon failed)."""


def say(text: str = "") -> None:
    print(text, flush=True)


# --- the SMTP sink, with arrival times -------------------------------------------------------


@dataclass
class _TimedHandler(_Handler):
    """Record each delivery's arrival time (monotonic) and, when KEEP, its bytes."""

    keep: bool = True
    count: int = 0
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        content = envelope.original_content or b""
        with self.lock:
            self.count += 1
            if self.keep:
                self.arrivals.append((now, content))
        return "250 Message accepted"


class TimedSink(SmtpSink):
    def __init__(self, *, keep: bool = True) -> None:
        super().__init__()
        self.handler = self.timed = _TimedHandler(keep=keep)

    @property
    def count(self) -> int:
        with self.timed.lock:
            return self.timed.count

    def arrivals_since(self, index: int) -> list[tuple[float, bytes]]:
        with self.timed.lock:
            return list(self.timed.arrivals[index:])


# --- mail into Dovecot -----------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def imap_login(dovecot: Dovecot, user: str, password: str) -> Iterator[imaplib.IMAP4]:
    imap = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=120)
    try:
        imap.login(user, password)
        yield imap
    finally:
        with contextlib.suppress(Exception):
            imap.logout()


_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]+>)", re.IGNORECASE | re.MULTILINE)


def message_id_of(raw: bytes) -> str:
    match = _MESSAGE_ID.search(raw)
    return match.group(1).decode() if match else ""


def preload_maildir(
    dovecot: Dovecot, user: str, password: str, folder: str, raws: Sequence[bytes]
) -> float:
    """Write RAWS straight into FOLDER's Maildir ``cur/``, as Dovecot itself stores mail.

    Thousands of APPENDs would take longer than the benchmark. Files are written to ``tmp/``
    and renamed (the Maildir rule), owned by the mail user, with LF line ends (Dovecot stores
    LF and serves CRLF) and the ``S=`` (file) and ``W=`` (CRLF) sizes in their names. Their
    names start with increasing times, and Dovecot numbers new files in that order, so UIDs
    follow the list (replies come after the mail they answer). Return the seconds it took.
    """
    started = time.monotonic()
    with imap_login(dovecot, user, password) as imap:  # the first login makes the Maildir
        imap.select("INBOX")
        if folder.upper() != "INBOX":
            imap.create(_quote(folder))
    user_root = dovecot.mail_root / user
    folder_dir = user_root if folder.upper() == "INBOX" else user_root / f".{folder}"
    uid, gid = ensure_system_user()
    if not folder_dir.is_dir():
        raise BenchError(f"Dovecot made no Maildir at {folder_dir}")
    for sub in ("cur", "new", "tmp"):
        path = folder_dir / sub
        if not path.is_dir():
            path.mkdir(mode=0o700)
            os.chown(path, uid, gid)
    base = int(time.time()) - len(raws) - 10
    pid = os.getpid()
    for i, raw in enumerate(raws):
        data = raw.replace(b"\r\n", b"\n")
        virtual = len(data) + data.count(b"\n")
        name = f"{base + i}.M{i}P{pid}.helpdeskd-bench,S={len(data)},W={virtual}:2,"
        tmp = folder_dir / "tmp" / name
        tmp.write_bytes(data)
        tmp.chmod(0o600)
        os.chown(tmp, uid, gid)
        tmp.rename(folder_dir / "cur" / name)
    return time.monotonic() - started


def verify_folder(
    dovecot: Dovecot, user: str, password: str, folder: str, raws: Sequence[bytes]
) -> tuple[int, bool]:
    """Return (messages Dovecot sees in FOLDER, whether UID order matches RAWS' order)."""
    with imap_login(dovecot, user, password) as imap:
        typ, data = imap.select(_quote(folder), readonly=True)
        if typ != "OK":
            raise BenchError(f"SELECT {folder} failed: {data!r}")
        exists = int(data[0] or b"0")
        in_order = True
        if exists and raws:
            for seq, raw in (("1", raws[0]), (str(exists), raws[-1])):
                typ, fetched = imap.fetch(seq, "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                header = b"".join(
                    part[1] for part in fetched if isinstance(part, tuple) and len(part) > 1
                )
                in_order = in_order and message_id_of(header) == message_id_of(raw)
    return exists, in_order


# --- the raw arm -----------------------------------------------------------------------------


def fsync_ms(folder: Path, rounds: int = 200) -> float:
    """Milliseconds for a 4 kB write plus fsync in FOLDER: the least one durable commit costs.

    Both arms pay this per commit (SQLite's WAL is fsynced at each COMMIT with
    synchronous=FULL): the raw arm once a message, helpdeskd once a batch. On a disk where it
    is a few milliseconds it dominates the raw arm; where it is a fraction of one, parsing does.
    """
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        return (time.perf_counter() - started) / rounds * 1000
    finally:
        os.close(fd)
        path.unlink()


@dataclass
class RawResult:
    count: int
    seconds: float
    synchronous: int
    journal_mode: str
    cpu: float  # CPU seconds of the bench process during the arm (all of the work but IMAP)
    busy: float  # fraction of the machine's cores busy meanwhile (anyone's work)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _raw_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: BEGIN/COMMIT by hand
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE raw_messages (id INTEGER PRIMARY KEY, uid INTEGER UNIQUE NOT NULL,"
        " message_id TEXT, sender TEXT, subject TEXT, size INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    return conn


async def raw_arm(dovecot: Dovecot, db_path: Path, folder: str) -> RawResult:
    """Fetch FOLDER by 100, parse each mail, one INSERT + COMMIT per mail; time it."""
    conn = _raw_db(db_path)
    client = aioimaplib.IMAP4(host=dovecot.host, port=dovecot.port, timeout=120)
    try:
        await client.wait_hello_from_server()
        login = await client.login(USER, PASSWORD)
        if login.result != "OK":
            raise BenchError(f"raw arm: LOGIN failed: {login.lines!r}")
        started = time.monotonic()  # as the daemon's imap_connected: logged in
        cpu_start, machine_start = time.process_time(), machine_ticks()
        selected = await client.select(encode_mailbox(folder))
        if selected.result != "OK":
            raise BenchError(f"raw arm: SELECT {folder} failed: {selected.lines!r}")
        found = await client.uid_search("ALL", charset=None)
        uids = parse_search(found.lines)
        stored = 0
        for start in range(0, len(uids), MAX_FETCH):
            chunk = uids[start : start + MAX_FETCH]
            response = await client.uid("fetch", uid_set(chunk), "(UID BODY.PEEK[])")
            if response.result != "OK":
                raise BenchError(f"raw arm: UID FETCH failed: {response.lines[-1]!r}")
            records = parse_fetch(response.lines)
            for uid in chunk:
                record = records.get(uid)
                if record is None or record.body is None:
                    continue
                raw = record.body
                mail = mailparser.parse_from_bytes(raw)
                sender = ", ".join(address for _, address in mail.from_)
                conn.execute("BEGIN")
                conn.execute(
                    "INSERT INTO raw_messages (uid, message_id, sender, subject, size, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (uid, mail.message_id, sender, mail.subject, len(raw), raw),
                )
                conn.execute("COMMIT")
                stored += 1
        seconds = time.monotonic() - started
        cpu, busy = time.process_time() - cpu_start, busy_since(machine_start)
        synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.logout(), 10)
        return RawResult(stored, seconds, synchronous, journal_mode, cpu, busy)
    finally:
        conn.close()


# --- the daemon ------------------------------------------------------------------------------


def write_config(
    state: Path, dovecot: Dovecot, sink: SmtpSink, user: str, batch_size: int, url: str | None
) -> tuple[Path, str]:
    """Write the daemon's config (as tests/demo.py does) for the database at URL (None: a
    SQLite file in STATE); return (config path, database URL)."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "secret.key").write_text("k1 bench-secret-0123456789abcdef\n")
    (state / "imap-password").write_text(PASSWORD + "\n")
    url = url or f"sqlite:///{state / 'helpdeskd.db'}"
    config = state / "helpdeskd.toml"
    config.write_text(f"""\
[service]
name = "Acme Postgres add-on"
support_address = "{USER}"
public_url = "http://127.0.0.1:8025"
ticket_prefix = "HD"
secret_key_file = "secret.key"
state_dir = "{state}"

[database]
url = "{url}"

[[mailbox]]
name = "support"
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
username = "{user}"
password_file = "imap-password"
folder = "INBOX"
processed_folder = "Processed"
idle = true
poll_interval = 600
batch_size = {batch_size}

[smtp]
host = "127.0.0.1"
port = {sink.port}
security = "none"

[smtp.domain_rates]
# Every generated customer writes from example.org: with the default cap of 50 mails a second
# to one domain, the acknowledgements would measure that cap, not the sender. A real desk's
# customers are spread over many domains.
"example.org" = 0

[[agent]]
email = "alice@acme.test"
name = "Alice"
""")
    return config, url


def helpdeskd_pragmas(url: str) -> tuple[int, str]:
    """Read (synchronous, journal_mode) on a connection of helpdeskd's own engine.

    ``synchronous`` is a per-connection setting: a fresh sqlite3 connection would show its
    own default, not what the daemon uses. helpdeskd.store.db.create_engine is what the daemon
    builds; its connect hook sets the pragmas. Run this while no daemon holds the database.
    PostgreSQL has neither: (0, "postgresql").
    """
    if not url.startswith("sqlite"):
        return 0, "postgresql"

    async def read() -> tuple[int, str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
                journal = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                await conn.rollback()
        finally:
            await engine.dispose()
        return int(synchronous or 0), str(journal)

    return asyncio.run(read())


def vm_hwm_kb(pid: int) -> int | None:
    """Return the peak resident set size (VmHWM) of PID in KiB, or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[tuple[int, str]]:
    """Return (pid, role) of PID's live children: parse workers and helpers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # state, ppid, ...
        if int(fields[1]) != pid or fields[0] in ("Z", "X"):
            continue
        if "resource_tracker" in cmdline:
            role = "resource tracker"
        elif "spawn_main" in cmdline or "multiprocessing-fork" in cmdline:
            role = "parse worker"
        else:
            role = cmdline[:60]
        found.append((int(entry.name), role))
    return sorted(found)


@dataclass
class Memory:
    main_kb: int | None
    children: list[tuple[int, str, int | None]]

    def workers(self) -> list[int]:
        return [kb or 0 for _, role, kb in self.children if role == "parse worker"]

    def lines(self) -> list[str]:
        out = [f"daemon main process  VmHWM {_mb(self.main_kb)}"]
        for pid, role, kb in self.children:
            out.append(f"{role:<20} VmHWM {_mb(kb)}  (pid {pid})")
        total = (self.main_kb or 0) + sum(kb or 0 for _, _, kb in self.children)
        out.append(f"all processes        {_mb(total)} (sum of peaks)")
        return out


def under_target(kb: int) -> bool:
    """Whether KB KiB is under the RSS target, taken in decimal megabytes (the strict way)."""
    return kb * 1024 < TARGET_RSS_MB * 1_000_000


def _mb(kb: int | None) -> str:
    return "gone" if kb is None else f"{kb / MB:6.1f} MiB"


class Daemon:
    """``helpdeskd run`` as a subprocess in its own session; its JSON log read by a thread."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.events: Counter[str] = Counter()
        self.first: dict[str, float] = {}  # event -> monotonic time it was first read
        self.problems: list[str] = []
        self.tail: deque[str] = deque(maxlen=30)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = dict(os.environ, HELPDESKD_CONFIG=str(self.config), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpdeskd", "run"],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops the daemon
        )
        log_file = self.log_path.open("w")
        self._thread = threading.Thread(target=self._follow, args=(log_file,), daemon=True)
        self._thread.start()

    def _follow(self, log_file: TextIO) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with log_file:
            for line in self.proc.stdout:
                now = time.monotonic()
                log_file.write(line)
                with self._lock:
                    self.tail.append(line.rstrip())
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    name = str(event.get("event"))
                    self.events[name] += 1
                    self.first.setdefault(name, now)
                    level = event.get("level")
                    if level in ("warning", "error", "critical") and len(self.problems) < 20:
                        self.problems.append(line.strip()[:300])

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            with self._lock:
                tail = "\n".join(self.tail)
            raise BenchError(f"helpdeskd run exited with status {code}; its last lines:\n{tail}")

    def wait_event(self, name: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if name in self.first:
                    return self.first[name]
            self.check_alive()
            time.sleep(0.02)
        raise BenchError(f"helpdeskd logged no {name} within {timeout:g} s")

    def memory(self) -> Memory:
        pid = self.pid
        children = [(child, role, vm_hwm_kb(child)) for child, role in children_of(pid)]
        return Memory(vm_hwm_kb(pid), children)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the daemon drains), then SIGKILL its process group if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"  helpdeskd did not stop within {timeout:g} s: killing its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # the parse workers are its children, in its session: none may outlive the bench
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(5)
        return proc.returncode


# --- reading the daemon's database -----------------------------------------------------------


class Store:
    """Read-only queries on the daemon's database while it runs: the SQLite file opened
    read-only, or a PostgreSQL connection (asyncpg, on an event loop of its own)."""

    def __init__(self, url: str) -> None:
        self.sqlite: sqlite3.Connection | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pg: Any = None
        if url.startswith("sqlite"):
            path = url.removeprefix("sqlite:///")
            self.sqlite = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        else:
            import asyncpg

            self.loop = asyncio.new_event_loop()
            dsn = url.replace("postgresql+asyncpg:", "postgresql:")
            self.pg = self.loop.run_until_complete(asyncpg.connect(dsn))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.sqlite is not None:
            return list(self.sqlite.execute(sql))
        assert self.loop is not None
        return [tuple(r) for r in self.loop.run_until_complete(self.pg.fetch(sql))]

    def scalar(self, sql: str) -> int:
        return int(self.rows(sql)[0][0])

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.loop is not None:
            self.loop.run_until_complete(self.pg.close())
            self.loop.close()


def wait_stored(
    url: str, count: int, daemon: Daemon, progress: list[tuple[float, int]]
) -> tuple[float, float]:
    """Poll ``raw_messages`` every 20 ms until it holds COUNT rows; each poll goes to PROGRESS.

    Return (monotonic time of the poll that saw them, seconds from that poll's start back to
    the previous poll: the resolution of the measurement).
    """
    store = Store(url)
    try:
        last, changed = -1, time.monotonic()
        previous = changed
        while True:
            polled = time.monotonic()
            stored = store.scalar("SELECT count(*) FROM raw_messages")
            progress.append((polled, stored))
            if stored >= count:
                return polled, polled - previous
            if stored != last:
                last, changed = stored, polled
            elif polled - changed > STALL:
                raise BenchError(f"raw_messages stuck at {stored} of {count} for {STALL:g} s")
            daemon.check_alive()
            previous = polled
            time.sleep(STORED_POLL)
    finally:
        store.close()


def wait_outbox_drained(url: str, daemon: Daemon, timeout: float) -> tuple[bool, float]:
    """Wait until no outbox row is pending; return (drained, seconds waited)."""
    store = Store(url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            if store.scalar("SELECT count(*) FROM outbox WHERE state = 'pending'") == 0:
                return True, time.monotonic() - started
            daemon.check_alive()
            time.sleep(POLL)
        return False, time.monotonic() - started
    finally:
        store.close()


@dataclass
class StoreStats:
    stored: int
    tickets: int
    acks: int
    outbox: dict[str, int]
    outcomes: dict[str, int]
    quarantined: int
    journal_mode: str


def store_stats(url: str) -> StoreStats:
    store = Store(url)
    try:
        sqlite = store.sqlite is not None
        return StoreStats(
            stored=store.scalar("SELECT count(*) FROM raw_messages"),
            tickets=store.scalar("SELECT count(*) FROM tickets"),
            acks=store.scalar("SELECT count(*) FROM outbox WHERE kind = 'ack'"),
            outbox=dict(store.rows("SELECT kind, count(*) FROM outbox GROUP BY kind")),
            outcomes=dict(
                store.rows("SELECT outcome, count(*) FROM raw_messages GROUP BY outcome")
            ),
            quarantined=store.scalar("SELECT count(*) FROM quarantine"),
            journal_mode=str(store.rows("PRAGMA journal_mode")[0][0]) if sqlite else "postgresql",
        )
    finally:
        store.close()


# --- latency ---------------------------------------------------------------------------------


def _normal_id(value: str | None) -> str:
    return (value or "").strip().strip("<>").lower()


def measure_latency(
    dovecot: Dovecot, sink: TimedSink, daemon: Daemon, count: int, gap: float
) -> tuple[list[float], int]:
    """APPEND COUNT mails one by one; return (latencies in APPEND order, mails without ack)."""
    mark = len(sink.arrivals_since(0))
    appended: dict[str, float] = {}
    with imap_login(dovecot, USER, PASSWORD) as imap:
        for i in range(count):
            message_id = f"<latency-{i}.{os.getpid()}.{time.time_ns()}@example.net>"
            raw = customer_mail(
                900_000 + i,
                sender=f"latency{i}@example.net",
                name=f"Latency {i}",
                subject=f"Is the database down? ({i})",
                message_id=message_id,
            )
            before = time.monotonic()
            typ, data = imap.append("INBOX", "", None, raw)
            if typ != "OK":
                raise BenchError(f"APPEND failed: {data!r}")
            appended[_normal_id(message_id)] = before
            daemon.check_alive()
            time.sleep(gap)
    deadline = time.monotonic() + 30
    acked: dict[str, float] = {}
    parser = BytesHeaderParser()
    seen = 0
    while time.monotonic() < deadline:
        fresh = sink.arrivals_since(mark + seen)
        seen += len(fresh)
        for arrived, content in fresh:
            headers = parser.parsebytes(content)
            if str(headers.get("Auto-Submitted", "")).lower() != "auto-replied":
                continue  # agent notifications and the like
            parent = _normal_id(headers.get("In-Reply-To"))
            if parent in appended and parent not in acked:
                acked[parent] = arrived - appended[parent]
        if len(acked) == len(appended):
            break
        time.sleep(0.05)
    # in APPEND order (dicts keep insertion order): a rising series means mail queues up
    in_order = [acked[key] for key in appended if key in acked]
    return in_order, len(appended) - len(acked)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted VALUES."""
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


# --- phases ----------------------------------------------------------------------------------


@dataclass
class DaemonResult:
    count: int
    seconds: float
    resolution: float
    stats: StoreStats
    synchronous: int
    journal_mode: str
    sent_at_end: int
    startup: float  # process start to imap_connected
    progress: list[tuple[float, int]]  # (monotonic time, raw_messages rows) at each poll
    cpu_main: float  # CPU seconds of the daemon's main process during the ingest
    cpu_workers: float  # CPU seconds of its parse workers during the ingest
    busy: float  # fraction of the machine's cores busy meanwhile (anyone's work)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def rate_by_tenth(self) -> list[float]:
        """Messages/s over each tenth of the messages, in order: does it slow down?"""
        rates = []
        start_time, start_count = self.progress[0]
        for k in range(1, 11):
            goal = math.ceil(self.count * k / 10)
            when, stored = next((t, n) for t, n in self.progress if n >= goal)
            rates.append((stored - start_count) / max(when - start_time, 1e-9))
            start_time, start_count = when, stored
        return rates


def workers_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each parse worker of the daemon PID (0 for one that is gone)."""
    return {
        child: cpu_seconds(child) or 0.0
        for child, role in children_of(pid)
        if role == "parse worker"
    }


def run_daemon_arm(
    dovecot: Dovecot,
    sink: TimedSink,
    state: Path,
    user: str,
    count: int,
    batch_size: int,
    stack: contextlib.ExitStack,
    profile: Path | None,
    url: str | None = None,
) -> tuple[Daemon, DaemonResult, str]:
    """Run the daemon on the COUNT messages of USER's INBOX, on the database at URL (None: a
    SQLite file in STATE), until they are stored; return it (still running), the result and
    the database URL."""
    config, url = write_config(state, dovecot, sink, user, batch_size, url)
    upgrade(url)
    synchronous, journal_mode = helpdeskd_pragmas(url)
    daemon = Daemon(config, state / "daemon.log")
    launched = time.monotonic()
    daemon.start()
    stack.callback(daemon.stop)
    spy = start_profile(profile, daemon.pid, stack) if profile else None
    connected = daemon.wait_event("imap_connected", 60)
    cpu_start, machine_start = cpu_seconds(daemon.pid) or 0.0, machine_ticks()
    # The workers started before READY: their imports are not part of the ingest.
    workers_start = workers_cpu(daemon.pid)
    progress: list[tuple[float, int]] = [(connected, 0)]
    done, resolution = wait_stored(url, count, daemon, progress)
    cpu_main = (cpu_seconds(daemon.pid) or 0.0) - cpu_start
    busy = busy_since(machine_start)
    cpu_workers = sum(
        cpu - workers_start.get(pid, 0.0) for pid, cpu in workers_cpu(daemon.pid).items()
    )
    sent = sink.count
    if spy is not None:
        stop_profile(spy)
    stats = store_stats(url)
    result = DaemonResult(
        count=count,
        seconds=done - connected,
        resolution=resolution,
        stats=stats,
        synchronous=synchronous,
        journal_mode=journal_mode,
        sent_at_end=sent,
        startup=connected - launched,
        progress=progress,
        cpu_main=cpu_main,
        cpu_workers=cpu_workers,
        busy=busy,
    )
    return daemon, result, url


def start_profile(
    directory: Path, pid: int, stack: contextlib.ExitStack
) -> subprocess.Popen[bytes] | None:
    """Sample the daemon's main process with py-spy (raw folded stacks), if installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        say("  --profile: py-spy not found (.venv/bin/pip install py-spy); not profiling")
        return None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"helpdeskd-{pid}.folded"
    command = [spy, "record", "--pid", str(pid), "--nonblocking", "--gil", "--threads"]
    command += ["--rate", "500", "--format", "raw", "--output", str(out)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(stop_profile, proc)
    say(f"  profiling helpdeskd (pid {pid}) with py-spy into {out}")
    return proc


def stop_profile(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def tenths(result: DaemonResult, batch_size: int) -> str:
    if result.count < 20 * batch_size:  # rows arrive a batch at a time
        return f"(needs at least {20 * batch_size} messages)"
    return " ".join(f"{rate:.0f}" for rate in result.rate_by_tenth())


def describe_raw(label: str, raw: RawResult) -> None:
    say(
        f"  {label}: {raw.count} messages in {raw.seconds:.2f} s = {raw.rate:.1f} messages/s; "
        f"CPU {raw.cpu:.1f} s ({raw.cpu / max(1, raw.count) * 1000:.1f} ms/message); "
        f"machine {raw.busy:.0%} busy"
    )


def main_arms(args: argparse.Namespace, dovecot: Dovecot, work: Path, stack: Any) -> None:
    count = args.count
    say(f"\n== {count} messages: helpdeskd run vs a bare loop ==")
    started = time.monotonic()
    raws = realistic_mix(count)
    total = sum(len(r) for r in raws)
    say(
        f"generated {count} mails (tests.mailgen.realistic_mix), {total / MB / MB:.1f} MB, "
        f"{total / count / MB:.1f} kB average, in {time.monotonic() - started:.1f} s"
    )
    dovecot.add_user(USER, PASSWORD)
    for folder in ("INBOX", RAW_FOLDER):
        seconds = preload_maildir(dovecot, USER, PASSWORD, folder, raws)
        seen, in_order = verify_folder(dovecot, USER, PASSWORD, folder, raws)
        say(
            f"preloaded {folder:<5} by writing its Maildir in {seconds:.1f} s; Dovecot sees "
            f"{seen} messages, UID order {'as written' if in_order else 'DIFFERENT'}"
        )
        if seen != count:
            raise BenchError(f"Dovecot sees {seen} messages in {folder}, not {count}")
    del raws

    say(
        "\n[raw arm] one process: aioimaplib UID FETCH BODY.PEEK[] by 100, "
        "mailparser.parse_from_bytes, stdlib sqlite3 (run before and after the daemon)"
    )
    raw_before = asyncio.run(raw_arm(dovecot, work / "raw-1.db", RAW_FOLDER))
    describe_raw("before", raw_before)

    sink = TimedSink()
    sink.start()
    stack.callback(sink.stop)
    say("\n[helpdeskd arm] helpdeskd run, SQLite, SMTP sink, 1 agent")
    daemon, result, url = run_daemon_arm(
        dovecot, sink, work / "daemon", USER, count, args.batch_size, stack, args.profile
    )
    stats = result.stats
    cpu_total = result.cpu_main + result.cpu_workers
    say(
        f"  {count} messages in {result.seconds:.2f} s "
        f"(from imap_connected, +-{STORED_POLL:g} s) = "
        f"{result.rate:.1f} messages/s   [process start to imap_connected: "
        f"{result.startup:.1f} s]"
    )
    say(
        f"  CPU: main {result.cpu_main:.1f} s + parse workers {result.cpu_workers:.1f} s "
        f"({cpu_total / count * 1000:.1f} ms/message); machine {result.busy:.0%} busy"
    )
    say("  messages/s by tenth of the backlog: " + tenths(result, args.batch_size))
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(stats.outcomes.items(), key=str))
    outbox = ", ".join(f"{k} {v}" for k, v in sorted(stats.outbox.items()))
    say(f"  outcomes: {outcomes}; quarantined {stats.quarantined}")
    say(f"  tickets {stats.tickets}; acknowledgements queued (outbox kind 'ack') {stats.acks}")
    say(f"  outbox rows by kind: {outbox}; delivered to the sink by then: {result.sent_at_end}")

    drained, waited = wait_outbox_drained(url, daemon, args.drain_timeout)
    queued = sum(stats.outbox.values())
    say(
        f"  outbox {'drained' if drained else 'NOT drained'} {waited:.1f} s after the last "
        f"message was stored; {sink.count} of {queued} mails at the sink"
    )

    latencies: list[float] = []
    missing = 0
    if args.latency:
        say(
            f"\n[latency] {args.latency} mails APPENDed one at a time, {args.gap:g} s apart; "
            "daemon in IDLE, poll_interval = 600"
        )
        latencies, missing = measure_latency(dovecot, sink, daemon, args.latency, args.gap)

    memory = daemon.memory()  # just before SIGTERM
    code = daemon.stop()
    say(f"  helpdeskd stopped (exit status {code})")

    say("\n[raw arm, again] the same folder, a fresh database")
    raw_after = asyncio.run(raw_arm(dovecot, work / "raw-2.db", RAW_FOLDER))
    describe_raw("after ", raw_after)
    raw_rate = (raw_before.rate + raw_after.rate) / 2

    say("\n== results ==")
    say(f"messages: {count} (tests.mailgen.realistic_mix); machine: {os.cpu_count()} cores")
    say(f"disk: a 4 kB write + fsync takes {fsync_ms(work):.2f} ms in the work dir")
    say("raw arm:       commit policy: one commit per message (stdlib sqlite3, not aiosqlite)")
    say(
        f"               SQLite journal_mode={raw_before.journal_mode} "
        f"synchronous={raw_before.synchronous} "
        f"({'FULL' if raw_before.synchronous == 2 else 'not FULL'}), read on the writing "
        "connection"
    )
    say(
        f"               {raw_rate:8.1f} messages/s  (mean of {raw_before.rate:.1f} before "
        f"and {raw_after.rate:.1f} after the daemon)"
    )
    say(
        f"helpdeskd arm: commit policy: one transaction per fetched batch (batch_size "
        f"{args.batch_size}), a SAVEPOINT per fast-lane run or per message"
    )
    say(
        f"               SQLite journal_mode={stats.journal_mode} "
        f"synchronous={result.synchronous} "
        f"({'FULL' if result.synchronous == 2 else 'not FULL'}), read through "
        "helpdeskd.store.db.create_engine"
    )
    say(
        f"               {result.rate:8.1f} messages/s  ({count} in {result.seconds:.2f} s), "
        f"{stats.tickets} tickets, {stats.acks} acks queued"
    )
    ratio = result.rate / raw_rate if raw_rate else 0.0
    say(
        f"ratio helpdeskd/raw: {ratio:.2f}   (target >= {TARGET_RATIO} on SQLite: "
        f"{verdict(ratio >= TARGET_RATIO)})"
    )
    raw_cpu = (raw_before.cpu + raw_after.cpu) / max(1, raw_before.count + raw_after.count)
    say(
        f"CPU per message: helpdeskd {cpu_total / count * 1000:.2f} ms "
        f"(main {result.cpu_main / count * 1000:.2f} + workers "
        f"{result.cpu_workers / count * 1000:.2f}), raw {raw_cpu * 1000:.2f} ms; machine busy "
        f"{result.busy:.0%} (daemon) vs {raw_before.busy:.0%}/{raw_after.busy:.0%} (raw)"
    )
    # What the CPU per message allows, were the cores busy with nothing else. No overlap of the
    # work can pass the first; only less work can. The second is nearly as firm: the main
    # process's threads mostly take turns (the GIL; the store awaits its database thread).
    cores = os.cpu_count() or 1
    every_core = cores * count / cpu_total if cpu_total else 0.0
    main_only = count / result.cpu_main if result.cpu_main else 0.0
    scale = 1 / raw_rate if raw_rate else 0.0
    say(
        f"ceiling at this CPU per message: {cores} cores fully busy {every_core:.0f} messages/s "
        f"(ratio {every_core * scale:.2f}); the main process busy all the time "
        f"{main_only:.0f} messages/s (ratio {main_only * scale:.2f})"
    )
    if args.latency:
        if latencies:
            ordered = sorted(latencies)
            p50, p95 = percentile(ordered, 0.5), percentile(ordered, 0.95)
            say(
                f"latency arrival->ack ({len(latencies)} mails, IDLE): p50 {p50:.3f} s  "
                f"p95 {p95:.3f} s  max {ordered[-1]:.3f} s   (target p95 <= {TARGET_P95:g} "
                f"s: {verdict(p95 <= TARGET_P95 and not missing)})"
            )
            say("  each, in APPEND order (s): " + " ".join(f"{x:.2f}" for x in latencies))
        if missing:
            say(f"latency: {missing} of {args.latency} mails got no acknowledgement in time")
    say(f"peak RSS after {count} messages (target < {TARGET_RSS_MB:g} MB is for --backlog 20000):")
    for line in memory.lines():
        say(f"  {line}")
    if daemon.problems:
        say(f"daemon warnings/errors ({len(daemon.problems)} shown):")
        for line in daemon.problems[:10]:
            say(f"  {line}")


def backlog_phase(args: argparse.Namespace, dovecot: Dovecot, work: Path, stack: Any) -> None:
    count = args.backlog
    where = "PostgreSQL" if args.pg else "SQLite"
    say(f"\n== backlog: {count} messages waiting when helpdeskd starts (on {where}) ==")
    started = time.monotonic()
    raws = realistic_mix(count, seed=11)
    say(f"generated {count} mails in {time.monotonic() - started:.1f} s")
    dovecot.add_user(BACKLOG_USER, PASSWORD)
    seconds = preload_maildir(dovecot, BACKLOG_USER, PASSWORD, "INBOX", raws)
    seen, in_order = verify_folder(dovecot, BACKLOG_USER, PASSWORD, "INBOX", raws)
    say(
        f"preloaded INBOX in {seconds:.1f} s; Dovecot sees {seen} messages, UID order "
        f"{'as written' if in_order else 'DIFFERENT'}"
    )
    if seen != count:
        raise BenchError(f"Dovecot sees {seen} messages, not {count}")
    del raws
    sink = TimedSink()
    sink.start()
    stack.callback(sink.stop)
    url = None
    if args.pg:
        databases = Databases(work, args.pg, prefix="helpdeskd_bench_ingest")
        stack.callback(databases.close)
        url = databases.fresh("backlog", migrate=False)  # run_daemon_arm migrates it
    daemon, result, url = run_daemon_arm(
        dovecot, sink, work / "backlog", BACKLOG_USER, count, args.batch_size, stack, None, url
    )
    memory = daemon.memory()
    drained, waited = wait_outbox_drained(url, daemon, args.drain_timeout)
    code = daemon.stop()
    lags = ack_lags(daemon.log_path, sink)
    say(f"helpdeskd stopped (exit status {code})")
    main_ok = under_target(memory.main_kb or 0)
    workers = memory.workers()
    workers_ok = all(under_target(kb) for kb in workers)
    say("\n== backlog results ==")
    say(
        f"backlog {count}: {result.rate:.1f} messages/s ({count} in {result.seconds:.1f} s), "
        f"{result.stats.tickets} tickets, {result.stats.acks} acks queued, "
        f"{result.stats.quarantined} quarantined"
    )
    say(
        f"CPU: main {result.cpu_main:.1f} s + parse workers {result.cpu_workers:.1f} s "
        f"({(result.cpu_main + result.cpu_workers) / count * 1000:.1f} ms/message); machine "
        f"{result.busy:.0%} busy"
    )
    say("messages/s by tenth of the backlog: " + tenths(result, args.batch_size))
    say(
        f"peak RSS with a {count}-message backlog (target < {TARGET_RSS_MB:g} MB = "
        f"{TARGET_RSS_MB * 1e6 / 2**20:.1f} MiB, per process):"
    )
    for line in memory.lines():
        say(f"  {line}")
    say(f"  main: {verdict(main_ok)}; parse workers: {verdict(workers_ok)}")
    say(
        f"outbox {'drained' if drained else 'NOT drained'} {waited:.1f} s after the last message "
        f"was stored; {sink.count} mails at the sink"
    )
    if lags:
        ordered = sorted(lag for _, lag in lags)
        first = lags[0][1]
        say(
            f"acknowledgement lag, stored -> at the sink ({len(lags)} acks): first "
            f"{first:.1f} s (target <= {TARGET_FIRST_ACK:g} s: "
            f"{verdict(first <= TARGET_FIRST_ACK)}), p50 {percentile(ordered, 0.5):.1f} s, "
            f"p95 {percentile(ordered, 0.95):.1f} s, max {ordered[-1]:.1f} s (target <= "
            f"{TARGET_ACK_LAG:g} s: {verdict(ordered[-1] <= TARGET_ACK_LAG)})"
        )
        say("  lag by tenth of the backlog (max, s): " + lag_tenths(lags))
    else:
        say("acknowledgement lag: no acknowledgement could be matched to a stored mail")


def ack_lags(log_path: Path, sink: TimedSink) -> list[tuple[float, float]]:
    """Each acknowledgement's lag: from the daemon's ``message_stored`` of the mail it answers
    (its log's wall-clock timestamp) to its arrival at the sink; as (stored, lag) pairs, in the
    order the mails were stored."""
    stored: dict[str, float] = {}
    with log_path.open(errors="replace") as log:
        for line in log:
            if '"message_stored"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                event = json.loads(line)
                stamp = event["timestamp"].replace("Z", "+00:00")
                stored[_normal_id(event["message_id"])] = datetime.fromisoformat(stamp).timestamp()
    offset = time.time() - time.monotonic()  # the sink's arrival times are monotonic
    lags = []
    for arrived, content in sink.arrivals_since(0):
        headers = BytesHeaderParser().parsebytes(content)
        if headers.get("Auto-Submitted", "").lower() != "auto-replied":
            continue  # only acknowledgements answer a customer's mail
        parent = _normal_id(headers.get("In-Reply-To"))
        if parent in stored:
            lags.append((stored[parent], arrived + offset - stored[parent]))
    return sorted(lags)


def lag_tenths(lags: list[tuple[float, float]]) -> str:
    tenth = max(1, len(lags) // 10)
    return " ".join(
        f"{max(lag for _, lag in lags[i : i + tenth]):.1f}" for i in range(0, len(lags), tenth)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.ingest",
        description="Ingest throughput, IDLE latency and memory of helpdeskd run, with a "
        "bare-loop baseline. Prints figures; asserts nothing.",
    )
    parser.add_argument("--count", type=int, default=2000, help="messages per arm (0: skip)")
    parser.add_argument(
        "--backlog", type=int, default=0, help="also run the backlog phase with N messages"
    )
    parser.add_argument("--latency", type=int, default=40, help="mails for the IDLE latency")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between those mails")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=MailboxConfig.batch_size,
        help=f"the daemon's batch_size (default: its own, {MailboxConfig.batch_size})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120,
        help="seconds to wait for the outbox to empty before the latency phase",
    )
    parser.add_argument(
        "--profile", type=Path, help="record py-spy folded stacks of the ingest into DIR"
    )
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="the backlog phase on PostgreSQL: a server's database URL (a fresh database is "
        "made on that server and dropped at the end)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (logs, databases) and print it"
    )
    args = parser.parse_args(argv)
    if args.count < 0 or args.backlog < 0 or args.latency < 0:
        parser.error("counts cannot be negative")
    if args.count == 0 and args.latency:
        args.latency = 0
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark runs a private Dovecot, which needs root", file=sys.stderr)
        return 2
    # Ctrl-C even when started in the background of a script (which ignores SIGINT there)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="helpdeskd-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            if not args.keep:
                stack.callback(shutil.rmtree, work, True)
            dovecot = Dovecot()
            stack.callback(dovecot.close)
            dovecot.start()
            say(f"private Dovecot on {dovecot.host}:{dovecot.port}; work dir {work}")
            if args.count:
                main_arms(args, dovecot, work, stack)
            if args.backlog:
                backlog_phase(args, dovecot, work, stack)
            if args.keep:
                say(f"\nkept {work}")
    except KeyboardInterrupt:
        print("\ninterrupted: everything stopped and removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
