"""What customers are told: the ``notice``, ``maintenance``, ``incident`` and ``status-page``
commands.

The desk modules are imported inside each command, not above: they load the templates and the
mail builder, which ``helpdeskd tickets list`` should not wait for.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from helpdeskd.cli.command import Subcommands, add_command, listing, print_json, split_list, with_db
from helpdeskd.clock import parse_time, show_time, system_clock
from helpdeskd.config.settings import Config
from helpdeskd.errors import UserError
from helpdeskd.store.db import SessionMaker, reading

if TYPE_CHECKING:
    from helpdeskd.desk.notices import NoticeReport


def cmd_notice_send(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.cli.progress import progress
    from helpdeskd.desk.noticequeue import send_notice
    from helpdeskd.desk.notices import Audience
    from helpdeskd.mail.render import Renderer

    audience = Audience.parse(args.to)
    send_at = parse_time(args.at, config.service.timezone) if args.at else None
    extra = dict(_pairs(args.var))

    async def body(sessions: SessionMaker) -> int:
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
            clock=system_clock,
        )
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
        when = show_time(send_at, config.service.timezone) if send_at else "now"
        verb = "would queue" if args.dry_run else f"notice {report.notice_id}: queued"
        print(
            f"{verb} {report.queued} of {report.recipients} recipients for {when}; "
            f"skipped: {skipped}; subject: {report.subject}"
        )
        return 0

    return with_db(config, body)


def _pairs(items: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--var {item!r}: expected NAME=VALUE")
        pairs.append((key, value))
    return pairs


def cmd_notice_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.notices import notice_rows

    notice_id = getattr(args, "id", None)  # set by "notice show", absent from "notice list"

    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            rows = await notice_rows(session, notice_id)
        if notice_id is not None and not rows:
            raise UserError(f"no notice {notice_id}")
        if args.json:
            print_json(rows[0] if notice_id is not None else rows)
            return 0
        for row in rows:
            print(
                f"{row['id']:<5} {row['category']:<15} queued {row['queued']:<6} sent "
                f"{row['sent']:<6} failed {row['failed']:<5} skipped {row['skipped']:<5} "
                f"expired {row['expired']:<5} {row['subject']}"
            )
        return 0

    return with_db(config, body)


def _report_notice(report: NoticeReport | None) -> str:
    if report is None:
        return "no mail sent"
    skipped = sum(report.skipped.values())
    return f"notice {report.notice_id}: {report.queued} mails queued, {skipped} skipped"


def cmd_maintenance_schedule(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.incidents import schedule_maintenance
    from helpdeskd.desk.notices import Audience
    from helpdeskd.mail.render import Renderer

    if args.force and not args.reason:
        raise UserError("--force needs --reason: say why customers get less notice")
    tz = config.service.timezone
    start, end = parse_time(args.start, tz), parse_time(args.end, tz)

    async def body(sessions: SessionMaker) -> int:
        async with sessions.begin() as session:
            row, report = await schedule_maintenance(
                session,
                config,
                Renderer(config.paths.templates),
                title=args.title,
                start=start,
                end=end,
                message=args.message or "",
                components=split_list(args.components),
                force_reason=args.reason if args.force else None,
                notify=not args.no_notify,
                audience=Audience.parse(args.to),
                now=system_clock(),
            )
        print(
            f"maintenance {row.id}: {show_time(start, tz)} – {show_time(end, tz)}; "
            f"{_report_notice(report)}"
        )
        return 0

    return with_db(config, body)


def cmd_maintenance_set(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.incidents import set_maintenance_status
    from helpdeskd.mail.render import Renderer

    status = {"start": "in_progress", "complete": "completed", "cancel": "cancelled"}[
        args.maintenance
    ]

    async def body(sessions: SessionMaker) -> int:
        async with sessions.begin() as session:
            await set_maintenance_status(
                session,
                config,
                Renderer(config.paths.templates),
                args.id,
                status,
                notify=not args.no_notify,
                now=system_clock(),
            )
        print(f"maintenance {args.id}: {status}")
        return 0

    return with_db(config, body)


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

    async def body(sessions: SessionMaker) -> int:
        now = system_clock()
        async with sessions.begin() as session:
            action = args.incident
            report = None
            if action == "open":
                row, report = await incidents.open_incident(
                    session,
                    config,
                    renderer,
                    title=args.title,
                    impact=args.impact,
                    components=split_list(args.components),
                    message=args.message,
                    notify=args.notify,
                    audience=Audience.parse(args.to),
                    now=now,
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
                    now=now,
                )
            else:
                row = await incidents.publish_postmortem(session, args.id, text, now=now)
        print(
            f"incident {row.id}: {row.status}"
            + (", post-mortem published" if action == "postmortem" else "")
            + (f"; {_report_notice(report)}" if action != "postmortem" else "")
        )
        return 0

    return with_db(config, body)


def cmd_incident_list(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.incidents import incident_rows

    return listing(
        args,
        config,
        lambda session: incident_rows(session, config),
        lambda row: f"{row['id']:<5} {row['status']:<14} {row['impact']:<9} {row['title']}",
    )


def cmd_status_page_export(args: argparse.Namespace, config: Config) -> int:
    from helpdeskd.desk.incidents import status_data
    from helpdeskd.web.export import export

    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            data = await status_data(session, config, now=system_clock())
        written = export(data, Path(args.dir))
        print(f"wrote {len(written)} files to {args.dir}")
        return 0

    return with_db(config, body)


# --- parsers ----------------------------------------------------------------------------------


def add_notice(sub: Subcommands) -> None:
    notice = sub.add_parser("notice", help="notices to customers")
    nsub = notice.add_subparsers(dest="notice", required=True)
    p = add_command(nsub, "send", help="queue a notice for the customers")
    p.add_argument("category")
    p.add_argument("--template", required=True, help="templates/notices/NAME.txt.j2")
    p.add_argument("--to", help="all (default), plan=NAME, app=NAME, addon_id=ID, email=ADDR")
    p.add_argument("--at", help="send time: with an offset, or in the configured time zone")
    p.add_argument("--var", action="append", help="NAME=VALUE for the template (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="count and render; queue nothing")
    p.set_defaults(func=cmd_notice_send)
    p = add_command(nsub, "list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_notice_list)
    p = add_command(nsub, "show")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_notice_list)


def add_maintenance(sub: Subcommands) -> None:
    maintenance = sub.add_parser("maintenance", help="scheduled maintenance")
    msub = maintenance.add_subparsers(dest="maintenance", required=True)
    p = add_command(msub, "schedule", help="announce maintenance (at least min_notice ahead)")
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
        p = add_command(msub, name)
        p.add_argument("id", type=int)
        p.add_argument("--no-notify", action="store_true")
        p.set_defaults(func=cmd_maintenance_set)


def add_incident(sub: Subcommands) -> None:
    incident = sub.add_parser("incident", help="incidents and post-mortems")
    isub = incident.add_subparsers(dest="incident", required=True)
    p = add_command(isub, "open")
    p.add_argument("--title", required=True)
    p.add_argument("--impact", required=True, choices=["minor", "major", "critical"])
    p.add_argument("--components")
    p.add_argument("--message", required=True)
    p.add_argument("--notify", action="store_true", help="mail the affected customers")
    p.add_argument("--to", help="the customers to tell (default all)")
    p.set_defaults(func=cmd_incident)
    p = add_command(isub, "update")
    p.add_argument("id", type=int)
    p.add_argument("--status", required=True, choices=["identified", "monitoring"])
    p.add_argument("--message", required=True)
    p.add_argument("--notify", action="store_true")
    p.add_argument("--to")
    p.set_defaults(func=cmd_incident)
    p = add_command(isub, "resolve")
    p.add_argument("id", type=int)
    p.add_argument("--message", required=True)
    p.add_argument("--notify", action="store_true")
    p.add_argument("--to")
    p.set_defaults(func=cmd_incident)
    p = add_command(isub, "postmortem")
    p.add_argument("id", type=int)
    p.add_argument("--file", required=True, help="the post-mortem, Markdown")
    p.set_defaults(func=cmd_incident)
    p = add_command(isub, "list")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_incident_list)


def add_status_page(sub: Subcommands) -> None:
    page = sub.add_parser("status-page", help="the public status page")
    p = add_command(
        page.add_subparsers(dest="status_page", required=True),
        "export",
        help="write the page as static files to host elsewhere",
    )
    p.add_argument("dir")
    p.set_defaults(func=cmd_status_page_export)
