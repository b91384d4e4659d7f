"""Recording media (container, local copy), gating bookkeeping and call aliases.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "call_aliases",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=255), nullable=False),
        sa.Column("call_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "alias", name="uq_call_aliases_key"),
    )
    op.create_index("ix_call_aliases_call_id", "call_aliases", ["call_id"])
    with op.batch_alter_table("payment_segments") as batch:
        batch.add_column(sa.Column("call_level_sent_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_payment_segments_state_changed_at", ["state_changed_at"])
        batch.create_unique_constraint(
            "uq_payment_segments_idempotency", ["call_id", "idempotency_key"]
        )
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(
            sa.Column("control_confirmed_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("provider_container_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("media_path", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("media_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("media_fetched_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("media_fetch_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    op.drop_index("ix_call_aliases_call_id", table_name="call_aliases")
    op.drop_table("call_aliases")
    with op.batch_alter_table("payment_segments") as batch:
        batch.drop_constraint("uq_payment_segments_idempotency", type_="unique")
        batch.drop_index("ix_payment_segments_state_changed_at")
        batch.drop_column("state_changed_at")
        batch.drop_column("call_level_sent_at")
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("control_confirmed_at")
        for column in (
            "media_fetch_attempts",
            "media_fetched_at",
            "media_size",
            "media_path",
            "provider_container_id",
        ):
            batch.drop_column(column)
