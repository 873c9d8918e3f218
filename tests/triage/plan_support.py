"""What the tests of the pure decision share: a real config and policy, facts, mail, summaries.

The config is parsed from tests/config/support.py's good config with three agents (Alice works
billing, Carol the Heroku queue, Bob everything; Bob is on another domain, so that only the agent
list keeps him off a ticket), a second mailbox on another domain (one of our own addresses),
SMTP, and Heroku's desk. The tests compare a plan's :func:`summary` (outcome, reason, ticket
row, participants, events in order, mails and recipients, thread_refs, contacts, autoreply_to)
with an :func:`expected` one, so anything a case does not expect must be absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpdeskd.config.load import parse_config
from helpdeskd.config.settings import DEFAULT_RULES, DEFAULT_TEMPLATES, Config
from helpdeskd.mail.parse import parse_message
from helpdeskd.mail.render import Renderer
from helpdeskd.rules import loader
from helpdeskd.triage.decision import decide
from helpdeskd.triage.facts import AgentFacts, ContactFacts, Facts, Policy, TicketFacts, needs
from helpdeskd.triage.mails import Ack, FloodAlert, Mail, Notification
from helpdeskd.triage.plan import Plan, TicketRow
from helpdeskd.triage.received import Incoming
from tests.config.support import PASSWORD, SECRET_TEXT, good_config
from tests.mailgen import customer_mail

SUPPORT = "support@acme.test"
OWN_MAILBOX = "helpdesk@acme-mail.test"  # a mailbox of ours on a domain that is not support's
DESK = "support@heroku-desk.example"
ALICE = AgentFacts(1, "alice@acme.test", "Alice")
BOB = AgentFacts(2, "bob@acme-staff.test", "Bob")
CAROL = AgentFacts(3, "carol@acme.test", "Carol")
AGENTS = {a.email: a for a in (ALICE, BOB, CAROL)}
QUEUES = {ALICE.email: ["billing"], BOB.email: [], CAROL.email: ["heroku"]}
# Monday 2 November 2026, 10:30 in Berlin: inside the shipped business hours.
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
# tests.mailgen dates mail N minutes after Sunday 1 November 2026 00:00 UTC.
SUNDAY = 1
MONDAY = 24 * 60 + 9 * 60  # Monday 10:00 in Berlin
RENDERER = Renderer(DEFAULT_TEMPLATES)


def write_secrets(base: Path) -> Path:
    """Write the secret files the good config names into BASE; return BASE."""
    (base / "secret").write_text(f"k1 {SECRET_TEXT}\n")
    (base / "imap-password").write_text(PASSWORD + "\n")
    return base


def make_config(
    base: Path, *, rules: Path = DEFAULT_RULES, smtp: bool = True, **service: Any
) -> Config:
    """Parse the shared config in BASE (see write_secrets), with SERVICE keys changed."""
    data = good_config()
    data["service"].update(service)
    data["agent"] = [
        {"email": a.email, "name": a.name, "queues": QUEUES[a.email]} for a in AGENTS.values()
    ]
    data["mailbox"].append({**data["mailbox"][0], "name": "helpdesk", "username": OWN_MAILBOX})
    data["heroku"] = {
        "senders": [DESK],
        "reply_address": DESK,
        "agent_address": "heroku-agent@acme.test",
    }
    data["paths"] = {"rules": str(rules)}
    if not smtp:
        del data["smtp"]
    return parse_config(data, base)


def make_policy(config: Config, *, backfill: bool = False) -> Policy:
    """Make the policy the daemon would hold for CONFIG: its rules and the shipped templates."""
    return Policy(config, loader.load(config), RENDERER, backfill)


PolicyFor = Callable[..., Policy]


def policy_maker(base: Path) -> PolicyFor:
    """Make policies whose config in BASE has the given service keys (smtp=False: no [smtp];
    backfill=True: history being loaded)."""

    def make(*, backfill: bool = False, smtp: bool = True, **service: Any) -> Policy:
        return make_policy(make_config(base, smtp=smtp, **service), backfill=backfill)

    return make


JANE = ContactFacts("jane@example.org", "Jane Roe", id=11)


def ticket(
    id: int = 7,
    state: str = "open",
    *,
    requester: ContactFacts = JANE,
    participants: tuple[str, ...] = (),
    **columns: Any,
) -> TicketFacts:
    """A stored ticket of REQUESTER's, with PARTICIPANTS besides the requester."""
    columns.setdefault("subject", "Backups not running")
    return TicketFacts(
        id=id,
        ref=f"HD-{id}",
        state=state,
        participants=frozenset({requester.email, *participants}),
        requester=requester,
        **columns,
    )


