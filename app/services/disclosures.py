"""Disclosures and subject access (SPEC §3.3).

A disclosure records a recording shared outside the contact centre: the recipient, the lawful
basis and justification, who shared it and exactly which media (its sha256 at the time).
Subject access gathers everything recgate holds about one caller number, matched on E.164
whatever formatting the provider stored, and can write it out as one archive.

Every disclosure, every listing and every subject access read or export is written to the
audit trail in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from app.domain.callers import SEPARATORS, match_suffix, same_caller, to_e164
from app.domain.clock import Clock
from app.domain.row_ids import new_id
from app.domain.scrub import scrub_fields
from app.errors import Conflict, Forbidden, MalformedInput, NotFound
from app.services.audit import Actor, AuditService
from app.services.recordings import RecordingGoneForever
from app.storage.media import MediaMissing, MediaStore
from app.storage.models import Call, Disclosure, LegalHold, Recording
from app.storage.repositories import RecordingRepository

RECIPIENTS = ("police", "council_service", "care_provider", "data_subject", "other")


@dataclass(frozen=True, slots=True)
class DisclosureRequest:
    recipient: str
    recipient_name: str
    reference: str | None
    lawful_basis: str
    justification: str


@dataclass(frozen=True, slots=True)
class SubjectAccessReport:
    """Everything held for one caller. Deleted recordings are tombstones only."""

    caller: str  # E.164
    generated_at: datetime
    calls: list[Call]
    recordings: list[Recording]
    tombstones: list[Recording]
    holds: list[LegalHold]
    disclosures: list[Disclosure]


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    files: list[ArchivedFile]
    withheld: list[dict[str, str]] = field(default_factory=list)


def _digits_only(column: InstrumentedAttribute[str | None]) -> sa.ColumnElement[str]:
    # Portable (SQLite and PostgreSQL): strip the separators providers put between digits.
    expr: sa.ColumnElement[str] = sa.func.replace(column, SEPARATORS[0], "")
    for separator in SEPARATORS[1:]:
        expr = sa.func.replace(expr, separator, "")
    return expr


def _number_candidates(
    column: InstrumentedAttribute[str | None], e164: str
) -> sa.ColumnElement[bool]:
    """A coarse SQL filter on a stored number: its digits contain the caller's last digits.
    Python decides the match (:func:`same_caller`); this only keeps the scan's output small."""
    return _digits_only(column).contains(match_suffix(e164), autoescape=True)


