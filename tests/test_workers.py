"""Worker processes (helpdeskd.workers): set up once, children of this process, Ctrl-C left
to the parent. That they die with their parent is tested with the parse pool
(tests/ingest/test_parsepool.py)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

from helpdeskd.workers import worker_pool

ROOT = Path(__file__).resolve().parent.parent

_setup: tuple[str, ...] = ()


def _remember(*args: str) -> None:
    global _setup
    _setup = args


def _report() -> tuple[int, int, tuple[str, ...], bool, bool]:
    ignores_sigint = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return os.getpid(), os.getppid(), _setup, ignores_sigint, gc.get_freeze_count() > 0


def test_a_worker_is_set_up_once_and_leaves_ctrl_c_to_its_parent() -> None:
    """... and what its set-up made is left out of the collector's rounds (helpdeskd.heap)."""
    pool = worker_pool(1, _remember, ("notice", "42"))
    try:
        first = pool.submit(_report).result(timeout=60)
        second = pool.submit(_report).result(timeout=60)
    finally:
        pool.shutdown()
    pid, parent, setup, ignores_sigint, settled = first
    assert pid != os.getpid() and parent == os.getpid()
    assert setup == ("notice", "42") and ignores_sigint and settled
    assert second == first  # the same process, set up once


def _imported_by(code: str) -> set[str]:
    """The helpdeskd and database modules a fresh interpreter has after running CODE."""
    report = "import sys; print(' '.join(m for m in sys.modules if m.split('.')[0] in WATCHED))"
    out = subprocess.run(
        [sys.executable, "-c", f"WATCHED = {{'helpdeskd', 'sqlalchemy'}}\n{code}\n{report}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return set(out.split())


def test_a_worker_of_the_installed_command_imports_no_command_line() -> None:
    """Spawn runs the parent's script again as ``__mp_main__`` before a worker's first task;
    for the ``helpdeskd`` script that must not import the command line (a second's imports,
    and their memory, in every parse worker and notice renderer)."""
    script = Path(sys.executable).parent / "helpdeskd"
    assert script.is_file(), f"{script}: the project is not installed in this interpreter's venv"
    modules = _imported_by(f"import runpy; runpy.run_path({str(script)!r}, run_name='__mp_main__')")
    assert modules == {"helpdeskd", "helpdeskd.__main__"}, modules


def test_a_notice_renderer_imports_no_database_layer() -> None:
    modules = _imported_by("import helpdeskd.desk.noticemail")
    assert "helpdeskd.desk.noticemail" in modules
    assert not {m for m in modules if m.startswith(("sqlalchemy", "helpdeskd.store"))}, modules
