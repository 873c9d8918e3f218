"""privacy: erased addresses (salted hashes), pending deletions, retention state, purged tickets

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:00:00

New tables and one nullable column only: the release before keeps running on this schema
during a rolling upgrade (it neither reads nor writes them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import helpdeskd.store.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, helpdeskd.store.models.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(_time("purged_at"))
    op.create_table(
        "erased_addresses",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("pseudonym", sa.String(length=320), nullable=False),
        _time("erased_at", nullable=False),
        sa.Column("held_contact_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["held_contact_id"],
            ["contacts.id"],
            name=op.f("fk_erased_addresses_held_contact_id_contacts"),
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_erased_addresses")),
    )
    op.create_table(
        "privacy_state",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_privacy_state")),
    )
    op.create_table(
        "pending_deletions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("mailbox", sa.String(length=300), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_deletions")),
    )


def downgrade() -> None:
    op.drop_table("pending_deletions")
    op.drop_table("privacy_state")
    op.drop_table("erased_addresses")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
