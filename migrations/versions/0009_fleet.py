"""fleet: mailbox leases with fencing tokens, and the registry of running daemons

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 12:00:00

New tables only: the release before keeps running on this schema during a rolling upgrade (it
holds PostgreSQL advisory locks and never reads them; see docs/admin.md, "Running several
daemons", for the order of steps).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import helpdeskd.store.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, helpdeskd.store.models.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "mailbox_leases",
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=True),
        _time("acquired_at"),
        _time("renewed_at"),
        _time("expires_at"),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_mailbox_leases")),
    )
    op.create_table(
        "daemons",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("machine", sa.String(length=100), nullable=False),
        sa.Column("state_dir", sa.Text(), nullable=False),
        _time("started_at"),
        _time("heartbeat_at"),
        _time("stale_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemons")),
    )


def downgrade() -> None:
    op.drop_table("daemons")
    op.drop_table("mailbox_leases")
