"""bounce scores: Mailman's score, the day of the last scored bounce and what it said

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 09:00:00

Columns added only, each nullable or with a server default: the release before keeps running on
this schema during a rolling upgrade (it inserts contacts without them and never reads them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("bounce_score", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("last_bounce_on", sa.Date(), nullable=True))
        batch_op.add_column(
            sa.Column("last_bounce_weight", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("bounce_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("bounce_reason")
        batch_op.drop_column("last_bounce_weight")
        batch_op.drop_column("last_bounce_on")
        batch_op.drop_column("bounce_score")
