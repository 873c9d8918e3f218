"""Fresh databases for a benchmark's measurements: SQLite files in its work dir, or databases
made on a PostgreSQL server (``--pg URL``) and dropped at the end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
from pathlib import Path


class Databases:
    """Fresh databases for the measurements: SQLite files in WORKDIR, or PostgreSQL databases
    made on the server of PG_URL (named after PREFIX and this process); every one made is
    dropped by close()."""

    def __init__(self, workdir: Path, pg_url: str | None, prefix: str = "helpdeskd_bench") -> None:
        self.workdir = workdir
        self.pg_url = pg_url
        self.prefix = prefix
        self.made: list[str] = []

    @property
    def kind(self) -> str:
        return "sqlite" if self.pg_url is None else "postgresql"

    def fresh(self, name: str, *, migrate: bool = True) -> str:
        """A new empty database NAME, migrated to the head unless not MIGRATE; its URL."""
        from helpdeskd.store.db import upgrade

        if self.pg_url is None:
            url = f"sqlite:///{self.workdir / f'{name}.db'}"
        else:
            database = self._name(name)
            self._execute(f'CREATE DATABASE "{database}"')
            url = f"{self.pg_url.rsplit('/', 1)[0]}/{database}"
        self.made.append(url)
        if migrate:
            upgrade(url)
        return url

    def copy(self, url: str, name: str) -> str:
        """A copy NAME of the database at URL, which nobody is connected to; its URL."""
        if self.pg_url is None:
            target = self.workdir / f"{name}.db"
            shutil.copyfile(url.removeprefix("sqlite:///"), target)
            copied = f"sqlite:///{target}"
        else:
            database = self._name(name)
            source = url.rsplit("/", 1)[1]
            self._execute(f'CREATE DATABASE "{database}" TEMPLATE "{source}"')
            copied = f"{self.pg_url.rsplit('/', 1)[0]}/{database}"
        self.made.append(copied)
        return copied

    def remove(self, url: str) -> None:
        """Remove the database at URL (its files, or drop it)."""
        if url in self.made:
            self.made.remove(url)
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        database = url.rsplit("/", 1)[1]
        try:
            self._execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        except Exception as exc:
            print(f"could not drop {database}: {exc}", flush=True)

    def close(self) -> None:
        for url in list(self.made):
            if not url.startswith("sqlite:///"):  # SQLite files go with the work dir
                self.remove(url)
        self.made.clear()

    def _name(self, name: str) -> str:
        return f"{self.prefix}_{os.getpid()}_{name}".replace("-", "_").replace(" ", "")

    def _execute(self, sql: str) -> None:
        """Run SQL on the server, from a thread of its own: the caller may be inside an event
        loop (asyncio.run cannot nest) or not."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._admin(sql)).result()

    async def _admin(self, sql: str) -> None:
        import asyncpg

        assert self.pg_url is not None
        conn = await asyncpg.connect(self.pg_url.replace("postgresql+asyncpg:", "postgresql:"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
