"""Several daemons on one PostgreSQL, under failure: the chaos test of docs/admin.md's
"Running several daemons".

Three real daemons (``python -m helpdeskd run``) share one PostgreSQL database, two mailboxes
of a private Dovecot and an aiosmtpd sink. 1,000 mails arrive while the daemon that holds a
mailbox's lease is killed with SIGKILL every few seconds, and once has its PostgreSQL backends
terminated instead. Leases last 5 s here (``HELPDESKD_LEASE_SECONDS``; 10 s by default).

Proven: every mail becomes exactly one ticket message and is moved once; no ticket twice; at
most one duplicate acknowledgement per kill; every mailbox taken over within 15 s each time;
a time rule fired once per ticket although three schedulers race for it; a killed daemon's
parse workers and resource tracker die with it; clean stops leave the registry empty. The
takeover times and duplicates per kill are printed (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from helpdeskd.config.load import load_config
from helpdeskd.config.settings import Config
from helpdeskd.store.models import Ticket
from tests.harness import ROOT, Desk, cli_json
from tests.mailgen import customer_mail
from tests.servers.dovecot import Dovecot, ensure_system_user
from tests.servers.fixtures import SUPPORT_PASSWORD, SUPPORT_USER
from tests.servers.smtp import SmtpSink
from tests.system.test_crash import acks_by_customer, wait_until

pytestmark = pytest.mark.slow

SEED = 20261206
LEASE_SECONDS = 5
TAKEOVER_LIMIT = 15.0  # seconds: the promise, as a deadline
SIGKILLS = 5
CONNECTIONS = 4  # [smtp] connections, the default
TERMINATE_AT = 2  # the event (0-based) that terminates the holder's backends instead
MAILS_PER_MAILBOX = 500
WAVE = 10  # mails per mailbox per wave, a wave every WAVE_EVERY seconds
WAVE_EVERY = 0.8
SEEDED = 40  # tickets made before the daemons start, already due for the time rule
SALES_USER, SALES_PASSWORD = "sales@acme.test", "secret"
USERS = {"support": (SUPPORT_USER, SUPPORT_PASSWORD), "sales": (SALES_USER, SALES_PASSWORD)}
TIME_RULE = """\
- name: tag-aged
  after: {state: new, minutes: 1}
  then:
    - tags: [+aged]
