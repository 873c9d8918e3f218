"""The ``retention`` commands: what ``[retention]`` removes and when, and a pass now."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime, timedelta

from helpdeskd.cli.command import Subcommands, add_command, print_json, with_db
from helpdeskd.clock import system_clock
from helpdeskd.config.settings import Config, RetentionConfig
from helpdeskd.desk.privacy import finish_deletions
from helpdeskd.desk.retention import CATEGORIES, RULES, Due, enforce, report
from helpdeskd.store.db import SessionMaker, reading


def _rule(retention: RetentionConfig, category: str) -> str:
    key, what = RULES[category]
    days = getattr(retention, key)
    return f"{what}: {'kept for ever' if days is None else f'{days} days'}"


def cmd_retention_report(args: argparse.Namespace, config: Config) -> int:
    now = system_clock()

    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            items = await report(session, config, now, horizon=timedelta(days=args.days))
        if args.json:
            print_json(
                {
                    "now": now.isoformat().replace("+00:00", "Z"),
                    "days": args.days,
                    "rules": {
                        name: getattr(config.retention, key) for name, (key, _) in RULES.items()
                    },
                    "items": [item.as_json() for item in items],
                }
            )
            return 0
        _print_report(config, items, now, args.days)
        return 0

    return with_db(config, body)


def _print_report(config: Config, items: list[Due], now: datetime, days: int) -> None:
    zone = config.service.tz
    print(f"retention at {now.astimezone(zone):%Y-%m-%d %H:%M %Z}, looking {days} day(s) ahead")
    for category in (*CATEGORIES, "processed_mail"):
        print(f"  {category}: {_rule(config.retention, category)}")
    due: Counter[str] = Counter()
    later: Counter[tuple[str, str]] = Counter()
    for item in items:
        if item.held:
            continue
        if item.due_at <= now:
            due[item.category] += item.count
        else:
            later[(f"{item.due_at.astimezone(zone):%Y-%m-%d}", item.category)] += item.count
    print("due now: " + (", ".join(f"{k} {v}" for k, v in sorted(due.items())) or "nothing"))
    for (day, category), count in sorted(later.items()):
        print(f"  {day}  {category:<14} {count}")
    for item in items:
        if item.held:
            print(f"kept under legal hold: {item.category} of {item.ticket or f'#{item.id}'}")


def cmd_retention_run(args: argparse.Namespace, config: Config) -> int:
    # IMAP and OAuth load only for the commands that use them: every command starts faster.
    from helpdeskd.imap.erase import expunge_pending, sweep_processed
    from helpdeskd.oauth.credential import Credentials

    now = system_clock()

    async def body(sessions: SessionMaker) -> int:
        removed = await enforce(sessions, config, now)
        files = await finish_deletions(sessions, config.service.state_dir)
        credentials = Credentials(config, sessions)
        await credentials.load()
        erased = await expunge_pending(sessions, config, tokens=credentials.for_mailbox)
        swept = await sweep_processed(
            sessions, config, now, tokens=credentials.for_mailbox, force=True
        )
        if args.json:
            print_json(
                {
                    "removed": removed.counts,
                    "skipped": removed.skipped,
                    "items": [item.as_json() for item in removed.items],
                    "files": removed.files + files.files + files.blobs,
                    "imap": erased.as_json(),
                    "processed": swept.as_json() if swept is not None else None,
                }
            )
            return 0
        if removed.skipped:
            print("a daemon is removing what is due right now; nothing more to do here")
        counts = ", ".join(f"{k} {v}" for k, v in removed.counts.items())
        print(f"removed: {counts}; files: {removed.files + files.files + files.blobs}")
        if erased.expunged or erased.failed:
            print(f"copies left by erasures: {erased.expunged} expunged")
        if swept is not None:
            print(f"processed folders: {swept.expunged} mail(s) expunged")
        for failed in [*erased.failed, *(swept.failed if swept is not None else [])]:
            print(f"  not reached (the daemon tries again): {failed}")
        for left in [*erased.left, *(swept.left if swept is not None else [])]:
            place = f"{left.mailbox}/{left.folder}"
            print(f"  left in {place}: {len(left.uids)} mail(s): {left.reason}")
        return 0

    return with_db(config, body)


def add_retention(sub: Subcommands) -> None:
    retention = sub.add_parser("retention", help="how long personal data is kept ([retention])")
    rsub = retention.add_subparsers(dest="retention", required=True)
    p = add_command(rsub, "report", help="what goes, and when (tickets under hold are kept)")
    p.add_argument("--days", type=int, default=30, help="look this many days ahead (30)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retention_report)
    p = add_command(rsub, "run", help="remove what is due now (the daemon does it hourly)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retention_run)
