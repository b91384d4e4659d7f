"""Indexes that serve the queries, not every write.

Every payment start and end changes a segment's state, its recordings' states and adds state
transitions; each index on a changed column is one more page written per commit. Five of
them served no query, or served one badly:

- ``ix_payment_segments_state_changed_at``: nothing reads by it.
- ``ix_payment_segments_state`` held every segment ever; the gauges and the upkeep look for
  open ones only: ``ix_payment_segments_open`` holds those.
- ``ix_payment_segments_due_at`` held every segment, most of them never due again: only the
  upkeep reads it, for segments due by now, so it now holds only those with a ``due_at``.
- ``ix_state_transitions_entity`` (entity, entity id): nothing looks an entity's transitions
  up; the one query on ``entity``, the 24-hour count of failed pauses, found half the table
  under ``entity = 'segment'``. Its own partial index on ``at`` holds failed pauses only.
- ``ix_recordings_call_id``: the unique (call id, provider recording id) index starts with
  the call's id and serves the same reads.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DUE = sa.text("due_at IS NOT NULL")
# The open segment states as recgate 0009 knows them (app.domain.states), sorted.
_OPEN = sa.text("state IN ('pause_failed', 'paused', 'pausing', 'resume_failed', 'resuming')")
_PAUSE_FAILED = sa.text("entity = 'segment' AND to_state = 'pause_failed'")


# On PostgreSQL every index here is built and dropped CONCURRENTLY, outside a transaction:
# a plain CREATE INDEX would hold back the table's writes (every payment's state transitions)
# for as long as it reads the table. SQLite has no such option and needs none.
_NOT_BLOCKING = {"postgresql_concurrently": True}


def _partial(name: str, table: str, column: str, where: sa.TextClause) -> None:
    """Build the index afresh: a build that stopped half way leaves an invalid one behind."""
    _drop(name, table)
    op.create_index(
        name, table, [column], sqlite_where=where, postgresql_where=where, **_NOT_BLOCKING
    )


def _plain(name: str, table: str, columns: list[str]) -> None:
    _drop(name, table)
    op.create_index(name, table, columns, **_NOT_BLOCKING)


def _drop(name: str, table: str) -> None:
    op.drop_index(name, table_name=table, if_exists=True, **_NOT_BLOCKING)


# Each step autocommits, so a migration that stops half way (its process killed, the server
# restarted) is taken up again by the next ``recgate migrate``: every step may find its work
# done already.
def upgrade() -> None:
    with op.get_context().autocommit_block():
        _drop("ix_payment_segments_state_changed_at", "payment_segments")
        _partial("ix_payment_segments_open", "payment_segments", "state", _OPEN)
        _drop("ix_payment_segments_state", "payment_segments")
        _partial("ix_payment_segments_due_at", "payment_segments", "due_at", _DUE)
        _partial("ix_state_transitions_pause_failed", "state_transitions", "at", _PAUSE_FAILED)
        _drop("ix_state_transitions_entity", "state_transitions")
        _drop("ix_recordings_call_id", "recordings")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _plain("ix_recordings_call_id", "recordings", ["call_id"])
        _plain("ix_state_transitions_entity", "state_transitions", ["entity", "entity_id"])
        _drop("ix_state_transitions_pause_failed", "state_transitions")
        _plain("ix_payment_segments_due_at", "payment_segments", ["due_at"])
        _plain("ix_payment_segments_state", "payment_segments", ["state"])
        _drop("ix_payment_segments_open", "payment_segments")
        _plain("ix_payment_segments_state_changed_at", "payment_segments", ["state_changed_at"])
