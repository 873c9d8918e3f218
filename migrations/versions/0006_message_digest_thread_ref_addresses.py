"""message digest and the addresses of the mail that remembered a thread reference

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 15:40:00

Both columns are added, nullable, and nothing is removed: the release before keeps running on
this schema during a rolling upgrade (it does not write them; rows it writes have NULL there).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
    with op.batch_alter_table("thread_refs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("addresses", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("thread_refs", schema=None) as batch_op:
        batch_op.drop_column("addresses")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("digest")
