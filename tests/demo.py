"""Watch helpdeskd work: a private Dovecot and SMTP sink, the daemon on SQLite, sample mail.

Run by ``bash .ci/demo`` (the README's first command). It prints, as they happen, the tickets
the daemon opens, the mail it sends, and what an agent's emailed answer with a command tag
does. Ctrl-C stops and removes everything.
``--once`` exits after the sample mail is through (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, make_msgid
from pathlib import Path
from typing import TypeVar

from helpdeskd.store.db import upgrade
from tests.mailgen import customer_mail
from tests.servers.dovecot import Dovecot
from tests.servers.smtp import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "support@acme.test", "demo-password"
AGENT = "alice@acme.test"
T = TypeVar("T")


def sample_mail() -> list[tuple[str, bytes]]:
    """A morning at the support desk: new questions, a follow-up, a robot."""
    first = "<demo-1@customer.example>"
    return [
        (
            "new question",
            customer_mail(
                1,
                sender="ada@customer.example",
                name="Ada Lovelace",
                subject="Database connection refused since 09:00",
                message_id=first,
            ),
        ),
        (
            "new question, HTML",
            customer_mail(
                2,
                sender="grace@navy.example",
                name="Grace Hopper",
                subject="Wie kann ich den Plan wechseln?",
                html=True,
            ),
        ),
        (
            "with attachment",
            customer_mail(
                3,
                sender="linus@kernel.example",
                name="Linus",
                subject="Backups not running",
                attachment=True,
            ),
        ),
        (
            "reply in the thread",
            customer_mail(
                1,
                sender="ada@customer.example",
                name="Ada",
                subject="Re: Database connection refused",
                in_reply_to=first,
                references=(first,),
                body="It works again after the restart, thanks!",
            ),
        ),
        (
            "out-of-office robot",
            customer_mail(
                4,
                sender="bob@away.example",
                subject="Automatic reply: back on Monday",
                headers={"Auto-Submitted": "auto-replied"},
            ),
        ),
    ]


def agent_answer(notification: EmailMessage) -> bytes:
    """Alice's answer from her phone to NOTIFICATION: a command, then a line for the customer."""
    [(_, address)] = getaddresses([str(notification["Reply-To"])])
    msg = EmailMessage()
    msg["From"] = f"Alice <{AGENT}>"
    msg["To"] = address
    msg["Subject"] = f"Re: {notification['Subject']}"
    msg["Message-ID"] = make_msgid("phone", domain="acme.test")
    msg["In-Reply-To"] = msg["References"] = notification["Message-ID"]
    # Command tags come first; the text after them goes to the customer, the signature does not.
    msg.set_content(
        "#status solved\n\nGlad it works again! Write any time.\n\n--\nSent from my phone\n"
    )
    return msg.as_bytes(policy=SMTP)


def latest_notification(sink: SmtpSink, ref: str) -> EmailMessage | None:
    """The agent's notification about REF's customer follow-up (the second about REF)."""
    notes = [
        d.message
        for d in sink.deliveries
        if AGENT in d.recipients and ref in str(d.message["Subject"])
    ]
    return notes[-1] if len(notes) >= 2 else None


def wait_until(found: Callable[[], T], stop: threading.Event, timeout: float = 60) -> T | None:
    """FOUND's first true value within TIMEOUT seconds, or None (also on Ctrl-C)."""
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.1)
    return None


def write_config(state: Path, dovecot: Dovecot, sink: SmtpSink) -> Path:
    (state / "secret.key").write_text("k1 demo-secret-0123456789abcdef\n")
    (state / "imap-password").write_text(PASSWORD + "\n")
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
url = "sqlite:///{state / "helpdeskd.db"}"

[[mailbox]]
name = "support"
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
username = "{USER}"
password_file = "imap-password"
folder = "INBOX"
processed_folder = "Processed"
idle = true
poll_interval = 60

[smtp]
host = "127.0.0.1"
port = {sink.port}
security = "none"

