"""Queue one composed mail: its outbox row and, when it is about a ticket, its ticket message."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.mail.build import build_message
from helpdeskd.mail.compose import Composed
from helpdeskd.outbox import sender as outbox
from helpdeskd.store.models import Message


async def store_mail(session: AsyncSession, composed: Composed) -> Message | None:
    """Add COMPOSED's outbox row (and its ticket message, if it has a ticket) to SESSION."""
    row = outbox.enqueue(
        session,
        kind=composed.kind,
        message_id=composed.message_id,
        envelope_from=composed.envelope_from,
        recipients=composed.recipients,
        data=build_message(composed.mail),
        ticket_id=composed.ticket_id,
        expires_at=composed.expires_at,
    )
    if composed.ticket_id is None:
        return None
    await session.flush()
    message = Message(**composed.message, outbox_id=row.id)
    session.add(message)
    return message
