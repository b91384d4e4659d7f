"""Disclosures: every recording shared outside the contact centre, with the media's sha256.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "disclosures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("recording_id", sa.Uuid(), nullable=False),
        sa.Column("recipient", sa.String(length=32), nullable=False),
        sa.Column("recipient_name", sa.String(length=255), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("lawful_basis", sa.String(length=500), nullable=False),
        sa.Column("justification", sa.String(length=2000), nullable=False),
        sa.Column("media_sha256", sa.String(length=64), nullable=False),
        sa.Column("media_size", sa.BigInteger(), nullable=True),
        sa.Column("disclosed_by", sa.String(length=128), nullable=False),
        sa.Column("disclosed_role", sa.String(length=16), nullable=False),
        sa.Column("disclosed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["recording_id"], ["recordings.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_disclosures_recording_id", "disclosures", ["recording_id"])
    op.create_index("ix_disclosures_disclosed_at_id", "disclosures", ["disclosed_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_disclosures_disclosed_at_id", table_name="disclosures")
    op.drop_index("ix_disclosures_recording_id", table_name="disclosures")
    op.drop_table("disclosures")
