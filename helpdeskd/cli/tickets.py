"""The ``tickets`` commands: list tickets, show one with its messages and events."""

from __future__ import annotations

import argparse

from helpdeskd.cli.command import Subcommands, add_command, listing, print_json, with_db
from helpdeskd.config.settings import Config
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker, reading
from helpdeskd.store.views import ticket_detail, ticket_rows
from helpdeskd.vocab import STATES


def cmd_tickets_list(args: argparse.Namespace, config: Config) -> int:
    return listing(
        args,
        config,
        lambda session: ticket_rows(session, config, state=args.state),
        lambda row: (
            f"{row['ref']:<10} {row['state']:<8} {row['priority']:<7} "
            f"{row['requester']:<30} {row['subject'][:60]}"
        ),
    )


def cmd_tickets_show(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            detail = await ticket_detail(session, config, args.ref)
        if detail is None:
            raise UserError(f"no ticket {args.ref}")
        if args.json:
            print_json(detail)
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

    return with_db(config, body)


def add_tickets(sub: Subcommands) -> None:
    tickets = sub.add_parser("tickets", help="list and show tickets").add_subparsers(
        dest="tickets", required=True
    )
    p = add_command(tickets, "list")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state", choices=STATES)
    p.set_defaults(func=cmd_tickets_list)
    p = add_command(tickets, "show")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tickets_show)
