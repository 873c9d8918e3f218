"""index the outbox in the order its mail goes: (state, next_attempt_at, id)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 16:00:00

A claim takes the due rows longest due first, the id breaking ties (a notice's thousands of
rows are all due at the same time). On (state, next_attempt_at) alone PostgreSQL read and
sorted every due row for each batch it claimed (a full sort: ``FOR UPDATE SKIP LOCKED`` stands
between the sort and the limit), so the claims of a notice to N customers cost N²/batch. On
this index a claim reads the batch it takes. (SQLite's indexes end with the rowid, the id: it
walked the old one in this order already.)

The new index is made before the old one, whose columns begin it, is dropped: the release
before keeps running on this schema during a rolling upgrade (its queries use the new one).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_state_next_attempt_at_id", ["state", "next_attempt_at", "id"], unique=False
        )
        batch_op.drop_index("ix_outbox_state_next_attempt_at")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_state_next_attempt_at", ["state", "next_attempt_at"], unique=False
        )
        batch_op.drop_index("ix_outbox_state_next_attempt_at_id")
