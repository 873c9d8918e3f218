"""Corpus throughput: every file of ../shared/corpus through helpdeskd's ingest pipeline.

Not a test: it prints figures. Run: ``.venv/bin/python -m tests.bench.corpus [--rounds 3]``.
Each round ingests the whole corpus (as ``helpdeskd ingest --backfill`` does: parse in the worker
pool, classify, thread, store) into a fresh SQLite database, and reports messages per second,
CPU per message and the outcome counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from helpdeskd.config.load import load_config
from helpdeskd.daemon.logs import configure
from helpdeskd.ingest.batch import Processor
from helpdeskd.ingest.parsepool import ParsePool
from helpdeskd.ingest.sources import read_sources
from helpdeskd.store.db import create_engine, sessionmaker, upgrade
from helpdeskd.triage.facts import Runtime

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
SKIP = {"LICENSE", "NOTICE", "README.md"}


def _config(folder: Path) -> Path:
    (folder / "secret.key").write_text("k1 bench-secret-0123456789abcdef\n")
    (folder / "rules").mkdir()
    path = folder / "helpdeskd.toml"
    path.write_text(
        '[service]\nname = "Bench"\nsupport_address = "support@acme.test"\n'
        'public_url = "https://support.acme.test"\nsecret_key_file = "secret.key"\n'
        f'state_dir = "{folder / "state"}"\n\n[database]\n'
        f'url = "sqlite:///{folder / "bench.db"}"\n\n[paths]\nrules = "rules"\n'
    )
    return path


async def _round(
    folder: Path, files: list[Path]
) -> tuple[int, float, float, collections.Counter[str]]:
    config = load_config(folder / "helpdeskd.toml")
    engine = create_engine(config.database.url)
    pool = ParsePool(2, 20)
    processor = Processor(Runtime.of(config, backfill=True), sessionmaker(engine), pool)
    items = list(read_sources(files))
    await pool.parse(b"From: warm@up.example\r\n\r\nwarm up\r\n")  # start the workers
    counts: collections.Counter[str] = collections.Counter()
    cpu = time.process_time()
    wall = time.perf_counter()
    for start in range(0, len(items), 50):
        for outcome in await processor.process_batch(items[start : start + 50]):
            counts[outcome.outcome] += 1
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    pool.close()
    await engine.dispose()
    return len(items), wall, cpu, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure(json=True, level="WARNING", stream=sys.stderr)
    if not CORPUS.is_dir():
        raise SystemExit(f"no corpus at {CORPUS}")
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in SKIP)
    size = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} files, {size / 1e6:.1f} MB at {CORPUS}")
    for number in range(1, args.rounds + 1):
        folder = Path(tempfile.mkdtemp(prefix="helpdeskd-corpus-bench-"))
        try:
            upgrade(load_config(_config(folder)).database.url)
            messages, wall, cpu, counts = asyncio.run(_round(folder, files))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        per_message = cpu / messages * 1000
        print(
            f"round {number}: {messages} messages in {wall:.2f} s = {messages / wall:.1f} "
            f"messages/s, {size / 1e6 / wall:.2f} MB/s; main-process CPU {per_message:.1f} "
            "ms/message"
        )
    print("outcomes:", dict(sorted(counts.items())))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
