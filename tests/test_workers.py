"""Worker processes (helpdeskd.workers): set up once, children of this process, Ctrl-C left
to the parent. That they die with their parent is tested with the parse pool
(tests/ingest/test_parsepool.py)."""

from __future__ import annotations

import os
import signal

from helpdeskd.workers import worker_pool

_setup: tuple[str, ...] = ()


def _remember(*args: str) -> None:
    global _setup
    _setup = args


def _report() -> tuple[int, int, tuple[str, ...], bool]:
    return os.getpid(), os.getppid(), _setup, signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_worker_is_set_up_once_and_leaves_ctrl_c_to_its_parent() -> None:
    pool = worker_pool(1, _remember, ("notice", "42"))
    try:
        first = pool.submit(_report).result(timeout=60)
        second = pool.submit(_report).result(timeout=60)
    finally:
        pool.shutdown()
    pid, parent, setup, ignores_sigint = first
    assert pid != os.getpid() and parent == os.getpid()
    assert setup == ("notice", "42") and ignores_sigint
    assert second == first  # the same process, set up once
