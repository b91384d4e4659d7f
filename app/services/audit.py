"""The tamper-evident audit trail (SPEC §3.3).

Every read of recording metadata or media, every hold, release, disclosure and deletion is
written as an entry in the same transaction as the action itself. Each entry's hash covers
its content and the previous entry's hash; verifying recomputes the whole chain from the
stored rows, so an edited, inserted or removed row is found.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.clock import Clock
from app.domain.scrub import scrub
from app.storage.models import AuditEntry

GENESIS = "0" * 64
# Appends are serialised so two writers cannot both chain onto the same head.
_CHAIN_LOCK_KEY = 0x7265_6367_6175_6474  # "recgaudt"
_VERIFY_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: a token's name and role, or a component of recgate itself."""

    name: str
    role: str


SYSTEM_SWEEP = Actor("retention-sweep", "system")
SYSTEM_REDACTION = Actor("redaction", "system")


@dataclass(frozen=True, slots=True)
class ChainCheck:
    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None


def entry_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    target_type: str,
    target_id: str,
    purpose: str | None,
    detail: dict[str, Any],
) -> str:
    """SHA-256 over the previous hash and the entry's content, in a canonical JSON form."""
    content = json.dumps(
        {
            "prev": prev_hash,
            "at": at.isoformat(),
            "actor": actor,
            "role": role,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "purpose": purpose,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(content.encode()).hexdigest()


class AuditService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock

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
        clean = scrub(detail or {})
        entry = AuditEntry(
            at=at,
            actor=actor.name,
            role=actor.role,
            action=action,
            target_type=target_type,
            target_id=target_id,
            purpose=purpose,
            detail=clean,
            prev_hash=prev,
            hash=entry_hash(
                prev, at, actor.name, actor.role, action, target_type, target_id, purpose, clean
            ),
        )
        session.add(entry)
        await session.flush()
        return entry

    async def verify(self) -> ChainCheck:
        """Recompute the chain from every stored row, oldest first, in batches."""
        prev, count, last_seq = GENESIS, 0, 0
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
                    return ChainCheck(ok=True, entries=count, head=prev)
                for row in rows:
                    expected = entry_hash(
                        prev,
                        row.at,
                        row.actor,
                        row.role,
                        row.action,
                        row.target_type,
                        row.target_id,
                        row.purpose,
                        row.detail,
                    )
                    if row.prev_hash != prev or row.hash != expected:
                        return ChainCheck(ok=False, entries=count, head=prev, first_bad_seq=row.seq)
                    prev, count, last_seq = row.hash, count + 1, row.seq
                session.expunge_all()

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