[[agent]]
email = "{AGENT}"
name = "Alice"
""")
    return config


def follow(proc: subprocess.Popen[str], seen: dict[str, int]) -> None:
    """Print the daemon's events a newcomer cares about, as they happen."""
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            print(f"  daemon: {line.rstrip()}")
            continue
        name = event.get("event")
        seen[name] = seen.get(name, 0) + 1
        if name == "message_stored":
            outcome = event.get("outcome")
            ticket = event.get("ticket") or "-"
            print(f"  [{ticket:>6}] {outcome:<11} {event.get('reason')}")
        elif name == "mail_sent":
            seen[f"sent {event.get('kind')}"] = seen.get(f"sent {event.get('kind')}", 0) + 1
            print(
                f"  [outbox] sent {event.get('kind')} to {', '.join(event.get('recipients', []))}"
            )
        elif name in ("daemon_started", "daemon_stopped", "imap_connected"):
            print(f"  daemon: {name}")
        elif event.get("level") in ("warning", "error"):
            print(f"  daemon {event.get('level')}: {name} {event.get('error', '')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit when the sample is through")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds between sample mails")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="helpdeskd-demo-"))
    dovecot = Dovecot()
    sink = SmtpSink()
    proc: subprocess.Popen[str] | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"demo: state in {state}")
        dovecot.add_user(USER, PASSWORD)
        dovecot.start()
        print(f"demo: private Dovecot on 127.0.0.1:{dovecot.port}")
        sink.start()
        print(f"demo: SMTP sink (aiosmtpd) on 127.0.0.1:{sink.port}")
        config = write_config(state, dovecot, sink)
        upgrade(f"sqlite:///{state / 'helpdeskd.db'}")
        env = dict(os.environ, HELPDESKD_CONFIG=str(config), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "helpdeskd", "run"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        seen: dict[str, int] = {}

        def stored() -> int:
            return seen.get("message_stored", 0)

        threading.Thread(target=follow, args=(proc, seen), daemon=True).start()
        while not seen.get("daemon_started"):
            if proc.poll() is not None:
                print("demo: the daemon exited early", file=sys.stderr)
                return 1
            time.sleep(0.1)
        mails = sample_mail()
        for label, raw in mails:
            if stop.is_set():
                break
            time.sleep(args.delay)
            print(f"\ndemo: a customer's mail arrives in INBOX ({label})")
            dovecot.append(USER, PASSWORD, raw)
        # The agent answers once the customer's follow-up has reached her and the rest is in.
        note = wait_until(lambda: latest_notification(sink, "[HD-1]"), stop)
        if note is not None and wait_until(lambda: stored() >= len(mails), stop):
            time.sleep(args.delay)
            print(f"\ndemo: {AGENT} answers HD-1 from her phone, with #status solved on top")
            dovecot.append(USER, PASSWORD, agent_answer(note))
        # Three new tickets, a follow-up, a robot, the agent's answer: what goes out for them.
        expected = {"ack": 3, "agent_notification": 4, "reply": 1, "agent_notice": 1}

        def sent() -> dict[str, int]:
            return {kind: seen.get(f"sent {kind}", 0) for kind in expected}

        wait_until(lambda: stored() > len(mails) and sent() == expected, stop)
        if args.once:
            print(f"\ndemo: {stored()} mails stored; mails sent by kind: {sent()}")
            subprocess.run(
                [sys.executable, "-m", "helpdeskd", "tickets", "list"], env=env, cwd=ROOT
            )
            return 0 if stored() == len(mails) + 1 and sent() == expected else 1
        print(
            "\ndemo: the daemon keeps watching INBOX. Try:\n"
            f"  HELPDESKD_CONFIG={config} .venv/bin/helpdeskd tickets list\n"
            "Ctrl-C stops the demo and removes everything."
        )
        while not stop.is_set() and proc.poll() is None:
            stop.wait(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("\ndemo: stopping")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        sink.stop()
        dovecot.close()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
