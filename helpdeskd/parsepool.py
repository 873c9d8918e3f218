"""Parse received mail and build outgoing mail in worker processes, with a timeout.

A pathological MIME tree must not wedge the daemon, and both cores should work. A message that
runs past its timeout has its worker killed; the pool is rebuilt and the message is reported as
:class:`ParseTimeout` (the caller quarantines it).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from helpdeskd.errors import ParseTimeout
from helpdeskd.outbound import OutgoingMail, build_messages
from helpdeskd.parsing import ParsedMessage, parse_message

log = structlog.get_logger(__name__)


def _ignore_interrupt() -> None:
    """In a worker: leave Ctrl-C to the daemon, which finishes its batch and then stops us.

    A terminal's Ctrl-C reaches the whole process group; a worker that took it would die
    mid-parse with a traceback instead of being shut down in order.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ParsePool:
    def __init__(self, workers: int = 2, timeout: float = 20.0) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self._pool: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the daemon has threads (aiosqlite) and a running event loop.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupt,
            )
        return self._pool

    async def parse(self, raw: bytes) -> ParsedMessage:
        """Parse RAW in a worker; raise ParseTimeout or the parser's own exception."""
        loop = asyncio.get_running_loop()
        for _ in range(3):
            pool = self._executor()
            future = loop.run_in_executor(pool, parse_message, raw)
            try:
                return await asyncio.wait_for(future, timeout=self.timeout)
            except TimeoutError:
                log.error("parse_timed_out", size=len(raw), timeout=self.timeout)
                await self._reset(pool)
                raise ParseTimeout(f"parsing took longer than {self.timeout:g} s") from None
            except BrokenProcessPool:
                if self._pool is not pool:
                    continue  # killed because another message timed out: parse again
                await self._reset(pool)
                raise ParseTimeout("the parser process died on this message") from None
        raise ParseTimeout("the parser pool kept failing")

    def start_build(self, mails: Sequence[OutgoingMail]) -> asyncio.Future[list[bytes]]:
        """Start building MAILS' bytes in a worker now; the caller awaits the result, with
        :attr:`timeout`. A broken pool raises there; parsing rebuilds it (see parse)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor(), build_messages, list(mails))

    async def _reset(self, pool: ProcessPoolExecutor) -> None:
        async with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
            # The executor has no public way to stop a busy worker; kill them so the stuck
            # parse cannot hold a core forever. Other messages in flight fail and are retried.
            processes = getattr(pool, "_processes", None) or {}
            for process in list(processes.values()):
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
