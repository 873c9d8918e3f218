"""Run the daemon's tasks: restart a crashed one with backoff, drain on stop.

Like arq's worker: signals come through ``loop.add_signal_handler``; on stop every task is asked
to finish the work in hand (they watch the shared stop event) and gets a deadline before it is
cancelled. A task that crashes more than ``max_crashes`` times within ``window`` seconds stops
the daemon with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

TaskFactory = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class _Task:
    name: str
    factory: TaskFactory
    crashes: list[float] = field(default_factory=list)
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        stop: asyncio.Event,
        *,
        max_crashes: int = 5,
        window: float = 300.0,
        drain_timeout: float = 20.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.stop = stop
        self.max_crashes = max_crashes
        self.window = window
        self.drain_timeout = drain_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._tasks: list[_Task] = []
        self.failed: str | None = None
        self.last_beat = time.monotonic()

    def add(self, name: str, factory: TaskFactory) -> None:
        self._tasks.append(_Task(name, factory))

    async def run(self) -> int:
        """Run every task until stop; return the exit status (0 clean, 1 gave up)."""
        runners = [asyncio.create_task(self._keep(t), name=t.name) for t in self._tasks]
        await self.stop.wait()
        _done, pending = await asyncio.wait(runners, timeout=self.drain_timeout)
        for task in pending:
            log.warning("task_drain_timed_out", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return 1 if self.failed else 0

    async def _keep(self, task: _Task) -> None:
        while not self.stop.is_set():
            try:
                await task.factory(self.stop)
                if self.stop.is_set():
                    return
                raise RuntimeError("task returned before stop")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                task.crashes = [t for t in task.crashes if now - t < self.window] + [now]
                log.exception("task_crashed", task=task.name, error=str(exc))
                if len(task.crashes) > self.max_crashes:
                    self.failed = f"{task.name} crashed {len(task.crashes)} times"
                    log.error("supervisor_gave_up", task=task.name, crashes=len(task.crashes))
                    self.stop.set()
                    return
                delay = min(self.backoff_max, self.backoff_base * 2 ** (len(task.crashes) - 1))
                task.restarts += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
