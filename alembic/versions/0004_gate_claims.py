"""The gate under load: claims instead of locks, due times instead of retry loops.

A payment segment carries the claim of whoever has a command in flight (``command_id``,
``command_until``) and when the upkeep should drive it next (``due_at``, which replaces
``next_resume_at``); a segment's recording link keeps when recgate's pause of it went out, to
judge PBX reports against; a call says whether it has a call-wide exposure, and carries a
version its live rows' writers bump.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("has_call_exposure", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("live_version", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE calls SET has_call_exposure = TRUE WHERE id IN "
        "(SELECT call_id FROM exposures WHERE recording_id IS NULL)"
    )
    with op.batch_alter_table("payment_segments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("call_level_confirmed_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("call_level_resumed_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("pause_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("command_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("command_until", sa.DateTime(timezone=True), nullable=True))
    # A segment confirmed at call level before this revision was answered then; an unconfirmed
    # resume retry keeps its time.
    op.execute(
        "UPDATE payment_segments SET call_level_confirmed_at = paused_at "
        "WHERE call_level_sent_at IS NOT NULL AND paused_at IS NOT NULL"
    )
    op.execute("UPDATE payment_segments SET due_at = next_resume_at")
    with op.batch_alter_table("payment_segments", schema=None) as batch_op:
        batch_op.drop_column("next_resume_at")
        batch_op.create_index(batch_op.f("ix_payment_segments_due_at"), ["due_at"], unique=False)

    with op.batch_alter_table("segment_recordings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pause_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segment_recordings", schema=None) as batch_op:
        batch_op.drop_column("pause_sent_at")
    with op.batch_alter_table("payment_segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_segments_due_at"))
        batch_op.add_column(sa.Column("next_resume_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE payment_segments SET next_resume_at = due_at WHERE state = 'resume_failed'")
    with op.batch_alter_table("payment_segments", schema=None) as batch_op:
        for column in (
            "command_until",
            "command_id",
            "due_at",
            "pause_attempts",
            "call_level_resumed_at",
            "call_level_confirmed_at",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_column("live_version")
        batch_op.drop_column("has_call_exposure")
