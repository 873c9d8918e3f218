"""A contact's bounce score explained (``contacts show``), and a suspension lifted
(``contacts unsuspend``).

The score is Mailman's (helpdeskd.triage.bouncescore, ``[bounces]``): the contact row holds it; the
``bounce_scored`` events, one per bounce weighed against the address (ticketless, the address as
actor, so that export and erasure find them), say which days it counts and what each said.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.config.settings import Config
from helpdeskd.desk import privacy
from helpdeskd.errors import UserError
from helpdeskd.store.models import Contact, Event
from helpdeskd.triage.bouncescore import Standing

SCORED = "bounce_scored"  # a bounce weighed against an address (helpdeskd.triage.decision)
UNSUSPENDED = "bounce_unsuspended"  # an admin lifted a suspension and cleared the score


def standing(contact: Contact) -> Standing:
    return Standing(
        contact.bounce_score,
        contact.last_bounce_on,
        contact.last_bounce_weight,
        contact.bounce_reason,
        contact.undeliverable,
    )


async def bounce_standing(
    session: AsyncSession, config: Config, email: str, now: datetime
) -> dict[str, Any] | None:
    """What the score of EMAIL's contact is at NOW, and why: None when there is no contact.

    ``counted`` lists the days the current score counts (each day's heaviest bounce) while it
    stands; once it is stale, only ``last`` says what the last scored bounce was.
    """
    contact = await session.scalar(select(Contact).where(Contact.email == email.lower()))
    if contact is None:
        return None
    rules = config.bounces
    today = now.astimezone(config.service.tz).date()
    held = standing(contact)
    current = held.current(today, rules.stale_after_days)
    days: dict[date, dict[str, Any]] = {}
    suspended_on: str | None = None
    refused = 0
    for type_, detail in await session.execute(
        select(Event.type, Event.detail)
        .where(
            Event.ticket_id.is_(None),
            Event.actor == contact.email,
            Event.type.in_((SCORED, UNSUSPENDED)),
        )
        .order_by(Event.id)
    ):
        detail = detail or {}
        if type_ == UNSUSPENDED:
            days, suspended_on, refused = {}, None, 0
            continue
        if detail.get("state") == "policy":
            refused += 1
        if detail.get("suspended") and suspended_on is None:
            suspended_on = str(detail.get("day"))
        if not detail.get("counted"):
            continue
        try:
            day = date.fromisoformat(str(detail.get("day")))
        except ValueError:
            continue
        if days and (day - max(days)).days > rules.stale_after_days:
            days = {}  # the score started again that day
        weight = float(detail.get("weight") or 0)
        if day not in days or weight > days[day]["weight"]:
            days[day] = {
                "day": day.isoformat(),
                "weight": weight,
                "state": detail.get("state"),
                "status": detail.get("status"),
                "diagnostic": detail.get("diagnostic"),
            }
    resets = held.resets_on(rules.stale_after_days)
    return {
        "score": current,
        "threshold": rules.threshold,
        "stale_after_days": rules.stale_after_days,
        "suspended": contact.undeliverable,
        "suspended_on": suspended_on if contact.undeliverable else None,
        "counted": [days[day] for day in sorted(days)] if current > 0 else [],
        "last": {
            "day": held.last_on.isoformat() if held.last_on is not None else None,
            "reason": contact.bounce_reason,
        },
        "resets_on": resets.isoformat() if resets is not None and current > 0 else None,
        "policy_refusals": refused,  # since the last unsuspend: recorded, never counted
        "bounces": contact.bounce_count,  # bounces of our mail counted against it, all time
    }


def describe(email: str, found: dict[str, Any]) -> list[str]:
    """The lines ``contacts show`` prints for FOUND, a :func:`bounce_standing`."""
    score, threshold = found["score"], found["threshold"]
    lines = [f"bounces: score {score:g} of {threshold:g}"]
    for day in found["counted"]:
        said = " ".join(str(v) for v in (day["status"], day["diagnostic"]) if v)
        lines.append(f"  {day['day']}  {day['state']} {day['weight']:g}  {said}".rstrip())
    last = found["last"]
    if not found["counted"] and last["day"]:
        lines.append(f"  last scored bounce {last['day']}: {last['reason'] or '-'}")
    if found["resets_on"]:
        lines.append(
            f"  back to 0 on {found['resets_on']} unless a bounce is scored before then "
            f"({found['stale_after_days']} days without one)"
        )
    if found["policy_refusals"]:
        lines.append(
            f"  refused as spam or by policy {found['policy_refusals']} time(s): not counted"
        )
    if found["suspended"]:
        since = f" since {found['suspended_on']}" if found["suspended_on"] else ""
        lines.append(
            f"  suspended{since}: no notices, acknowledgements or reminders "
            f"(`helpdeskd contacts unsuspend {email}` lifts it)"
        )
    else:
        lines.append(f"  not suspended (suspended at {threshold:g})")
    return lines


async def unsuspend(session: AsyncSession, email: str, *, by: str, now: datetime) -> Standing:
    """Lift EMAIL's suspension and clear its score, in SESSION's transaction; return the
    standing it had. The reason of the last bounce stays, for the record."""
    address = email.lower()
    if await privacy.erased(session, [address]):
        raise UserError(f"{address} was erased on request: it is never mailed again")
    contact = await session.scalar(select(Contact).where(Contact.email == address))
    if contact is None:
        raise UserError(f"no contact {address}")
    before = standing(contact)
    contact.undeliverable = False
    contact.bounce_score = 0.0
    contact.last_bounce_on = None
    contact.last_bounce_weight = 0.0
    session.add(
        Event(
            ticket_id=None,
            type=UNSUSPENDED,
            actor=address,
            detail={"by": by, "score": before.score, "suspended": before.suspended},
            created_at=now,
        )
    )
    return before
