"""Export what the desk holds about one person: all of it, nothing of anyone else."""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import stat

import pytest

from helpdeskd.clock import system_clock
from helpdeskd.desk.erasure import erase
from helpdeskd.desk.export import export_contact, safe_name
from helpdeskd.errors import UserError
from helpdeskd.store.db import reading
from tests.desk.privacy_scene import (
    ADA,
    ADA_NAME,
    AGENT_WORDS,
    BOB,
    BOB_PHRASE,
    NOTE_WORDS,
    NOTICES,
    PHRASE,
    PHRASE2,
    PHRASE3,
    build,
    with_sections,
)
from tests.harness import Desk

NOW = system_clock()


@pytest.fixture
def config(make_config, smtp_sink):
    return with_sections(make_config(smtp=smtp_sink), NOTICES)


async def test_export_holds_all_of_hers_and_nothing_of_anyone_else(config, smtp_sink, tmp_path):
    scene = await build(config, smtp_sink, tmp_path)
    folder = tmp_path / "export" / "ada"
    async with Desk(config) as desk, reading(desk.sessions) as session:
        manifest = await export_contact(session, config, ADA.upper(), folder, now=system_clock())

    # The manifest names every file, with its size and SHA-256, and nothing else is there.
    files = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    assert set(files) == on_disk
    for path, entry in files.items():
        data = (folder / path).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert stat.S_IMODE((folder / path).stat().st_mode) == 0o600
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["email"] == ADA and manifest["tickets"] == scene.ada_tickets

    # Her record, preferences and opt-out.
    contact = json.loads((folder / "contact.json").read_text())
    assert (contact["email"], contact["name"], contact["plan"]) == (ADA, ADA_NAME, "premium")
    assert [o["category"] for o in contact["opt_outs"]] == ["feature_update"]
    assert contact["preferences"]["feature_update"].startswith("opted out")
    assert [e["type"] for e in contact["events"]] == ["opted_out"]

    # The raw mail she wrote, the mail sent to her, her attachments.
    kinds: dict[str, list[bytes]] = {}
    for path, entry in files.items():
        kinds.setdefault(entry["kind"], []).append((folder / path).read_bytes())
    received = b"\n".join(kinds["received_mail"])
    assert len(kinds["received_mail"]) == 3
    for phrase in (PHRASE, PHRASE2, PHRASE3):
        assert phrase.encode() in received
    sent = [email.message_from_bytes(d, policy=email.policy.default) for d in kinds["sent_mail"]]
    assert all(ADA in str(m["To"]) for m in sent)
    assert any(AGENT_WORDS in m.get_body(("plain",)).get_content() for m in sent)
    assert sorted(kinds["attachment"]) == sorted(scene.ada_files)
    tickets = {
        entry["path"].split("/")[1]: json.loads((folder / entry["path"]).read_text())
        for entry in manifest["files"]
        if entry["kind"] == "ticket"
    }
    first = tickets[scene.ada_tickets[0]]
    assert first["role"] == "requester" and first["subject"] == "Zebra database slow"
    assert [m["kind"] for m in first["messages"]] == ["customer", "ack", "reply", "customer"]
    assert any(e["type"] == "opted_out" for e in contact["events"])

    # Nothing of Bob's, nor the agents' notifications and internal notes.
    everything = b"\n".join((folder / p).read_bytes() for p in on_disk).lower()
    for other in (BOB, BOB_PHRASE, NOTE_WORDS):
        assert other.lower().encode() not in everything
    assert scene.bob_file not in kinds["attachment"]

    # With --internal the agents' notes on her tickets come too.
    with_notes = tmp_path / "export" / "notes"
    async with Desk(config) as desk, reading(desk.sessions) as session:
        await export_contact(session, config, ADA, with_notes, now=system_clock(), internal=True)
        notes = (with_notes / "tickets" / scene.ada_tickets[0] / "ticket.json").read_text()
        assert NOTE_WORDS in notes

        # Only into a new or empty folder; and an erased person has nothing to export.
        with pytest.raises(UserError, match="not empty"):
            await export_contact(session, config, ADA, folder, now=system_clock())
        with pytest.raises(UserError, match="no contact"):
            await export_contact(session, config, "nobody@x.example", tmp_path / "n", now=NOW)
    async with Desk(config) as desk:
        await erase(desk.sessions, config, ADA, by="dpo", now=system_clock())
        async with reading(desk.sessions) as session:
            with pytest.raises(UserError, match="erased"):
                await export_contact(session, config, ADA, tmp_path / "e", now=system_clock())


@pytest.mark.parametrize(
    "name, safe",
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        (".hidden", "hidden"),
        ("a b/c:d?.txt", "c_d_.txt"),
        ("", "file"),
        ("....", "file"),
    ],
)
def test_attachment_names_stay_inside_the_export(name, safe):
    assert safe_name(name) == safe
