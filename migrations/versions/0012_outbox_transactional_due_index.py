"""index the pending transactional mail in the order it goes: (next_attempt_at, id)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 22:30:00

A claim's first step takes the transactional mail due (acknowledgements, agents' mail) before
a notice's rows. It used to read only what became due since the last claim, so that it did not
walk a big notice's rows; but a batch's acknowledgements are due when the batch began and
committed when it ends, and those a claim ran in between were left to the second step, which
waits while the pool is full. Partial, this index holds the pending transactional rows alone:
the first step reads all that are due, however long a notice is queued beside them.

Only added: the release before keeps running on this schema during a rolling upgrade (it does
not use the index).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRANSACTIONAL_DUE = "coalesce(state, '') = 'pending' AND coalesce(notice_id, 0) = 0"


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_transactional_due",
            ["next_attempt_at", "id"],
            unique=False,
            sqlite_where=sa.text(TRANSACTIONAL_DUE),
            postgresql_where=sa.text(TRANSACTIONAL_DUE),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_outbox_transactional_due",
            sqlite_where=sa.text(TRANSACTIONAL_DUE),
            postgresql_where=sa.text(TRANSACTIONAL_DUE),
        )
