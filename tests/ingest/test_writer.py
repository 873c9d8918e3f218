"""The writer has a run's mail composed by the parse workers; when they cannot, it composes here.

What the workers compose is checked row for row against mail composed here in test_batch.py;
these tests are about the workers failing: the mail is the same, or the error is.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from email import message_from_bytes, policy

from sqlalchemy import select
from structlog.testing import capture_logs

from helpdeskd.ingest.batch import Prepared
from helpdeskd.store.models import Outbox
from helpdeskd.triage.received import Incoming
from tests.harness import Desk
from tests.mailgen import customer_mail


async def _parsed_six(desk: Desk) -> tuple[Prepared, ProcessPoolExecutor]:
    """Six new customers' mail parsed, to be stored in a run whose mail the workers compose
    two at a time; and the parse workers' executor."""
    desk.processor.compose_chunk = 2
    items = [Incoming(source="test", uid=n, raw=customer_mail(n), size=1) for n in range(1, 7)]
    prepared = await desk.processor.prepare(items)
    assert desk.pool._pool is not None
    return prepared, desk.pool._pool


async def test_mail_of_a_run_whose_workers_died_is_composed_here(make_config, smtp_sink) -> None:
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        prepared, pool = await _parsed_six(desk)
        for process in list(pool._processes.values()):  # the workers die between parse and store
            process.kill()
            process.join()
        with capture_logs() as logs:
            outcomes = await desk.processor.store(prepared)
        assert [o.outcome for o in outcomes] == ["new_ticket"] * 6
        # every chunk found the pool broken when handed over, and was composed here
        failed = [e for e in logs if e["event"] == "compose_in_worker_failed"]
        assert failed and all("BrokenProcessPool" in e["error"] for e in failed)
        assert sum(e["mails"] for e in failed) == 12  # an ack and a notification each
        assert desk.processor.lanes["fast"] == 6 and desk.processor.composed_by_workers == 0
        async with desk.sessions() as session:
            rows = (await session.scalars(select(Outbox).order_by(Outbox.id))).all()
        assert [r.kind for r in rows] == ["ack", "agent_notification"] * 6
        for row in rows:
            mail = message_from_bytes(row.data, policy=policy.default)
            assert mail["Message-ID"] == row.message_id and mail.get_body(("plain",)) is not None

        # The next batch's parse starts the pool afresh, and its workers compose again.
        desk.processor.compose_take_back = False
        outcomes = await desk.ingest([customer_mail(n) for n in range(7, 11)], source="next")
        assert [o.outcome for o in outcomes] == ["new_ticket"] * 4
        assert desk.processor.composed_by_workers == 8


async def test_chunks_no_worker_has_started_are_composed_here(make_config, smtp_sink) -> None:
    """With both workers busy (parsing the next batch, as in a backlog), the run composes its
    mail itself when it is written instead of waiting for them."""
    config = make_config(smtp=smtp_sink)
    async with Desk(config) as desk:
        prepared, pool = await _parsed_six(desk)
        busy = [pool.submit(time.sleep, 3) for _ in range(desk.pool.workers)]
        with capture_logs() as logs:
            outcomes = await desk.processor.store(prepared)
        assert [o.outcome for o in outcomes] == ["new_ticket"] * 6
        assert not [e for e in logs if e["event"] == "compose_in_worker_failed"]
        # Taken back, not waited for: all but the chunks the executor had already queued for
        # its workers (behind the sleeps: one per worker and one more), which cannot be.
        assert desk.processor.composed_by_workers <= 2 * (desk.pool.workers + 1) < 12
        for sleeping in busy:
            sleeping.result()
        async with desk.sessions() as session:
            kinds = (await session.scalars(select(Outbox.kind).order_by(Outbox.id))).all()
        assert kinds == ["ack", "agent_notification"] * 6


async def test_a_template_error_in_a_worker_is_the_error_composing_here_gives(
    make_config, smtp_sink, tmp_path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ack.txt.j2").write_text("Subject: {{ no_such_variable }}\n\nhello\n")
    config = make_config(smtp=smtp_sink, templates=templates)
    quarantined: list[list[object]] = []
    for chunk in (1, 1000):  # every mail composed by a worker; every mail composed here
        async with Desk(config) as desk:
            desk.processor.compose_chunk = chunk
            items = [
                Incoming(source=f"chunk{chunk}", uid=n, raw=customer_mail(n), size=1)
                for n in (1, 2, 3)
            ]
            with capture_logs():
                outcomes = await desk.processor.process_batch(items)
            failed_runs = desk.processor.lanes["failed"]  # then each mail alone
            quarantined.append([failed_runs, *((o.outcome, o.reason) for o in outcomes)])
    assert quarantined[0] == quarantined[1]
    failed_runs, *stored = quarantined[0]
    assert failed_runs > 0
    assert [outcome for outcome, _ in stored] == ["quarantined"] * 3
    assert all("no_such_variable" in reason for _, reason in stored)
