"""A fresh PostgreSQL database per test on the machine's server (127.0.0.1:5432, trust)."""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg

PG_DSN = os.environ.get("HELPDESKD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def available() -> str | None:
    """Return None when PostgreSQL answers, else the reason it does not."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {PG_DSN} is not reachable: {exc}"
    return None


def create_database(template: str | None = None) -> str:
    """A new, empty database; with TEMPLATE (a database's URL), a copy of that one, which
    nobody may be connected to meanwhile."""
    name = f"helpdeskd_test_{secrets.token_hex(6)}"
    copy = "" if template is None else f' TEMPLATE "{template.rsplit("/", 1)[1]}"'
    asyncio.run(_admin(f'CREATE DATABASE "{name}"{copy}'))
    base = PG_DSN.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
