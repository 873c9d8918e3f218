"""Rules end to end: routing of live mail, rules test, validation, time rules and SLAs."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy import text as sql

from helpdeskd.desk import automation as automation_module
from helpdeskd.desk.automation import Automation
from helpdeskd.outbox.sender import OutboxSender
from helpdeskd.store.models import Ticket
from helpdeskd.triage.facts import Runtime
from tests.clocks import ManualClock
from tests.desk.test_agents import AGENTS, Scene, mails_to
from tests.harness import Desk, cli, cli_json
from tests.mailgen import customer_mail
from tests.system.test_daemon import _wait_for_log, start_daemon

ROUTING = """\
- name: billing-to-billing-queue
  when:
    subject_matches: '(?i)\\binvoice\\b|billing|refund'
  then:
    - queue: billing
    - priority: high
    - tags: [+billing]
    - assign: least-loaded
- name: premium-plans-first
  when:
    plan: [premium, enterprise]
  then:
    - priority: urgent
- name: drop-lottery-spam
  when:
    subject_matches: '(?i)you have won'
  then:
    - spam: true
  stop: true
"""

TIMED = """\
- name: close-solved
  after: {state: solved, days: 4}
  then: [close]
- name: remind-pending
  after: {state: pending, days: 3}
  then:
    - remind: replies/pending-reminder
- name: solve-after-reminder
  after: {state: pending, days: 4, since: remind-pending}
  then: [solve]
- name: standard
  sla: {first_response: 4h, warn_at: 0.5, escalate: agents}
