"""The one decision for a received mail: typed facts in, a typed plan out, no I/O.

:func:`decide` holds the whole tree in DESIGN.md's order — duplicates, classification, loop
safety, threading, reopen and follow-up, agents' mail and commands, rules, the acknowledgement
and the notifications — over the :class:`~helpdeskd.triage.facts.Facts` the lookup layer
gathered, and returns a :class:`~helpdeskd.triage.plan.Plan`. Returned mail (bounces,
complaints, unsubscribes) is decided here; a person's mail by :mod:`helpdeskd.triage.intake`.
"""

from __future__ import annotations

from dataclasses import replace

from helpdeskd.mail.build import new_message_id
from helpdeskd.triage.facts import ContactFacts, Facts, Needs, Policy, StoredMessage
from helpdeskd.triage.intake import Intake
from helpdeskd.triage.mails import Mail, Note, human_size
from helpdeskd.triage.plan import ContactChange, Event, Plan
from helpdeskd.triage.received import Incoming, ticket_ref

SOFT_BOUNCE_LIMIT = 3  # failed deliveries without a permanent status before we stop mailing


def decide(item: Incoming, needs: Needs, facts: Facts, policy: Policy) -> Plan:
    """Decide what becomes of one received mail (DESIGN.md "Parts and the path of a message")."""
    stored = facts.stored
    if stored is not None:
        same = _same_mail(stored, needs)
        if same and stored.direction == "out":
            return Plan("ignored", "our own outgoing mail came back", ticket_id=stored.ticket_id)
        if same:
            return Plan("duplicate", "Message-ID already stored", ticket_id=stored.ticket_id)
        if facts.derived is not None:
            reason = "already stored under its derived Message-ID"
            return Plan("duplicate", reason, ticket_id=facts.derived.ticket_id)
        # A Message-ID is not a secret: another mail holds this one's. This mail is stored as
        # its own under a derived ID, and the clash is recorded; nothing is hidden.
        parsed = replace(needs.parsed, message_id=needs.derived_id)
        plan = _decide(item, replace(needs, parsed=parsed), replace(facts, stored=None), policy)
        detail = {
            "reason": "a stored mail from another sender or with other content has its Message-ID",
            "message_id": needs.parsed.message_id,
            "stored_as": needs.derived_id,
        }
        clash = Event(
            "security_event",
            needs.parsed.sender or "unknown",
            detail,
            ticketless=plan.ticket is None and plan.ticket_id is None,
        )
        log = ("message_id_clash", {"message_id": needs.parsed.message_id})
        return replace(plan, events=(*plan.events, clash), logs=(*plan.logs, log))
    return _decide(item, needs, facts, policy)


def _same_mail(stored: StoredMessage, needs: Needs) -> bool:
    """Whether STORED is this very mail received again: same sender, same content.

    Mail stored before digests were kept is judged by its sender alone.
    """
    sender = needs.parsed.sender.lower()
    if stored.from_addr.lower() != sender:
        return False
    return stored.digest is None or stored.digest == needs.digest


def _decide(item: Incoming, needs: Needs, facts: Facts, policy: Policy) -> Plan:
    kind = needs.kind
    if kind.kind == "bounce":
        return _bounce(needs, facts, policy)
    if kind.kind == "report":
        return _report(needs, facts)
    if kind.kind == "unsubscribe":
        return _unsubscribe(needs, facts)
    if kind.kind in ("spam", "ignored", "blocked"):
        return Plan(kind.kind, kind.reason)
    parsed = needs.parsed
    if not parsed.sender:
        raise ValueError("no usable From address")
    if item.oversize:
        limit = policy.config.service.max_message_bytes
        note = (
            f"[This message is {human_size(item.size)}, over the {human_size(limit)} "
            f"limit, and was not processed. Its bytes are kept at {item.path}.]"
        )
        parsed = replace(parsed, text=note, full_text=note, attachments=())
    return Intake(item, parsed, needs, facts, policy).run()


# --- returned mail -------------------------------------------------------------------------------