"""


# --- the daemons --------------------------------------------------------------------------


def write_config(
    folder: Path, pg_url: str, dovecot: Dovecot, smtp: SmtpSink, rules: Path, secret: str
) -> Config:
    folder.mkdir()
    (folder / "secret.key").write_text(secret)
    lines = [
        "[service]",
        'name = "Acme Postgres add-on"',
        'support_address = "support@acme.test"',
        'public_url = "https://support.acme.test"',
        f'secret_key_file = "{folder / "secret.key"}"',
        f'state_dir = "{folder / "state"}"',
        "[database]",
        f'url = "{pg_url}"',
        "[smtp]",
        f'host = "{smtp.host}"',
        f"port = {smtp.port}",
        'security = "none"',
        "retry_base = 0.2",
        "retry_max = 1",
        "timeout = 5",
    ]
    for name, (user, password) in USERS.items():
        lines += [
            "[[mailbox]]",
            f'name = "{name}"',
            f'host = "{dovecot.host}"',
            f"port = {dovecot.port}",
            'security = "none"',
            f'username = "{user}"',
            f'password = "{password}"',
            'processed_folder = "Processed"',
            "idle = true",
            "poll_interval = 1",
            "batch_size = 10",
        ]
    lines += ["[paths]", f'rules = "{rules}"', "[parse]", "workers = 1", "timeout = 20"]
    path = folder / "helpdeskd.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@dataclass
class Daemon:
    """One daemon of the fleet, restarted with the same config after each kill."""

    name: str
    config: Config
    proc: subprocess.Popen[bytes] | None = None
    pgids: list[int] = field(default_factory=list)
    starts: int = 0  # how many times it was started, so how many ``daemon_started`` to wait for

    @property
    def log_path(self) -> Path:
        return Path(str(self.config.source)).parent / "daemon.log"

    def start(self) -> None:
        env = dict(
            os.environ,
            HELPDESKD_CONFIG=str(self.config.source),
            HELPDESKD_LEASE_SECONDS=str(LEASE_SECONDS),
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "helpdeskd", "run"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # whatever is left can be found at the end
            )
        self.pgids.append(self.proc.pid)
        self.starts += 1

    def started(self) -> bool:
        """Whether the latest start has come up: its signal handlers are in place from then on
        (a SIGTERM while Python is still importing ends it as killed, as for any program)."""
        done = sum(1 for e in self.events() if e.get("event") == "daemon_started")
        return done >= self.starts or (self.proc is not None and self.proc.poll() is not None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        found = []
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            wait_until(self.started, 60, f"daemon {self.name} to come up before it is stopped")
            self.proc.terminate()
            try:
                code = self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pgid in self.pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        return code

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name}:\n" + "\n".join(text.splitlines()[-lines:])


def arrive(dovecot: Dovecot, user: str, raws: list[bytes], first: int) -> None:
    """Deliver RAWS into USER's INBOX as the LDA would (Maildir ``new/``), named by FIRST, the
    number of the first: names stay unique across waves (Dovecot indexes a file by name)."""
    uid, gid = ensure_system_user()
    home = dovecot.mail_root / user
    for directory in (home, home / "cur", home / "new", home / "tmp"):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, uid, gid)
    for n, raw in enumerate(raws, start=first):
        name = f"{int(time.time())}.M{n:06d}P{os.getpid()}.helpdeskd-fleet"
        tmp = home / "tmp" / name
        tmp.write_bytes(raw.replace(b"\r\n", b"\n"))
        tmp.chmod(0o600)
        os.chown(tmp, uid, gid)
        tmp.rename(home / "new" / name)


def children(pid: int) -> set[int]:
    """The processes PID started (its parse workers and the resource tracker)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def tcp_ports(pid: int) -> set[int]:
    """The local ports of PID's TCP sockets (its database connections among them)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --- the database, read directly ----------------------------------------------------------


def query(pg_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async def main() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(pg_url, timeout=10)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(main())


def leases(pg_url: str) -> dict[str, tuple[str, int]]:
    """Each mailbox's live lease: its holder and token."""
    rows = query(
        pg_url,
        "SELECT mailbox, holder, token FROM mailbox_leases "
        "WHERE holder IS NOT NULL AND expires_at > clock_timestamp()",
    )
    return {mailbox: (holder, token) for mailbox, holder, token in rows}


def tokens(pg_url: str) -> dict[str, int]:
    return dict(query(pg_url, "SELECT mailbox, token FROM mailbox_leases"))


def pids(pg_url: str) -> dict[str, int]:
    """Registered daemons' pids by daemon id."""
    return dict(query(pg_url, "SELECT id, pid FROM daemons"))


def terminate_backends(pg_url: str, pid: int) -> int:
    """End every PostgreSQL session of process PID (FATAL 57P01); return how many."""
    name = make_url(pg_url).database
    ports = sorted(tcp_ports(pid))
    rows = query(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND client_port = ANY($2::int[])",
        name,
        ports,
    )
    return sum(1 for (ok,) in rows if ok)


def processed_ids(dovecot: Dovecot, user: str, password: str) -> list[str]:
    """The Message-IDs of the mail in USER's processed folder, one per message there."""
    with dovecot._imap(user, password) as imap:
        typ, _ = imap.select('"Processed"', readonly=True)
        if typ != "OK":
            return []
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", data
    found = []
    for part in data:
        if isinstance(part, tuple):
            value = message_from_bytes(part[1])["Message-ID"]
            found.append(str(value).strip())
    return found


# --- the test -----------------------------------------------------------------------------


@dataclass
class Event:
    """One kill (or backend termination) and what followed it."""

    number: int
    kind: str  # "SIGKILL" | "terminate"
    mailboxes: list[str]
    at: float  # time.monotonic()
    wall: float  # time.time(), to place log lines
    sent: int  # mails the SMTP sink had received by then
    taken: dict[str, float] = field(default_factory=dict)  # mailbox -> seconds to takeover
    by: dict[str, str] = field(default_factory=dict)  # mailbox -> "other" | "same"
    duplicate_acks: int = 0
    deduped: int = 0  # committed but unmoved mail fetched again and recognised


