"""Scheduler pass: how long one look for due time rules and SLA steps takes over open tickets.

Not a test: it prints figures. Run: ``.venv/bin/python -m tests.bench.scheduler [--tickets N]``.
N generated customer mails (``tests.mailgen.realistic_mix``) become open tickets in a fresh
SQLite database, under the shipped rules (time rules and business-hours SLAs), none of them due.
Then, in the same run:

- a first pass of ``Automation.run_due`` (no SLA deadlines known yet), then later passes;
- the baseline: every candidate ticket taken in its own locked transaction, the way each pass
  worked before the read-only scan (``Automation._ticket`` for each).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from helpdeskd.config.load import load_config
from helpdeskd.config.settings import DEFAULT_RULES
from helpdeskd.daemon.logs import configure
from helpdeskd.desk.automation import Automation
from helpdeskd.ingest.batch import Processor
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.store.db import create_engine, sessionmaker, upgrade
from helpdeskd.store.models import Ticket, utcnow
from helpdeskd.triage.facts import Runtime
from helpdeskd.triage.received import Incoming
from helpdeskd.vocab import OPEN_STATES
from tests.mailgen import realistic_mix


def _config(folder: Path) -> Path:
    (folder / "secret.key").write_text("k1 bench-secret-0123456789abcdef\n")
    path = folder / "helpdeskd.toml"
    path.write_text(
        '[service]\nname = "Bench"\nsupport_address = "support@acme.test"\n'
        'public_url = "https://support.acme.test"\nsecret_key_file = "secret.key"\n'
        f'state_dir = "{folder / "state"}"\n\n[database]\n'
        f'url = "sqlite:///{folder / "bench.db"}"\n\n[paths]\nrules = "{DEFAULT_RULES}"\n'
    )
    return path


def _timed(label: str, wall: float, cpu: float, tickets: int) -> None:
    print(
        f"  {label:<34} {wall:6.2f} s wall, {cpu:6.2f} s CPU"
        f" ({cpu / max(tickets, 1) * 1e6:5.0f} us CPU a ticket)"
    )


async def _run(folder: Path, count: int, passes: int) -> None:
    config = load_config(folder / "helpdeskd.toml")
    engine = create_engine(config.database.url)
    sessions = sessionmaker(engine)
    pool = ParsePool(2, 20)
    processor = Processor(Runtime.of(config), sessions, pool)
    try:
        print(f"ingesting {count} generated mails ...", flush=True)
        mails = realistic_mix(count)
        for start in range(0, count, 100):
            batch = [
                Incoming(source="bench", uid=start + n + 1, raw=raw, size=len(raw))
                for n, raw in enumerate(mails[start : start + 100])
            ]
            await processor.process_batch(batch)
        async with sessions() as session:
            ids = list(
                await session.scalars(select(Ticket.id).where(Ticket.state.in_(OPEN_STATES)))
            )
        rules = processor.runtime.policy.rules
        print(f"{len(ids)} open tickets; rules: {rules.summary()} ({DEFAULT_RULES})")
        automation = Automation(processor.runtime, sessions)
        timings = []
        for n in range(passes):
            wall, cpu = time.perf_counter(), time.process_time()
            steps, wake = await automation.run_due()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timings.append(wall)
            label = "pass 1 (no deadlines known yet)" if n == 0 else f"pass {n + 1}"
            _timed(f"{label}, {steps} steps", wall, cpu, len(ids))
        print(f"  next look in {(wake - utcnow()).total_seconds():.0f} s")
        now = utcnow()
        wall, cpu = time.perf_counter(), time.process_time()
        taken = 0
        for ticket_id in ids:
            taken += (await automation._ticket(automation.runtime.policy, ticket_id, now))[0]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        _timed(f"baseline: one lock a ticket, {taken} steps", wall, cpu, len(ids))
        print(
            f"ratio baseline/pass: first pass {wall / timings[0]:.1f}x,"
            f" later passes {wall / min(timings[1:] or timings):.1f}x"
        )
    finally:
        pool.close()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=2000, help="open tickets (default 2000)")
    parser.add_argument("--passes", type=int, default=3, help="scheduler passes (default 3)")
    args = parser.parse_args()
    configure(json=True, level="WARNING")
    folder = Path(tempfile.mkdtemp(prefix="helpdeskd-bench-scheduler-"))
    try:
        upgrade(
            load_config(_config(folder)).database.url
        )  # before the event loop: Alembic runs its own
        asyncio.run(_run(folder, args.tickets, max(1, args.passes)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
