"""Tombstones say what happened to each copy (recgate's store, the provider's), and a
deletion in progress is marked so a legal hold placed meanwhile is refused, not ignored.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deletion_started_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("local_copy", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("local_copy_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("provider_copy", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("provider_copy_reason", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        for column in (
            "provider_copy_reason",
            "provider_copy",
            "local_copy_reason",
            "local_copy",
            "deletion_started_at",
        ):
            batch_op.drop_column(column)