EVERYONE = [("Notification", a.email) for a in (ALICE, BOB, CAROL)]
ALERTS = [("FloodAlert", a.email) for a in (ALICE, BOB, CAROL)]
STORED_REPLY = "<reply-1@acme.test>"


def facts(**changes: Any) -> Facts:
    """Return the facts at NOW: the three agents and Jane's stored contact, unless CHANGES say."""
    changes.setdefault("contacts", {JANE.email: JANE})
    changes.setdefault("agents", AGENTS)
    return Facts(now=NOW, **changes)


def mail(**kw: Any) -> bytes:
    """Jane's mail, written on a Monday morning (inside business hours), unless KW says else."""
    kw.setdefault("sender", JANE.email)
    kw.setdefault("name", JANE.name)
    kw.setdefault("subject", "Backups not running")
    return customer_mail(kw.pop("n", MONDAY), **kw)


def plan_for(policy: Policy, data: bytes, facts_: Facts | None = None, **item: Any) -> Plan:
    """Decide mail DATA as received in the support mailbox (ITEM: Incoming fields to change)."""
    incoming = replace(Incoming("support", 1, data, len(data)), **item)
    return decide(incoming, needs(incoming, parse_message(data), policy), facts_ or facts(), policy)


def recipient(mail: Mail) -> str:
    """Return whom MAIL goes to."""
    if isinstance(mail, Ack):
        return mail.requester[1]
    if isinstance(mail, Notification | FloodAlert):
        return mail.agent_email
    return mail.to


NEW_COLUMNS = (
    "subject",
    "state",
    "priority",
    "queue",
    "assignee_id",
    "requester",
    "channel",
    "external_ref",
    "tags",
    "parent_id",
)


def row(ticket: TicketRow | None, before: TicketFacts | None = None) -> dict[str, Any] | None:
    """A new ticket's columns, or the id and the columns a plan changes on stored ticket BEFORE
    (setting a column to the value it has is no change)."""
    if ticket is None:
        return None
    if ticket.id is None:
        return {"id": None, **{name: getattr(ticket, name) for name in NEW_COLUMNS}}
    changes = {name: getattr(ticket, name) for name in sorted(ticket.changed)}
    if before is not None:
        changes = {k: v for k, v in changes.items() if getattr(before, k, object()) != v}
    return {"id": ticket.id, **changes}


def new_row(requester: str = JANE.email, **columns: Any) -> dict[str, Any]:
    """Return :func:`row` of a new ticket of REQUESTER's, with COLUMNS as given."""
    return {
        "id": None,
        "subject": "Backups not running",
        "state": "new",
        "priority": "normal",
        "queue": None,
        "assignee_id": None,
        "requester": requester,
        "channel": "email",
        "external_ref": None,
        "tags": (),
        "parent_id": None,
        **columns,
    }


def summary(plan: Plan, before: TicketFacts | None = None) -> dict[str, Any]:
    """What PLAN does, in short; BEFORE: the stored ticket it changes."""
    return {
        "outcome": plan.outcome,
        "reason": plan.reason,
        "ticket_id": plan.ticket_id,
        "ticket": row(plan.ticket, before),
        "participants": list(plan.participants),
        "events": [e.type for e in plan.events],
        "mails": [(type(m).__name__, recipient(m)) for m in plan.mails],
        "thread_refs": list(plan.thread_refs),
        "contacts": [(c.email, c.name, dict(c.changes)) for c in plan.contacts],
        "autoreply_to": plan.autoreply_to,
    }


def expected(outcome: str, reason: str, **fields: Any) -> dict[str, Any]:
    """The summary of a plan that does nothing but what FIELDS say."""
    return {
        "outcome": outcome,
        "reason": reason,
        "ticket_id": None,
        "ticket": None,
        "participants": [],
        "events": [],
        "mails": [],
        "thread_refs": [],
        "contacts": [],
        "autoreply_to": None,
        **fields,
    }


def event(plan: Plan, type_: str) -> dict[str, Any]:
    """Return the detail of PLAN's one event of TYPE_ (failing unless there is exactly one)."""
    [found] = [e for e in plan.events if e.type == type_]
    return dict(found.detail)
