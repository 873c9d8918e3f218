"""Worker processes: started by spawn, dying with the process that started them.

The parse pool (helpdeskd.ingest.parsepool) and a large notice's renderers
(helpdeskd.desk.noticequeue) run their work in such processes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import structlog

from helpdeskd import heap

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2)


def start_worker(parent: int) -> None:
    """In a worker: die with PARENT (its pid), and leave Ctrl-C to it.

    A daemon killed with SIGKILL (the OOM killer, ``kill -9``) cannot stop its workers; the
    kernel kills them then (PR_SET_PDEATHSIG), and with the last of them gone the resource
    tracker ends too. Nothing is left outside the daemon's cgroup to hold memory or a core.

    A terminal's Ctrl-C reaches the whole process group; a worker that took it would die
    mid-work with a traceback instead of being shut down in order by its parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("worker_pdeathsig_failed", errno=ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def worker_pool(
    workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> ProcessPoolExecutor:
    """WORKERS processes, started by spawn (not fork: the caller has threads, aiosqlite's, and a
    running event loop), each set up by :func:`start_worker` with this process as its parent,
    then by INITIALIZER(*INITARGS)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start(parent: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    start_worker(parent)
    initializer(*initargs)
    heap.settle()
