"""The crash-safety proof: kill -9, IMAP, SMTP and database failures lose and duplicate nothing.

Every test runs the real daemon (``python -m helpdeskd run``) as a subprocess against a private
Dovecot, an aiosmtpd sink and the test database (SQLite and PostgreSQL), and then reads the
database directly, read-only, to prove the invariants of DESIGN.md "Ingest is durable and
idempotent" and "Transactional outbox":

- every mail in the INBOX is exactly one ticket message (none missing, none twice), and every
  mail is moved out of the INBOX in the end;
- every acknowledgement goes out at least once; a kill can repeat at most the one mail in flight;
- the database stays consistent (integrity check, foreign keys, one raw row per IMAP UID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from email import message_from_bytes
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from helpdeskd.config.settings import Config
from helpdeskd.store.models import Base
from tests.harness import ROOT, cli_json
from tests.mailgen import customer_mail
from tests.servers import postgres
from tests.servers.dovecot import Dovecot, _group_members, ensure_system_user
from tests.servers.fixtures import SUPPORT_PASSWORD, SUPPORT_USER
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.slow

SEED = 20261101
KILLS = 12  # the brief asks for at least 10
TARGETED = (2, 5)  # of which these kill right after a commit, before the move
WORK_TIMEOUT = 180.0  # generous: a deadline, not a measurement
OUTAGES_AFTER = (0, 50, 100, 150)  # test 4: mails stored before each PostgreSQL outage


# --- the daemon as a process --------------------------------------------------------------


class DaemonProcess:
    """``helpdeskd run`` in its own process group, logging to daemon.log beside the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log_path = Path(str(config.source)).parent / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0  # where the current incarnation's log starts
        self.pgids: list[int] = []

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ, HELPDESKD_CONFIG=str(self.config.source))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "helpdeskd", "run"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its parse workers can be found and reaped at the end
            )
        self.pgids.append(self.proc.pid)

    def kill(self) -> None:
        """kill -9 the daemon's main process, as the OOM killer would.

        Its parse workers outlive it, idle; systemd kills what is left of a unit's cgroup
        before it restarts the unit, and so does this.
        """
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        if _group_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (drain), then make sure no process of any incarnation is left."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            code = self.proc.returncode
        for pgid in self.pgids:
            if _group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        return code

    def text(self, *, current: bool = False) -> str:
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[self.offset if current else 0 :].decode(errors="replace")

    def events(self, *, current: bool = False) -> list[dict[str, Any]]:
        out = []
        for line in self.text(current=current).splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def tail(self, lines: int = 60) -> str:
        """The log's warnings and errors, then its last LINES lines."""
        text = self.text().splitlines()
        problems = [
            line for line in text if not line.startswith("{") or '"level": "info"' not in line
        ]
        return "\n".join(
            ["--- warnings and errors:", *problems[-40:], "--- last lines:", *text[-lines:]]
        )

    def wait_for_event(self, event: str, timeout: float = 60.0) -> None:
        """Wait until the current incarnation logged EVENT."""
        needle = f'"event": "{event}"'
        wait_until(
            lambda: needle in self.text(current=True),
            timeout,
            f"daemon event {event}",
            self,
        )


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    daemon: DaemonProcess | None = None,
    interval: float = 0.1,
    describe: Callable[[], object] | None = None,
) -> None:
    """Poll PREDICATE until it is true; fail with the daemon's log after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            code = daemon.proc.returncode
            if code not in (-signal.SIGKILL,):
                raise AssertionError(
                    f"daemon exited with {code} while waiting for {what}\n{daemon.tail()}"
                )
        if time.monotonic() > deadline:
            log = daemon.tail() if daemon is not None else ""
            state = f" ({describe()})" if describe is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}{state}\n{log}"
            )
        time.sleep(interval)


# --- mail -----------------------------------------------------------------------------------


def mailbox_config(dovecot: Dovecot, **extra: Any) -> dict[str, Any]:
    return {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": SUPPORT_USER,
        "password": SUPPORT_PASSWORD,
        "processed_folder": "Processed",
        "idle": True,
        "poll_interval": 1,
        **extra,
    }


def message_id_of(raw: bytes) -> str:
    value = message_from_bytes(raw)["Message-ID"]
    assert value, raw[:200]
    return str(value).strip()


def preload_inbox(dovecot: Dovecot, raws: Sequence[bytes], user: str = SUPPORT_USER) -> None:
    """Write RAWS straight into the user's Maildir INBOX (``new/``), as the LDA would.

    Dovecot keeps mail as ``maildir:<mail_root>/%u``; the files must belong to the mail user
    (``mail_uid``) or the imap process cannot move them. An APPEND per message would take
    seconds for 500; files take milliseconds, and Dovecot assigns UIDs on its next scan.
    """
    uid, gid = ensure_system_user()
    home = dovecot.mail_root / user
    for directory in (home, home / "cur", home / "new", home / "tmp"):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chown(directory, uid, gid)
    stamp = int(time.time())
    for n, raw in enumerate(raws):
        # Maildir stores LF line ends; Dovecot gives CRLF to IMAP clients
        name = f"{stamp}.M{n:06d}P{os.getpid()}.helpdeskd-test"
        tmp = home / "tmp" / name
        tmp.write_bytes(raw.replace(b"\r\n", b"\n"))
        tmp.chmod(0o600)
        os.chown(tmp, uid, gid)
        tmp.rename(home / "new" / name)


def inbox_uids(dovecot: Dovecot, folder: str = "INBOX") -> list[int]:
    return dovecot.list_uids(SUPPORT_USER, SUPPORT_PASSWORD, folder)


def acks_by_customer(sink: SmtpSink) -> Counter[str]:
    """How many acknowledgements (``Auto-Submitted: auto-replied``) each address received."""
    counts: Counter[str] = Counter()
    for delivery in sink.deliveries:
        if delivery.message.get("Auto-Submitted", "").strip().lower() != "auto-replied":
            continue
        for recipient in delivery.recipients:
            counts[recipient.lower()] += 1
    return counts


# --- the database, read directly ----------------------------------------------------------


def is_sqlite(db_url: str) -> bool:
    return db_url.startswith("sqlite")


def sql(db_url: str, query: str) -> list[tuple[Any, ...]]:
    """Run one read-only QUERY on the test database; return its rows as tuples."""
    if is_sqlite(db_url):
        path = make_url(db_url).database
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            return [tuple(row) for row in conn.execute(query)]
        finally:
            conn.close()
    return asyncio.run(_pg_fetch(db_url, query))


async def _pg_fetch(db_url: str, query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        async with conn.transaction(readonly=True):
            return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


def scalar(db_url: str, query: str) -> Any:
    rows = sql(db_url, query)
    return rows[0][0] if rows else None


def outbox_settled(db_url: str, expected: int) -> bool:
    """Whether EXPECTED outbox rows exist and none is pending any more."""
    rows = dict(sql(db_url, "SELECT state, count(*) FROM outbox GROUP BY state"))
    return sum(rows.values()) >= expected and not rows.get("pending")


def foreign_key_orphans(db_url: str) -> list[str]:
    """Check every foreign key of the schema with an anti-join; return the broken ones."""
    broken = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            child, parent = table.name, fk.column.table.name
            column, target = fk.parent.name, fk.column.name
            count = scalar(
                db_url,
                f'SELECT count(*) FROM "{child}" c LEFT JOIN "{parent}" p '
                f'ON c."{column}" = p."{target}" '
                f'WHERE c."{column}" IS NOT NULL AND p."{target}" IS NULL',
            )
            if count:
                broken.append(f"{child}.{column} -> {parent}.{target}: {count} orphan(s)")
    return broken


def assert_database_consistent(db_url: str) -> None:
    if is_sqlite(db_url):
        assert sql(db_url, "PRAGMA integrity_check") == [("ok",)]
        assert sql(db_url, "PRAGMA foreign_key_check") == []
    else:
        # the server enforces what is declared: check that all of it is in force (every
        # constraint validated, every unique index valid), then check the data below
        unvalidated = sql(
            db_url,
            "SELECT conname FROM pg_constraint JOIN pg_namespace n ON n.oid = connamespace "
            "WHERE n.nspname = 'public' AND NOT convalidated",
        )
        assert unvalidated == []
        invalid = sql(
            db_url,
            "SELECT indexrelid::regclass::text FROM pg_index "
            "JOIN pg_class ON pg_class.oid = pg_index.indrelid "
            "JOIN pg_namespace n ON n.oid = pg_class.relnamespace "
            "WHERE n.nspname = 'public' AND NOT (indisvalid AND indisready)",
        )
        assert invalid == []
    assert foreign_key_orphans(db_url) == []


def assert_exactly_once(db_url: str, expected_ids: Iterable[str]) -> None:
    """Each expected Message-ID is exactly one inbound message on a ticket of its own."""
    expected = sorted(expected_ids)
    rows = sql(
        db_url,
        "SELECT message_id, count(*) FROM messages WHERE direction = 'in' GROUP BY message_id",
    )
    got = dict(rows)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    twice = {mid: n for mid, n in got.items() if n != 1}
    assert not missing, f"{len(missing)} mails lost: {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected inbound messages: {extra[:5]}"
    assert not twice, f"mails stored more than once: {list(twice.items())[:5]}"
    assert scalar(db_url, "SELECT count(*) FROM tickets") == len(expected)
    per_ticket = sql(
        db_url,
        "SELECT t.id, count(m.id) FROM tickets t LEFT JOIN messages m "
        "ON m.ticket_id = t.id AND m.direction = 'in' GROUP BY t.id",
    )
    assert sorted({n for _, n in per_ticket}) == [1], "a ticket without or with two messages"
    assert scalar(db_url, "SELECT count(*) FROM quarantine") == 0
    # the raw key (source, UIDVALIDITY, UID): one row per IMAP message, never two
    raw = sql(
        db_url,
        "SELECT uidvalidity, uid, count(*) FROM raw_messages WHERE source = 'support' "
        "GROUP BY uidvalidity, uid",
    )
    assert len(raw) == len(expected), f"{len(raw)} raw keys for {len(expected)} mails"
    assert {n for *_, n in raw} == {1}
    assert scalar(db_url, "SELECT count(*) FROM raw_messages") == len(expected)


def assert_one_ack_each(db_url: str, tickets: int) -> None:
    """One acknowledgement queued per ticket: the outbox row is written with the ticket."""
    rows = sql(db_url, "SELECT ticket_id, count(*) FROM outbox WHERE kind = 'ack' GROUP BY 1")
    assert len(rows) == tickets
    assert {n for _, n in rows} == {1}


# --- 1. kill -9 at random moments ----------------------------------------------------------


def snapshot(dovecot: Dovecot, db_url: str) -> dict[str, int]:
    """Where the work stood when the daemon died (its state is frozen until the restart)."""
    states = dict(sql(db_url, "SELECT state, count(*) FROM outbox GROUP BY state"))
    return {
        "inbox": len(inbox_uids(dovecot)),
        "moved": len(inbox_uids(dovecot, "Processed")),
        "stored": scalar(db_url, "SELECT count(*) FROM raw_messages") or 0,
        "pending": states.get("pending", 0),
        "sent": states.get("sent", 0),
    }


def phase(before: dict[str, int], after: dict[str, int]) -> str:
    """Name the work a kill interrupted, from the snapshots around one incarnation."""
    if after["stored"] > after["moved"]:
        return "commit→move"  # stored, not yet moved: the next start must not duplicate it
    ingesting = after["inbox"] > 0 or after["stored"] > before["stored"]
    sending = after["pending"] > 0 or after["sent"] > before["sent"]
    if ingesting and sending:
        return "fetch/parse/commit+send"
    if ingesting:
        return "fetch/parse/commit"
    return "send" if sending else "idle"


def kill_when_committed(daemon: DaemonProcess, timeout: float = 30.0) -> None:
    """Kill the daemon the moment its log says a batch is committed: before the UID MOVE."""
    needle = b'"event": "message_stored"'
    deadline = time.monotonic() + timeout
    with daemon.log_path.open("rb") as log:
        log.seek(daemon.offset)
        pending = b""
        while time.monotonic() < deadline:
            pending += log.read()
            if needle in pending:
                daemon.kill()
                return
            pending = pending[-len(needle) :]
            time.sleep(0.001)
    raise AssertionError(f"no commit within {timeout:.0f} s\n{daemon.tail()}")


def test_kill_nine_at_random_moments_loses_and_duplicates_nothing(
    make_config: Callable[..., Config], smtp_sink: SmtpSink, dovecot: Dovecot, db_url: str
) -> None:
    """500 new tickets; the daemon is killed with SIGKILL twelve times while it works.

    Each kill comes 0.1 to 1.5 s (seeded) after the incarnation has selected the INBOX, so
    it lands in a SEARCH, FETCH, parse, commit, MOVE or SMTP send, usually with ingest and
    sending both under way; two of them are aimed at the moment a batch is committed and
    not yet moved. After each kill the frozen state (INBOX, Processed, raw rows, outbox)
    names what was interrupted. After the last restart the daemon must finish on its own.
    No agents are configured, so the outbox holds exactly the 500 acknowledgements.
    """
    count = 500
    raws = [customer_mail(n) for n in range(count)]
    expected_ids = [message_id_of(raw) for raw in raws]
    assert len(set(expected_ids)) == count
    preload_inbox(dovecot, raws)
    assert len(inbox_uids(dovecot)) == count
    config = make_config(
        smtp=smtp_sink, mailboxes=[mailbox_config(dovecot, batch_size=20)], agents=[]
    )
    rnd = random.Random(SEED)
    daemon = DaemonProcess(config)
    phases: list[str] = []
    before = snapshot(dovecot, db_url)
    started = time.monotonic()
    try:
        daemon.start()
        for number in range(KILLS):
            # kill somewhere in the work, not in the interpreter's start-up
            daemon.wait_for_event("imap_selected")
            if number in TARGETED and snapshot(dovecot, db_url)["inbox"]:
                kill_when_committed(daemon)
            else:
                time.sleep(rnd.uniform(0.1, 1.5))
                daemon.kill()
            after = snapshot(dovecot, db_url)
            phases.append(phase(before, after))
            before = after
            daemon.start()
        # The work may all be done before the last start: stop only a daemon that is up
        # (one stopped while Python still imports dies by the signal, as under systemd).
        daemon.wait_for_event("daemon_started")
        killed_at = time.monotonic()
        wait_until(
            lambda: not inbox_uids(dovecot) and outbox_settled(db_url, count),
            WORK_TIMEOUT,
            "the INBOX to empty and the outbox to settle",
            daemon,
            interval=0.5,
            describe=lambda: snapshot(dovecot, db_url),
        )
        finished = time.monotonic()
        assert daemon.running, daemon.tail()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    seen_again = sum(
        1
        for e in daemon.events()
        if e.get("event") == "message_stored" and e.get("outcome") == "duplicate"
    )

    # all moved, all acknowledged
    assert inbox_uids(dovecot) == []
    assert len(inbox_uids(dovecot, "Processed")) == count
    rows = cli_json(config, "outbox", "list")
    assert len(rows) == count
    assert {r["state"] for r in rows} == {"sent"}, [r for r in rows if r["state"] != "sent"][:3]

    # every mail is exactly one ticket message, and the database is sound
    assert_exactly_once(db_url, expected_ids)
    assert_one_ack_each(db_url, count)
    assert_database_consistent(db_url)

    acks = acks_by_customer(smtp_sink)
    customers = {f"customer{n}@example.org" for n in range(count)}
    assert customers - set(acks) == set(), "customers without an acknowledgement"
    assert set(acks) == customers
    repeated = sum(acks.values()) - count
    print(
        f"\n[{'sqlite' if is_sqlite(db_url) else 'postgresql'}] {len(phases)} kills "
        f"{dict(Counter(phases))}; {repeated} duplicate ack(s); {seen_again} committed but "
        f"unmoved mail(s) fetched again and deduped; kills took {killed_at - started:.1f} s, "
        f"finishing {finished - killed_at:.1f} s"
    )
    # a kill may catch one mail in flight on each of the outbox's connections
    bound = len(phases) * config.smtp.connections
    assert repeated <= bound, f"{repeated} duplicate acks for {len(phases)} kills"


def test_kill_between_commit_and_move_stores_nothing_twice(
    make_config: Callable[..., Config], smtp_sink: SmtpSink, dovecot: Dovecot, db_url: str
) -> None:
    """The narrowest window, held open on purpose: the batch is committed, the move fails.

    Random kills hit the moment between the commit and the UID MOVE only now and then (it
    lasts milliseconds). Here the processed folder belongs to root, so Dovecot refuses the
    MOVE: the mail stays in the INBOX, committed, for as long as the test likes. The daemon
    is killed in that state and restarted after the folder is fixed; it must move the mail
    without storing or acknowledging any of it again.
    """
    count = 30
    raws = [customer_mail(n) for n in range(count)]
    preload_inbox(dovecot, raws)
    processed = dovecot.mail_root / SUPPORT_USER / ".Processed"
    for directory in (processed, processed / "cur", processed / "new", processed / "tmp"):
        directory.mkdir(mode=0o755)  # root's: the mail user cannot add to it
    config = make_config(smtp=smtp_sink, mailboxes=[mailbox_config(dovecot)], agents=[])
    daemon = DaemonProcess(config)
    try:
        daemon.start()
        wait_until(
            lambda: (
                scalar(db_url, "SELECT count(*) FROM raw_messages") == count
                and outbox_settled(db_url, count)
                and "UID MOVE failed" in daemon.text()
            ),
            60,
            "the batch committed, acknowledged and its move refused",
            daemon,
        )
        assert len(inbox_uids(dovecot)) == count
        daemon.kill()
        uid, gid = ensure_system_user()
        for directory in (processed, processed / "cur", processed / "new", processed / "tmp"):
            os.chown(directory, uid, gid)
            directory.chmod(0o700)
        daemon.start()
        wait_until(lambda: not inbox_uids(dovecot), 60, "the INBOX to empty", daemon)
        daemon.wait_for_event("imap_moved")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert len(inbox_uids(dovecot, "Processed")) == count
    assert_exactly_once(db_url, [message_id_of(raw) for raw in raws])
    assert_one_ack_each(db_url, count)
    assert_database_consistent(db_url)
    acks = acks_by_customer(smtp_sink)
    assert acks == Counter({f"customer{n}@example.org": 1 for n in range(count)})
    again = [
        e
        for e in daemon.events(current=True)
        if e.get("event") == "message_stored" and e.get("outcome") == "duplicate"
    ]
    assert len(again) >= count, "the restarted daemon did not see the stored mail again"


# --- 2. Dovecot restarts -------------------------------------------------------------------


def test_dovecot_restart_mid_run(
    make_config: Callable[..., Config], smtp_sink: SmtpSink, dovecot: Dovecot, db_url: str
) -> None:
    raws = [customer_mail(n) for n in range(120)]
    preload_inbox(dovecot, raws[:100])
    config = make_config(
        smtp=smtp_sink, mailboxes=[mailbox_config(dovecot, batch_size=10)], agents=[]
    )
    daemon = DaemonProcess(config)
    try:
        daemon.start()
        daemon.wait_for_event("imap_batch_stored")
        assert inbox_uids(dovecot), "the daemon finished before the restart: nothing proven"
        dovecot.restart()
        for raw in raws[100:]:
            dovecot.append(SUPPORT_USER, SUPPORT_PASSWORD, raw)
        wait_until(
            lambda: not inbox_uids(dovecot) and outbox_settled(db_url, 120),
            WORK_TIMEOUT,
            "all 120 mails moved and acknowledged",
            daemon,
            interval=0.3,
        )
        assert daemon.running
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    reconnects = [e for e in daemon.events() if e.get("event") == "imap_reconnect_scheduled"]
    assert reconnects, "the restart went unnoticed: nothing proven"
    assert len(inbox_uids(dovecot, "Processed")) == 120
    assert_exactly_once(db_url, [message_id_of(raw) for raw in raws])
    assert_database_consistent(db_url)
    acks = acks_by_customer(smtp_sink)
    assert set(acks) == {f"customer{n}@example.org" for n in range(120)}
    assert set(acks.values()) == {1}


# --- 3. SMTP refusals ----------------------------------------------------------------------


def test_smtp_refuses_4xx_then_5xx(
    make_config: Callable[..., Config], smtp_sink: SmtpSink, dovecot: Dovecot, db_url: str
) -> None:
    deferred, rejected = "customer1@example.org", "customer2@example.org"
    smtp_sink.handler.refuse[deferred] = "451 4.3.0 try later"
    smtp_sink.handler.refuse[rejected] = "550 5.1.1 no such user"
    raws = [customer_mail(n) for n in range(6)]
    preload_inbox(dovecot, raws)
    config = make_config(smtp=smtp_sink, mailboxes=[mailbox_config(dovecot)], agents=[])
    daemon = DaemonProcess(config)

    def recipient_state(address: str) -> tuple[str, int] | None:
        rows = sql(
            db_url,
            f"SELECT state, attempts FROM outbox_recipients WHERE address = '{address}'",
        )
        return rows[0] if rows else None

    try:
        daemon.start()
        # the 451 is retried, and stays pending while it is refused
        wait_until(
            lambda: (recipient_state(deferred) or ("", 0))[1] >= 2,
            60,
            f"a second deferred attempt for {deferred}",
            daemon,
        )
        # (more attempts may have come meanwhile: the test config retries within a second)
        state, attempts = recipient_state(deferred) or ("", 0)
        assert state == "pending" and attempts >= 2
        assert deferred not in acks_by_customer(smtp_sink)
        del smtp_sink.handler.refuse[deferred]
        wait_until(
            lambda: not inbox_uids(dovecot) and outbox_settled(db_url, len(raws)),
            60,
            "the outbox to settle",
            daemon,
        )
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    acks = acks_by_customer(smtp_sink)
    assert acks[deferred] == 1
    assert rejected not in acks
    others = {f"customer{n}@example.org" for n in (0, 3, 4, 5)}
    assert {a: acks[a] for a in others} == dict.fromkeys(others, 1)

    rows = {r["recipients"][0]["address"]: r for r in cli_json(config, "outbox", "list")}
    assert {a: rows[a]["state"] for a in others} == dict.fromkeys(others, "sent")
    assert {rows[a]["attempts"] for a in others} == {1}
    assert rows[deferred]["state"] == "sent"
    assert rows[deferred]["attempts"] >= 3
    assert rows[deferred]["recipients"][0]["state"] == "sent"
    assert rows[rejected]["state"] == "failed"
    assert rows[rejected]["recipients"][0]["state"] == "failed"
    assert "550" in (rows[rejected]["recipients"][0]["last_error"] or "")
    assert rows[rejected]["attempts"] == 1  # a 5xx is final: no retry
    ticket = cli_json(config, "tickets", "show", rows[rejected]["ticket"])
    failures = [e for e in ticket["events"] if e["type"] == "delivery_failed"]
    assert len(failures) == 1, ticket["events"]
    assert failures[0]["detail"]["recipient"] == rejected
    assert "550" in failures[0]["detail"]["error"]
    # nobody else's ticket has a delivery failure
    by_ticket = sql(
        db_url, "SELECT ticket_id, count(*) FROM events WHERE type = 'delivery_failed' GROUP BY 1"
    )
    assert [f"HD-{t}" for t, _ in by_ticket] == [rows[rejected]["ticket"]]


# --- 4. PostgreSQL goes away ---------------------------------------------------------------


async def _pg_admin(query: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(postgres.PG_DSN, timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


def pg_outage(db_url: str, down_for: float) -> int:
    """Refuse new connections to the test database, end every session in it, wait DOWN_FOR
    seconds, and accept connections again; return how many sessions were ended."""
    name = make_url(db_url).database
    assert name and name.startswith("helpdeskd_test_")

    async def outage() -> int:
        await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            ended = await _pg_admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(down_for)
        finally:
            await _pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        return sum(1 for (ok,) in ended if ok)

    return asyncio.run(outage())


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgres_restart_mid_run(
    make_config: Callable[..., Config], smtp_sink: SmtpSink, dovecot: Dovecot, db_url: str
) -> None:
    """What a PostgreSQL restart does to its clients, without restarting the shared server.

    A restart (``pg_ctl restart``, fast mode) ends every session with FATAL 57P01
    ``terminating connection due to administrator command``, rolls back every open
    transaction, and refuses new connections until the server is up again. That is exactly
    what happens here, confined to the test's own database: ``ALTER DATABASE ...
    ALLOW_CONNECTIONS false`` refuses new connections, ``pg_terminate_backend`` sends the same
    57P01 to each of the daemon's sessions (pooled, the mailbox advisory-lock holder, the
    one in the middle of a batch or an outbox claim), and a moment later connections are
    allowed again. Restarting the real server would break every other test running at the
    time; what the daemon sees is the same.
    """
    count = 200
    raws = [customer_mail(n) for n in range(count)]
    preload_inbox(dovecot, raws)
    config = make_config(
        smtp=smtp_sink, mailboxes=[mailbox_config(dovecot, batch_size=10)], agents=[]
    )
    rnd = random.Random(SEED)
    daemon = DaemonProcess(config)
    ended: list[int] = []
    try:
        daemon.start()
        for threshold in OUTAGES_AFTER:
            # mid-run: while batches are committed and acknowledgements sent
            wait_until(
                lambda t=threshold: scalar(db_url, "SELECT count(*) FROM raw_messages") >= t,
                WORK_TIMEOUT,
                f"{threshold} mails stored",
                daemon,
            )
            daemon.wait_for_event("imap_selected")
            time.sleep(rnd.uniform(0.1, 0.6))
            ended.append(pg_outage(db_url, down_for=rnd.uniform(0.5, 2.0)))
        wait_until(
            lambda: not inbox_uids(dovecot) and outbox_settled(db_url, count),
            WORK_TIMEOUT,
            "all mail moved and acknowledged after the outages",
            daemon,
            interval=0.3,
        )
        assert daemon.running, daemon.tail()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert sum(ended) >= 3, f"the outages ended {ended} sessions: nothing proven"
    assert len(inbox_uids(dovecot, "Processed")) == count
    assert_exactly_once(db_url, [message_id_of(raw) for raw in raws])
    assert_one_ack_each(db_url, count)
    assert_database_consistent(db_url)
    acks = acks_by_customer(smtp_sink)
    assert set(acks) == {f"customer{n}@example.org" for n in range(count)}
    # nothing is sent twice: the mails in flight are finished, their results kept in memory
    # and recorded once the database is back
    assert sum(acks.values()) == count, {a: n for a, n in acks.items() if n > 1}
    crashes = sum(1 for e in daemon.events() if e.get("event") == "task_crashed")
    print(
        f"\n[postgresql] {len(ended)} outages ended {ended} sessions; "
        f"{sum(acks.values()) - count} duplicate ack(s); {crashes} task crash(es) restarted"
    )
