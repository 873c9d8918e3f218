"""The ``customers`` commands and ``contacts show``: customers and their notice preferences."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpdeskd.cli.command import Subcommands, add_command, listing, print_json, with_db
from helpdeskd.config.settings import Config
from helpdeskd.desk.customers import contact_detail, customer_rows, import_csv
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker, reading

CONTACT_FIELDS = (
    "email",
    "name",
    "status",
    "plan",
    "app",
    "addon_id",
    "undeliverable",
    "suppressed",
)


def cmd_customers_import(args: argparse.Namespace, config: Config) -> int:
    """Import what can be: each bad or merged row is one line on stderr (FILE:LINE: reason),
    the summary one line on stdout; exit 1 only when rows were given and none was good."""

    async def body(sessions: SessionMaker) -> int:
        async with sessions.begin() as session:
            report = await import_csv(session, args.file)
        problems = sorted(
            [(p.line, f"{args.file}:{p.line}: left out: {p.text}") for p in report.bad]
            + [(p.line, f"{args.file}:{p.line}: {p.text}") for p in report.merged]
        )
        for _, line in problems:
            print(line, file=sys.stderr)
        if report.bad and not report.imported:
            raise UserError(f"{args.file}: no customer imported: every row was bad (see above)")
        summary = f"{report.created} customers added, {report.updated} updated"
        if report.merged:
            summary += f", {len(report.merged)} duplicate rows merged"
        if report.bad:
            summary += f", {len(report.bad)} bad rows left out"
        print(summary)
        return 0

    return with_db(config, body)


def cmd_customers_list(args: argparse.Namespace, config: Config) -> int:
    return listing(
        args,
        config,
        customer_rows,
        lambda row: (
            f"{row['email']:<36} {row['status']:<14} {row['plan'] or '-':<14} {row['app'] or '-'}"
        ),
    )


def cmd_contacts_show(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            detail = await contact_detail(session, config, args.email)
        if detail is None:
            raise UserError(f"no contact {args.email}")
        if args.json:
            print_json(detail)
            return 0
        for key in CONTACT_FIELDS:
            print(f"{key}: {detail[key]}")
        print("notices:")
        for name, pref in detail["preferences"].items():
            print(f"  {name:<16} {pref}")
        return 0

    return with_db(config, body)


def add_customers(sub: Subcommands) -> None:
    customers = sub.add_parser("customers", help="customers from the add-on's records")
    csub = customers.add_subparsers(dest="customers", required=True)
    p = add_command(csub, "import", help="email,name,plan,app,addon_id,status; re-import updates")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_customers_import)
    p = add_command(csub, "list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_customers_list)