def _bounce(needs: Needs, facts: Facts, policy: Policy) -> Plan:
    """Record a bounce: mark the contact, note it on the ticket, tell the agent who wrote."""
    reason = needs.kind.reason
    report = needs.bounce
    if report is None:
        return Plan("bounce", f"{reason}; no recipient could be read")
    ticket, message = facts.returned.ticket, facts.returned.message
    counts: dict[str, ContactFacts] = {}
    contacts: list[ContactChange] = []
    lines = []
    sent_to = facts.returned.sent_to
    for rcpt in report.recipients:
        contact = counts.get(rcpt.address) or facts.contact(rcpt.address)
        # Anyone can send a bounce: it counts against an address only when it is about mail
        # we sent to that address.
        ours = rcpt.address in sent_to
        if contact is not None and contact.id is not None and rcpt.action == "failed" and ours:
            count = contact.bounce_count + 1
            undeliverable = contact.undeliverable or rcpt.hard or count >= SOFT_BOUNCE_LIMIT
            counts[rcpt.address] = replace(contact, bounce_count=count, undeliverable=undeliverable)
            contacts.append(
                ContactChange(
                    contact.email, changes={"bounce_count": count, "undeliverable": undeliverable}
                )
            )
        state = "hard" if rcpt.hard else rcpt.action
        lines.append(f"{rcpt.address} {state} {rcpt.status} {rcpt.diagnostic}".strip())
    summary = "; ".join(lines) or "no recipient listed"
    events: list[Event] = []
    mails: list[Mail] = []
    if ticket is not None:
        detail = {"message_id": report.original_message_id, "recipients": lines}
        events.append(Event("bounce", "system", detail))
        writer = facts.returned.writer
        if message is not None and message.kind == "reply" and writer is not None:
            ref = ticket_ref(policy.config, ticket.id)
            mails.append(
                Note(
                    new_message_id(policy.config.service.support_domain),
                    writer.email,
                    "Undeliverable: " + ticket.subject,
                    f"Your reply on {ref} could not be delivered:\n  {summary}\n",
                    agent_id=writer.id,
                    parent=message.parent,
                )
            )
    return Plan(
        "bounce",
        f"{reason}; {summary}",
        ticket_id=ticket.id if ticket is not None else None,
        contacts=tuple(contacts),
        events=tuple(events),
        mails=tuple(mails),
        logs=(
            (
                "bounce_recorded",
                {"recipients": lines, "ticket": ticket.id if ticket is not None else None},
            ),
        ),
    )


def _report(needs: Needs, facts: Facts) -> Plan:
    """Record a report; an ARF complaint suppresses the complainant."""
    complaint = needs.complaint
    if complaint is None:
        return Plan("report", f"{needs.kind.reason}; recorded")
    ticket = facts.returned.ticket
    contacts: tuple[ContactChange, ...] = ()
    if complaint.complainant:
        contacts = (ContactChange(complaint.complainant, changes={"suppressed": True}),)
    events: tuple[Event, ...] = ()
    if ticket is not None:
        actor = complaint.complainant or "unknown"
        events = (Event("complaint", actor, {"feedback_type": complaint.feedback_type}),)
    who = complaint.complainant or "an unnamed recipient"
    return Plan(
        "report",
        f"{needs.kind.reason}; {complaint.feedback_type} complaint from {who}; suppressed",
        ticket_id=ticket.id if ticket is not None else None,
        contacts=contacts,
        events=events,
    )


def _unsubscribe(needs: Needs, facts: Facts) -> Plan:
    """Opt out whoever a mail to ``unsubscribe+TOKEN@`` names (the mailto: link)."""
    contact = facts.unsubscriber
    if needs.unsubscribe is None or contact is None or contact.id is None:
        return Plan("unsubscribe", "no valid unsubscribe token: nothing changed")
    category = needs.unsubscribe[1]
    state = "already opted out" if facts.opted_out else "opted out"
    return Plan(
        "unsubscribe",
        f"{contact.email} {state} of {category}",
        opt_out=(contact.id, category),
    )
