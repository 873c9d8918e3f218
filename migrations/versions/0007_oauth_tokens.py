"""oauth_tokens: OAuth 2.0 refresh tokens (encrypted) and their status, shared by the daemons

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 18:00:00

A new table only: the release before keeps running on this schema during a rolling upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import helpdeskd.store.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, helpdeskd.store.models.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "oauth_tokens",
        sa.Column("token_file", sa.String(length=1024), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("account", sa.String(length=320), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        _time("obtained_at"),
        _time("last_refresh"),
        _time("expires_at"),
        _time("refresh_expires_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _time("last_error_at"),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("token_file", name=op.f("pk_oauth_tokens")),
    )


def downgrade() -> None:
    op.drop_table("oauth_tokens")
