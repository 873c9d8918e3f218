"""Commands that set up and run the service: init, db, check, run, ingest, rules test, status."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

from helpdeskd import __version__
from helpdeskd.cli.command import Subcommands, add_command, print_json, with_db
from helpdeskd.cli.progress import progress
from helpdeskd.clock import system_clock
from helpdeskd.config.load import load_config
from helpdeskd.config.settings import Config
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker, ensure_reachable, reading, upgrade

STARTER_CONFIG = """\
# helpdeskd configuration. Every key is described in the README; secrets live in files
# (*_file), environment variables (*_env) or systemd credentials (*_credential).

[service]
name = "Acme Postgres add-on"               # shown in templates and on the status page
support_address = "support@acme.test"       # the advertised address; tokens are plus-addressed
public_url = "https://support.acme.test"    # base of unsubscribe and status links
ticket_prefix = "HD"                        # subjects carry [HD-1042]
secret_key_file = "{secret}"                # HMAC keys: one 'ID SECRET' per line, first signs
timezone = "UTC"
state_dir = "{state}"

[database]
url = "sqlite:///{database}"                # or postgresql://user@host/db

# One [[mailbox]] per support mailbox:
# [[mailbox]]
# name = "support"
# host = "imap.acme.test"
# port = 993
# security = "tls"                          # tls | starttls | none (none only on loopback)
# username = "support@acme.test"
# password_file = "/etc/helpdeskd/imap-password"
# folder = "INBOX"
# processed_folder = "Processed"            # absent: keep in place, mark $Helpdeskd
# idle = true
# poll_interval = 60
# batch_size = 250                          # mails stored in one transaction when catching up

# A Microsoft 365 or Google Workspace mailbox logs in with OAuth 2.0 instead of a password
# (docs/admin.md; then run: helpdeskd oauth login support):
# auth = "oauth2"
# [mailbox.oauth]
# provider = "microsoft"                    # microsoft | google | generic
# tenant = "acme.onmicrosoft.com"
# client_id = "..."
# token_file = "{state}/oauth/support.json"

# [smtp]
# host = "smtp.acme.test"
# port = 587
# security = "starttls"                     # tls | starttls | none
# username = "support@acme.test"
# password_file = "/etc/helpdeskd/smtp-password"   # or auth = "oauth2" with [smtp.oauth]
# connections = 4                           # kept open and reused; rates: docs/admin.md
# return_path = "bounces@acme.test"         # VERP: bounces name the exact send; deliver
#                                           # bounces+*@ into a watched mailbox

# Bounce scores, as Mailman keeps them: hard 1, soft 0.5, once a day (docs/admin.md):
# [bounces]
# threshold = 5.0                           # suspended for notices at this score
# stale_after_days = 7                      # the score starts again after a quiet week

# How long personal data is kept, in days or "forever" (docs/privacy.md):
# [retention]
# raw_mail_days = 90                        # received mail as it came, after its ticket closes
# quarantine_days = 30                      # after the quarantine entry is resolved
# closed_ticket_days = 730                  # bodies and attachments of closed tickets

[http]
listen = "127.0.0.1:8025"                   # unsubscribe pages and /status, behind your proxy
# /metrics and /healthz are not served on listen (404 there) unless a request carries
# "Authorization: Bearer TOKEN" with the token of admin_token_file. Serve them on a private
# address instead, where they need no token:
# metrics_listen = "127.0.0.1:9025"
# admin_token_file = "/etc/helpdeskd/admin-token"   # or admin_token_env / _credential

# [[agent]]
# email = "alice@acme.test"
# name = "Alice"
"""


def _private_file(path: Path, text: str = "") -> None:
    """Create PATH readable and writable by its owner only (0600), with TEXT, if it is missing;
    make an existing one 0600. Created with that mode: never readable by others, not even for
    the moment before a chmod."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # the umask may have taken bits away, never added them; be exact


