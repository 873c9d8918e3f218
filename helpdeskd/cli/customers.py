"""The ``customers`` commands and ``contacts show``: customers and their notice preferences."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpdeskd.cli.command import Subcommands, add_command, listing, with_db
from helpdeskd.cli.progress import progress
from helpdeskd.config.settings import Config
from helpdeskd.desk.customers import (
    RowProblem,
    count_rows,
    customer_rows,
    import_csv,
)
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker

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
    """Import what can be: each bad or merged row is one line on stderr (FILE:LINE: reason) as
    soon as its chunk is stored, with the progress; the summary is one line on stdout. The file
    is one transaction: one found broken half-way stores nothing. Exit 1 only when rows were
    given and none was good."""

    def show(problem: RowProblem) -> None:
        reason = f"left out: {problem.text}" if problem.left_out else problem.text
        print(f"{args.file}:{problem.line}: {reason}", file=sys.stderr)

    async def body(sessions: SessionMaker) -> int:
        try:
            with progress("importing customers", count_rows(args.file)) as advance:
                async with sessions.begin() as session:
                    report = await import_csv(session, args.file, problems=show, advance=advance)
        except UserError as exc:
            raise UserError(f"{exc}; nothing imported") from None
        if report.bad_rows and not report.imported:
            raise UserError(f"{args.file}: no customer imported: every row was bad (see above)")
        summary = f"{report.created} customers added, {report.updated} updated"
        if report.merged_rows:
            summary += f", {report.merged_rows} duplicate rows merged"
        if report.bad_rows:
            summary += f", {report.bad_rows} bad rows left out"
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


def add_customers(sub: Subcommands) -> None:
    customers = sub.add_parser("customers", help="customers from the add-on's records")
    csub = customers.add_subparsers(dest="customers", required=True)
    p = add_command(csub, "import", help="email,name,plan,app,addon_id,status; re-import updates")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_customers_import)
    p = add_command(csub, "list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_customers_list)
