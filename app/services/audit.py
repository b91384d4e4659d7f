"""The tamper-evident audit trail (SPEC §3.3).

Every read of recording metadata or media (refused ones too), every hold, release, disclosure
and deletion is written as an entry in the same transaction as the action itself. Each
entry's hash is an HMAC-SHA256, under a key kept outside the database, of its content and the
previous entry's hash; each entry names its key by id, so keys can be rotated. Verifying
recomputes the whole chain from the stored rows, so an edited, inserted, reordered or removed
row is found, and a chain rewritten without the key fails at its first entry.

Deleting the newest entries leaves a shorter chain that is still whole: the chain head is
therefore checkpointed, HMAC'd, to the media store (outside the database) every
``RECGATE_AUDIT_CHECKPOINT_S`` and on shutdown, and verify checks the chain against the last
checkpoint. Entries from before the HMAC chain (``key_id`` NULL) are checked as the plain
SHA-256 chain they were written as, and reported as unkeyed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.clock import Clock
from app.domain.scrub import scrub
from app.storage.media import MediaStore, MediaStoreError
from app.storage.models import AuditEntry

log = logging.getLogger("recgate.audit")

GENESIS = "0" * 64
# Appends are serialised so two writers cannot both chain onto the same head.
_CHAIN_LOCK_KEY = 0x7265_6367_6175_6474  # "recgaudt"
_VERIFY_BATCH = 1000
CHECKPOINT_OBJECT = "audit/checkpoint.json"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: a token's name and role, or a component of recgate itself."""

    name: str
    role: str


SYSTEM_SWEEP = Actor("retention-sweep", "system")
SYSTEM_REDACTION = Actor("redaction", "system")


def key_id(key: bytes) -> str:
    """A key's public name: derived from the key, so it says nothing about it."""
    return "k" + hmac.new(key, b"recgate audit key id", hashlib.sha256).hexdigest()[:15]


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The key new entries are signed with, and every key (current and retired) by id."""

    current_id: str
    by_id: dict[str, bytes]

    @classmethod
    def of(cls, current: bytes, previous: Iterable[bytes] = ()) -> AuditKeys:
        """The keyring for ``RECGATE_AUDIT_KEY`` and ``RECGATE_AUDIT_PREVIOUS_KEYS``."""
        by_id = {key_id(key): key for key in previous}
        by_id[key_id(current)] = current
        return cls(key_id(current), by_id)

    @property
    def current(self) -> bytes:
        return self.by_id[self.current_id]


def _canonical(values: dict[str, Any]) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _content(row: AuditEntry | None = None, **fields: Any) -> dict[str, Any]:
    if row is not None:
        fields = {
            "at": row.at,
            "actor": row.actor,
            "role": row.role,
            "action": row.action,
            "target_type": row.target_type,
            "target_id": row.target_id,
            "purpose": row.purpose,
            "detail": row.detail,
        }
    return {**fields, "at": fields["at"].isoformat()}


def legacy_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the content: entries before the HMAC chain."""
    return hashlib.sha256(_canonical({"prev": prev_hash, **content})).hexdigest()


