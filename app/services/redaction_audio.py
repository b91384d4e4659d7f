"""Silencing exposed spans in PCM WAV recordings (the media half of exposure redaction).

A recording with an exposure may hold card details between the exposure's start and end.
Where its media is a PCM WAV file held locally, the exposed span (with a margin either side)
is overwritten with digital silence in a *new* file, which is then re-read and compared with
the original before anyone may delete the original. Nothing here touches the database.

Files are streamed in blocks of about :data:`BLOCK_BYTES`, so memory stays bounded however
long the recording is. Only what the stdlib :mod:`wave` module reads is accepted: plain PCM
(format tag 1) with 8-bit unsigned or 16/24/32-bit signed samples. Anything else — compressed
audio, IEEE float, ``WAVE_FORMAT_EXTENSIBLE`` headers, RF64, garbage — is
:class:`NotRedactable`, and the recording stays quarantined until a DPO deletes it.
Storage errors (:class:`OSError`) propagate unchanged: they may be transient.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import struct
import tempfile
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

BLOCK_BYTES = 64 * 1024

Span = tuple[float, float]

_SUPPORTED_SAMPLE_WIDTHS = (1, 2, 3, 4)
# A frame index past the end of any WAV (a 32-bit RIFF size cannot describe 2**62 frames):
# spans ending at or beyond it, math.inf included, run to the end of the file.
_NO_END = 2**62


class RedactionError(Exception):
    """Base of the redaction errors; ``reason`` says what went wrong in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotRedactable(RedactionError):
    """The file is not a PCM WAV this module can silence (compressed, float, corrupt, …)."""


class RedactionFailed(RedactionError):
    """The redacted file does not match the original as it should; it must not be used."""


@dataclass(frozen=True, slots=True)
class RedactionReport:
    """What :func:`silence_spans` wrote."""

    frames: int  # frames in the new file (equal to the original's)
    frames_silenced: int
    spans_s: tuple[Span, ...]  # silenced spans in seconds, clamped to the file and merged
    sha256: str  # of the new file, header included
    duration_s: float
    sample_rate: int
    channels: int
    sample_width: int  # bytes per sample


