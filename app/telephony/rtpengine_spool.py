"""rtpengine's recording directory (``--recording-method=pcap``): the files it finished.

rtpengine writes each recording as ``pcaps/<call-id>-<16 hex>.pcap`` (the Call-ID URL-encoded)
and keeps a metadata file for it, ``metadata/rtpengine-meta-<same>.txt``, whose first line is
the pcap's path and which gains a ``call end time:`` line when the file is closed: at the end
of the call, or at a ``stop recording`` (a payment on a daemon without ``pause recording``
splits the call's media into files). Nothing else announces a finished file when no recording
daemon runs, so recgate reads this directory: each closed file becomes a
``recording.completed`` whose media recgate copies into its store, and whose spool copy it
deletes when the recording's retention ends.

The event id is the one the recording daemon's notification uses (``<call-id>:<file>``), so a
file learnt both ways is one recording.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.telephony.base import ProviderRejected, RecordingGone

log = logging.getLogger("recgate.rtpengine")

_META_PREFIX, _META_SUFFIX = "rtpengine-meta-", ".txt"
_NAME = re.compile(r"^(?P<call>.+)-(?P<tag>[0-9a-f]{16})$")
_STARTED = re.compile(r"^Timestamp started ms: *(?P<ms>[0-9.]+)$", re.MULTILINE)
_TERMINATED = re.compile(r"^Timestamp terminated ms[^:]*: *(?P<ms>[0-9.]+)$", re.MULTILINE)
_CLOSED = re.compile(r"^call end time:", re.MULTILINE)
_CHUNK = 256 * 1024
_MAX_ID = 255
# A metadata file this large is not rtpengine's (SDP bodies make a few kilobytes).
_MAX_METADATA = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """One closed recording file, as a recgate event, and the metadata it came from."""

    event: PbxEvent
    metadata: str


def parse_metadata(name: str, text: str, modified: datetime) -> PbxEvent | None:
    """The ``recording.completed`` a metadata file stands for; None while its pcap is still
    being written, or when the file is not one of rtpengine's."""
    if not (name.startswith(_META_PREFIX) and name.endswith(_META_SUFFIX)):
        return None
    stem = name[len(_META_PREFIX) : -len(_META_SUFFIX)]
    match = _NAME.match(stem)
    if match is None or not _CLOSED.search(text):
        return None
    pcap = f"{stem}.pcap"
    first = text.split("\n", 1)[0].strip()
    if first.rsplit("/", 1)[-1] != pcap:
        return None  # the metadata names another file: not one recgate can vouch for
    call_id = unquote(match.group("call"))
    if not call_id or len(call_id) > _MAX_ID or len(pcap) > _MAX_ID:
        return None
    started = _epoch_ms(_STARTED.search(text))
    ended = _epoch_ms(_TERMINATED.search(text)) or modified
    duration = None
    if started is not None and ended >= started:
        duration = (ended - started).total_seconds()
    key = f"{call_id}:{pcap}"
    return PbxEvent(
        provider="rtpengine",
        event_id=key
        if len(key) <= _MAX_ID
        else "sha256:" + hashlib.sha256(key.encode()).hexdigest(),
        type=EventType.RECORDING_COMPLETED,
        occurred_at=ended,
        call=CallInfo(provider_call_id=call_id),
        recording=RecordingInfo(
            provider_recording_id=pcap, media_url=pcap, duration_s=duration, media_format="pcap"
        ),
    )


def _epoch_ms(match: re.Match[str] | None) -> datetime | None:
    if match is None:
        return None
    try:
        ms = float(match.group("ms"))
        return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None
    except (ValueError, OverflowError, OSError):
        return None


class RecordingSpool:
    """rtpengine's recording directory: what is finished in it, its files, their deletion."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pcaps = root / "pcaps"
        self.metadata = root / "metadata"

    def finished(self) -> list[SpoolFile]:
        """Every closed recording file in the directory (blocking: run it in a thread)."""
        found: list[SpoolFile] = []
        try:
            entries = list(os.scandir(self.metadata))
        except FileNotFoundError:
            return found
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
                if stat.st_size > _MAX_METADATA:
                    continue
                text = Path(entry.path).read_text("utf-8", errors="replace")
            except OSError:
                continue  # deleted or replaced while being read: the next scan sees it
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            event = parse_metadata(entry.name, text, modified)
            if event is not None and (self.pcaps / _file(event)).is_file():
                found.append(SpoolFile(event, entry.name))
        return found

    def path(self, file_name: str) -> Path:
        """The pcap ``file_name`` names, which must be a plain file name in ``pcaps/``."""
        if not file_name or "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            raise ProviderRejected("rtpengine recording: not a file name in the spool")
        return self.pcaps / file_name

    async def read(self, file_name: str) -> AsyncIterator[bytes]:
        """The file's bytes, in chunks, read off the event loop."""
        path = self.path(file_name)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise RecordingGone("rtpengine recording file is gone from the spool") from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete(self, file_name: str) -> None:
        """Delete the pcap and its metadata; either already gone is not an error, and nor is
        a name that is no spool file at all (the live recording a SIP proxy reported is named
        by its Call-ID, which may hold a '/'): there is nothing of it here to delete."""
        try:
            path = self.path(file_name)
        except ProviderRejected:
            return
        stem = file_name.removesuffix(".pcap")
        for victim in (path, self.metadata / f"{_META_PREFIX}{stem}{_META_SUFFIX}"):
            await asyncio.to_thread(victim.unlink, missing_ok=True)
        log.info("rtpengine spool file deleted after its retention ended")


def _file(event: PbxEvent) -> str:
    assert event.recording is not None
    return event.recording.provider_recording_id