def entry_hash(key: bytes, key_name: str, prev_hash: str, content: dict[str, Any]) -> str:
    """HMAC-SHA256 over the previous hash, the key's id and the content, canonical JSON."""
    message = _canonical({"prev": prev_hash, "key_id": key_name, **content})
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain head at one moment, kept outside the database."""

    last_seq: int
    hash: str
    count: int
    at: str
    key_id: str

    def signed(self, keys: AuditKeys) -> dict[str, Any]:
        body = asdict(self)
        return {
            **body,
            "mac": hmac.new(keys.by_id[self.key_id], _canonical(body), "sha256").hexdigest(),
        }

    @classmethod
    def parse(cls, data: bytes, keys: AuditKeys) -> Checkpoint:
        """The checkpoint in ``data``; ValueError unless its MAC verifies under a known key."""
        try:
            raw = json.loads(data)
            mac = raw.pop("mac")
            checkpoint = cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError("the audit checkpoint is malformed") from exc
        key = keys.by_id.get(checkpoint.key_id)
        if key is None:
            raise ValueError(f"the audit checkpoint is signed with unknown key {checkpoint.key_id}")
        expected = hmac.new(key, _canonical(asdict(checkpoint)), "sha256").hexdigest()
        if not hmac.compare_digest(str(mac), expected):
            raise ValueError("the audit checkpoint's MAC does not verify")
        return checkpoint


@dataclass(frozen=True, slots=True)
class ChainCheck:
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None
    unkeyed: int = 0  # entries from before the HMAC chain
    checkpoint: dict[str, Any] | None = field(default=None)


class AuditService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        keys: AuditKeys,
        store: MediaStore,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.keys = keys
        self.store = store

    async def record(
        self,
        session: AsyncSession,
        actor: Actor,
        action: str,
        target_type: str,
        target_id: str,
        *,
        purpose: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append an entry inside the caller's transaction (it commits with the action)."""
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_CHAIN_LOCK_KEY)))
        head = (
            await session.execute(
                sa.select(AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
            )
        ).scalar_one_or_none()
        prev = head or GENESIS
        at = self.clock()
        fields: dict[str, Any] = {
            "at": at,
            "actor": actor.name,
            "role": actor.role,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "purpose": purpose,
            "detail": scrub(detail or {}),
        }
        content = _content(**fields)
        entry = AuditEntry(
            **fields,
            prev_hash=prev,
            key_id=self.keys.current_id,
            hash=entry_hash(self.keys.current, self.keys.current_id, prev, content),
        )
        session.add(entry)
        await session.flush()
        return entry

    async def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint in the media store; ValueError when it does not verify."""
        data = await self.store.get_small(CHECKPOINT_OBJECT)
        return None if data is None else Checkpoint.parse(data, self.keys)

    async def checkpoint(self) -> Checkpoint | None:
        """Write the chain head to the media store and the log, if it extends the last one.

        A head that does not extend the last checkpoint (the checkpointed entry is gone or
        differs) is not written: overwriting would launder a truncation. It is logged as an
        error, and verify reports it.
        """
        try:
            previous = await self.last_checkpoint()
        except ValueError as exc:
            log.error("audit checkpoint not written: the last one is invalid (%s)", exc)
            return None
        # Read after the checkpoint, so the rows are at least as new as it is.
        async with self.sessions() as session:
            head = (
                await session.execute(
                    sa.select(
                        AuditEntry.seq,
                        AuditEntry.hash,
                        sa.select(sa.func.count()).select_from(AuditEntry).scalar_subquery(),
                    )
                    .order_by(AuditEntry.seq.desc())
                    .limit(1)
                )
            ).one_or_none()
            checkpointed = None
            if previous is not None:
                checkpointed = (
                    await session.execute(
                        sa.select(AuditEntry.hash).where(AuditEntry.seq == previous.last_seq)
                    )
                ).scalar_one_or_none()
        if previous is not None and checkpointed != previous.hash:
            log.error(
                "audit checkpoint not written: entry %s of the last checkpoint is %s; "
                "the chain was truncated or rewritten",
                previous.last_seq,
                "missing" if checkpointed is None else "changed",
            )
            return None
        if head is None or (previous is not None and head[2] <= previous.count):
            return previous  # nothing new (or another replica was ahead of this read)
        checkpoint = Checkpoint(
            last_seq=head[0],
            hash=head[1],
            count=head[2],
            at=self.clock().isoformat(),
            key_id=self.keys.current_id,
        )
        signed = checkpoint.signed(self.keys)
        await self.store.put_small(CHECKPOINT_OBJECT, _canonical(signed))
        log.info("audit checkpoint %s", json.dumps(signed, sort_keys=True))
        return checkpoint

    async def verify(self) -> ChainCheck:
        """Recompute the chain from every stored row, oldest first, in batches, and hold it
        against the last checkpoint. The answer names the first entry that is wrong."""
        try:
            checkpoint = await self.last_checkpoint()
        except (ValueError, MediaStoreError) as exc:
            return ChainCheck(ok=False, entries=0, head=GENESIS, reason=str(exc))
        summary = None if checkpoint is None else asdict(checkpoint)
        prev, count, unkeyed, last_seq, keyed = GENESIS, 0, 0, 0, False
        reached = checkpoint is None

        def bad(seq: int, reason: str) -> ChainCheck:
            return ChainCheck(False, count, prev, seq, reason, unkeyed, summary)

        async with self.sessions() as session:
            while True:
                rows = (
                    (
                        await session.execute(
                            sa.select(AuditEntry)
                            .where(AuditEntry.seq > last_seq)
                            .order_by(AuditEntry.seq)
                            .limit(_VERIFY_BATCH)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not rows:
                    break
                for row in rows:
                    if row.key_id is None:
                        if keyed:
                            return bad(row.seq, "an unkeyed entry inside the HMAC chain")
                        expected = legacy_hash(prev, _content(row))
                    else:
                        key = self.keys.by_id.get(row.key_id)
                        if key is None:
                            return bad(row.seq, f"signed with an unknown key ({row.key_id})")
                        keyed = True
                        expected = entry_hash(key, row.key_id, prev, _content(row))
                    if row.prev_hash != prev:
                        return bad(row.seq, "does not follow the entry before it")
                    if not hmac.compare_digest(row.hash, expected):
                        return bad(row.seq, "its hash does not match its content")
                    if checkpoint is not None and not reached and row.seq > checkpoint.last_seq:
                        return bad(
                            checkpoint.last_seq,
                            f"entry {checkpoint.last_seq}, the checkpoint's head, is missing",
                        )
                    prev, count, last_seq = row.hash, count + 1, row.seq
                    unkeyed += row.key_id is None
                    if checkpoint is not None and row.seq == checkpoint.last_seq:
                        if row.hash != checkpoint.hash or count != checkpoint.count:
                            return bad(row.seq, "differs from the checkpoint")
                        reached = True
                session.expunge_all()
        if checkpoint is not None and not reached:
            return bad(
                checkpoint.last_seq,
                f"the chain ends at entry {last_seq} ({count} entries) before the checkpoint's "
                f"entry {checkpoint.last_seq} ({checkpoint.count} entries): it was truncated",
            )
        if unkeyed and checkpoint is None:
            # Unkeyed entries prove nothing by themselves: anyone who can write the table can
            # rewrite the chain as unkeyed ones. Only a checkpoint (written at start-up and
            # every RECGATE_AUDIT_CHECKPOINT_S) vouches for them.
            return ChainCheck(
                False,
                count,
                prev,
                None,
                f"{unkeyed} unkeyed entries and no checkpoint to vouch for them",
                unkeyed,
                summary,
            )
        reason = f"{unkeyed} unkeyed (before the HMAC chain)" if unkeyed else None
        return ChainCheck(True, count, prev, None, reason, unkeyed, summary)

    async def list(
        self,
        *,
        target_id: str | None = None,
        action: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[AuditEntry]:
        stmt = sa.select(AuditEntry).where(AuditEntry.seq > after_seq)
        if target_id:
            stmt = stmt.where(AuditEntry.target_id == target_id)
        if action:
            stmt = stmt.where(AuditEntry.action == action)
        async with self.sessions() as session:
            return list(
                (await session.execute(stmt.order_by(AuditEntry.seq).limit(limit))).scalars()
            )
