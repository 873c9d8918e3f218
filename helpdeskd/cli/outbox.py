"""The ``outbox`` and ``quarantine`` commands: mail that did not go out, or did not come in."""

from __future__ import annotations

import argparse
import sys

from helpdeskd.cli.command import Row, Subcommands, add_command, listing, print_json, with_db
from helpdeskd.clock import system_clock
from helpdeskd.config.settings import Config
from helpdeskd.desk.redelivery import retry_outbox
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.views import outbox_rows, quarantine_detail, quarantine_rows


def cmd_outbox_list(args: argparse.Namespace, config: Config) -> int:
    def line(row: Row) -> str:
        rcpts = ",".join(f"{r['address']}={r['state']}" for r in row["recipients"])
        return f"{row['id']:<6} {row['state']:<8} {row['kind']:<12} {rcpts}"

    return listing(args, config, lambda session: outbox_rows(session, config), line)


def cmd_outbox_retry(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: SessionMaker) -> int:
        async with sessions.begin() as session:
            await retry_outbox(session, args.id, now=system_clock())
        print(f"outbox row {args.id} queued again")
        return 0

    return with_db(config, body)


def cmd_quarantine_list(args: argparse.Namespace, config: Config) -> int:
    return listing(
        args,
        config,
        quarantine_rows,
        lambda row: f"{row['id']:<6} {row['source']}:{row['uid']}  {row['error'][:80]}",
    )


def cmd_quarantine_show(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            detail = await quarantine_detail(session, args.id)
        if detail is None:
            raise UserError(f"no quarantine entry {args.id}")
        if args.json:
            print_json(detail)
            return 0
        for key in ("id", "source", "uid", "message_id", "size", "retries", "created_at"):
            print(f"{key}: {detail[key]}")
        print(f"error: {detail['error']}\n\n{detail['traceback']}")
        if args.raw:
            sys.stdout.write(detail["raw"] or "(raw bytes not stored)\n")
        return 0

    return with_db(config, body)


def cmd_quarantine_retry(args: argparse.Namespace, config: Config) -> int:
    # The pipeline is imported here, not above: a listing need not pay for loading it.
    from helpdeskd.ingest.batch import Processor
    from helpdeskd.ingest.parsepool import ParsePool
    from helpdeskd.triage.facts import Runtime

    async def body(sessions: SessionMaker) -> int:
        pool = ParsePool(1, config.parse.timeout)
        processor = Processor(Runtime.of(config), sessions, pool)
        try:
            outcome = await processor.retry_quarantined(args.id)
        finally:
            pool.close()
        if args.json:
            print_json(outcome.as_json())
        else:
            ticket = f" {outcome.ticket}" if outcome.ticket else ""
            print(f"{outcome.outcome}{ticket}\t{outcome.reason}")
        return 0 if outcome.outcome != "quarantined" else 1

    return with_db(config, body)


def add_outbox(sub: Subcommands) -> None:
    box = sub.add_parser("outbox", help="outgoing mail").add_subparsers(
        dest="outbox", required=True
    )
    p = add_command(box, "list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_outbox_list)
    p = add_command(box, "retry")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_outbox_retry)


def add_quarantine(sub: Subcommands) -> None:
    quarantine = sub.add_parser("quarantine", help="mail that could not be processed")
    qsub = quarantine.add_subparsers(dest="quarantine", required=True)
    p = add_command(qsub, "list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine_list)
    p = add_command(qsub, "show")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--raw", action="store_true", help="print the raw message too")
    p.set_defaults(func=cmd_quarantine_show)
    p = add_command(qsub, "retry", help="process again from the stored bytes")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quarantine_retry)
