"""The ``helpdeskd`` command line. Exit status: 0 ok, 1 user error (one line), 2 usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import update

from helpdeskd import __version__
from helpdeskd.config.settings import Config, default_config_path, load_config
from helpdeskd.daemon.logs import configure
from helpdeskd.errors import HelpdeskError, UserError
from helpdeskd.store.db import check_schema, create_engine, reading, sessionmaker, upgrade
from helpdeskd.store.models import Outbox, OutboxRecipient, utcnow

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

# [smtp]
# host = "smtp.acme.test"
# port = 587
# security = "starttls"                     # tls | starttls | none
# username = "support@acme.test"
# password_file = "/etc/helpdeskd/smtp-password"

[http]
listen = "127.0.0.1:8025"

# [[agent]]
# email = "alice@acme.test"
# name = "Alice"
"""


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=None))


Row = dict[str, Any]


def _listing(
    args: argparse.Namespace,
    config: Config,
    fetch: Callable[[Any], Awaitable[list[Row]]],
    line: Callable[[Row], str],
) -> int:
    """Run a listing command: FETCH the rows in a session, then JSON or one LINE each."""

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            rows = await fetch(session)
        if args.json:
            _print_json(rows)
        else:
            for row in rows:
                print(line(row))
        return 0

    return _with_db(config, body)


