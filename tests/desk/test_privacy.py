"""What erasure, export and retention share: salted hashes, legal hold, deferred deletions."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from helpdeskd.desk import privacy
from helpdeskd.store.db import create_engine, sessionmaker
from helpdeskd.store.models import (
    Contact,
    ErasedAddress,
    Message,
    PendingDeletion,
    Ticket,
)

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def test_digests_and_pseudonyms_are_stable_and_case_blind():
    key = bytes(range(32))
    one = privacy.digest(key, "Ada@Customer.Example ")
    assert one == privacy.digest(key, "ada@customer.example")
    assert one != privacy.digest(bytes(32), "ada@customer.example")
    assert privacy.pseudonym(one) == f"erased-{one[:16]}@erased.invalid"


async def test_erased_addresses_are_found_by_their_salted_hash(make_config):
    config = make_config()
    engine = create_engine(config.database.url)
    sessions = sessionmaker(engine)
    try:
        async with sessions.begin() as session:
            assert await privacy.erased(session, ["ada@customer.example"]) == set()  # no salt yet
            key = await privacy.salt(session, create=True)
            assert key is not None and await privacy.salt(session) == key
            session.add(
                ErasedAddress(
                    digest=privacy.digest(key, "ada@customer.example"),
                    pseudonym="erased-x@erased.invalid",
                    erased_at=NOW,
                )
            )
        async with sessions() as session:
            found = await privacy.erased(
                session, ["ADA@customer.example", "bob@customer.example", "ada@customer.example"]
            )
            assert found == {"ADA@customer.example", "ada@customer.example"}
            stored = list(await session.scalars(select(ErasedAddress.digest)))
            # Only the hash is kept. (Not "'ada' not in it": a hex digest may hold "ada".)
            assert stored == [privacy.digest(key, "ada@customer.example")]
    finally:
        await engine.dispose()


async def test_held_tickets_and_json_searches(make_config):
    config = make_config()
    engine = create_engine(config.database.url)
    sessions = sessionmaker(engine)
    try:
        async with sessions.begin() as session:
            contact = Contact(email="zoë@customer.example", undeliverable=False, bounce_count=0)
            session.add(contact)
            await session.flush()
            for tags in (["hold"], ["billing", "holder"], []):
                session.add(Ticket(subject="s", requester_id=contact.id, tags=tags))
            await session.flush()
            session.add(
                Message(
                    ticket_id=1,
                    direction="in",
                    kind="customer",
                    message_id="<m@x>",
                    from_addr="bob@x.example",
                    to=["Zoë@Customer.Example"],
                )
            )
        async with sessions() as session:
            free = list(await session.scalars(select(Ticket.id).where(privacy.not_held())))
            assert free == [2, 3]
            assert privacy.is_held(["a", "hold"]) and not privacy.is_held(None)
            found = await session.scalar(
                select(func.count(Message.id)).where(
                    privacy.json_contains(Message.to, "zoë@customer.example")
                )
            )
            assert found == 1
    finally:
        await engine.dispose()


async def test_deferred_deletions_are_idempotent_and_spare_blobs_in_use(make_config):
    config = make_config()
    state = config.service.state_dir
    spool = state / "oversize" / "a.eml"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b"old mail")
    used, unused = "a" * 64, "b" * 64
    for sha in (used, unused):
        privacy.blob_path(state, sha).parent.mkdir(parents=True, exist_ok=True)
        privacy.blob_path(state, sha).write_bytes(b"blob")
    stuck = state / "stuck"
    (stuck / "inside").mkdir(parents=True)  # a folder: it cannot be unlinked
    engine = create_engine(config.database.url)
    sessions = sessionmaker(engine)
    try:
        async with sessions.begin() as session:
            contact = Contact(email="c@x.example", undeliverable=False, bounce_count=0)
            session.add(contact)
            await session.flush()
            ticket = Ticket(subject="s", requester_id=contact.id, tags=[])
            session.add(ticket)
            await session.flush()
            session.add(
                Message(
                    ticket_id=ticket.id,
                    direction="in",
                    kind="customer",
                    message_id="<m@x>",
                    from_addr="c@x.example",
                    attachments=[{"name": "f", "sha256": used}],
                )
            )
            privacy.queue_file(session, str(spool))
            privacy.queue_file(session, str(state / "gone-already.eml"))
            privacy.queue_blob(session, used)
            privacy.queue_blob(session, unused)
            privacy.queue_file(session, str(stuck))
            privacy.queue_imap(session, "support", "<m@x>")  # not a file: left to IMAP
        done = await privacy.finish_deletions(sessions, state)
        assert (done.files, done.blobs, done.kept) == (2, 1, 1)
        assert done.failed == [str(stuck)]
        assert not spool.exists() and not privacy.blob_path(state, unused).exists()
        assert privacy.blob_path(state, used).exists()
        again = await privacy.finish_deletions(sessions, state)
        assert (again.files, again.blobs, again.kept) == (0, 0, 0)
        async with sessions() as session:
            left = (
                await session.execute(select(PendingDeletion.kind, PendingDeletion.attempts))
            ).all()
        assert sorted(tuple(r) for r in left) == [("file", 2), ("imap", 0)]
    finally:
        await engine.dispose()
    assert (await privacy.compact_sqlite(config.database.url)) in (True, None)
