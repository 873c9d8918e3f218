"""Parse received mail in worker processes, with a timeout.

A pathological MIME tree must not wedge the daemon, and both cores should work. A message that
runs past its timeout has its worker killed; the pool is rebuilt and the message is reported as
:class:`ParseTimeout` (the caller quarantines it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from helpdeskd.errors import HelpdeskError, ParseTimeout
from helpdeskd.mail.parse import ParsedMessage, parse_message, parse_messages
from helpdeskd.runs import split_runs
from helpdeskd.workers import worker_pool

log = structlog.get_logger(__name__)


def _no_setup() -> None:
    """A parse worker needs nothing more than a worker gets (helpdeskd.workers.start_worker)."""


def _answer() -> int:
    """In a worker: answer the start-up call, busy long enough that each worker gets one."""
    time.sleep(0.05)
    return os.getpid()


CHUNK = 10  # messages parsed in one trip to a worker
CHUNK_BYTES = 256 * 1024  # a message this large travels alone
START_TIMEOUT = 30.0  # seconds new workers may take to start, whatever the parse timeout


class ParsePool:
    def __init__(
        self,
        workers: int = 2,
        timeout: float = 20.0,
        *,
        chunk: int = CHUNK,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self.chunk, self.chunk_bytes = chunk, chunk_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._started: ProcessPoolExecutor | None = None  # the pool whose workers answered
        self._lock = asyncio.Lock()
        self._starting = asyncio.Lock()
        self._start_again_at = 0.0  # after workers failed to start: not before (loop time)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = worker_pool(self.workers, _no_setup, ())
        return self._pool

    async def start(self) -> None:
        """Start the workers now and wait, within the timeout, until they answer.

        A worker takes a fifth of a second of CPU to start (its imports). Started with the
        daemon, that is not paid by the first mail, and a pool that cannot start is known
        before the daemon says it is ready.
        """
        pool = self._executor()
        try:
            pids = await self._start_workers(pool, self.timeout)
        except (TimeoutError, BrokenProcessPool) as exc:
            await self._reset(pool)
            why = "did not answer" if isinstance(exc, TimeoutError) else "died"
            raise HelpdeskError(
                f"the parse workers {why} within {self.timeout:g} s of starting"
            ) from None
        log.info("parse_workers_started", workers=self.workers, answered=len(set(pids)))

    async def _start_workers(self, pool: ProcessPoolExecutor, timeout: float) -> list[int]:
        """Have each of POOL's workers answer, within TIMEOUT; their pids."""
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(pool, _answer) for _ in range(self.workers)]
        pids = await asyncio.wait_for(asyncio.gather(*calls), timeout=timeout)
        self._started = pool
        return pids

    async def _ready(self) -> ProcessPoolExecutor:
        """The pool, with its workers up.

        Workers killed after a timeout are replaced by new ones, which take a while to start
        (their imports; longer on a busy machine): they are started here first, so that the
        timeout of the mails parsed next measures their parse, not the start of a worker.
        Workers that cannot start fail every parse at once for START_TIMEOUT, then are tried
        again.
        """
        pool = self._executor()
        if pool is self._started:
            return pool
        loop = asyncio.get_running_loop()
        async with self._starting:
            if loop.time() < self._start_again_at:
                raise ParseTimeout("the parser processes did not start")
            pool = self._executor()  # a new one, if the pool was reset while we waited
            if pool is not self._started:
                try:
                    await self._start_workers(pool, max(self.timeout, START_TIMEOUT))
                except (TimeoutError, BrokenProcessPool) as exc:
                    log.error("parse_workers_start_failed", error=type(exc).__name__)
                    await self._reset(pool)
                    self._start_again_at = loop.time() + START_TIMEOUT
                    raise ParseTimeout("the parser processes did not start") from None
        return pool

    async def parse(self, raw: bytes) -> ParsedMessage:
        """Parse RAW in a worker; raise ParseTimeout or the parser's own exception."""
        loop = asyncio.get_running_loop()
        for _ in range(3):
            pool = await self._ready()
            try:
                # A worker that died while idle (the OOM killer) breaks the pool: submitting
                # raises at once, and the pool is started afresh like after a timeout.
                future = loop.run_in_executor(pool, parse_message, raw)
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

    async def parse_many(self, raws: Sequence[bytes]) -> list[ParsedMessage | BaseException]:
        """Parse RAWS in the workers; return each one's ParsedMessage or exception, in order.

        Small messages travel several to a trip (a trip costs the daemon about as much CPU as
        a third of a parse). A trip that runs past the timeout or loses its worker, and any
        message that fails in it, is parsed again one message at a time with :meth:`parse`:
        only the message at fault times out or fails, with the worker's traceback.
        """
        runs = split_runs(range(len(raws)), [len(r) for r in raws], self.chunk_bytes, self.chunk)
        done = await asyncio.gather(*(self._parse_run([raws[i] for i in run]) for run in runs))
        return [result for results in done for result in results]

    async def _parse_run(self, raws: list[bytes]) -> list[ParsedMessage | BaseException]:
        found = await self._parse_together(raws) if len(raws) > 1 else [None]
        alone = [raw for raw, parsed in zip(raws, found, strict=True) if parsed is None]
        again = iter(await asyncio.gather(*map(self.parse, alone), return_exceptions=True))
        return [parsed if parsed is not None else next(again) for parsed in found]

    async def _parse_together(self, raws: list[bytes]) -> list[ParsedMessage | None]:
        """RAWS parsed in one trip, None for each that failed, all None if the trip did."""
        try:
            pool = await self._ready()
        except ParseTimeout:
            return [None] * len(raws)
        try:
            future = asyncio.get_running_loop().run_in_executor(pool, parse_messages, raws)
            return await asyncio.wait_for(future, timeout=self.timeout)
        except TimeoutError:
            log.warning("parse_run_timed_out", messages=len(raws), timeout=self.timeout)
            await self._reset(pool)
        except BrokenProcessPool:
            if self._pool is pool:
                await self._reset(pool)
        return [None] * len(raws)

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
