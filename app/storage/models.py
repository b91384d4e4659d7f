"""ORM models. Tables are plural, classes singular; every ``*_at`` is timezone-aware UTC."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.domain.row_ids import new_id
from app.domain.states import OPEN_SEGMENT_STATES


def _in_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive one is refused, whatever zone it was meant in."""
    if value.tzinfo is None:
        raise ValueError("naive datetime refused: recgate stores UTC only")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _tagged_utc(value: datetime | None) -> datetime | None:
    """A timestamp asyncpg read: as it is, tagged UTC where it came naive."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class EncodedJson(str):
    """A JSON document already encoded as text (``json.dumps``), stored as it is."""

    __slots__ = ()


class JsonDocument(TypeDecorator[Any]):
    """JSON, as ``sa.JSON`` stores and reads it, that also takes a document already encoded
    (:class:`EncodedJson`) and stores that text unchanged: the webhook inbox's payloads are
    scrubbed and encoded by the service's process as each webhook arrives, so the batch that
    stores them (in the ingest worker) does neither."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        encode = super().bind_processor(dialect)

        def process(value: Any) -> Any:
            if isinstance(value, EncodedJson):
                return str(value)
            return value if encode is None else encode(value)

        return process


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored and read back as timezone-aware UTC on every backend.

    SQLite keeps no zone, so values are normalised to UTC on the way in and tagged UTC on the
    way out; comparisons in SQL then hold on both backends.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _in_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # On SQLite the two steps (to naive UTC, then SQLAlchemy's text for a DATETIME,
        # "2026-12-04 12:00:00.000000") are one C call: every row the hot paths write binds
        # several timestamps. tests/integration/test_storage.py holds it to the two steps.
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            return _in_utc(value).isoformat(" ", "microseconds")[:-6]  # without its "+00:00"

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.driver == "asyncpg":
            # asyncpg reads a timestamptz as UTC itself (its binary form is UTC), whatever
            # the session's zone; only ``infinity`` comes naive (``datetime.max``), from a
            # row set by hand. One check per timestamp of every row read, no conversion.
            return _tagged_utc
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # The way back in one step too: the stored text parsed and tagged UTC (a live call's
        # rows are read with a dozen timestamps on every webhook).
        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            try:
                return datetime.fromisoformat(value + "+00:00")
            except ValueError:  # text that names its own zone (not written by recgate)
                return self.process_result_value(datetime.fromisoformat(value), dialect)

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: sa.JSON(),
    }


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (sa.UniqueConstraint("provider", "provider_call_id", name="uq_calls_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    provider: Mapped[str] = mapped_column(sa.String(32))
    provider_call_id: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16))
    service_area: Mapped[str | None] = mapped_column(sa.String(64))
    # Indexed: subject access requests and caller-wide legal holds look calls up by number.
    from_number: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    to_number: Mapped[str | None] = mapped_column(sa.String(64))
    direction: Mapped[str | None] = mapped_column(sa.String(16))
    agent_id: Mapped[str | None] = mapped_column(sa.String(128))
    # Occurred-at of the events that set the agent and the service area, the two fields a
    # transfer changes, so a late event cannot overwrite a newer one.
    agent_at: Mapped[datetime | None]
    service_area_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    record_retention_until: Mapped[datetime | None] = mapped_column(index=True)
    personal_erased_at: Mapped[datetime | None]
    # A call-wide exposure exists (a pause failed before any recording was known): recordings
    # learned later are checked against it. Kept on the call so ingest need not look otherwise.
    has_call_exposure: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Bumped by every transaction that reads the call to change its live rows (recordings,
    # payment segment): a gate transaction that finds it one above its own last bump knows
    # nothing has changed since, and need not read those rows again.
    live_version: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CallAlias(Base):
    """Another id a provider uses for a call (an Asterisk bridge the caller's channel is in)."""

    __tablename__ = "call_aliases"
    __table_args__ = (sa.UniqueConstraint("provider", "alias", name="uq_call_aliases_key"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    provider: Mapped[str] = mapped_column(sa.String(32))
    alias: Mapped[str] = mapped_column(sa.String(255))
    call_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("calls.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime]


class Recording(Base):
    __tablename__ = "recordings"
    __table_args__ = (
        # Starts with the call's id: it serves the reads by call too (no index of its own).
        sa.UniqueConstraint("call_id", "provider_recording_id", name="uq_recordings_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    call_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("calls.id", ondelete="RESTRICT"))
    provider_recording_id: Mapped[str] = mapped_column(sa.String(255))
    # e.g. the Twilio conference a conference recording belongs to.
    provider_container_id: Mapped[str | None] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    started_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # When recgate last had a pause or resume confirmed; older PBX reports cannot undo it.
    control_confirmed_at: Mapped[datetime | None]
    # Latest PBX-reported pause/resume: (occurred_at, paused?) so reordering cannot flip it.
    pbx_pause_event_at: Mapped[datetime | None]
    pbx_paused: Mapped[bool | None]
    duration_s: Mapped[float | None]
    media_url: Mapped[str | None] = mapped_column(sa.String(2048))
    media_format: Mapped[str | None] = mapped_column(sa.String(16))
    media_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    media_files: Mapped[int] = mapped_column(default=1)
    # The local copy in the media store (relative to RECGATE_MEDIA_DIR).
    media_path: Mapped[str | None] = mapped_column(sa.String(512))
    media_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    media_fetched_at: Mapped[datetime | None]
    media_fetch_attempts: Mapped[int] = mapped_column(default=0)
    # After a failed copy, not before this (backoff); None: at the media job's next turn.
    media_fetch_next_at: Mapped[datetime | None]
    quarantined: Mapped[bool] = mapped_column(default=False)
    retention_until: Mapped[datetime | None] = mapped_column(index=True)
    deleted_at: Mapped[datetime | None]
    deleted_reason: Mapped[str | None] = mapped_column(sa.String(32))
    # A sweep replica's claim on this recording while it deletes the media (no transaction
    # is held across the storage and provider calls).
    sweep_lease_until: Mapped[datetime | None]
    deletion_error: Mapped[str | None] = mapped_column(sa.String(500))
    # When a deletion passed its last hold check and began deleting media: from then on a
    # hold can no longer stop it (so a hold placed meanwhile is refused, not accepted).
    deletion_started_at: Mapped[datetime | None]
    # What the last deletion did to each copy: deleted | gone | not_deletable | failed, and
    # why. ``local`` is recgate's media store, ``provider`` the PBX's own copy.
    local_copy: Mapped[str | None] = mapped_column(sa.String(16))
    local_copy_reason: Mapped[str | None] = mapped_column(sa.String(500))
    provider_copy: Mapped[str | None] = mapped_column(sa.String(16))
    provider_copy_reason: Mapped[str | None] = mapped_column(sa.String(500))
    redacted_at: Mapped[datetime | None]
    # The unredacted original, until its deletion from the store is confirmed.
    superseded_media_path: Mapped[str | None] = mapped_column(sa.String(512))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LegalHold(Base):
    """Keeps a recording (or every recording of a caller) from deletion until released."""

    __tablename__ = "legal_holds"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    recording_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("recordings.id", ondelete="CASCADE"), index=True
    )
    # A hold on every recording of calls from this number, present and future.
    caller: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    reason: Mapped[str] = mapped_column(sa.String(32))
    reference: Mapped[str | None] = mapped_column(sa.String(255))
    note: Mapped[str | None] = mapped_column(sa.String(2000))
    placed_by: Mapped[str] = mapped_column(sa.String(128))
    placed_at: Mapped[datetime]
    released_by: Mapped[str | None] = mapped_column(sa.String(128))
    released_at: Mapped[datetime | None]


class Disclosure(Base):
    """A recording shared outside the contact centre (SPEC §3.3): to whom, why, on what basis,
    and exactly which media (its sha256 when shared). Kept after the recording is deleted."""

    __tablename__ = "disclosures"
    __table_args__ = (sa.Index("ix_disclosures_disclosed_at_id", "disclosed_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    recording_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("recordings.id", ondelete="RESTRICT"), index=True
    )
    recipient: Mapped[str] = mapped_column(sa.String(32))
    recipient_name: Mapped[str] = mapped_column(sa.String(255))
    reference: Mapped[str | None] = mapped_column(sa.String(255))
    lawful_basis: Mapped[str] = mapped_column(sa.String(500))
    justification: Mapped[str] = mapped_column(sa.String(2000))
    media_sha256: Mapped[str] = mapped_column(sa.String(64))
    media_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    disclosed_by: Mapped[str] = mapped_column(sa.String(128))
    disclosed_role: Mapped[str] = mapped_column(sa.String(16))
    disclosed_at: Mapped[datetime]


class RetentionPolicy(Base):
    """A service area's retention, overriding the defaults from settings."""

    __tablename__ = "retention_policies"

    service_area: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    media_months: Mapped[int]
    record_months: Mapped[int]
    updated_by: Mapped[str] = mapped_column(sa.String(128))
    updated_at: Mapped[datetime]


class SweepRun(Base):
    __tablename__ = "sweep_runs"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    dry_run: Mapped[bool]
    deleted: Mapped[int] = mapped_column(default=0)
    skipped_held: Mapped[int] = mapped_column(default=0)
    errors: Mapped[int] = mapped_column(default=0)
    records_erased: Mapped[int] = mapped_column(default=0)


class AuditEntry(Base):
    """One access or action on record. Each entry's hash is an HMAC, under the key named by
    ``key_id``, of its content and the previous entry's hash, so an edited or removed row
    breaks the chain. ``key_id`` NULL: an unkeyed (SHA-256) entry from before the HMAC chain.
    On PostgreSQL a trigger refuses UPDATE and DELETE (migration 0007)."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(16))
    action: Mapped[str] = mapped_column(sa.String(64))
    target_type: Mapped[str] = mapped_column(sa.String(32))
    target_id: Mapped[str] = mapped_column(sa.String(255), index=True)
    purpose: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_id: Mapped[str | None] = mapped_column(sa.String(16))


_DUE = sa.text("due_at IS NOT NULL")


def is_open(state: Any) -> sa.ColumnElement[bool]:
    """``state`` (a segment's state column) is an open state: an ``IN`` of the states written
    into the SQL, never parameters. PostgreSQL's plan for a prepared statement, made for any
    values of its parameters, could not use the partial index of open segments below; and
    the hot paths' statement runner would finish an expanding ``IN`` anew every time."""
    return cast(
        sa.ColumnElement[bool],
        state.in_([sa.literal_column(f"'{s.value}'") for s in sorted(OPEN_SEGMENT_STATES)]),
    )


class PaymentSegment(Base):
    __tablename__ = "payment_segments"
    __table_args__ = (
        sa.Index("ix_payment_segments_call_state", "call_id", "state"),
        sa.UniqueConstraint("call_id", "idempotency_key", name="uq_payment_segments_idempotency"),
        # Open segments only, for the gauges and the upkeep: a closed segment, most of them,
        # is never looked up by state (alembic 0009).
        sa.Index(
            "ix_payment_segments_open",
            "state",
            sqlite_where=is_open(sa.column("state")),
            postgresql_where=is_open(sa.column("state")),
        ),
        # Only segments the upkeep has to drive: most never are again, and every write of a
        # segment's due_at would move their entries (alembic 0009).
        sa.Index(
            "ix_payment_segments_due_at",
            "due_at",
            sqlite_where=_DUE,
            postgresql_where=_DUE,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    call_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("calls.id", ondelete="RESTRICT"))
    state: Mapped[str] = mapped_column(sa.String(16))
    reference: Mapped[str | None] = mapped_column(sa.String(255))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    pause_behavior: Mapped[str] = mapped_column(sa.String(16))
    # A call-level command (no recording known yet): when it was sent, whether the provider
    # confirmed it paused (recordings live before it were covered where the provider's
    # call-level pause covers every recording), when it was answered at all (paused or
    # "nothing recording"), and when the call-level resume was confirmed.
    call_level_sent_at: Mapped[datetime | None]
    call_level: Mapped[bool] = mapped_column(default=False)
    call_level_confirmed_at: Mapped[datetime | None]
    call_level_resumed_at: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    opened_at: Mapped[datetime]
    paused_at: Mapped[datetime | None]
    resume_requested_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    closed_by: Mapped[str | None] = mapped_column(sa.String(16))
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    pause_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    resume_attempts: Mapped[int] = mapped_column(default=0)
    # When the upkeep should drive the segment next: a retry after a failure, or the moment
    # a driver's claim runs out (should that driver have died).
    due_at: Mapped[datetime | None]
    # The command in flight and who sent it: one command per segment at a time, across
    # replicas, without holding a lock or a connection across the provider round trip.
    command_id: Mapped[uuid.UUID | None]
    command_until: Mapped[datetime | None]
    overlong_alerted_at: Mapped[datetime | None]


class SegmentRecording(Base):
    """Which recordings a segment paused, and when: the pause offsets into each recording."""

    __tablename__ = "segment_recordings"

    segment_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("payment_segments.id", ondelete="CASCADE"), primary_key=True
    )
    recording_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("recordings.id", ondelete="CASCADE"), primary_key=True
    )
    # When recgate's pause covering it went out (to judge PBX reports against), and when the
    # provider confirmed recgate's pause and resume of it.
    pause_sent_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    resumed_at: Mapped[datetime | None]


# A segment's failed pause, in a query as this very text (for the reason ``is_open`` gives;
# for queries of state_transitions alone).
PAUSE_FAILED = sa.text("entity = 'segment' AND to_state = 'pause_failed'")


class StateTransition(Base):
    __tablename__ = "state_transitions"
    __table_args__ = (
        # The status page counts the last 24 hours' failed pauses; an index of every
        # transition by entity would take a page write per transition (alembic 0009).
        sa.Index(
            "ix_state_transitions_pause_failed",
            "at",
            sqlite_where=PAUSE_FAILED,
            postgresql_where=PAUSE_FAILED,
        ),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    entity: Mapped[str] = mapped_column(sa.String(16))
    entity_id: Mapped[uuid.UUID]
    call_id: Mapped[uuid.UUID] = mapped_column(index=True)
    from_state: Mapped[str | None] = mapped_column(sa.String(16))
    to_state: Mapped[str] = mapped_column(sa.String(16))
    cause: Mapped[str] = mapped_column(sa.String(255))
    at: Mapped[datetime]


class Exposure(Base):
    __tablename__ = "exposures"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    call_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("calls.id", ondelete="RESTRICT"), index=True
    )
    recording_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("recordings.id", ondelete="SET NULL"), index=True
    )
    segment_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("payment_segments.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(sa.String(32))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    detail: Mapped[str | None] = mapped_column(sa.String(500))


class InboundEvent(Base):
    """The webhook inbox: one row per provider event, unique on provider + event id."""

    __tablename__ = "inbound_events"
    __table_args__ = (sa.UniqueConstraint("provider", "event_id", name="uq_inbound_events_key"),)

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    provider: Mapped[str] = mapped_column(sa.String(32))
    event_id: Mapped[str] = mapped_column(sa.String(255))
    type: Mapped[str] = mapped_column(sa.String(64))
    provider_call_id: Mapped[str] = mapped_column(sa.String(255))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument())


class DeadLetter(Base):
    """A signed webhook that could not be understood, kept (scrubbed) for operators."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    provider: Mapped[str] = mapped_column(sa.String(32))
    event_id: Mapped[str | None] = mapped_column(sa.String(255))
    reason: Mapped[str] = mapped_column(sa.String(1000))
    payload: Mapped[str] = mapped_column(sa.Text)
    received_at: Mapped[datetime]


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
