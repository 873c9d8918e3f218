"""The ``helpdeskd`` command line. Exit status: 0 ok, 1 user error (one line), 2 usage.

This module builds the parser from the command groups, loads the config and is the one error
boundary: a :class:`~helpdeskd.errors.HelpdeskError` becomes one line on stderr and exit 1.
The commands live in admin, tickets, outbox, customers, contacts, retention, notices and oauth;
they call services and print, and hold no SQL.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from helpdeskd import __version__
from helpdeskd.cli import admin, contacts, customers, notices, oauth, outbox, retention, tickets
from helpdeskd.cli.command import CONFIG_HELP, Subcommands
from helpdeskd.config.load import default_config_path, load_config
from helpdeskd.daemon.logs import configure
from helpdeskd.errors import HelpdeskError

# The commands in the order ``helpdeskd --help`` lists them.
COMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    admin.add_init,
    admin.add_db,
    admin.add_check,
    admin.add_run,
    admin.add_ingest,
    tickets.add_tickets,
    outbox.add_outbox,
    outbox.add_quarantine,
    admin.add_rules,
    customers.add_customers,
    contacts.add_contacts,
    retention.add_retention,
    notices.add_notice,
    notices.add_maintenance,
    notices.add_incident,
    notices.add_status_page,
    admin.add_status,
    oauth.add_oauth,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helpdeskd", description="An email helpdesk daemon.")
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"helpdeskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
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
