"""Progress of long CLI work: a bar on a terminal (rich), plain lines when not on one.

    with progress("queueing", total=len(rows)) as advance:
        for chunk in chunks:
            ...
            advance(len(chunk))

On a terminal (STREAM is a TTY) rich draws a bar with the count, the rate and the time left,
on stderr, so that stdout stays the command's answer: lines the command prints meanwhile on the
terminal appear above the bar, and output sent to a file or a pipe stays there. Elsewhere (a
pipe, a log, systemd's journal) it prints a plain line at most every ``EVERY`` seconds
(``$HELPDESKD_PROGRESS_EVERY`` sets another) and one when the work is done:
``queueing: 4000/10000 (40%), 1850/s``, the last ending in ``, done`` (none when the work
fails). Work done sooner than that prints nothing, so that a quick command's stderr is only
what the command itself says there. A total of None counts without a percentage.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Advance = Callable[[int], None]
EVERY = 5.0  # seconds between plain lines


def _every() -> float:
    try:
        every = float(os.environ.get("HELPDESKD_PROGRESS_EVERY", EVERY))
    except ValueError:
        return EVERY
    return every if every >= 0 else EVERY


@contextmanager
def progress(
    label: str, total: int | None, *, stream: TextIO | None = None, every: float | None = None
) -> Iterator[Advance]:
    """Show the progress of LABEL's work over TOTAL items; yield the function that counts them."""
    out = stream if stream is not None else sys.stderr
    every = _every() if every is None else every
    if out.isatty():
        with _bar(label, total, out) as advance:
            yield advance
        return
    with _lines(label, total, out, every) as advance:
        yield advance


@contextmanager
def _bar(label: str, total: int | None, out: TextIO) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items a second (rich's own speed column counts bytes)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.0f}/s" if speed is not None else "", style="progress.data.speed")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=out),
        # While the bar is drawn, rich shows what the command prints above it; but output sent
        # elsewhere than the terminal (``--json > file``) must stay where it was sent.
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=out is sys.stderr,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def _lines(label: str, total: int | None, out: TextIO, every: float) -> Iterator[Advance]:
    started = last = time.monotonic()
    done = 0

    def line(now: float) -> str:
        count = f"{done}/{total} ({done * 100 // total}%)" if total else f"{done}"
        elapsed = now - started
        rate = f", {done / elapsed:.0f}/s" if elapsed > 0 else ""
        return f"{label}: {count}{rate}"

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every:
            last = now
            print(line(now), file=out, flush=True)

    yield advance
    now = time.monotonic()
    if now - started >= every:
        print(line(now) + ", done", file=out, flush=True)
