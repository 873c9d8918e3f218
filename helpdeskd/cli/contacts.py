"""The ``contacts`` commands: one person's details and bounce score, a bounce suspension lifted,
their data exported, their data erased."""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpdeskd.cli.command import Subcommands, add_command, print_json, with_db
from helpdeskd.cli.customers import CONTACT_FIELDS
from helpdeskd.clock import system_clock
from helpdeskd.config.settings import Config
from helpdeskd.desk.bounces import bounce_standing, describe, unsuspend
from helpdeskd.desk.customers import contact_detail
from helpdeskd.desk.erasure import erase
from helpdeskd.desk.export import export_contact
from helpdeskd.desk.scrubbing import Erasure
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker, reading

if TYPE_CHECKING:
    from helpdeskd.imap.erase import Expunged


def cmd_contacts_show(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            detail = await contact_detail(session, config, args.email)
            bounces = await bounce_standing(session, config, args.email, system_clock())
        if detail is None or bounces is None:
            raise UserError(f"no contact {args.email}")
        if args.json:
            print_json({**detail, "bounces": bounces})
            return 0
        for key in CONTACT_FIELDS:
            print(f"{key}: {detail[key]}")
        print("notices:")
        for name, pref in detail["preferences"].items():
            print(f"  {name:<16} {pref}")
        for line in describe(args.email.lower(), bounces):
            print(line)
        return 0

    return with_db(config, body)


def cmd_contacts_unsuspend(args: argparse.Namespace, config: Config) -> int:
    by = args.by or f"cli:{getpass.getuser()}"

    async def body(sessions: SessionMaker) -> int:
        async with sessions.begin() as session:
            before = await unsuspend(session, args.email, by=by, now=system_clock())
        state = "suspension lifted" if before.suspended else "was not suspended"
        print(f"{args.email.lower()}: {state}; bounce score {before.score:g} cleared to 0")
        return 0

    return with_db(config, body)


def cmd_contacts_export(args: argparse.Namespace, config: Config) -> int:
    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            manifest = await export_contact(
                session, config, args.email, args.dir, now=system_clock(), internal=args.internal
            )
        if args.json:
            print_json(manifest)
        else:
            size = sum(int(entry["size"]) for entry in manifest["files"])
            print(
                f"exported {args.email}: {len(manifest['tickets'])} ticket(s), "
                f"{len(manifest['files'])} file(s), {size} bytes, to {args.dir} "
                "(manifest.json lists each file with its SHA-256)"
            )
        return 0

    return with_db(config, body)


def cmd_contacts_erase(args: argparse.Namespace, config: Config) -> int:
    # IMAP and OAuth load only for the commands that use them: every command starts faster.
    from helpdeskd.imap.erase import Expunged, expunge_pending
    from helpdeskd.oauth.credential import Credentials

    by = args.by or f"cli:{getpass.getuser()}"

    async def body(sessions: SessionMaker) -> int:
        report = await erase(
            sessions, config, args.email, by=by, now=system_clock(), dry_run=args.dry_run
        )
        imap = Expunged()
        if not args.dry_run and report.imap:
            credentials = Credentials(config, sessions)
            await credentials.load()
            imap = await expunge_pending(sessions, config, tokens=credentials.for_mailbox)
        if args.json:
            print_json({**report.as_json(), "email": args.email.lower(), **_imap(imap)})
        else:
            _print(args.email.lower(), report, imap)
        return 0

    return with_db(config, body)


def _imap(imap: Expunged) -> dict[str, Any]:
    found = imap.as_json()
    return {"expunged": found["expunged"], "left": found["left"], "imap_failed": found["failed"]}


def _print(address: str, report: Erasure, imap: Expunged) -> None:
    verb = "would erase" if report.dry_run else "erased"
    if not report.found:
        print(f"nothing stored for {address}; its address is suppressed from now on")
    print(f"{verb} {address} (now {report.pseudonym})")
    print(f"  tickets: {', '.join(report.tickets) or 'none'}")
    if report.held:
        print(
            f"  under legal hold, left whole until the tag 'hold' is removed: "
            f"{', '.join(report.held)} (housekeeping finishes the erasure then)"
        )
    print(
        f"  their messages emptied: {report.messages}; other messages with them taken out: "
        f"{report.scrubbed}; raw mails: {report.raw}; quarantine entries: {report.quarantine}"
    )
    print(
        f"  outbox: {report.outbox_cancelled} pending mail(s) to them cancelled, "
        f"{report.outbox_scrubbed} stored mail(s) scrubbed; events: {report.events}"
    )
    print(f"  files: {len(report.blobs)} attachment(s), {len(report.files)} spool file(s)")
    if report.dry_run:
        print(f"  processed-folder copies to expunge: {len(report.imap)}")
        return
    print(f"  processed-folder copies expunged: {imap.expunged}")
    for left in imap.left:
        uids = ",".join(map(str, left.uids)) or "-"
        print(
            f"  left in mailbox {left.mailbox} folder {left.folder or '-'}: UIDs {uids} "
            f"Message-ID {left.message_id or '-'}: {left.reason}"
        )
    for failed in imap.failed:
        print(f"  not reached (tried again by the daemon): {failed}")


def add_contacts(sub: Subcommands) -> None:
    contacts = sub.add_parser("contacts", help="one person: their details, export, erasure")
    csub = contacts.add_subparsers(dest="contacts", required=True)
    p = add_command(
        csub, "show", help="a contact, their notice preferences and bounce score, explained"
    )
    p.add_argument("email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_contacts_show)
    p = add_command(
        csub, "unsuspend", help="lift a suspension for bouncing and clear the bounce score"
    )
    p.add_argument("email")
    p.add_argument("--by", help="who decided, for the record (default: cli:USER)")
    p.set_defaults(func=cmd_contacts_unsuspend)
    p = add_command(
        csub, "export", help="everything stored about a person, as files with a manifest"
    )
    p.add_argument("email")
    p.add_argument("dir", type=Path, help="a new or empty folder")
    p.add_argument("--internal", action="store_true", help="include agents' internal notes")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.set_defaults(func=cmd_contacts_export)
    p = add_command(csub, "erase", help="erase a person's data (tickets under hold are kept)")
    p.add_argument("email")
    p.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    p.add_argument("--by", help="who asked or approved, for the record (default: cli:USER)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_contacts_erase)