@dataclass(frozen=True, slots=True)
class _Format:
    channels: int
    sample_width: int
    sample_rate: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.sample_width

    @property
    def silence_byte(self) -> bytes:
        # 8-bit WAV is unsigned, centred on 128; wider samples are signed, centred on 0.
        return b"\x80" if self.sample_width == 1 else b"\x00"

    @property
    def block_frames(self) -> int:
        return max(1, BLOCK_BYTES // self.frame_bytes)


def exposure_spans(
    recording_started_at: datetime,
    exposures: Sequence[tuple[datetime, datetime | None]],
    recording_ended_at: datetime,
    margin_s: float,
) -> list[Span]:
    """Turn exposure time spans into offsets (seconds) into the recording, with a margin.

    Each span runs from ``start - margin_s`` to ``end + margin_s``; an open exposure (end
    ``None``) runs to ``recording_ended_at + margin_s`` (or its own start, if later). Starts are clamped at 0 and
    overlapping spans merged; ends are not clamped to the recording's end, because the file
    may run slightly longer than the recorded timestamps say — :func:`silence_spans` clamps
    to the file itself. All datetimes must be timezone-aware.
    """
    if not math.isfinite(margin_s) or margin_s < 0:
        raise ValueError(f"margin_s must be a finite number >= 0, got {margin_s!r}")
    for moment in (recording_started_at, recording_ended_at):
        _require_aware(moment)
    spans: list[Span] = []
    for started_at, ended_at in exposures:
        _require_aware(started_at)
        # An open exposure that began after the recorded end still gets its margin: the
        # file may run past the timestamp the recording's end was stored with.
        end = max(recording_ended_at, started_at) if ended_at is None else ended_at
        _require_aware(end)
        if end < started_at:
            raise ValueError(
                f"exposure ends ({end.isoformat()}) before it starts ({started_at.isoformat()})"
            )
        start_s = (started_at - recording_started_at).total_seconds() - margin_s
        end_s = (end - recording_started_at).total_seconds() + margin_s
        if end_s <= 0:
            continue  # entirely before the recording started
        spans.append((max(0.0, start_s), end_s))
    return _merge(spans)


def silence_spans(src: Path, dst: Path, spans: Sequence[Span]) -> RedactionReport:
    """Write a copy of the PCM WAV ``src`` to ``dst`` with every frame in ``spans`` silenced.

    ``spans`` are ``(start, end)`` seconds from the start of the file; they are clamped to
    the file and merged where they overlap. A frame is silenced when any part of it falls in
    a span (the span is rounded outwards to whole frames). ``dst`` appears only once it is
    completely written and synced; an earlier file there is replaced. ``src`` is not changed.

    Raises :class:`NotRedactable` when ``src`` is not a PCM WAV this module can handle, and
    :class:`ValueError` for a span whose end precedes its start or ``dst`` naming ``src``.
    """
    _check_spans(spans)
    if _same_file(src, dst):
        raise ValueError(f"refusing to redact {src} onto itself")
    with open(src, "rb") as src_file, _open_pcm(src_file) as (fmt, reader):
        ranges = _frame_ranges(spans, fmt.sample_rate)
        tmp_fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        tmp_path = Path(tmp_name)
        try:
            with os.fdopen(tmp_fd, "wb") as out_file:
                frames, silenced = _write_silenced(reader, out_file, fmt, ranges)
                out_file.flush()
                os.fsync(out_file.fileno())
            os.replace(tmp_path, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            raise
    _fsync_dir(dst.parent)
    applied = tuple(
        (start / fmt.sample_rate, min(end, frames) / fmt.sample_rate)
        for start, end in ranges
        if start < frames
    )
    return RedactionReport(
        frames=frames,
        frames_silenced=silenced,
        spans_s=applied,
        sha256=_sha256(dst),
        duration_s=frames / fmt.sample_rate,
        sample_rate=fmt.sample_rate,
        channels=fmt.channels,
        sample_width=fmt.sample_width,
    )


def verify_redaction(original: Path, redacted: Path, spans: Sequence[Span]) -> None:
    """Check ``redacted`` is ``original`` with exactly ``spans`` silenced, block by block.

    Same format and frame count; every frame in the spans (as :func:`silence_spans` rounds
    them) is digital silence; every other frame is byte-identical to the original. Raises
    :class:`RedactionFailed` on the first difference, or when either file cannot be read
    as PCM WAV.
    """
    _check_spans(spans)
    try:
        with (
            open(original, "rb") as original_file,
            open(redacted, "rb") as redacted_file,
            _open_pcm(original_file) as (fmt, original_reader),
            _open_pcm(redacted_file) as (redacted_fmt, redacted_reader),
        ):
            if redacted_fmt != fmt:
                raise RedactionFailed(f"format changed: {fmt} became {redacted_fmt}")
            ranges = _frame_ranges(spans, fmt.sample_rate)
            _compare(original_reader, redacted_reader, fmt, ranges)
    except NotRedactable as exc:
        raise RedactionFailed(f"cannot read the files back: {exc.reason}") from exc
    except (wave.Error, EOFError, struct.error) as exc:
        raise RedactionFailed(f"cannot read the files back: {exc}") from exc


async def redact_wav(src: Path, dst: Path, spans: Sequence[Span]) -> RedactionReport:
    """Silence ``spans`` of ``src`` into ``dst`` and verify the result, off the event loop.

    On any failure after ``dst`` was written (verification or otherwise) ``dst`` is deleted,
    so an unverified file is never left looking like a redacted copy. ``src`` is left as it
    is: deleting it, once the redaction is on record, is the caller's job.
    """
    return await asyncio.to_thread(_redact_and_verify, src, dst, tuple(spans))


def _redact_and_verify(src: Path, dst: Path, spans: Sequence[Span]) -> RedactionReport:
    report = silence_spans(src, dst, spans)
    try:
        verify_redaction(src, dst, spans)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
        raise
    return report


# --- reading and writing ---------------------------------------------------------------


@contextlib.contextmanager
def _open_pcm(file: BinaryIO) -> Iterator[tuple[_Format, wave.Wave_read]]:
    """Read a PCM WAV, or raise :class:`NotRedactable` saying why it cannot be."""
    try:
        block_align, bits = _read_fmt_fields(file)
        file.seek(0)
        reader = wave.open(file, "rb")  # noqa: SIM115 - closed by the with statement below
    except (wave.Error, EOFError, struct.error) as exc:
        raise NotRedactable(f"not a readable PCM WAV file: {exc or type(exc).__name__}") from exc
    with reader:
        fmt = _Format(reader.getnchannels(), reader.getsampwidth(), reader.getframerate())
        if fmt.sample_width not in _SUPPORTED_SAMPLE_WIDTHS:
            raise NotRedactable(f"unsupported sample size: {bits} bits")
        if fmt.sample_rate <= 0:
            raise NotRedactable(f"bad sample rate: {fmt.sample_rate}")
        # wave assumes frames of channels * sample width bytes; a header saying otherwise
        # would make every offset wrong and silence the wrong audio.
        if block_align != fmt.frame_bytes:
            raise NotRedactable(
                f"block alignment {block_align} does not match "
                f"{fmt.channels} channel(s) of {bits}-bit samples"
            )
        yield fmt, reader


def _read_fmt_fields(file: BinaryIO) -> tuple[int, int]:
    """Block alignment and bits per sample from the ``fmt `` chunk (wave hides them)."""
    riff = file.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
        raise wave.Error("file is not a RIFF/WAVE file")
    while True:
        header = file.read(8)
        if len(header) < 8:
            raise wave.Error("fmt chunk missing")
        chunk_id, size = struct.unpack("<4sI", header)
        if chunk_id == b"fmt ":
            fields = file.read(16)
            if size < 16:
                raise wave.Error(f"fmt chunk too short ({size} bytes)")
            if len(fields) < 16:
                raise wave.Error("file ends inside the fmt chunk")
            _tag, _channels, _rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", fields)
            return block_align, bits
        file.seek(size + (size & 1), os.SEEK_CUR)


def _write_silenced(
    reader: wave.Wave_read, out_file: BinaryIO, fmt: _Format, ranges: list[tuple[int, int]]
) -> tuple[int, int]:
    with wave.open(out_file, "wb") as writer:
        writer.setnchannels(fmt.channels)
        writer.setsampwidth(fmt.sample_width)
        writer.setframerate(fmt.sample_rate)
        silence = fmt.silence_byte * (fmt.block_frames * fmt.frame_bytes)
        frames = silenced = 0
        try:
            for position, block in _blocks(reader, fmt):
                hits = list(_overlaps(ranges, position, len(block) // fmt.frame_bytes))
                if hits:
                    buffer = bytearray(block)
                    for start, end in hits:
                        buffer[start * fmt.frame_bytes : end * fmt.frame_bytes] = silence[
                            : (end - start) * fmt.frame_bytes
                        ]
                        silenced += end - start
                    block = bytes(buffer)
                writer.writeframesraw(block)
                frames += len(block) // fmt.frame_bytes
        except (wave.Error, EOFError, struct.error) as exc:
            raise NotRedactable(f"not a readable PCM WAV file: {exc}") from exc
    return frames, silenced


def _compare(
    original: wave.Wave_read, redacted: wave.Wave_read, fmt: _Format, ranges: list[tuple[int, int]]
) -> None:
    size = fmt.frame_bytes
    silence = fmt.silence_byte * (fmt.block_frames * size)
    original_blocks = _blocks(original, fmt)
    redacted_blocks = _blocks(redacted, fmt)
    frames = 0
    while True:
        before, after = next(original_blocks, None), next(redacted_blocks, None)
        if before is None or after is None:
            if before is not after:
                shorter = "redacted" if after is None else "original"
                raise RedactionFailed(
                    f"frame count differs: the {shorter} file ends at frame {frames}"
                )
            break
        (position, old), (_, new) = before, after
        if len(old) != len(new):
            raise RedactionFailed(
                f"frame count differs: one file ends in the block from frame {position}"
            )
        cursor = 0  # block-relative frame up to which the block has been checked
        for start, end in _overlaps(ranges, position, len(old) // size):
            if new[cursor * size : start * size] != old[cursor * size : start * size]:
                raise RedactionFailed(
                    f"audio outside the spans changed in frames {position + cursor}–{position + start}"
                )
            if new[start * size : end * size] != silence[: (end - start) * size]:
                raise RedactionFailed(
                    f"frames {position + start}–{position + end} should be silent and are not"
                )
            cursor = end
        if new[cursor * size :] != old[cursor * size :]:
            raise RedactionFailed(
                f"audio outside the spans changed after frame {position + cursor}"
            )
        frames = position + len(old) // size
    if redacted.getnframes() != frames:
        raise RedactionFailed(
            f"the redacted header declares {redacted.getnframes()} frames, its data holds {frames}"
        )


def _blocks(reader: wave.Wave_read, fmt: _Format) -> Iterator[tuple[int, bytes]]:
    """``(first frame, bytes)`` blocks of whole frames; a trailing partial frame is dropped."""
    position = 0
    while True:
        block = reader.readframes(fmt.block_frames)
        whole = len(block) - len(block) % fmt.frame_bytes
        if whole == 0:
            return
        yield position, block[:whole] if whole != len(block) else block
        position += whole // fmt.frame_bytes


def _overlaps(
    ranges: list[tuple[int, int]], position: int, count: int
) -> Iterator[tuple[int, int]]:
    """The parts of ``ranges`` inside frames ``[position, position + count)``, block-relative."""
    for start, end in ranges:
        if end <= position:
            continue
        if start >= position + count:
            return
        yield max(start, position) - position, min(end, position + count) - position


# --- spans -----------------------------------------------------------------------------


def _check_spans(spans: Iterable[Span]) -> None:
    for start, end in spans:
        if math.isnan(start) or math.isnan(end):
            raise ValueError(f"span ({start}, {end}) is not a number")
        if end < start:
            raise ValueError(f"span ({start}, {end}) ends before it starts")


def _frame_ranges(spans: Iterable[Span], sample_rate: int) -> list[tuple[int, int]]:
    """Half-open frame ranges covering ``spans`` (rounded outwards), sorted and merged.

    Not clamped to the file's length: the data may hold fewer frames than the header says,
    so the blocks actually read decide where the file ends.
    """
    ranges: list[tuple[int, int]] = []
    for start, end in spans:
        if end <= 0 or end == start or start * sample_rate >= _NO_END:
            continue
        first = 0 if start <= 0 else math.floor(start * sample_rate)
        last = _NO_END if end * sample_rate >= _NO_END else math.ceil(end * sample_rate)
        if last > first:
            ranges.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _merge(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no timezone; exposure times must be aware")


# --- files -----------------------------------------------------------------------------


def _same_file(src: Path, dst: Path) -> bool:
    if src.resolve() == dst.resolve():
        return True
    try:
        return os.path.samefile(src, dst)
    except FileNotFoundError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(BLOCK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    # The original is deleted once the redacted copy is on record, so the rename that made
    # the copy visible must survive a crash too. Not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
