"""``customers import`` on the command line: problems by FILE:LINE as they come, progress on
stderr, the summary on stdout, and a file broken half-way imports nothing."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from helpdeskd.store.db import create_engine, sessionmaker
from helpdeskd.store.models import Contact
from tests.harness import cli

# The database work is tested on both databases in tests/desk/test_customers.py; here the
# command's output, which does not depend on it.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def test_import_prints_each_problem_its_progress_and_a_summary(
    make_config, tmp_path, monkeypatch
):
    config = make_config()
    path = tmp_path / "customers.csv"
    path.write_text(
        "email,name,plan\n"
        "ada@x.example,Ada,basic\n"
        "bad@@x.example,Bad,basic\n"
        "ADA@x.example,,premium\n"
        "bob@x.example,Bob,basic\n"
    )
    monkeypatch.setenv("HELPDESKD_PROGRESS_EVERY", "0")  # a plain line at every chunk
    proc = cli(config, "customers", "import", str(path))
    summary = "customers added, {} updated, 1 duplicate rows merged, 1 bad rows left out\n"
    assert proc.stdout == "2 " + summary.format(0)
    *problems, chunk, done = proc.stderr.splitlines()
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:3: left out: 'bad@@x.example' is not a valid address: ")
    assert problems[1] == (
        f"{path}:4: ada@x.example repeats line 2 (addresses are not case-sensitive): merged "
        "into one customer"
    )
    # Not a terminal: plain lines, with the file's rows as the total.
    assert re.fullmatch(r"importing customers: 4/4 \(100%\)(, \d+/s)?", chunk), chunk
    assert done.startswith(chunk.split(",")[0]) and done.endswith(", done"), done

    monkeypatch.delenv("HELPDESKD_PROGRESS_EVERY")  # 5 s: a quick import says only its own
    again = cli(config, "customers", "import", str(path))
    assert again.stdout == "0 " + summary.format(2)
    assert again.stderr.splitlines() == problems

    path.write_text(
        "email,name,plan\n"
        "cy@x.example,Cy,basic\n"
        "bob@x.example,Bob,premium\n" + "dan@x.example," + "n" * 200_000 + ",basic\n"
    )
    proc = cli(config, "customers", "import", str(path), check=False)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        f"helpdeskd: {path}: not CSV: field larger than field limit (131072) (line 4); "
        "nothing imported\n"
    )
    engine = create_engine(config.database.url)
    try:
        async with sessionmaker(engine)() as session:
            stored = dict((await session.execute(select(Contact.email, Contact.plan))).all())
    finally:
        await engine.dispose()
    assert stored == {"ada@x.example": "premium", "bob@x.example": "basic"}
