"""The one decision for a received mail: typed facts in, a typed plan out, no I/O.

:func:`decide` holds the whole tree in DESIGN.md's order — duplicates, classification, loop
safety, threading, reopen and follow-up, agents' mail and commands, rules, the acknowledgement
and the notifications — over the :class:`~helpdeskd.triage.facts.Facts` the lookup layer
gathered, and returns a :class:`~helpdeskd.triage.plan.Plan`. Returned mail (bounces,
complaints, unsubscribes) is decided here; a person's mail by :mod:`helpdeskd.triage.intake`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from helpdeskd.mail.build import new_message_id
from helpdeskd.triage.bouncescore import BouncedRecipient, score
from helpdeskd.triage.facts import ContactFacts, Facts, Needs, Policy, StoredMessage
from helpdeskd.triage.intake import Intake
from helpdeskd.triage.mails import Mail, Note, human_size
from helpdeskd.triage.plan import ContactChange, Event, Plan
from helpdeskd.triage.received import Incoming, ticket_ref


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
    """Record a bounce: score the address (Mailman's way), note it on the ticket, tell the agent
    who wrote.

    Anyone can send a bounce: it counts only against an address our mail went to — the mail
    it names by Message-ID, when that mail went to one address alone (its other recipients
    know the Message-ID too), or the recipient its verified VERP token names. A VERP token names
    one recipient of one send, and only that recipient's copy carried it: the bounce is that
    recipient's alone, even when the report names somebody else (a forward's final address,
    another recipient of the same mail) or nobody.
    """
    reason = needs.kind.reason
    report = needs.bounce
    if report is None:
        return Plan("bounce", f"{reason}; no recipient could be read")
    returned = facts.returned
    ticket, message = returned.ticket, returned.message
    sent_to = returned.sent_to
    lines = [_bounce_line(rcpt) for rcpt in report.recipients]
    targets = [rcpt for rcpt in report.recipients if rcpt.address in sent_to]
    if len(sent_to) > 1 and (targets or returned.verp is not None):
        # Everyone a mail went to knows its Message-ID, and every recipient of a row got the
        # return path that named the row (before return paths were per recipient): without a
        # token naming the copy, any of them could have written this about the others. With
        # [smtp] return_path each copy carries its recipient's token, so a real bounce of it
        # has one; without, the bounces of mail to several are noted and count against nobody.
        targets = []
        token = "no VERP token" if returned.verp is None else "the return path names the row"
        lines.append(f"not counted: {token}, and the mail went to {len(sent_to)}")
    elif returned.verp is not None and not targets and len(sent_to) == 1:
        [address] = sent_to
        targets = [replace(report.verdict(), address=address)]
        lines.append(f"{_bounce_line(targets[0])} (by VERP)")
    bounces = policy.config.bounces
    day = facts.now.astimezone(policy.config.service.tz).date()
    known: dict[str, ContactFacts] = {}
    contacts: list[ContactChange] = []
    events: list[Event] = []
    logs: list[tuple[str, Mapping[str, Any]]] = []
    for rcpt in targets:
        contact = known.get(rcpt.address) or facts.contact(rcpt.address)
        if contact is None or contact.id is None or rcpt.action != "failed":
            continue
        before = contact.standing
        after = score(
            before,
            rcpt,
            day,
            threshold=bounces.threshold,
            stale_after_days=bounces.stale_after_days,
        )
        stale_after = bounces.stale_after_days
        changes: dict[str, Any] = {}
        if rcpt.weight > 0:  # a spam or policy refusal is recorded, never counted
            changes["bounce_count"] = contact.bounce_count + 1
        if after != before:
            changes.update(
                bounce_score=after.score,
                last_bounce_on=after.last_on,
                last_bounce_weight=after.last_weight,
                bounce_reason=after.reason,
                undeliverable=after.suspended,
            )
        if changes:
            contacts.append(ContactChange(contact.email, changes=changes))
            known[rcpt.address] = replace(contact, **changes)
        detail = {
            "day": day.isoformat(),
            "state": rcpt.state,
            "status": rcpt.status,
            "diagnostic": rcpt.diagnostic,
            "weight": rcpt.weight,
            # what this bounce added: nothing on a day already scored as high
            "counted": after.score - before.current(day, stale_after) if after != before else 0.0,
            "score": after.current(day, stale_after),
            "threshold": bounces.threshold,
            "suspended": after.suspended,
            "message_id": message.message_id if message is not None else report.original_message_id,
            "outbox_id": returned.verp,
        }
        events.append(Event("bounce_scored", contact.email, detail, ticketless=True))
        if after.suspended and not before.suspended:
            logs.append(("bounce_suspended", {"contact": contact.id, "score": after.score}))
    summary = "; ".join(lines) or "no recipient listed"
    mails: list[Mail] = []
    if ticket is not None:
        on_ticket = {"message_id": report.original_message_id, "recipients": lines}
        events.insert(0, Event("bounce", "system", on_ticket))
        writer = returned.writer
        if message is not None and message.kind == "reply" and writer is not None:
            ref = ticket_ref(policy.config, ticket.id)
            text = f"Your reply on {ref} could not be delivered:\n  {summary}\n"
            if any(rcpt.action == "failed" and rcpt.policy for rcpt in targets):
                text += (
                    "The receiving server refused it as spam or by its policy: that says "
                    "nothing of the customer's address and does not count against it.\n"
                )
            mails.append(
                Note(
                    new_message_id(policy.config.service.support_domain),
                    writer.email,
                    "Undeliverable: " + ticket.subject,
                    text,
                    agent_id=writer.id,
                    parent=message.parent,
                )
            )
    logs.insert(
        0,
        (
            "bounce_recorded",
            {"recipients": lines, "ticket": ticket.id if ticket is not None else None},
        ),
    )
    return Plan(
        "bounce",
        f"{reason}; {summary}",
        ticket_id=ticket.id if ticket is not None else None,
        contacts=tuple(contacts),
        events=tuple(events),
        mails=tuple(mails),
        logs=tuple(logs),
    )


def _bounce_line(rcpt: BouncedRecipient) -> str:
    return f"{rcpt.address} {rcpt.state} {rcpt.status} {rcpt.diagnostic}".strip()


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