"""


def rules_dir(tmp_path: Path, *files: str) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    for index, text in enumerate(files):
        (folder / f"{index:02}.yaml").write_text(text)
    return folder


@pytest.fixture
def routed(make_config, smtp_sink, tmp_path):
    agents = [("alice@acme.test", "Alice"), ("bob@acme.test", "Bob")]
    return make_config(smtp=smtp_sink, agents=agents, rules=rules_dir(tmp_path, ROUTING))


async def test_live_mail_is_routed_and_every_action_names_its_rule(routed, tmp_path):
    customers = tmp_path / "c.csv"
    customers.write_text("email,plan\ncustomer2@example.org,premium\n")
    cli(routed, "customers", "import", str(customers))
    async with Desk(routed) as desk:
        [billing, premium, spam] = await desk.ingest(
            [
                customer_mail(1, subject="Question about my invoice"),
                customer_mail(2, subject="Hello"),
                customer_mail(3, subject="YOU HAVE WON a prize"),
            ]
        )
    assert spam.outcome == "spam" and "drop-lottery-spam" in spam.reason
    tickets = {t["ref"]: t for t in cli_json(routed, "tickets", "list")}
    assert len(tickets) == 2
    first = tickets[billing.ticket]
    assert (first["queue"], first["priority"], first["tags"]) == ("billing", "high", ["billing"])
    assert first["assignee"] in ("alice@acme.test", "bob@acme.test")
    assert tickets[premium.ticket]["priority"] == "urgent"
    events = cli_json(routed, "tickets", "show", billing.ticket)["events"]
    applied = [e for e in events if e["type"] == "rule_applied"]
    assert {e["actor"] for e in applied} == {"rule:billing-to-billing-queue"}
    assert {e["detail"]["action"] for e in applied} >= {"queue", "priority", "tags", "assign"}


def test_rules_test_explains_and_touches_nothing(routed, tmp_path):
    mail = tmp_path / "m.eml"
    mail.write_bytes(customer_mail(1, subject="Refund please"))
    shown = cli(routed, "rules", "test", str(mail)).stdout
    assert "billing-to-billing-queue" in shown and "premium-plans-first" in shown
    as_json = json.loads(cli(routed, "rules", "test", str(mail), "--json").stdout)
    assert as_json["kind"] == "customer"
    assert cli_json(routed, "tickets", "list") == []


def test_invalid_rules_are_refused_with_file_and_line(make_config, tmp_path):
    folder = rules_dir(tmp_path, ROUTING.replace("'(?i)you have won'", "'(unclosed'"))
    config = make_config(rules=folder)
    proc = cli(config, "check", check=False)
    assert proc.returncode == 1
    assert "00.yaml:" in proc.stderr and "unclosed" not in proc.stderr.split(":")[0]
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sighup_with_invalid_rules_keeps_the_old_ones(make_config, smtp_sink, tmp_path):
    folder = rules_dir(tmp_path, ROUTING)
    config = make_config(smtp=smtp_sink, rules=folder)
    proc = start_daemon(config)
    try:
        _wait_for_log(config, "daemon_started")
        (folder / "00.yaml").write_text(ROUTING + "- name: Bad Name\n  then: [{queue: x}]\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for_log(config, "reload_refused")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def _age(desk: Desk, ref: str, *, state: str, days: float) -> None:
    """Put ticket REF in STATE as if it entered it DAYS ago."""
    async with desk.sessions() as session, session.begin():
        past = datetime.now(UTC) - timedelta(days=days)
        await session.execute(
            update(Ticket)
            .where(Ticket.id == int(ref.split("-")[1]))
            .values(state=state, state_since=past, created_at=past, first_response_at=past)
        )


async def test_time_rules_remind_solve_and_close(make_config, smtp_sink, tmp_path):
    config = make_config(smtp=smtp_sink, agents=AGENTS, rules=rules_dir(tmp_path, TIMED))
    async with Desk(config) as desk:
        [pending, solved] = await desk.ingest([customer_mail(1), customer_mail(2)])
        await _age(desk, pending.ticket, state="pending", days=3.1)
        await _age(desk, solved.ticket, state="solved", days=4.1)
        automation = Automation(desk.runtime, desk.sessions)
        steps, _ = await automation.run_due()
        assert steps == 2
        assert (await automation.run_due())[0] == 0  # once only
        # Four days after the reminder the pending ticket is solved (an injected clock).
        later = datetime.now(UTC) + timedelta(days=4, minutes=1)
        assert (await automation.run_due(later))[0] == 1
        await desk.send_all()
    states = {t["ref"]: t["state"] for t in cli_json(config, "tickets", "list")}
    assert states == {pending.ticket: "solved", solved.ticket: "closed"}
    reminders = [
        m
        for m in mails_to(smtp_sink, "customer1@example.org")
        if "waiting for your answer" in m.get_content()
    ]
    assert len(reminders) == 1


async def test_time_rules_fire_as_the_scheduler_clock_passes_their_due_time(
    make_config, smtp_sink, tmp_path
):
    """Nothing back-dated: an agent's answer makes the ticket pending, and the scheduler's
    clock alone takes it through the reminder (3 days on), the solve (4 days after the
    reminder) and the close (4 days after the solve), each at its moment and not before."""
    time_rules = TIMED.split("- name: standard")[0]  # no SLA
    config = make_config(smtp=smtp_sink, agents=AGENTS, rules=rules_dir(tmp_path, time_rules))
    async with Desk(config) as desk:
        scene = Scene(desk, smtp_sink)
        ref = await scene.open(1)
        await scene.answer("We restarted the server; does it work now?")
        clock = ManualClock()
        automation = Automation(desk.runtime, desk.sessions, clock=clock)

        async def state() -> tuple[str, datetime]:
            async with desk.sessions() as session:
                row = (await session.execute(select(Ticket.state, Ticket.state_since))).one()
            return row.state, row.state_since

        async def fires_at(due: datetime) -> None:
            clock.set(due - timedelta(seconds=30))
            steps, wake = await automation.run_due()
            assert (steps, wake) == (0, due)  # not yet, and the scheduler knows when
            clock.set(due)
            assert (await automation.run_due())[0] == 1
            assert (await automation.run_due())[0] == 0  # once

        pending, since = await state()
        assert pending == "pending"
        await fires_at(since + timedelta(days=3))  # remind-pending
        reminded = clock()
        await OutboxSender(desk.sessions, config.smtp, clock=clock).drain(10)
        await fires_at(reminded + timedelta(days=4))  # solve-after-reminder
        solved = clock()
        assert await state() == ("solved", solved)
        await fires_at(solved + timedelta(days=4))  # close-solved
        assert (await state())[0] == "closed"
    [ticket] = cli_json(config, "tickets", "list")
    assert (ticket["ref"], ticket["state"]) == (ref, "closed")
    [reminder] = [
        m
        for m in mails_to(smtp_sink, "customer1@example.org")
        if "waiting for your answer" in m.get_content()
    ]
    assert reminder["Date"].datetime == reminded.replace(microsecond=0)


async def test_sla_warning_then_breach_mail(make_config, smtp_sink, tmp_path):
    config = make_config(smtp=smtp_sink, agents=AGENTS, rules=rules_dir(tmp_path, TIMED))
    async with Desk(config) as desk:
        await desk.ingest([customer_mail(5)])
        async with desk.sessions() as session, session.begin():
            past = datetime.now(UTC) - timedelta(hours=3)
            await session.execute(update(Ticket).values(created_at=past, state="open"))
        automation = Automation(desk.runtime, desk.sessions)
        assert (await automation.run_due())[0] == 1  # the warning (half of 4 h)
        assert (await automation.run_due(datetime.now(UTC) + timedelta(hours=2)))[0] == 1
        assert (await automation.run_due(datetime.now(UTC) + timedelta(hours=2)))[0] == 0
        await desk.send_all()
    subjects = [str(m["Subject"]) for m in mails_to(smtp_sink, "alice@acme.test")]
    assert any("SLA warning (first response)" in s for s in subjects)
    assert any("SLA breached (first response)" in s for s in subjects)


async def test_a_pass_reads_the_open_tickets_by_chunks_and_misses_none(
    make_config, smtp_sink, tmp_path, monkeypatch
):
    monkeypatch.setattr(automation_module, "SCAN_CHUNK", 2)  # 5 tickets: 3 reads
    config = make_config(smtp=smtp_sink, agents=AGENTS, rules=rules_dir(tmp_path, TIMED))
    async with Desk(config) as desk:
        await desk.ingest([customer_mail(n) for n in range(5)])
        async with desk.sessions() as session, session.begin():
            past = datetime.now(UTC) - timedelta(hours=3)
            await session.execute(update(Ticket).values(created_at=past, state="open"))
        assert (await Automation(desk.runtime, desk.sessions).run_due())[
            0
        ] == 5  # each one's SLA warning


async def test_a_pass_locks_only_tickets_with_a_step_due(make_config, smtp_sink, tmp_path):
    """Every ticket a rule could act on is read, but only one with a step due is locked: a
    pass with nothing due runs beside a writer holding the tickets (SQLite's write lock, a
    PostgreSQL table lock), and still finds when the next step is due."""
    config = make_config(smtp=smtp_sink, agents=AGENTS, rules=rules_dir(tmp_path, TIMED))
    async with Desk(config) as desk:
        outcomes = await desk.ingest([customer_mail(n) for n in range(5)])
        await _age(desk, outcomes[0].ticket, state="pending", days=1)  # reminded in 2 days
        async with desk.sessions() as session, session.begin():
            # The SLA warning (at half of 4 h) of one ticket is 30 s away.
            soon = datetime.now(UTC) - timedelta(hours=2) + timedelta(seconds=30)
            ticket_id = int(outcomes[1].ticket.split("-")[1])
            await session.execute(
                update(Ticket).where(Ticket.id == ticket_id).values(created_at=soon, state="open")
            )
        async with desk.engine.begin() as writer:  # BEGIN IMMEDIATE on SQLite
            if writer.dialect.name == "postgresql":
                await writer.execute(sql("LOCK TABLE tickets IN EXCLUSIVE MODE"))
            start = datetime.now(UTC)
            steps, wake = await asyncio.wait_for(
                Automation(desk.runtime, desk.sessions).run_due(), 10
            )
        assert steps == 0
        assert timedelta(seconds=20) < wake - start < timedelta(seconds=40)
        # Once the warning is due, the ticket is locked and the step taken.
        later = datetime.now(UTC) + timedelta(seconds=31)
        assert (await Automation(desk.runtime, desk.sessions).run_due(later))[0] == 1


async def test_an_sla_changed_by_a_reload_counts_at_once(make_config, smtp_sink, tmp_path):
    """The scheduler keeps each ticket's SLA deadlines between passes; new rules make new ones."""
    folder = rules_dir(tmp_path, TIMED)
    config = make_config(smtp=smtp_sink, agents=AGENTS, rules=folder)
    async with Desk(config) as desk:
        await desk.ingest([customer_mail(1)])
        automation = Automation(desk.runtime, desk.sessions)
        later = datetime.now(UTC) + timedelta(hours=1, minutes=1)
        assert (await automation.run_due(later))[0] == 0  # a 4 h target warns at 2 h
        (folder / "00.yaml").write_text(TIMED.replace("first_response: 4h", "first_response: 2h"))
        desk.runtime.policy = Runtime.of(config).policy
        assert (await automation.run_due(later))[0] == 1  # a 2 h target warns at 1 h


async def test_two_daemons_on_postgresql_act_once(make_pg_config, smtp_sink, tmp_path):
    config = make_pg_config(smtp=smtp_sink, agents=AGENTS, rules=rules_dir(tmp_path, TIMED))
    async with Desk(config) as first, Desk(config) as second:
        outcomes = await first.ingest([customer_mail(n) for n in range(10)])
        for outcome in outcomes:
            await _age(first, outcome.ticket, state="pending", days=3.1)
        results = await asyncio.gather(
            Automation(first.runtime, first.sessions).run_due(),
            Automation(second.runtime, second.sessions).run_due(),
        )
        assert sum(steps for steps, _ in results) == 10
        await first.send_all()
        async with first.sessions() as session:
            states = list(await session.scalars(select(Ticket.state)))
    assert states.count("pending") == 10
    reminders = [d for d in smtp_sink.deliveries if b"waiting for your answer" in d.data]
    assert len(reminders) == 10  # one per ticket, never two