def test_three_daemons_two_mailboxes_a_thousand_mails_and_kills(
    pg_url: str, dovecot: Dovecot, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    dovecot.add_user(SALES_USER, SALES_PASSWORD)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-aged.yaml").write_text(TIME_RULE)
    secret = "k1 test-secret-key-0123456789abcdef\n"
    fleet = [
        Daemon(name, write_config(tmp_path / name, pg_url, dovecot, smtp_sink, rules, secret))
        for name in ("a", "b", "c")
    ]
    mails = {
        "support": [customer_mail(n) for n in range(MAILS_PER_MAILBOX)],
        "sales": [customer_mail(n, to=SALES_USER) for n in range(1000, 1000 + MAILS_PER_MAILBOX)],
    }
    expected_ids = {
        str(message_from_bytes(raw)["Message-ID"]).strip()
        for raws in mails.values()
        for raw in raws
    }
    seeded = asyncio.run(seed_due_tickets(fleet[0].config))
    rnd = random.Random(SEED)
    stop_delivery = threading.Event()

    def deliver() -> None:
        for start in range(0, MAILS_PER_MAILBOX, WAVE):
            for name, (user, _) in USERS.items():
                arrive(dovecot, user, mails[name][start : start + WAVE], start)
            if stop_delivery.wait(WAVE_EVERY):
                return

    events: list[Event] = []
    delivery = threading.Thread(target=deliver, daemon=True)
    started = time.monotonic()
    try:
        for daemon in fleet:
            daemon.start()
        delivery.start()
        wait_until(
            lambda: len(leases(pg_url)) == 2 and len(pids(pg_url)) == 3,
            120,
            "three daemons registered and both mailboxes leased",
        )
        by_pid = {d.pid: d for d in fleet}
        for number in range(SIGKILLS + 1):
            time.sleep(rnd.uniform(3, 4))
            mailbox = ("support", "sales")[number % 2]
            wait_until(lambda m=mailbox: m in leases(pg_url), TAKEOVER_LIMIT, f"{mailbox} leased")
            held = leases(pg_url)
            holder = held[mailbox][0]
            victim = by_pid[pids(pg_url)[holder]]
            mine = [m for m, (h, _) in held.items() if h == holder]
            before = tokens(pg_url)
            kind = "terminate" if number == TERMINATE_AT else "SIGKILL"
            event = Event(
                number + 1, kind, mine, time.monotonic(), time.time(), len(smtp_sink.deliveries)
            )
            events.append(event)
            if kind == "terminate":
                ended = terminate_backends(pg_url, victim.pid)
                assert ended >= 1, "no session of the holder found: nothing proven"
                served_again(pg_url, event, holder, before)
                continue
            workers = children(victim.pid)
            assert workers, "the daemon has no parse workers to check"
            assert victim.proc is not None
            victim.proc.kill()
            victim.proc.wait(10)
            taken_over(pg_url, event, holder, before)
            # its parse workers and the resource tracker go with it, by themselves
            wait_until(
                lambda w=workers: not any(running(p) for p in w),
                30,
                f"the killed daemon's children {sorted(workers)} to exit",
            )
            by_pid.pop(victim.pid)
            victim.start()
            by_pid[victim.pid] = victim
        kills_done = time.monotonic()
        delivery.join(120)
        assert not delivery.is_alive()
        try:
            wait_until(
                lambda: settled(pg_url, dovecot, len(expected_ids) + len(seeded)),
                240,
                "every mail stored and moved, every acknowledgement sent",
                interval=0.5,
                describe=lambda: where(pg_url, dovecot),
            )
        except AssertionError as exc:
            tails = "\n".join(d.tail() for d in fleet)
            raise AssertionError(f"{exc}\n{tails}\n--- dovecot:\n{dovecot.log_tail(40)}") from None
        finished = time.monotonic()
        # the daemon restarted last may still be starting (settling needed only the others)
        wait_until(lambda: all(d.started() for d in fleet), 60, "every daemon to be up")
        status = cli_json(fleet[0].config, "status")
    finally:
        stop_delivery.set()
        codes = [daemon.stop() for daemon in fleet]
    assert codes == [0, 0, 0], "\n".join(d.tail() for d in fleet)
    logs = [e for d in fleet for e in d.events()]

    # the fleet as status showed it near the end: three daemons, each mailbox polled
    assert len([d for d in status["daemons"] if not d["stale"]]) == 3
    assert all(m["lease"]["held"] for m in status["mailboxes"])
    # clean stops leave no daemon registered (killed ones were replaced by their restart)
    assert cli_json(fleet[0].config, "status")["daemons"] == []

    assert_every_mail_once(pg_url, dovecot, expected_ids, seeded)
    attribute(events, smtp_sink, logs)
    acks = acks_by_customer(smtp_sink)
    expected_customers = {f"customer{n}@example.org" for n in range(MAILS_PER_MAILBOX)} | {
        f"customer{n}@example.org" for n in range(1000, 1000 + MAILS_PER_MAILBOX)
    }
    assert expected_customers <= set(acks), "a customer got no acknowledgement"
    duplicates = sum(acks.values()) - len(acks)

    # the time rule: once per ticket, although three schedulers race; the seeded ones all
    fired = query(
        pg_url,
        "SELECT ticket_id, count(*) FROM events WHERE type = 'time_rule_fired' GROUP BY 1",
    )
    assert {n for _, n in fired} <= {1}, "a time rule fired twice on a ticket"
    assert set(seeded) <= {t for t, _ in fired}

    report(events, duplicates, started, kills_done, finished, len(fired))
    # a kill may catch one mail in flight on each of the outbox's connections
    bound = len(events) * CONNECTIONS
    assert duplicates <= bound, f"{duplicates} duplicate acks for {len(events)} kills"


async def seed_due_tickets(config: Config) -> list[int]:
    """Tickets stored before the daemons start, aged so that the time rule is due at once."""
    async with Desk(config) as desk:
        outcomes = await desk.ingest([customer_mail(n) for n in range(5000, 5000 + SEEDED)])
        ids = [int(str(o.ticket).split("-")[1]) for o in outcomes]
        past = datetime.now(UTC) - timedelta(minutes=2)
        async with desk.sessions() as session, session.begin():
            await session.execute(
                update(Ticket)
                .where(Ticket.id.in_(ids))
                .values(created_at=past, state_since=past, updated_at=past)
            )
    return ids


def taken_over(pg_url: str, event: Event, holder: str, before: dict[str, int]) -> None:
    """Wait (at most TAKEOVER_LIMIT) until another daemon holds each mailbox the victim held."""
    for mailbox in event.mailboxes:

        def moved(m: str = mailbox) -> bool:
            lease = leases(pg_url).get(m)
            return lease is not None and lease[0] != holder and lease[1] > before[m]

        wait_until(moved, TAKEOVER_LIMIT, f"{mailbox} taken over after kill {event.number}")
        event.taken[mailbox] = time.monotonic() - event.at
        event.by[mailbox] = "other"


def served_again(pg_url: str, event: Event, holder: str, before: dict[str, int]) -> None:
    """After the holder's sessions were ended: wait until each of its mailboxes is held again,
    by it (it reconnects and renews under the same token) or by another daemon."""
    renewed_after = datetime.now(UTC)
    for mailbox in event.mailboxes:

        def held(m: str = mailbox) -> bool:
            rows = query(
                pg_url,
                "SELECT holder, token FROM mailbox_leases WHERE mailbox = $1 "
                "AND expires_at > clock_timestamp() AND renewed_at > $2",
                m,
                renewed_after,
            )
            return bool(rows)

        wait_until(held, TAKEOVER_LIMIT, f"{mailbox} held again after the termination")
        event.taken[mailbox] = time.monotonic() - event.at
        holder_now, token = leases(pg_url)[mailbox]
        event.by[mailbox] = "same" if holder_now == holder and token == before[mailbox] else "other"


def settled(pg_url: str, dovecot: Dovecot, tickets: int) -> bool:
    for user, password in USERS.values():
        if dovecot.list_uids(user, password):
            return False
    stored = query(
        pg_url, "SELECT count(*) FROM raw_messages WHERE source IN ('support', 'sales')"
    )[0][0]
    states = dict(query(pg_url, "SELECT state, count(*) FROM outbox GROUP BY state"))
    return (
        stored == 2 * MAILS_PER_MAILBOX
        and sum(states.values()) >= tickets
        and not states.get("pending")
    )


def where(pg_url: str, dovecot: Dovecot) -> dict[str, Any]:
    """Where the work stands: mail left in each INBOX, stored, the outbox, the leases."""
    return {
        "inbox": {name: len(dovecot.list_uids(*login)) for name, login in USERS.items()},
        "stored": query(pg_url, "SELECT source, count(*) FROM raw_messages GROUP BY 1"),
        "outbox": query(pg_url, "SELECT state, count(*) FROM outbox GROUP BY 1"),
        "leases": query(
            pg_url,
            "SELECT mailbox, holder, token, expires_at > clock_timestamp() FROM mailbox_leases",
        ),
        "daemons": query(pg_url, "SELECT id, pid, stale_at > clock_timestamp() FROM daemons"),
    }


def assert_every_mail_once(
    pg_url: str, dovecot: Dovecot, expected_ids: set[str], seeded: list[int]
) -> None:
    rows = query(
        pg_url,
        "SELECT m.message_id, count(*) FROM messages m JOIN raw_messages r ON r.id = m.raw_id "
        "WHERE m.direction = 'in' AND r.source IN ('support', 'sales') GROUP BY 1",
    )
    got = dict(rows)
    assert set(got) == expected_ids, (
        f"{len(expected_ids - set(got))} lost, {len(set(got) - expected_ids)} unexpected"
    )
    assert {n for n in got.values()} == {1}, "a mail stored as two ticket messages"
    tickets = query(pg_url, "SELECT count(*) FROM tickets")[0][0]
    assert tickets == len(expected_ids) + len(seeded), "a ticket twice, or one missing"
    raw = query(
        pg_url,
        "SELECT source, uidvalidity, uid, count(*) FROM raw_messages "
        "WHERE source IN ('support', 'sales') GROUP BY 1, 2, 3",
    )
    assert len(raw) == len(expected_ids) and {n for *_, n in raw} == {1}
    assert query(pg_url, "SELECT count(*) FROM quarantine")[0][0] == 0
    acks = query(pg_url, "SELECT ticket_id, count(*) FROM outbox WHERE kind = 'ack' GROUP BY 1")
    assert len(acks) == tickets and {n for _, n in acks} == {1}
    # moved once: each mail is in its processed folder exactly once, none left behind
    moved: list[str] = []
    for user, password in USERS.values():
        assert dovecot.list_uids(user, password) == []
        moved += processed_ids(dovecot, user, password)
    twice = [mid for mid, n in Counter(moved).items() if n > 1]
    assert not twice, f"{len(twice)} mails moved into Processed twice: {twice[:3]}"
    assert set(moved) == expected_ids


def attribute(events: list[Event], sink: SmtpSink, logs: list[dict[str, Any]]) -> None:
    """Give each event the duplicate acknowledgements sent, and the committed but unmoved mail
    recognised again, between it and the next event."""
    sent = [e.sent for e in events] + [len(sink.deliveries)]
    seen: Counter[str] = Counter()
    for index, delivery in enumerate(sink.deliveries):
        if delivery.message.get("Auto-Submitted", "").strip().lower() != "auto-replied":
            continue
        for recipient in delivery.recipients:
            seen[recipient.lower()] += 1
            window = _window(sent, index)
            if seen[recipient.lower()] > 1 and window >= 0:
                events[window].duplicate_acks += 1
    walls = [e.wall for e in events] + [float("inf")]
    for entry in logs:
        if entry.get("event") == "message_stored" and entry.get("outcome") == "duplicate":
            at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            window = _window(walls, at)
            if window >= 0:
                events[window].deduped += 1


def _window(bounds: Sequence[float], value: float) -> int:
    """The index of the event whose window (from it to the next) holds VALUE; -1 before any."""
    for index in range(len(bounds) - 1):
        if bounds[index] <= value < bounds[index + 1]:
            return index
    return -1


def report(
    events: list[Event],
    duplicates: int,
    started: float,
    kills_done: float,
    finished: float,
    fired: int,
) -> None:
    lines = ["", "[fleet] 3 daemons, 2 mailboxes, 1000 mails, lease 5 s"]
    for e in events:
        taken = ", ".join(
            f"{m} {e.taken[m]:.1f} s ({'same daemon' if e.by[m] == 'same' else 'taken over'})"
            for m in e.mailboxes
        )
        lines.append(
            f"  {e.number}. {e.kind:9} holder of {'+'.join(e.mailboxes)}: {taken}; "
            f"{e.duplicate_acks} duplicate ack(s), {e.deduped} unmoved mail(s) deduped"
        )
    takeovers = [t for e in events if e.kind == "SIGKILL" for t in e.taken.values()]
    lines.append(
        f"  takeover after SIGKILL: min {min(takeovers):.1f} s, max {max(takeovers):.1f} s, "
        f"mean {sum(takeovers) / len(takeovers):.1f} s; {duplicates} duplicate ack(s) in all; "
        f"time rule fired on {fired} tickets, never twice; kills took {kills_done - started:.0f}"
        f" s, finishing {finished - kills_done:.0f} s"
    )
    print("\n".join(lines))
