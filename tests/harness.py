"""Run helpdeskd's real parts in-process for tests: processor, outbox sender, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from helpdeskd.cli.main import main
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
        keys = self.config.service.secret_keys
        await OutboxSender(self.sessions, self.config.smtp, keys=keys).drain(limit)

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
    """Run the real ``helpdeskd`` command line against CONFIG.

    In this process, through ``helpdeskd.cli.main.main`` as ``python -m helpdeskd`` calls it,
    with stdin empty and stdout and stderr captured: the same code, the same exit status, the
    same output, without a new interpreter's start-up (most of a command's time in tests).
    ``HELPDESKD_TEST_CLI=process`` runs each command as a process instead; tests of the process
    itself (signals, the environment) use :func:`cli_process`.
    """
    if os.environ.get("HELPDESKD_TEST_CLI") == "process":
        return cli_process(config, *args, check=check, timeout=timeout)
    argv = ["--config", str(config.source), *args]
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, int] = {}

    def call() -> None:
        saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
        try:
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                _stdin(io.StringIO("")),
            ):
                try:
                    result["code"] = main(argv)
                except SystemExit as exc:  # argparse: usage errors and --help
                    code = exc.code
                    result["code"] = code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            structlog.configure(**saved)
            logging.getLogger().handlers[:] = handlers

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        call()  # the usual case: a plain test, and asyncio.run may run here
    else:  # an async test: the command's asyncio.run needs a thread without a loop
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(timeout)
    proc = subprocess.CompletedProcess(
        ["helpdeskd", *args], result.get("code", 1), out.getvalue(), err.getvalue()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helpdeskd {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@contextlib.contextmanager
def _stdin(stream: io.StringIO) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, stream
    try:
        yield
    finally:
        sys.stdin = saved


def cli_process(
    config: Config, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``helpdeskd`` command line against CONFIG, as a process of its own."""
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
