"""``contacts export`` and ``contacts erase`` from the command line; a killed erasure."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from sqlalchemy import select, text

from helpdeskd.store.models import Outbox, Ticket
from tests.conftest import config_factory, sqlite_database
from tests.desk.privacy_scene import ADA, PHRASE, build_light, table_traces
from tests.harness import ROOT, Desk, cli, cli_json


@pytest.fixture
def sqlite_config(request, tmp_path):
    """The commands print what the services return, the same on either database (the services
    are tested on both): SQLite only, to spare each command's start-up time."""
    url = sqlite_database(request, tmp_path / "helpdeskd.db")
    return config_factory(tmp_path, url)()


async def test_export_then_erase(sqlite_config, tmp_path):
    config = sqlite_config
    scene = await build_light(config, tmp_path)
    folder = tmp_path / "ada"
    manifest = cli_json(config, "contacts", "export", ADA, str(folder))
    assert manifest == json.loads((folder / "manifest.json").read_text())
    assert manifest["tickets"] == scene.ada_tickets
    assert {e["kind"] for e in manifest["files"]} == {
        "contact",
        "ticket",
        "received_mail",
        "attachment",
    }

    dry = cli_json(config, "contacts", "erase", ADA, "--dry-run")
    assert dry["dry_run"] and dry["tickets"] == scene.ada_tickets and dry["messages"] == 2
    assert dry["email"] == ADA and dry["blobs"] == 2

    done = cli(config, "contacts", "erase", ADA, "--by", "dpo@acme.test").stdout
    assert f"erased {ADA} (now {dry['pseudonym']})" in done
    assert f"tickets: {', '.join(scene.ada_tickets)}" in done
    assert "files: 2 attachment(s), 0 spool file(s)" in done
    assert "processed-folder copies expunged: 0" in done


async def test_a_killed_erasure_changes_nothing(make_pg_config, tmp_path):
    """The command is killed in the middle of its transaction (after it changed her messages,
    while it waits for an outbox row another daemon holds): PostgreSQL keeps none of it."""
    config = make_pg_config()
    scene = await build_light(config, tmp_path)
    async with Desk(config) as desk:
        before = await table_traces(desk, [ADA, PHRASE])
        async with desk.sessions() as holder, holder.begin():
            ticket = int(scene.ada_tickets[0].split("-")[1])
            await holder.scalar(
                select(Outbox.id).where(Outbox.ticket_id == ticket).limit(1).with_for_update()
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "helpdeskd",
                "contacts",
                "erase",
                ADA,
                env=dict(os.environ, HELPDESKD_CONFIG=str(config.source)),
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await _wait_for_lock_wait(desk)
                async with desk.sessions() as session:
                    # What it changed so far is its own: nobody else sees it.
                    subject = await session.scalar(
                        select(Ticket.subject).where(Ticket.id == ticket)
                    )
                    assert subject == "Zebra database slow"
            finally:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
        assert await table_traces(desk, [ADA, PHRASE]) == before


async def _wait_for_lock_wait(desk: Desk, timeout: float = 30.0) -> None:
    """Wait until another session waits for a row lock in this database."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE '%outbox%'"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with desk.sessions() as session:
            if await session.scalar(query):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the erasure never reached the outbox")
