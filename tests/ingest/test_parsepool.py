"""The parse pool, with its real worker processes: runs of small mail, timeouts, order."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from structlog.testing import capture_logs

from helpdeskd.errors import HelpdeskError, ParseTimeout
from helpdeskd.ingest import parsepool
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.mail.parse import ParsedMessage, parse_message
from tests.mailgen import customer_mail, realistic_mix

# An HTML-only mail that takes about a second to parse (html2text): past the timeout below,
# which still leaves a restarted worker ample time for a small mail.
SLOW = (
    b"From: slow@b.test\r\nSubject: slow\r\nMessage-ID: <slow@b.test>\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    + b"<div><b>x</b> <i>y</i> <a href='http://x/'>z</a></div>\n> quoted line\n"
    * 8000
)


async def test_runs_parse_like_one_by_one_in_order() -> None:
    raws = realistic_mix(37)
    raws.insert(20, customer_mail(99, body="a long log line\n" * 20000))  # > chunk_bytes: alone
    pool = ParsePool(2, 20, chunk=10, chunk_bytes=256 * 1024)
    try:
        results = await pool.parse_many(raws)
    finally:
        pool.close()
    assert results == [parse_message(raw) for raw in raws]


async def test_the_start_of_replacement_workers_is_not_counted_against_a_parse() -> None:
    """A timeout kills the workers; the next mail's timeout counts its parse only, not the
    start of their replacements (imports: longer than this timeout on a busy machine)."""
    pool = ParsePool(2, 0.15)
    try:
        with pytest.raises(ParseTimeout):
            await pool.parse(SLOW)
        assert (await pool.parse(customer_mail(1))).subject == "Invoice question for March #1"
    finally:
        pool.close()


def _answer_late() -> int:
    """In a worker: answer the start-up call, a second late."""
    time.sleep(1.0)
    return os.getpid()


async def test_workers_that_cannot_start_fail_the_waiting_mails_at_once(monkeypatch) -> None:
    """One failed start is enough: mails waiting for it fail without another try, until
    START_TIMEOUT has passed; then the pool starts anew."""
    monkeypatch.setattr(parsepool, "START_TIMEOUT", 0.2)
    # Workers that answer the start-up call a second late: a start past START_TIMEOUT on any
    # machine (a real one takes about a fifth of a second, less on a fast machine).
    monkeypatch.setattr(parsepool, "_answer", _answer_late)
    pool = ParsePool(2, 0.1)
    try:
        with capture_logs() as logs:
            results = await asyncio.gather(
                *(pool.parse(customer_mail(n)) for n in range(5)), return_exceptions=True
            )
        assert all(isinstance(r, ParseTimeout) for r in results), results
        assert [e["event"] for e in logs].count("parse_workers_start_failed") == 1
        monkeypatch.undo()
        await asyncio.sleep(0.2)
        pool.timeout = 30.0  # the start is what is tested, not how fast a busy machine parses
        assert await pool.parse(customer_mail(1)) == parse_message(customer_mail(1))
    finally:
        pool.close()


async def test_a_run_past_the_timeout_is_parsed_again_one_by_one() -> None:
    smalls = [customer_mail(n) for n in range(8)]
    pool = ParsePool(2, 0.5, chunk=10, chunk_bytes=2**20)
    try:
        await pool.parse(smalls[0])  # the workers are up
        with capture_logs() as logs:
            results = await pool.parse_many([*smalls[:4], SLOW, *smalls[4:]])
    finally:
        pool.close()

    assert isinstance(results.pop(4), ParseTimeout)  # only the mail at fault
    assert all(isinstance(result, ParsedMessage) for result in results)
    assert results == [parse_message(raw) for raw in smalls]
    events = [entry["event"] for entry in logs]
    assert events.count("parse_run_timed_out") == 1
    assert events.count("parse_timed_out") == 1


async def test_start_has_every_worker_up_before_the_first_mail() -> None:
    pool = ParsePool(2, 20)
    try:
        with capture_logs() as logs:
            await pool.start()
        processes = list(pool._executor()._processes.values())
        assert len(processes) == 2
        assert all(process.is_alive() for process in processes)
        assert [entry["answered"] for entry in logs if entry["event"] == "parse_workers_started"]
        assert await pool.parse(customer_mail(1)) == parse_message(customer_mail(1))
    finally:
        pool.close()


async def test_workers_that_cannot_start_in_time_are_one_clear_error() -> None:
    pool = ParsePool(1, 0.01)  # a worker takes about a fifth of a second to start
    try:
        with pytest.raises(HelpdeskError, match=r"^the parse workers did not answer within"):
            await pool.start()
        assert pool._pool is None  # the half-started pool is gone: the next use starts anew
    finally:
        pool.close()


CHILD = """
import asyncio, os, sys
from helpdeskd.ingest.parsepool import ParsePool

async def main():
    pool = ParsePool(2, 20)
    await pool.start()
    print("ready", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_workers_and_the_resource_tracker_die_with_a_killed_daemon() -> None:
    """SIGKILL leaves the pool no time to stop its workers: the kernel ends them
    (PR_SET_PDEATHSIG), and then the resource tracker ends by itself."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.harness import ROOT

    def children(pid: int) -> set[int]:
        found: set[int] = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(p) for p in (task / "children").read_text().split()}
        return found

    def running(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        while (line := proc.stdout.readline()) not in (b"ready\n", b""):
            pass  # the pool's own log lines
        assert line == b"ready\n"
        kids = children(proc.pid)
        assert len(kids) == 3  # two workers and the resource tracker
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in kids if running(pid)], "left behind after SIGKILL"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_workers_killed_while_idle_are_started_afresh_for_the_next_mail() -> None:
    """The OOM killer takes an idle worker: the pool is broken before any mail is in it, and
    the next parse starts it afresh instead of failing every mail from then on."""
    pool = ParsePool(2, 20)
    try:
        await pool.start()
        executor = pool._pool
        assert executor is not None
        for process in list(executor._processes.values()):
            process.kill()
            process.join()
        raws = realistic_mix(12)
        assert await pool.parse_many(raws) == [parse_message(raw) for raw in raws]
        assert await pool.parse(raws[0]) == parse_message(raws[0])
    finally:
        pool.close()