def cmd_init(args: argparse.Namespace) -> int:
    """Write a starter config, the token keys (0600) and a SQLite database (0600) in a state
    directory only its owner can enter (0700)."""
    path: Path = args.config or Path("helpdeskd.toml")
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; use --force to overwrite it")
    base = path.resolve().parent
    state = Path(args.state_dir).resolve() if args.state_dir else base / "state"
    secret = base / "secret.key"
    database = state / "helpdeskd.db"
    try:
        base.mkdir(parents=True, exist_ok=True)  # /etc/helpdeskd on a fresh host
        if state.is_dir():
            # A folder made before (by systemd-tmpfiles: 0750, group helpdeskd) is not ours
            # to change; one that every user can enter is worth a word.
            mode = stat.S_IMODE(state.stat().st_mode)
            if mode & 0o007:
                print(
                    f"helpdeskd: warning: {state} is open to every user (mode {mode:04o}): "
                    f"run 'chmod 700 {state}'",
                    file=sys.stderr,
                )
        else:
            state.mkdir(parents=True, mode=0o700)
            state.chmod(0o700)
        if not secret.exists():
            _private_file(secret, f"k1 {secrets.token_urlsafe(32)}\n")
        # SQLite gives the -wal and -shm files the database file's mode.
        _private_file(database)
        path.write_text(STARTER_CONFIG.format(secret=secret, state=state, database=database))
    except OSError as exc:
        raise UserError(f"{exc.filename or path}: cannot write: {exc.strerror}") from None
    config = load_config(path)
    upgrade(config.database.url)
    print(f"wrote {path} and {secret}; database ready at {config.database.url}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, config: Config) -> int:
    def waiting() -> None:
        print(
            "helpdeskd: another 'helpdeskd db upgrade' is running on this database; "
            "waiting for it to finish",
            file=sys.stderr,
            flush=True,
        )

    asyncio.run(ensure_reachable(config.database.url))
    upgrade(config.database.url, args.revision, waiting=waiting)
    print("database at head" if args.revision == "head" else f"database at {args.revision}")
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.daemon.checks import check_all

    for line in check_all(config):
        print(line)
    return 0


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.daemon.run import run_daemon

    # One line and exit 1 (systemd restarts us) rather than a traceback from deep in start-up.
    asyncio.run(ensure_reachable(config.database.url))
    return run_daemon(config, clock=system_clock)


def cmd_ingest(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.ingest.batch import Processor
    from helpdeskd.ingest.parsepool import ParsePool
    from helpdeskd.ingest.sources import read_sources
    from helpdeskd.triage.facts import Runtime

    async def body(sessions: SessionMaker) -> int:
        pool = ParsePool(config.parse.workers, config.parse.timeout)
        processor = Processor(Runtime.of(config, backfill=args.backfill), sessions, pool)
        counts: dict[str, int] = {}
        try:
            # No total: mbox files and Maildirs are counted only by reading them.
            with progress("ingesting", None) as advance:
                batch = []
                for item in read_sources(args.paths):
                    batch.append(item)
                    if len(batch) >= 50:
                        _report(await processor.process_batch(batch), args.json, counts)
                        advance(len(batch))
                        batch = []
                _report(await processor.process_batch(batch), args.json, counts)
                advance(len(batch))
        finally:
            pool.close()
        if not args.json:
            print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no messages")
        return 0

    return with_db(config, body)


def _report(outcomes: list[Any], as_json: bool, counts: dict[str, int]) -> None:
    for outcome in outcomes:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        if as_json:
            print_json(outcome.as_json())
        else:
            ticket = f" {outcome.ticket}" if outcome.ticket else ""
            print(f"{outcome.outcome}{ticket}\t{outcome.source}\t{outcome.reason}")


def cmd_rules_test(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.mail.parse import parse_message
    from helpdeskd.rules import loader
    from helpdeskd.rules.evaluate import evaluate
    from helpdeskd.store.contacts import plan_of
    from helpdeskd.triage.classify import classify
    from helpdeskd.triage.facts import classify_context
    from helpdeskd.triage.plan import rule_facts

    try:
        raw = args.message.read_bytes()
    except OSError as exc:
        raise UserError(f"{args.message}: cannot read: {exc.strerror}") from None
    rules = loader.load(config)
    parsed = parse_message(raw)

    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            plan = await plan_of(session, parsed.sender)
        kind = classify(parsed, classify_context(config))
        facts = rule_facts(
            parsed,
            mailbox=args.mailbox or "",
            kind=kind.kind,
            plan=plan,
            ticket=None,
            now=system_clock(),
        )
        decision = evaluate(rules, facts)
        if args.json:
            print_json({"kind": kind.kind, "kind_reason": kind.reason, **decision.as_json()})
        else:
            print(f"kind: {kind.kind} ({kind.reason})")
            for line in decision.describe():
                print(line)
        return 0

    return with_db(config, body)


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.oauth.credential import read_statuses
    from helpdeskd.store.views import status_rows

    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            status = await status_rows(session, [m.name for m in config.mailboxes])
        status["version"] = __version__
        status["oauth"] = [s.as_json() for s in await read_statuses(config, sessions)]
        if args.json:
            print_json(status)
            return 0
        for line in status_lines(status):
            print(line)
        return 0

    return with_db(config, body)


def _ago(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def status_lines(status: dict[str, Any]) -> list[str]:
    """The lines of ``helpdeskd status`` for the STATUS that ``status --json`` prints."""
    lines = [f"helpdeskd {status['version']}"]
    daemons = {d["id"]: d for d in status["daemons"]}
    if not daemons:
        lines.append("daemons: none running")
    for d in daemons.values():
        held = ", ".join(d["mailboxes"]) or "no mailbox"
        beat = _ago(d["seconds_since_heartbeat"])
        if d["stale"]:
            lines.append(
                f"daemon {d['host']} pid {d['pid']} ({d['version']}): STALE, last heartbeat "
                f"{beat} (killed, its host down, or it cannot reach the database)"
            )
        else:
            lines.append(
                f"daemon {d['host']} pid {d['pid']} ({d['version']}): up since "
                f"{d['started_at']}, heartbeat {beat}; polls {held}"
            )
    for m in status["mailboxes"]:
        lease = m["lease"]
        if lease["held"]:
            who = f"{lease['host']} pid {lease['pid']}" if lease["host"] else lease["daemon"]
            polled = f"polled by {who}" + (" (STALE)" if lease["stale"] else "")
        else:
            polled = "not polled now (no daemon holds its lease)"
        error = f"; last error {m['last_error_at']}: {m['last_error']}" if m["last_error"] else ""
        lines.append(
            f"mailbox {m['name']}: {polled}; last poll {m['last_poll_at'] or 'never'}, "
            f"last ok {m['last_ok_at'] or 'never'}{error}"
        )
    if status["outbox_depth"]:
        lines.append(f"outbox: {status['outbox_depth']} pending (oldest {status['outbox_oldest']})")
    else:
        lines.append("outbox: empty")
    lines.append(f"quarantine: {status['quarantined']}")
    for token in status["oauth"]:
        error = f"  last error: {token['last_error']}" if token["last_error"] else ""
        lines.append(
            f"oauth {token['name']}: {token['account']}, token expires "
            f"{token['expires_at'] or '(none yet)'}, last refresh "
            f"{token['last_refresh'] or 'never'}{error}"
        )
    return lines


# --- parsers, in the order of ``helpdeskd --help`` ---------------------------------------------


def add_init(sub: Subcommands) -> None:
    p = add_command(sub, "init", help="write a starter config (SQLite) and create the database")
    p.add_argument("--force", action="store_true")
    p.add_argument("--state-dir")
    p.set_defaults(func=cmd_init, needs_config=False)


def add_db(sub: Subcommands) -> None:
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db", required=True)
    p = add_command(db, "upgrade", help="alembic upgrade head")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=cmd_db_upgrade)


def add_check(sub: Subcommands) -> None:
    add_command(sub, "check", help="validate config and templates").set_defaults(func=cmd_check)


def add_run(sub: Subcommands) -> None:
    add_command(sub, "run", help="the daemon, in the foreground").set_defaults(func=cmd_run)


def add_ingest(sub: Subcommands) -> None:
    p = add_command(sub, "ingest", help=".eml, mbox or Maildir through the pipeline")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--backfill", action="store_true", help="store only; send nothing")
    p.set_defaults(func=cmd_ingest)


def add_rules(sub: Subcommands) -> None:
    rules = sub.add_parser("rules", help="routing and time rules")
    p = add_command(
        rules.add_subparsers(dest="rules", required=True),
        "test",
        help="which rules match a message, and why (changes nothing)",
    )
    p.add_argument("message", type=Path)
    p.add_argument("--mailbox", help="the mailbox it arrived in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rules_test)


def add_status(sub: Subcommands) -> None:
    p = add_command(
        sub, "status", help="daemons, mailboxes (who polls each, last poll), outbox, version"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
