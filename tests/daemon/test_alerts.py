"""judge_poll: when the agents hear of a failing mailbox, and what they are told."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpdeskd.daemon.alerts import AgentAlert, judge_poll
from helpdeskd.store.models import MailboxState

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
FIX = "helpdeskd oauth login support"


def state() -> MailboxState:
    return MailboxState(name="support", last_uid=0)


def poll(
    row: MailboxState,
    minutes: float,
    *,
    ok: bool = False,
    urgent: bool = False,
    fix: str | None = None,
) -> AgentAlert | None:
    return judge_poll(
        row,
        ok=ok,
        error=None if ok else "login refused",
        urgent=urgent,
        fix=fix,
        now=T0 + timedelta(minutes=minutes),
        alert_after=900.0,
    )


def test_a_failing_mailbox_is_reported_once_after_alert_after_then_its_recovery_once() -> None:
    row = state()
    assert poll(row, 0) is None
    assert poll(row, 14) is None
    alert = poll(row, 15)
    assert alert is not None and alert.subject == "Mailbox support cannot be polled"
    assert "login refused" in alert.text
    assert poll(row, 30) is None
    back = poll(row, 31, ok=True)
    assert back is not None and back.subject == "Mailbox support works again"
    assert poll(row, 32, ok=True) is None
    assert row.failing_since is None and row.last_error is None


def test_a_failure_that_names_its_fix_is_reported_at_once_with_the_command() -> None:
    row = state()
    alert = poll(row, 0, urgent=True, fix=FIX)
    assert alert is not None
    assert FIX in alert.subject and f"\n    {FIX}\n" in alert.text
    assert "login refused" in alert.text
    # once: neither the next failures nor alert_after bring another mail
    assert poll(row, 1, urgent=True, fix=FIX) is None
    assert poll(row, 60) is None
    assert poll(row, 61, ok=True) is not None


def test_a_blip_shorter_than_alert_after_tells_nobody() -> None:
    row = state()
    assert poll(row, 0) is None
    assert poll(row, 5, ok=True) is None
    assert poll(row, 10) is None  # a new streak starts from zero
    assert poll(row, 24) is None
    assert row.failing_since == T0 + timedelta(minutes=10)


def test_an_urgent_failure_without_a_command_says_what_to_correct() -> None:
    alert = poll(state(), 0, urgent=True)
    assert alert is not None and alert.subject == "Mailbox support cannot log in"
    assert "correct what the error names" in alert.text
