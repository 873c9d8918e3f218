"""When the agents hear that a mailbox cannot be polled, and what they are told.

:func:`judge_poll` updates a mailbox's state row for one poll and returns the mail for the
agents, if one is due. It does no I/O, so the rules read as they are:

- a mailbox that keeps failing for ``alert_after`` seconds is reported once;
- a failure that needs a person, not time (a revoked or expired grant, a refused token, a wrong
  client secret) is reported at once, with the command that mends it where there is one
  (``helpdeskd oauth login NAME``);
- the first poll that works after a report says so, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from helpdeskd.store.models import MailboxState


@dataclass(frozen=True)
class AgentAlert:
    """A mail to every agent."""

    subject: str
    text: str


def judge_poll(
    state: MailboxState,
    *,
    ok: bool,
    error: str | None,
    urgent: bool = False,
    fix: str | None = None,
    now: datetime,
    alert_after: float,
) -> AgentAlert | None:
    """Record one poll of STATE's mailbox at NOW; return the agents' mail it calls for."""
    mailbox = state.name
    state.last_poll_at = now
    if ok:
        state.last_ok_at, state.last_error, state.failing_since = now, None, None
        if state.alerted_at is None:
            return None
        state.alerted_at = None
        return AgentAlert(
            f"Mailbox {mailbox} works again",
            f"helpdeskd polls mailbox {mailbox} again; mail that arrived while it "
            "failed is being processed now.\n",
        )
    state.last_error, state.last_error_at = (error or "error")[:1000], now
    state.failing_since = state.failing_since or now
    if state.alerted_at is not None:
        return None
    failing = (now - state.failing_since).total_seconds()
    if not urgent and failing < alert_after:
        return None
    state.alerted_at = now
    if urgent:
        todo = (
            f"An admin should run, on the helpdeskd host:\n\n    {fix}\n\n"
            "and follow what it prints."
            if fix
            else "An admin should correct what the error names (see docs/admin.md)."
        )
        return AgentAlert(
            f"Mailbox {mailbox} cannot log in" + (f": run {fix}" if fix else ""),
            f"helpdeskd cannot log in to mailbox {mailbox}:\n\n    {state.last_error}\n\n"
            f"This will not mend itself. {todo} Customers' mail waits on the server and "
            "nothing is lost, but nothing is answered either. You will get one more mail when "
            "it works again.\n",
        )
    return AgentAlert(
        f"Mailbox {mailbox} cannot be polled",
        f"helpdeskd has not been able to poll mailbox {mailbox} since "
        f"{state.failing_since.isoformat(timespec='seconds')}.\n\n"
        f"Last error: {state.last_error}\n\nCustomers' mail waits on the server "
        "and nothing is lost, but nothing is answered either. Check the password or "
        "token, the server and its certificate. You will get one more mail when it "
        "works again.\n",
    )
