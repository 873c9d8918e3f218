"""What every command shares: its parser, the database for its body, and JSON or line output."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

from helpdeskd.config.settings import Config
from helpdeskd.store.db import SessionMaker, open_database, reading

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Row = dict[str, Any]
Body = Callable[[SessionMaker], Awaitable[int]]

CONFIG_HELP = "config file (default: $HELPDESKD_CONFIG)"

# Every command takes --config after its name too ("helpdeskd init --config F"). SUPPRESS keeps
# an absent one from overwriting a --config given before the command.
_CONFIG = argparse.ArgumentParser(add_help=False)
_CONFIG.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)


def add_command(sub: Subcommands, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add command NAME to SUB: a parser that also accepts --config."""
    return sub.add_parser(name, parents=[_CONFIG], **kwargs)


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=None))


def with_db(config: Config, body: Body) -> int:
    """Run BODY with sessions on the configured database, proved reachable and at head."""

    async def main() -> int:
        async with open_database(config.database.url) as sessions:
            return await body(sessions)

    return asyncio.run(main())


def listing(
    args: argparse.Namespace,
    config: Config,
    fetch: Callable[[Any], Awaitable[list[Row]]],
    line: Callable[[Row], str],
) -> int:
    """Run a listing command: FETCH the rows in a session, then JSON or one LINE each."""

    async def body(sessions: SessionMaker) -> int:
        async with reading(sessions) as session:
            rows = await fetch(session)
        if args.json:
            print_json(rows)
        else:
            for row in rows:
                print(line(row))
        return 0

    return with_db(config, body)


def split_list(text: str | None) -> list[str]:
    """Split a comma-separated option into its non-empty, stripped parts."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
