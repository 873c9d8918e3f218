"""An admin's second chance for outgoing mail: queue a failed outbox row again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from helpdeskd.errors import UserError
from helpdeskd.store.models import Outbox, OutboxRecipient


async def retry_outbox(session: AsyncSession, outbox_id: int, *, now: datetime) -> None:
    """Queue outbox row OUTBOX_ID for sending at NOW; its failed recipients get fresh attempts.

    Raise UserError when there is no such row or it is neither failed nor pending (a sent or
    expired row stays as it is).
    """
    row = await session.get(Outbox, outbox_id)
    if row is None:
        raise UserError(f"no outbox row {outbox_id}")
    if row.state not in ("failed", "pending"):
        raise UserError(f"outbox row {outbox_id} is {row.state}; only failed rows retry")
    await session.execute(
        update(OutboxRecipient)
        .where(OutboxRecipient.outbox_id == row.id, OutboxRecipient.state == "failed")
        .values(state="pending", attempts=0)
    )
    row.state, row.next_attempt_at = "pending", now