class DisclosureService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        store: MediaStore,
        audit: AuditService,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.store = store
        self.audit = audit

    # ---- disclosures ------------------------------------------------------------------

    async def disclose(
        self,
        recording_id: uuid.UUID,
        request: DisclosureRequest,
        actor: Actor,
        *,
        may_see_quarantined: bool,
    ) -> Disclosure:
        """Record that a recording's media was shared; the media must be held by recgate."""
        if request.recipient not in RECIPIENTS:
            raise MalformedInput(f"recipient must be one of {', '.join(RECIPIENTS)}.")
        name, reference, basis, justification = scrub_fields(
            request.recipient_name, request.reference, request.lawful_basis, request.justification
        )
        # A redacted security code is longer than the digits it replaces: keep to the columns.
        name, reference = _clip(name, 255), _clip(reference, 255)
        basis, justification = _clip(basis, 500), _clip(justification, 2000)
        async with self.sessions() as session, session.begin():
            recording = await RecordingRepository(session).by_id(recording_id, lock=True)
            if recording is None:
                raise NotFound("No such recording.")
            if recording.deleted_at is not None:
                raise RecordingGoneForever(
                    "Deleted under the retention policy or by a DPO; it cannot be disclosed.",
                    deleted_at=recording.deleted_at.isoformat(),
                    deleted_reason=recording.deleted_reason,
                )
            if recording.quarantined and not may_see_quarantined:
                raise Forbidden("The recording is quarantined (possible card data): DPO only.")
            if recording.media_path is None or recording.media_sha256 is None:
                raise Conflict("recgate holds no copy of this recording's media to disclose.")
            disclosure = Disclosure(
                id=new_id(),
                recording_id=recording.id,
                recipient=request.recipient,
                recipient_name=name or "",
                reference=reference,
                lawful_basis=basis or "",
                justification=justification or "",
                media_sha256=recording.media_sha256,
                media_size=recording.media_size,
                disclosed_by=actor.name,
                disclosed_role=actor.role,
                disclosed_at=self.clock(),
            )
            session.add(disclosure)
            await self.audit.record(
                session,
                actor,
                "recording.disclosed",
                "recording",
                str(recording.id),
                purpose="disclosure",
                detail={
                    "disclosure_id": str(disclosure.id),
                    "recipient": disclosure.recipient,
                    "recipient_name": disclosure.recipient_name,
                    "reference": disclosure.reference,
                    "media_sha256": disclosure.media_sha256,
                    "quarantined": recording.quarantined,
                },
            )
            return disclosure

    async def for_recording(self, recording_id: uuid.UUID, actor: Actor) -> list[Disclosure]:
        """A recording's disclosures, oldest first (also once it is deleted)."""
        async with self.sessions() as session, session.begin():
            if await RecordingRepository(session).by_id(recording_id) is None:
                raise NotFound("No such recording.")
            rows = list(
                (
                    await session.execute(
                        sa.select(Disclosure)
                        .where(Disclosure.recording_id == recording_id)
                        .order_by(Disclosure.disclosed_at, Disclosure.id)
                    )
                ).scalars()
            )
            await self.audit.record(
                session,
                actor,
                "disclosure.list",
                "recording",
                str(recording_id),
                purpose="disclosure",
                detail={"count": len(rows)},
            )
            return rows

    async def search(
        self,
        actor: Actor,
        *,
        recipient: str | None = None,
        recipient_type: str | None = None,
        disclosed_from: datetime | None = None,
        disclosed_to: datetime | None = None,
        before: tuple[datetime, uuid.UUID] | None = None,
        limit: int = 50,
    ) -> list[Disclosure]:
        """Disclosures across recordings, newest first, keyset-paginated. ``recipient``
        matches any part of the recipient's name, ignoring case."""
        stmt = sa.select(Disclosure)
        if recipient:
            stmt = stmt.where(
                sa.func.lower(Disclosure.recipient_name).contains(
                    recipient.lower(), autoescape=True
                )
            )
        if recipient_type:
            stmt = stmt.where(Disclosure.recipient == recipient_type)
        if disclosed_from:
            stmt = stmt.where(Disclosure.disclosed_at >= disclosed_from)
        if disclosed_to:
            stmt = stmt.where(Disclosure.disclosed_at < disclosed_to)
        if before is not None:
            stmt = stmt.where(
                sa.tuple_(Disclosure.disclosed_at, Disclosure.id) < sa.tuple_(*before)
            )
        stmt = stmt.order_by(Disclosure.disclosed_at.desc(), Disclosure.id.desc()).limit(limit)
        async with self.sessions() as session, session.begin():
            rows = list((await session.execute(stmt)).scalars())
            await self.audit.record(
                session,
                actor,
                "disclosure.list",
                "disclosures",
                "*",
                purpose="disclosure",
                detail={
                    "recipient": recipient,
                    "recipient_type": recipient_type,
                    "count": len(rows),
                },
            )
            return rows

    # ---- subject access ---------------------------------------------------------------

    async def subject_access(
        self, caller: str, actor: Actor, *, action: str = "subject_access.read"
    ) -> SubjectAccessReport:
        """Every call, recording, hold, disclosure and tombstone for ``caller``.

        Stored numbers are matched in Python after normalising them to E.164, over the calls
        whose digits contain the caller's last nine: no normalised column to fill on the
        webhook path or to backfill, and every formatting a provider stored is found.
        """
        e164 = to_e164(caller)
        if e164 is None:
            raise MalformedInput("caller is not a phone number recgate can match.")
        async with self.sessions() as session, session.begin():
            candidates = (
                await session.execute(
                    sa.select(Call).where(_number_candidates(Call.from_number, e164))
                )
            ).scalars()
            calls = sorted(
                (c for c in candidates if same_caller(c.from_number, e164)),
                key=lambda c: (c.created_at, str(c.id)),
            )
            call_ids = [c.id for c in calls]
            recordings: Sequence[Recording] = []
            if call_ids:
                recordings = (
                    (
                        await session.execute(
                            sa.select(Recording)
                            .where(Recording.call_id.in_(call_ids))
                            .order_by(Recording.created_at, Recording.id)
                        )
                    )
                    .scalars()
                    .all()
                )
            recording_ids = [r.id for r in recordings]
            hold_rows = (
                await session.execute(
                    sa.select(LegalHold)
                    .where(
                        sa.or_(
                            LegalHold.recording_id.in_(recording_ids),
                            sa.and_(
                                LegalHold.caller.is_not(None),
                                _number_candidates(LegalHold.caller, e164),
                            ),
                        )
                    )
                    .order_by(LegalHold.placed_at, LegalHold.id)
                )
            ).scalars()
            holds = [
                h
                for h in hold_rows
                if h.recording_id in recording_ids or same_caller(h.caller, e164)
            ]
            disclosures = list(
                (
                    await session.execute(
                        sa.select(Disclosure)
                        .where(Disclosure.recording_id.in_(recording_ids))
                        .order_by(Disclosure.disclosed_at, Disclosure.id)
                    )
                ).scalars()
            )
            report = SubjectAccessReport(
                caller=e164,
                generated_at=self.clock(),
                calls=calls,
                recordings=[r for r in recordings if r.deleted_at is None],
                tombstones=[r for r in recordings if r.deleted_at is not None],
                holds=holds,
                disclosures=disclosures,
            )
            # The number itself stays out of the audit trail (it cannot be erased from a hash
            # chain); the recording ids say what was released while the calls still name it.
            await self.audit.record(
                session,
                actor,
                action,
                "caller",
                "caller",
                purpose="subject_access",
                detail={
                    "calls": len(report.calls),
                    "recordings": [str(r.id) for r in report.recordings],
                    "tombstones": len(report.tombstones),
                    "holds": len(report.holds),
                    "disclosures": len(report.disclosures),
                },
            )
            return report

    async def export(
        self,
        caller: str,
        actor: Actor,
        out: Path,
        render: Callable[[SubjectAccessReport], dict[str, Any]],
    ) -> ExportResult:
        """Write one zip: ``metadata.json`` (``render(report)``, the API's answer), the media
        recgate still holds, and ``manifest.json`` with each file's sha256 and size.

        Quarantined media (possible card data) is left out and named in the manifest, as is
        media missing from the store. The archive appears at ``out`` only once complete.
        """
        report = await self.subject_access(caller, actor, action="subject_access.export")
        metadata = json.dumps(render(report), indent=2, sort_keys=True).encode()
        partial = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
        files: list[ArchivedFile] = []
        withheld: list[dict[str, str]] = []
        archive = await asyncio.to_thread(zipfile.ZipFile, partial, "w", zipfile.ZIP_DEFLATED)
        try:
            files.append(await asyncio.to_thread(_write_bytes, archive, "metadata.json", metadata))
            for recording in report.recordings:
                if recording.media_path is None:
                    continue
                if recording.quarantined:
                    withheld.append({"recording_id": str(recording.id), "reason": "quarantined"})
                    continue
                name = f"media/{recording.id}{Path(recording.media_path).suffix}"
                try:
                    files.append(await self._copy_media(archive, name, recording.media_path))
                except MediaMissing:
                    withheld.append({"recording_id": str(recording.id), "reason": "missing"})
            manifest = json.dumps(
                {
                    "caller": report.caller,
                    "generated_at": report.generated_at.isoformat(),
                    "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in files],
                    "withheld": withheld,
                },
                indent=2,
            ).encode()
            await asyncio.to_thread(_write_bytes, archive, "manifest.json", manifest)
            await asyncio.to_thread(archive.close)
            await asyncio.to_thread(os.replace, partial, out)
        except BaseException:
            await asyncio.to_thread(archive.close)
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        return ExportResult(out, files, withheld)

    async def _copy_media(
        self, archive: zipfile.ZipFile, name: str, media_path: str
    ) -> ArchivedFile:
        stream = self.store.read(media_path)
        try:
            first = await anext(stream)  # MediaMissing before an entry is opened
        except StopAsyncIteration:
            first = b""
        digest, size = hashlib.sha256(), 0
        target: IO[bytes] = await asyncio.to_thread(archive.open, name, "w")
        try:
            digest.update(first)
            size += len(first)
            await asyncio.to_thread(target.write, first)
            async for chunk in stream:
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(target.write, chunk)
        finally:
            await asyncio.to_thread(target.close)
        return ArchivedFile(name, digest.hexdigest(), size)


def _clip(text: str | None, length: int) -> str | None:
    return text[:length] if text is not None else None


def _write_bytes(archive: zipfile.ZipFile, name: str, data: bytes) -> ArchivedFile:
    archive.writestr(name, data)
    return ArchivedFile(name, hashlib.sha256(data).hexdigest(), len(data))
