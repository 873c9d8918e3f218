"""Run helpdeskd's real parts in-process for tests: processor, outbox sender, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpdeskd.config.settings import Config
from helpdeskd.ingest.batch import Processor
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.db import create_engine, sessionmaker
from helpdeskd.triage.facts import Runtime
from helpdeskd.triage.received import Incoming, Outcome

ROOT = Path(__file__).resolve().parent.parent


class Desk:
    """A processor and an outbox sender over one config, as the daemon wires them."""

    def __init__(self, config: Config, *, backfill: bool = False) -> None:
        self.config = config
        self.engine = create_engine(config.database.url)
        self.sessions = sessionmaker(self.engine)
        self.pool = ParsePool(2, 20)
        self.runtime = Runtime.of(config, backfill=backfill)
        self.processor = Processor(self.runtime, self.sessions, self.pool)
        self._seq = 0

    async def ingest(self, raws: Sequence[bytes], source: str = "test") -> list[Outcome]:
        items = []
        for raw in raws:
            self._seq += 1
            items.append(Incoming(source=source, uid=self._seq, raw=raw, size=len(raw)))
        return await self.processor.process_batch(items)

    async def send_all(self, limit: float = 30) -> None:
        assert self.config.smtp is not None
        await OutboxSender(self.sessions, self.config.smtp).drain(limit)

    async def close(self) -> None:
        self.pool.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Desk:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def cli(
    config: Config, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``helpdeskd`` command line against CONFIG."""
    env = dict(os.environ, HELPDESKD_CONFIG=str(config.source))
    proc = subprocess.run(
        [sys.executable, "-m", "helpdeskd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helpdeskd {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def cli_json(config: Config, *args: str) -> Any:
    return json.loads(cli(config, *args, "--json").stdout)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
