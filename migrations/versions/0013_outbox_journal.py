"""the outbox journal's mark: the last entry of results written to the database

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 23:30:00

On SQLite, while another writer holds the database (the ingest storing a backlog), the sender
keeps its results in an append-only file and writes them when its turn comes
(helpdeskd.outbox.journal). The mark is written in the same transaction as the entries it
names, so after a crash an entry is written once.

A new table only: the release before keeps running on this schema (it never reads it).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_journal",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_outbox_journal")),
    )


def downgrade() -> None:
    op.drop_table("outbox_journal")
