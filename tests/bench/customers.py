"""Customers import benchmark: ``helpdeskd customers import`` of a generated CSV, rows/s and memory.

    .venv/bin/python -m tests.bench.customers [--rows 100000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Not a test: pytest never collects it (it is not named ``test_*.py``) and nothing here asserts
a speed; it prints figures, and the target of issue 21 (at least 10,000 rows/s on SQLite) with
``ok`` or ``MISSED``. One run writes one CSV of N customers (all valid and distinct, 97 domains,
every column filled, as ``tests/bench/notices.py`` writes them) into a temporary directory, and
measures on a fresh SQLite database (WAL, ``synchronous=FULL``, set by
``helpdeskd.store.db.create_engine``) in that directory, then, with ``--pg URL``, on a fresh
PostgreSQL database created on URL's server. Both are removed (the PostgreSQL one dropped) at
the end, on error and on Ctrl-C (or SIGTERM) alike; ``--keep`` keeps the directory.

Each measurement runs in a child process of its own (spawn), so that its peak RSS is its own:
the child imports what the command needs, then runs ``helpdeskd.cli.main.main(["customers",
"import", F])`` in-process, exactly the command (config read, schema checked, rows counted for
the progress, the import in one transaction, COMMIT), its stdout and stderr (not a terminal:
the plain progress lines) kept in memory. Timed from the call to its return: wall time,
rows/s, the child's CPU time (which depends less on how busy the shared machine is than the
wall time does; ``machine N% busy`` says how busy all cores were meanwhile, anyone's work
included), and the child's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) before the call
and after it, the difference being what the import itself grew by.

Measurements, per database:

1. ``new``: the N rows into the empty (migrated) database: every row a new customer.
2. ``again``: the same file again into the now full database: every row an update.
3. ``new N/10``: N/10 rows into a second empty database. Its RSS growth against that of 1
   shows whether memory grows with the file (the import streams it in chunks: it must not).

The summary line the command printed is checked against the expected counts (a wrong count
fails the benchmark).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tests.bench.databases import Databases
from tests.bench.procstat import machine_ticks

TARGET_SQLITE = 10_000  # rows/s, issue 21


class BenchError(RuntimeError):
    """The benchmark could not run as intended (wrong counts, a database that failed)."""


def say(line: str = "") -> None:
    print(line, flush=True)


def peak_rss_mb() -> float:
    """This process's peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- setup: the CSV, the config, the databases ----------------------------------------------


def write_customers(path: Path, count: int) -> None:
    plans = ("basic", "standard", "premium", "enterprise")
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,plan,app,addon_id,status\n")
        for i in range(count):
            out.write(
                f"customer{i:07d}@customer{i % 97:02d}.example,Customer {i:07d},"
                f"{plans[i % len(plans)]},app-{i:07d},addon-{i:07d},active\n"
            )


def write_config(workdir: Path, name: str, url: str) -> Path:
    secret = workdir / "secret.key"
    if not secret.exists():
        secret.write_text("k1 bench-secret-key-0123456789abcdef\n")
        secret.chmod(0o600)
    state = workdir / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    lines = [
        "[service]",
        'name = "Acme Postgres add-on"',
        'support_address = "support@acme.test"',
        'public_url = "https://support.acme.test"',
        'ticket_prefix = "HD"',
        f'secret_key_file = "{secret}"',
        f'state_dir = "{state}"',
        "",
        "[database]",
        f'url = "{url}"',
        "",
        "[[agent]]",
        'email = "alice@acme.test"',
        'name = "Alice"',
        "",
    ]
    path = workdir / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


# --- one measurement, in a child process ----------------------------------------------------


@dataclass
class Run:
    """One ``customers import``, as the child reports it."""

    exit_status: int
    stdout: str
    stderr_tail: str
    wall: float
    cpu: float
    busy: float
    rss_before: float  # peak RSS before the command: the imports it needs
    rss_after: float  # peak RSS when it returned