def _with_db(config: Config, body: Callable[[Any], Awaitable[int]]) -> int:
    async def main() -> int:
        engine = create_engine(config.database.url)
        try:
            await check_schema(engine)
            return await body(sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


# --- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    path: Path = args.config or Path("helpdeskd.toml")
    if path.exists() and not args.force:
        raise UserError(f"{path} exists; use --force to overwrite it")
    base = path.resolve().parent
    state = Path(args.state_dir).resolve() if args.state_dir else base / "state"
    state.mkdir(parents=True, exist_ok=True)
    secret = base / "secret.key"
    if not secret.exists():
        secret.write_text(f"k1 {secrets.token_urlsafe(32)}\n")
        secret.chmod(0o600)
    path.write_text(
        STARTER_CONFIG.format(secret=secret, state=state, database=state / "helpdeskd.store.db")
    )
    config = load_config(path)
    upgrade(config.database.url)
    print(f"wrote {path} and {secret}; database ready at {config.database.url}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, config: Config) -> int:
    upgrade(config.database.url, args.revision)
    print("database at head")
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.daemon.checks import check_all

    for line in check_all(config):
        print(line)
    return 0


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.daemon.run import run_daemon

    return run_daemon(config)


def cmd_ingest(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.ingest.batch import Processor
    from helpdeskd.ingest.parsepool import ParsePool
    from helpdeskd.ingest.sources import read_sources
    from helpdeskd.mail.render import Renderer

    async def body(sessions: Any) -> int:
        pool = ParsePool(config.parse.workers, config.parse.timeout)
        processor = Processor(
            config, sessions, Renderer(config.paths.templates), pool, backfill=args.backfill
        )
        counts: dict[str, int] = {}
        try:
            batch = []
            for item in read_sources(args.paths):
                batch.append(item)
                if len(batch) >= 50:
                    _report(await processor.process_batch(batch), args.json, counts)
                    batch = []
            _report(await processor.process_batch(batch), args.json, counts)
        finally:
            pool.close()
        if not args.json:
            print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no messages")
        return 0

    return _with_db(config, body)


def _report(outcomes: list[Any], as_json: bool, counts: dict[str, int]) -> None:
    for outcome in outcomes:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        if as_json:
            _print_json(outcome.as_json())
        else:
            ticket = f" {outcome.ticket}" if outcome.ticket else ""
            print(f"{outcome.outcome}{ticket}\t{outcome.source}\t{outcome.reason}")


def cmd_tickets_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.store.views import ticket_rows

    return _listing(
        args,
        config,
        lambda session: ticket_rows(session, config, state=args.state),
        lambda row: (
            f"{row['ref']:<10} {row['state']:<8} {row['priority']:<7} "
            f"{row['requester']:<30} {row['subject'][:60]}"
        ),
    )


def cmd_tickets_show(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.store.views import ticket_detail

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            detail = await ticket_detail(session, config, args.ref)
        if detail is None:
            raise UserError(f"no ticket {args.ref}")
        if args.json:
            _print_json(detail)
            return 0
        print(f"{detail['ref']} [{detail['state']}, {detail['priority']}] {detail['subject']}")
        print(f"requester: {detail['requester']}  assignee: {detail['assignee'] or '-'}")
        for message in detail["messages"]:
            flag = " (internal)" if message["internal"] else ""
            print(f"\n--- {message['direction']} {message['kind']}{flag} {message['created_at']}")
            print(f"From: {message['from']}\nSubject: {message['subject']}\n")
            print(message["text"])
        print("\nevents:")
        for event in detail["events"]:
            print(f"  {event['created_at']} {event['type']} by {event['actor']} {event['detail']}")
        return 0

    return _with_db(config, body)


def cmd_outbox_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.store.views import outbox_rows

    def line(row: Row) -> str:
        rcpts = ",".join(f"{r['address']}={r['state']}" for r in row["recipients"])
        return f"{row['id']:<6} {row['state']:<8} {row['kind']:<12} {rcpts}"

    return _listing(args, config, lambda session: outbox_rows(session, config), line)


def cmd_outbox_retry(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            row = await session.get(Outbox, args.id)
            if row is None:
                raise UserError(f"no outbox row {args.id}")
            if row.state not in ("failed", "pending"):
                raise UserError(f"outbox row {args.id} is {row.state}; only failed rows retry")
            await session.execute(
                update(OutboxRecipient)
                .where(OutboxRecipient.outbox_id == row.id, OutboxRecipient.state == "failed")
                .values(state="pending", attempts=0)
            )
            row.state, row.next_attempt_at = "pending", utcnow()
        print(f"outbox row {args.id} queued again")
        return 0

    return _with_db(config, body)


def cmd_quarantine_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.store.views import quarantine_rows

    return _listing(
        args,
        config,
        quarantine_rows,
        lambda row: f"{row['id']:<6} {row['source']}:{row['uid']}  {row['error'][:80]}",
    )


def cmd_quarantine_show(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.store.views import quarantine_detail

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            detail = await quarantine_detail(session, args.id)
        if detail is None:
            raise UserError(f"no quarantine entry {args.id}")
        if args.json:
            _print_json(detail)
            return 0
        for key in ("id", "source", "uid", "message_id", "size", "retries", "created_at"):
            print(f"{key}: {detail[key]}")
        print(f"error: {detail['error']}\n\n{detail['traceback']}")
        if args.raw:
            sys.stdout.write(detail["raw"] or "(raw bytes not stored)\n")
        return 0

    return _with_db(config, body)


def cmd_quarantine_retry(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.ingest.batch import Processor
    from helpdeskd.ingest.parsepool import ParsePool
    from helpdeskd.mail.render import Renderer

    async def body(sessions: Any) -> int:
        pool = ParsePool(1, config.parse.timeout)
        processor = Processor(config, sessions, Renderer(config.paths.templates), pool)
        try:
            outcome = await processor.retry_quarantined(args.id)
        finally:
            pool.close()
        if args.json:
            _print_json(outcome.as_json())
        else:
            ticket = f" {outcome.ticket}" if outcome.ticket else ""
            print(f"{outcome.outcome}{ticket}\t{outcome.reason}")
        return 0 if outcome.outcome != "quarantined" else 1

    return _with_db(config, body)


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.store.views import status_rows

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            status = await status_rows(session)
        status["version"] = __version__
        if args.json:
            _print_json(status)
            return 0
        print(f"helpdeskd {__version__}")
        for m in status["mailboxes"]:
            error = f"  last error: {m['last_error']}" if m["last_error"] else ""
            print(
                f"mailbox {m['name']}: last poll {m['last_poll_at']}, ok {m['last_ok_at']}{error}"
            )
        print(f"outbox: {status['outbox_depth']} pending (oldest {status['outbox_oldest']})")
        print(f"quarantine: {status['quarantined']}")
        return 0

    return _with_db(config, body)


def cmd_rules_test(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk import routing
    from helpdeskd.ingest.batch import Processor
    from helpdeskd.mail.parse import parse_message
    from helpdeskd.rules.engine import evaluate
    from helpdeskd.triage.classify import classify

    try:
        raw = args.message.read_bytes()
    except OSError as exc:
        raise UserError(f"{args.message}: cannot read: {exc.strerror}") from None
    rules = routing.load(config)
    parsed = parse_message(raw)

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            plan = await routing.plan_of(session, parsed.sender)
        kind = classify(parsed, Processor.context_for(config))
        facts = routing.facts(
            parsed, mailbox=args.mailbox or "", kind=kind.kind, plan=plan, ticket=None
        )
        decision = evaluate(rules, facts)
        if args.json:
            _print_json({"kind": kind.kind, "kind_reason": kind.reason, **decision.as_json()})
        else:
            print(f"kind: {kind.kind} ({kind.reason})")
            for line in decision.describe():
                print(line)
        return 0

    return _with_db(config, body)


def cmd_customers_import(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.customers import import_csv

    async def body(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            created, updated = await import_csv(session, args.file)
        print(f"{created} customers added, {updated} updated")
        return 0

    return _with_db(config, body)


def cmd_customers_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.customers import customer_rows

    return _listing(
        args,
        config,
        customer_rows,
        lambda row: (
            f"{row['email']:<36} {row['status']:<14} {row['plan'] or '-':<14} {row['app'] or '-'}"
        ),
    )


def cmd_contacts_show(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.customers import contact_detail

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            detail = await contact_detail(session, config, args.email)
        if detail is None:
            raise UserError(f"no contact {args.email}")
        if args.json:
            _print_json(detail)
            return 0
        for key in (
            "email",
            "name",
            "status",
            "plan",
            "app",
            "addon_id",
            "undeliverable",
            "suppressed",
        ):
            print(f"{key}: {detail[key]}")
        print("notices:")
        for name, pref in detail["preferences"].items():
            print(f"  {name:<16} {pref}")
        return 0

    return _with_db(config, body)


def cmd_notice_send(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.clock import parse_time, show_time
    from helpdeskd.desk.notices import Audience, send_notice
    from helpdeskd.mail.render import Renderer

    audience = Audience.parse(args.to)
    send_at = parse_time(args.at, config.service.timezone) if args.at else None
    extra = dict(_pairs(args.var))

    async def body(sessions: Any) -> int:
        progress = _progress_bar("rendering") if sys.stderr.isatty() else None
        report = await send_notice(
            sessions,
            config,
            Renderer(config.paths.templates),
            category=args.category,
            template=args.template,
            audience=audience,
            send_at=send_at,
            extra=extra,
            dry_run=args.dry_run,
            progress=progress,
        )
        if progress is not None:
            sys.stderr.write("\n")
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
        when = show_time(send_at, config.service.timezone) if send_at else "now"
        verb = "would queue" if args.dry_run else f"notice {report.notice_id}: queued"
        print(
            f"{verb} {report.queued} of {report.recipients} recipients for {when}; "
            f"skipped: {skipped}; subject: {report.subject}"
        )
        return 0

    return _with_db(config, body)


def _pairs(items: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--var {item!r}: expected NAME=VALUE")
        pairs.append((key, value))
    return pairs


def _progress_bar(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if done % 25 and done != total:
            return
        filled = 30 * done // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        sys.stderr.flush()

    return show


def cmd_notice_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.notices import notice_rows

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            rows = await notice_rows(session, getattr(args, "id", None))
        if getattr(args, "id", None) is not None and not rows:
            raise UserError(f"no notice {args.id}")
        if args.json:
            _print_json(rows[0] if getattr(args, "id", None) is not None else rows)
            return 0
        for row in rows:
            print(
                f"{row['id']:<5} {row['category']:<15} queued {row['queued']:<6} sent "
                f"{row['sent']:<6} failed {row['failed']:<5} skipped {row['skipped']:<5} "
                f"expired {row['expired']:<5} {row['subject']}"
            )
        return 0

    return _with_db(config, body)


def _report_notice(report: Any) -> str:
    if report is None:
        return "no mail sent"
    skipped = sum(report.skipped.values())
    return f"notice {report.notice_id}: {report.queued} mails queued, {skipped} skipped"


def cmd_maintenance_schedule(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.clock import parse_time, show_time
    from helpdeskd.desk.incidents import schedule_maintenance
    from helpdeskd.desk.notices import Audience
    from helpdeskd.mail.render import Renderer

    if args.force and not args.reason:
        raise UserError("--force needs --reason: say why customers get less notice")
    tz = config.service.timezone
    start, end = parse_time(args.start, tz), parse_time(args.end, tz)

    async def body(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            row, report = await schedule_maintenance(
                session,
                config,
                Renderer(config.paths.templates),
                title=args.title,
                start=start,
                end=end,
                message=args.message or "",
                components=_list(args.components),
                force_reason=args.reason if args.force else None,
                notify=not args.no_notify,
                audience=Audience.parse(args.to),
            )
        print(
            f"maintenance {row.id}: {show_time(start, tz)} – {show_time(end, tz)}; "
            f"{_report_notice(report)}"
        )
        return 0

    return _with_db(config, body)


def _list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def cmd_maintenance_set(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.incidents import set_maintenance_status
    from helpdeskd.mail.render import Renderer

    status = {"start": "in_progress", "complete": "completed", "cancel": "cancelled"}[
        args.maintenance
    ]

    async def body(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            await set_maintenance_status(
                session,
                config,
                Renderer(config.paths.templates),
                args.id,
                status,
                notify=not args.no_notify,
            )
        print(f"maintenance {args.id}: {status}")
        return 0

    return _with_db(config, body)


def cmd_incident(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk import incidents
    from helpdeskd.desk.notices import Audience
    from helpdeskd.mail.render import Renderer

    renderer = Renderer(config.paths.templates)
    text = ""
    if args.incident == "postmortem":
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{args.file}: cannot read: {exc.strerror}") from None

    async def body(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            action = args.incident
            report = None
            if action == "open":
                row, report = await incidents.open_incident(
                    session,
                    config,
                    renderer,
                    title=args.title,
                    impact=args.impact,
                    components=_list(args.components),
                    message=args.message,
                    notify=args.notify,
                    audience=Audience.parse(args.to),
                )
            elif action in ("update", "resolve"):
                status = args.status if action == "update" else "resolved"
                row, report = await incidents.update_incident(
                    session,
                    config,
                    renderer,
                    args.id,
                    status=status,
                    message=args.message,
                    notify=args.notify,
                    audience=Audience.parse(args.to),
                )
            else:
                row = await incidents.publish_postmortem(session, args.id, text)
        print(
            f"incident {row.id}: {row.status}"
            + (", post-mortem published" if action == "postmortem" else "")
            + (f"; {_report_notice(report)}" if action != "postmortem" else "")
        )
        return 0

    return _with_db(config, body)


def cmd_incident_list(args: argparse.Namespace, config: Config) -> int:
    from sqlalchemy import select as sql_select

    from helpdeskd.desk.incidents import incident_json
    from helpdeskd.store.models import Incident, IncidentUpdate

    async def fetch(session: Any) -> list[Row]:
        rows = []
        for row in await session.scalars(sql_select(Incident).order_by(Incident.id)):
            updates = list(
                await session.scalars(
                    sql_select(IncidentUpdate)
                    .where(IncidentUpdate.incident_id == row.id)
                    .order_by(IncidentUpdate.id)
                )
            )
            rows.append(incident_json(row, updates, config.service.timezone))
        return rows

    return _listing(
        args,
        config,
        fetch,
        lambda row: f"{row['id']:<5} {row['status']:<14} {row['impact']:<9} {row['title']}",
    )


def cmd_status_page_export(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.incidents import status_data
    from helpdeskd.web import statuspage

    async def body(sessions: Any) -> int:
        async with reading(sessions) as session:
            data = await status_data(session, config)
        written = statuspage.export(data, Path(args.dir))
        print(f"wrote {len(written)} files to {args.dir}")
        return 0

    return _with_db(config, body)


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helpdeskd", description="An email helpdesk daemon.")
    parser.add_argument("--config", type=Path, help="config file (default: $HELPDESKD_CONFIG)")
    parser.add_argument("--version", action="version", version=f"helpdeskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a starter config (SQLite) and create the database")
    p.add_argument("--force", action="store_true")
    p.add_argument("--state-dir")
    p.set_defaults(func=cmd_init, needs_config=False)

    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db", required=True)
    p = db.add_parser("upgrade", help="alembic upgrade head")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=cmd_db_upgrade)

    sub.add_parser("check", help="validate config and templates").set_defaults(func=cmd_check)
    sub.add_parser("run", help="the daemon, in the foreground").set_defaults(func=cmd_run)

    p = sub.add_parser("ingest", help=".eml, mbox or Maildir through the pipeline")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--backfill", action="store_true", help="store only; send nothing")
    p.set_defaults(func=cmd_ingest)

    tickets = sub.add_parser("tickets", help="list and show tickets").add_subparsers(
        dest="tickets", required=True
    )
    p = tickets.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state", choices=["new", "open", "pending", "solved", "closed"])
    p.set_defaults(func=cmd_tickets_list)
    p = tickets.add_parser("show")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tickets_show)

    box = sub.add_parser("outbox", help="outgoing mail").add_subparsers(
        dest="outbox", required=True
    )
    p = box.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_outbox_list)
    p = box.add_parser("retry")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_outbox_retry)

    quarantine = sub.add_parser("quarantine", help="mail that could not be processed")
    qsub = quarantine.add_subparsers(dest="quarantine", required=True)
    p = qsub.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine_list)
    p = qsub.add_parser("show")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--raw", action="store_true", help="print the raw message too")
    p.set_defaults(func=cmd_quarantine_show)
    p = qsub.add_parser("retry", help="process again from the stored bytes")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine_retry)

    rules = sub.add_parser("rules", help="routing and time rules")
    p = rules.add_subparsers(dest="rules", required=True).add_parser(
        "test", help="which rules match a message, and why (changes nothing)"
    )
    p.add_argument("message", type=Path)
    p.add_argument("--mailbox", help="the mailbox it arrived in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rules_test)

    customers = sub.add_parser("customers", help="customers from the add-on's records")
    csub = customers.add_subparsers(dest="customers", required=True)
    p = csub.add_parser("import", help="email,name,plan,app,addon_id,status; re-import updates")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_customers_import)
    p = csub.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_customers_list)

    contacts = sub.add_parser("contacts", help="one contact and their notice preferences")
    p = contacts.add_subparsers(dest="contacts", required=True).add_parser("show")
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_contacts_show)

    notice = sub.add_parser("notice", help="notices to customers")
    nsub = notice.add_subparsers(dest="notice", required=True)
    p = nsub.add_parser("send", help="queue a notice for the customers")
    p.add_argument("category")
    p.add_argument("--template", required=True, help="templates/notices/NAME.txt.j2")
    p.add_argument("--to", help="all (default), plan=NAME, app=NAME, addon_id=ID, email=ADDR")
    p.add_argument("--at", help="send time: with an offset, or in the configured time zone")
    p.add_argument("--var", action="append", help="NAME=VALUE for the template (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="count and render; queue nothing")
    p.set_defaults(func=cmd_notice_send)
    p = nsub.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_notice_list)
    p = nsub.add_parser("show")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_notice_list)

    maintenance = sub.add_parser("maintenance", help="scheduled maintenance")
    msub = maintenance.add_subparsers(dest="maintenance", required=True)
    p = msub.add_parser("schedule", help="announce maintenance (at least min_notice ahead)")
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--message")
    p.add_argument("--components", help="comma-separated component keys")
    p.add_argument("--to", help="the customers to tell (default all)")
    p.add_argument("--force", action="store_true", help="allow less than min_notice")
    p.add_argument("--reason", help="why, with --force")
    p.add_argument("--no-notify", action="store_true", help="status page only, no mail")
    p.set_defaults(func=cmd_maintenance_schedule)
    for name in ("start", "complete", "cancel"):
        p = msub.add_parser(name)
        p.add_argument("id", type=int)
        p.add_argument("--no-notify", action="store_true")
        p.set_defaults(func=cmd_maintenance_set)

    incident = sub.add_parser("incident", help="incidents and post-mortems")
    isub = incident.add_subparsers(dest="incident", required=True)
    p = isub.add_parser("open")
    p.add_argument("--title", required=True)
    p.add_argument("--impact", required=True, choices=["minor", "major", "critical"])
    p.add_argument("--components")
    p.add_argument("--message", required=True)
    p.add_argument("--notify", action="store_true", help="mail the affected customers")
    p.add_argument("--to", help="the customers to tell (default all)")
    p.set_defaults(func=cmd_incident)
    p = isub.add_parser("update")
    p.add_argument("id", type=int)
    p.add_argument("--status", required=True, choices=["identified", "monitoring"])
    p.add_argument("--message", required=True)
    p.add_argument("--notify", action="store_true")
    p.add_argument("--to")
    p.set_defaults(func=cmd_incident)
    p = isub.add_parser("resolve")
    p.add_argument("id", type=int)
    p.add_argument("--message", required=True)
    p.add_argument("--notify", action="store_true")
    p.add_argument("--to")
    p.set_defaults(func=cmd_incident)
    p = isub.add_parser("postmortem")
    p.add_argument("id", type=int)
    p.add_argument("--file", required=True, help="the post-mortem, Markdown")
    p.set_defaults(func=cmd_incident)
    p = isub.add_parser("list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_incident_list)

    page = sub.add_parser("status-page", help="the public status page")
    p = page.add_subparsers(dest="status_page", required=True).add_parser(
        "export", help="write the page as static files to host elsewhere"
    )
    p.add_argument("dir")
    p.set_defaults(func=cmd_status_page_export)

    p = sub.add_parser("status", help="mailboxes, outbox depth, version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    daemon = args.command == "run"
    # The daemon logs JSON lines to stdout for journald; a command keeps stdout for its output.
    configure(
        json=daemon or not sys.stderr.isatty(),
        level=os.environ.get("HELPDESKD_LOG_LEVEL", "INFO" if daemon else "WARNING"),
        stream=sys.stdout if daemon else sys.stderr,
    )
    try:
        if not getattr(args, "needs_config", True):
            return int(args.func(args))
        # Only the daemon (and check, which proves the daemon could start) must read every
        # secret; an admin's listing works outside the service's credentials too.
        strict = args.command in ("run", "check")
        config = load_config(args.config or default_config_path(), lenient_credentials=not strict)
        return int(args.func(args, config))
    except HelpdeskError as exc:
        print(f"helpdeskd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