def _import_main(config_path: str, csv_path: str, conn: Connection) -> None:
    """Child process: run ``helpdeskd customers import`` in-process and report a Run."""
    import contextlib
    import io

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it on Ctrl-C

    # What the command imports as it runs, so that the RSS before counts it and the growth
    # is the import's own.
    import helpdeskd.cli.customers
    import helpdeskd.cli.main
    import helpdeskd.desk.customers
    import helpdeskd.store.db

    if "postgresql" in Path(config_path).read_text():
        import asyncpg  # noqa: F401
    else:
        import aiosqlite  # noqa: F401

    out, err = io.StringIO(), io.StringIO()
    rss_before = peak_rss_mb()
    ticks = machine_ticks()
    cpu = time.process_time()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = helpdeskd.cli.main.main(["--config", config_path, "customers", "import", csv_path])
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    busy, total = machine_ticks()
    run = Run(
        exit_status=status,
        stdout=out.getvalue(),
        stderr_tail="\n".join(err.getvalue().splitlines()[-3:]),
        wall=wall,
        cpu=cpu,
        busy=(busy - ticks[0]) / max(1, total - ticks[1]),
        rss_before=rss_before,
        rss_after=peak_rss_mb(),
    )
    conn.send(asdict(run))


def measure(config_path: Path, csv_path: Path, expected: str) -> Run:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=_import_main, args=(str(config_path), str(csv_path), child), daemon=True
    )
    process.start()
    child.close()
    try:
        if not parent.poll(3600):
            raise BenchError("the import took longer than an hour")
        run = Run(**parent.recv())
        process.join(30)
    except EOFError:
        raise BenchError(f"the import's process failed (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    if run.exit_status != 0 or not run.stdout.startswith(expected):
        raise BenchError(
            f"customers import exited {run.exit_status} saying {run.stdout.strip()!r} "
            f"(expected {expected!r}); stderr ends: {run.stderr_tail}"
        )
    return run


# --- the run --------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def line(name: str, rows: int, run: Run) -> str:
    return (
        f"  {name:<10} {rows:>8} rows  {run.wall:7.2f} s  {rate(rows, run.wall):8.0f} rows/s  "
        f"CPU {run.cpu:6.2f} s ({run.cpu / rows * 1e6:5.1f} us/row)  "
        f"peak RSS {run.rss_after:6.1f} MiB (+{run.rss_after - run.rss_before:5.1f} over "
        f"{run.rss_before:.1f} before)  machine {run.busy:.0%} busy"
    )


def bench_database(label: str, databases: Databases, workdir: Path, args: Any) -> None:
    rows = args.rows
    small = max(rows // 10, 1)
    say(f"{label}:")
    url = databases.fresh(f"{label}_full")
    config = write_config(workdir, f"{label}_full", url)
    new = measure(config, args.csv, f"{rows} customers added, 0 updated")
    say(line("new", rows, new))
    again = measure(config, args.csv, f"0 customers added, {rows} updated")
    say(line("again", rows, again))
    small_url = databases.fresh(f"{label}_small")
    small_config = write_config(workdir, f"{label}_small", small_url)
    tenth = measure(small_config, args.small_csv, f"{small} customers added, 0 updated")
    say(line("new N/10", small, tenth))
    growth_full = new.rss_after - new.rss_before
    growth_small = tenth.rss_after - tenth.rss_before
    say(
        f"  RSS growth of the import: {growth_small:.1f} MiB at {small} rows, "
        f"{growth_full:.1f} MiB at {rows} rows"
    )
    if label == "sqlite":
        speed = rate(rows, new.wall)
        verdict = "ok" if speed >= TARGET_SQLITE else "MISSED"
        say(f"  target: new rows >= {TARGET_SQLITE}/s on SQLite: {speed:.0f}/s {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.customers",
        description="Import N generated customers with `helpdeskd customers import`.",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="customers in the file (N)")
    parser.add_argument("--pg", metavar="URL", help="also on PostgreSQL: a server's database URL")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir")
    args = parser.parse_args(argv)
    if args.rows < 10:
        parser.error("--rows must be at least 10")

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous_sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="helpdeskd-bench-customers-", dir=args.dir))
    workdir.chmod(0o700)
    kinds = [("sqlite", Databases(workdir, None))]
    if args.pg:
        kinds.append(("postgresql", Databases(workdir, args.pg)))
    try:
        say(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, work dir {workdir}")
        args.csv = workdir / "customers.csv"
        args.small_csv = workdir / "customers-small.csv"
        write_customers(args.csv, args.rows)
        write_customers(args.small_csv, max(args.rows // 10, 1))
        say(f"{args.rows} customers, {args.csv.stat().st_size / 1e6:.1f} MB of CSV")
        for label, databases in kinds:
            bench_database(label, databases, workdir, args)
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted; cleaning up")
        return 130
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for _, databases in kinds:
            databases.close()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, previous_sigint)


if __name__ == "__main__":
    sys.exit(main())
