"""Silencing exposed spans in WAV recordings: the span goes silent, nothing else changes."""

from __future__ import annotations

import hashlib
import math
import struct
import tempfile
import tracemalloc
import wave
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.services import redaction_audio
from app.services.redaction_audio import (
    NotRedactable,
    RedactionFailed,
    exposure_spans,
    redact_wav,
    silence_spans,
    verify_redaction,
)

Signal = Callable[[float, int], float]  # (time in seconds, channel) -> amplitude in [-1, 1]


def tone(hz: float, level: float = 0.8) -> Signal:
    return lambda t, channel: level * math.sin(2 * math.pi * hz * t + channel)


def encode(value: float, width: int) -> bytes:
    """One PCM sample: 8-bit unsigned, wider signed little-endian (as WAV stores them)."""
    if width == 1:
        return bytes([128 + round(value * 127)])
    peak: int = 2 ** (8 * width - 1) - 1
    return round(value * peak).to_bytes(width, "little", signed=True)


def render(rate: int, width: int, channels: int, frames: range, signal: Signal) -> bytes:
    return b"".join(
        encode(signal(i / rate, channel), width) for i in frames for channel in range(channels)
    )


def write_wav(path: Path, rate: int, width: int, channels: int, data: bytes) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)
    return path


def read_wav(path: Path) -> tuple[wave._wave_params, bytes]:
    with wave.open(str(path), "rb") as wav:
        return wav.getparams(), wav.readframes(wav.getnframes())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def silent_frame(width: int, channels: int) -> bytes:
    return (b"\x80" if width == 1 else b"\x00") * (width * channels)


FORMATS = [
    pytest.param(8000, 2, 1, id="8kHz-16bit-mono"),
    pytest.param(16000, 2, 1, id="16kHz-16bit-mono"),
    pytest.param(16000, 2, 2, id="16kHz-16bit-stereo"),
    pytest.param(8000, 1, 1, id="8kHz-8bit-unsigned-mono"),
    pytest.param(8000, 3, 2, id="8kHz-24bit-stereo"),
    pytest.param(8000, 4, 1, id="8kHz-32bit-mono"),
]


@pytest.mark.parametrize(("rate", "width", "channels"), FORMATS)
async def test_exposed_span_is_silenced_and_everything_else_is_unchanged(
    tmp_path: Path, rate: int, width: int, channels: int
) -> None:
    # 2 s of a quiet 300 Hz hum, with a loud 1 kHz tone (the "card details") in 0.5–1.25 s.
    first, last = int(0.5 * rate), int(1.25 * rate)
    data = (
        render(rate, width, channels, range(first), tone(300, 0.3))
        + render(rate, width, channels, range(first, last), tone(1000))
        + render(rate, width, channels, range(last, 2 * rate), tone(300, 0.3))
    )
    src = write_wav(tmp_path / "call.wav", rate, width, channels, data)
    dst = tmp_path / "call.redacted.wav"
    original_hash = sha256(src)
    frame = width * channels
    silence = silent_frame(width, channels)
    assert data[first * frame : last * frame].count(silence) < (last - first) // 2, (
        "test setup: the tone should be audible before redaction"
    )

    report = await redact_wav(src, dst, [(0.5, 1.25)])

    params, redacted = read_wav(dst)
    assert params == read_wav(src)[0], "the redacted file should keep the original's format"
    assert redacted[first * frame : last * frame] == silence * (last - first), (
        "the exposed span should be digital silence"
    )
    assert redacted[: first * frame] == data[: first * frame], "audio before the span changed"
    assert redacted[last * frame :] == data[last * frame :], "audio after the span changed"
    assert sha256(src) == original_hash, "the original is the caller's to delete, not to modify"
    assert report.frames == 2 * rate
    assert report.frames_silenced == last - first
    assert report.spans_s == ((0.5, 1.25),)
    assert report.duration_s == 2.0
    assert (report.sample_rate, report.channels, report.sample_width) == (rate, channels, width)
    assert report.sha256 == sha256(dst)


def test_overlapping_and_out_of_range_spans_are_clamped_and_merged(tmp_path: Path) -> None:
    rate = 8000
    data = render(rate, 2, 1, range(rate), tone(1000))  # 1 s
    src = write_wav(tmp_path / "call.wav", rate, 2, 1, data)
    dst = tmp_path / "out.wav"

    spans = [(0.6, 0.8), (-3.0, 0.1), (0.05, 0.2), (0.75, 0.9), (0.95, 60.0), (5.0, 6.0)]
    report = silence_spans(src, dst, spans)

    assert report.spans_s == ((0.0, 0.2), (0.6, 0.9), (0.95, 1.0))
    assert report.frames_silenced == 1600 + 2400 + 400
    _, redacted = read_wav(dst)
    for start, end in report.spans_s:
        a, b = int(start * rate) * 2, int(end * rate) * 2
        assert redacted[a:b] == bytes(b - a), f"{start}–{end} s should be silent"
    for start, end in [(0.2, 0.6), (0.9, 0.95)]:
        a, b = int(start * rate) * 2, int(end * rate) * 2
        assert redacted[a:b] == data[a:b], f"{start}–{end} s lies outside every span"
    verify_redaction(src, dst, spans)


def test_an_open_ended_span_runs_to_the_end_of_the_file(tmp_path: Path) -> None:
    data = render(8000, 2, 1, range(8000), tone(1000))
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, data)

    report = silence_spans(src, tmp_path / "out.wav", [(0.75, math.inf)])

    assert report.spans_s == ((0.75, 1.0),)
    _, redacted = read_wav(tmp_path / "out.wav")
    assert redacted == data[: 6000 * 2] + bytes(2000 * 2)


@pytest.mark.parametrize("spans", [[], [(2.0, 3.0)], [(-2.0, -1.0)], [(0.5, 0.5)]])
def test_spans_that_miss_the_audio_leave_it_identical(
    tmp_path: Path, spans: list[tuple[float, float]]
) -> None:
    data = render(8000, 2, 1, range(8000), tone(1000))
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, data)

    report = silence_spans(src, tmp_path / "out.wav", spans)

    assert (report.frames_silenced, report.spans_s) == (0, ())
    assert read_wav(tmp_path / "out.wav")[1] == data


def test_a_partly_covered_frame_is_silenced(tmp_path: Path) -> None:
    # At 10 Hz frame 3 covers 0.3–0.4 s; a span that clips either edge of it must take it.
    data = bytes(range(1, 21))  # ten 16-bit frames, none silent
    src = write_wav(tmp_path / "call.wav", 10, 2, 1, data)

    report = silence_spans(src, tmp_path / "out.wav", [(0.39, 0.41)])

    assert report.frames_silenced == 2, "frames 3 and 4 each hold part of the span"
    assert read_wav(tmp_path / "out.wav")[1] == data[:6] + bytes(4) + data[10:]


@pytest.mark.parametrize("spans", [[(2.0, 1.0)], [(math.nan, 1.0)], [(0.0, math.nan)]])
def test_malformed_spans_are_refused(tmp_path: Path, spans: list[tuple[float, float]]) -> None:
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, bytes(16000))
    with pytest.raises(ValueError):
        silence_spans(src, tmp_path / "out.wav", spans)
    assert not (tmp_path / "out.wav").exists()


def test_redacting_a_file_onto_itself_is_refused(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, bytes(16000))
    with pytest.raises(ValueError, match="onto itself"):
        silence_spans(src, tmp_path / "." / "call.wav", [(0.0, 1.0)])


def riff(fmt_chunk: bytes, data: bytes = b"\x01\x02" * 400) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt(tag: int, channels: int, rate: int, bits: int, block_align: int | None = None) -> bytes:
    align = block_align if block_align is not None else channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


FLOAT_GUID = bytes.fromhex("0300000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_IEEE_FLOAT

NOT_REDACTABLE = {
    "garbage": b"this is not audio at all" * 10,
    "empty": b"",
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" * 100,
    "truncated header": riff(fmt(1, 1, 8000, 16))[:30],
    "ieee float": riff(fmt(3, 1, 8000, 32)),
    "mu-law": riff(fmt(7, 1, 8000, 8)),
    "gsm 6.10": riff(fmt(0x31, 1, 8000, 0, block_align=65) + b"\x02\x00\x40\x01"),
    "extensible float": riff(
        fmt(0xFFFE, 1, 8000, 32) + struct.pack("<HHI", 22, 32, 4) + FLOAT_GUID
    ),
    "64-bit pcm": riff(fmt(1, 1, 8000, 64)),
    "block align disagrees with channels": riff(fmt(1, 2, 8000, 16, block_align=8)),
    "zero sample rate": riff(fmt(1, 1, 0, 16)),
}


@pytest.mark.parametrize("content", NOT_REDACTABLE.values(), ids=NOT_REDACTABLE.keys())
def test_files_that_are_not_pcm_wav_are_not_redactable(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "call.wav"
    src.write_bytes(content)

    with pytest.raises(NotRedactable) as caught:
        silence_spans(src, tmp_path / "out.wav", [(0.0, 0.05)])

    assert caught.value.reason, "NotRedactable should say why"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call.wav"], (
        "nothing should be left behind"
    )


async def test_redact_wav_refuses_non_pcm_without_leaving_a_file(tmp_path: Path) -> None:
    src = tmp_path / "call.wav"
    src.write_bytes(NOT_REDACTABLE["mu-law"])
    with pytest.raises(NotRedactable, match="unknown format"):
        await redact_wav(src, tmp_path / "out.wav", [(0.0, 1.0)])
    assert not (tmp_path / "out.wav").exists()


@pytest.fixture
def redacted_pair(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A 1 s 8 kHz 16-bit mono file and its correct redaction of 0.25–0.5 s."""
    data = render(8000, 2, 1, range(8000), tone(1000))
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, data)
    dst = tmp_path / "out.wav"
    silence_spans(src, dst, [(0.25, 0.5)])
    verify_redaction(src, dst, [(0.25, 0.5)])  # the untampered copy passes
    return src, dst, read_wav(dst)[1]


def _poke(data: bytes, index: int, value: bytes) -> bytes:
    return data[:index] + value + data[index + len(value) :]


TAMPERING: dict[str, Callable[[Path, bytes], object]] = {
    "sample changed before the span": lambda p, d: write_wav(
        p, 8000, 2, 1, _poke(d, 200, b"\x07\x00")
    ),
    "sample changed after the span": lambda p, d: write_wav(
        p, 8000, 2, 1, _poke(d, 15998, b"\x07\x00")
    ),
    "audio left inside the span": lambda p, d: write_wav(
        p, 8000, 2, 1, _poke(d, 3000 * 2, b"\x00\x10")
    ),
    "last frame of the span not silent": lambda p, d: write_wav(
        p, 8000, 2, 1, _poke(d, 3999 * 2, b"\x01\x00")
    ),
    "frames missing at the end": lambda p, d: write_wav(p, 8000, 2, 1, d[:-2]),
    "frames added at the end": lambda p, d: write_wav(p, 8000, 2, 1, d + bytes(2)),
    "sample rate changed": lambda p, d: write_wav(p, 16000, 2, 1, d),
    "channels changed": lambda p, d: write_wav(p, 8000, 1, 2, d),
    "not a wav any more": lambda p, d: p.write_bytes(b"garbage"),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_verify_catches_a_tampered_output(
    redacted_pair: tuple[Path, Path, bytes], tamper: Callable[[Path, bytes], object]
) -> None:
    src, dst, redacted = redacted_pair
    tamper(dst, redacted)
    with pytest.raises(RedactionFailed):
        verify_redaction(src, dst, [(0.25, 0.5)])


def test_verify_catches_a_span_that_was_not_silenced(
    redacted_pair: tuple[Path, Path, bytes],
) -> None:
    src, dst, _ = redacted_pair
    with pytest.raises(RedactionFailed, match="should be silent"):
        verify_redaction(src, dst, [(0.25, 0.5), (0.75, 0.8)])


def test_verify_catches_audio_silenced_outside_the_spans(
    redacted_pair: tuple[Path, Path, bytes],
) -> None:
    src, dst, _ = redacted_pair
    with pytest.raises(RedactionFailed, match="outside the spans"):
        verify_redaction(src, dst, [(0.25, 0.4)])


def test_a_truncated_recording_is_redacted_up_to_where_its_data_ends(tmp_path: Path) -> None:
    # A recorder that crashed leaves a header promising more data than the file holds.
    data = render(8000, 2, 1, range(8000), tone(1000))
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, data)
    src.write_bytes(src.read_bytes()[:-1001])  # 7499.5 frames left
    dst = tmp_path / "out.wav"

    report = silence_spans(src, dst, [(0.5, 5.0)])
    verify_redaction(src, dst, [(0.5, 5.0)])

    assert report.frames == 7499, "the trailing half frame is dropped"
    params, redacted = read_wav(dst)
    assert params.nframes == 7499, "the redacted header should tell the truth"
    assert redacted == data[: 4000 * 2] + bytes(3499 * 2)

    lying = tmp_path / "lying.wav"
    content = bytearray(dst.read_bytes())
    content[40:44] = struct.pack("<I", 8000 * 2)  # data chunk size, as wave writes headers
    lying.write_bytes(content)
    with pytest.raises(RedactionFailed, match="header declares 8000 frames"):
        verify_redaction(src, lying, [(0.5, 5.0)])


async def test_redact_wav_deletes_an_output_that_fails_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = render(8000, 2, 1, range(8000), tone(1000))
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, data)
    dst = tmp_path / "out.wav"
    real_verify = redaction_audio.verify_redaction

    def verify_after_disk_corruption(
        original: Path, redacted: Path, spans: Sequence[tuple[float, float]]
    ) -> None:
        _, frames = read_wav(redacted)
        write_wav(redacted, 8000, 2, 1, _poke(frames, 100, b"\xff\x7f"))
        real_verify(original, redacted, spans)

    monkeypatch.setattr(redaction_audio, "verify_redaction", verify_after_disk_corruption)

    with pytest.raises(RedactionFailed):
        await redact_wav(src, dst, [(0.25, 0.5)])

    assert not dst.exists(), "an output that failed verification must not be left behind"
    assert read_wav(src)[1] == data, "the original must survive a failed redaction"


async def test_redact_wav_replaces_an_earlier_partial_output(tmp_path: Path) -> None:
    data = render(8000, 2, 1, range(8000), tone(1000))
    src = write_wav(tmp_path / "call.wav", 8000, 2, 1, data)
    dst = tmp_path / "out.wav"
    dst.write_bytes(b"left over from a crashed attempt")

    report = await redact_wav(src, dst, [(0.0, 0.5)])

    assert read_wav(dst)[1] == bytes(8000) + data[8000:]
    assert report.sha256 == sha256(dst)


def test_a_30_minute_recording_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    rate, seconds = 8000, 30 * 60
    exposed = range(600, 660)  # minute 10: the card details
    hum = render(rate, 2, 1, range(rate), tone(300, 0.3))
    card = render(rate, 2, 1, range(rate), tone(1000))
    src = tmp_path / "long.wav"
    with wave.open(str(src), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        for second in range(seconds):
            out.writeframesraw(card if second in exposed else hum)
    dst = tmp_path / "long.redacted.wav"
    spans = [(599.5, 660.5)]

    tracemalloc.start()
    try:
        report = silence_spans(src, dst, spans)
        verify_redaction(src, dst, spans)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert src.stat().st_size > 28_000_000, "test setup: the recording should be ~29 MB"
    assert peak < 3 * 1024 * 1024, f"peak memory {peak / 1e6:.1f} MB: the file was not streamed"
    assert report.frames == rate * seconds
    assert report.frames_silenced == 61 * rate
    with wave.open(str(dst), "rb") as wav:
        wav.setpos(599 * rate)
        assert wav.readframes(rate // 2) == hum[:rate], "the half second before the margin"
        assert wav.readframes(61 * rate) == bytes(61 * rate * 2), "exposure plus margins"
        assert wav.readframes(rate // 2) == hum[rate:], "the half second after the margin"


# --- property: any list of spans silences exactly the frames it touches --------------------

PROPERTY_RATE = 1000  # 1 s, 16-bit stereo; no sample is zero, so silence is unambiguous
PROPERTY_FRAMES = b"".join(
    struct.pack("<hh", 1 + i * 37 % 30000, -1 - i * 53 % 30000) for i in range(PROPERTY_RATE)
)


@pytest.fixture(scope="module")
def property_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("property")
    return write_wav(directory / "src.wav", PROPERTY_RATE, 2, 2, PROPERTY_FRAMES)


span_lists = st.lists(
    st.tuples(st.floats(-0.5, 1.5, allow_nan=False), st.floats(0.0, 1.5, allow_nan=False)).map(
        lambda p: (p[0], p[0] + p[1])
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(spans=span_lists)
def test_exactly_the_frames_touched_by_a_span_are_silenced(
    property_source: Path, spans: list[tuple[float, float]]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        dst = Path(directory) / "out.wav"
        report = silence_spans(property_source, dst, spans)
        verify_redaction(property_source, dst, spans)
        _, redacted = read_wav(dst)

    def touched(i: int) -> bool:
        # Frame i covers [i, i + 1) / rate; it is silenced when a span overlaps it at all.
        return any(s < e and s * PROPERTY_RATE < i + 1 and e * PROPERTY_RATE > i for s, e in spans)

    expected_silenced = 0
    for i in range(PROPERTY_RATE):
        got = redacted[i * 4 : i * 4 + 4]
        if touched(i):
            expected_silenced += 1
            assert got == bytes(4), f"frame {i} overlaps a span in {spans} but is not silent"
        else:
            assert got == PROPERTY_FRAMES[i * 4 : i * 4 + 4], f"frame {i} is outside {spans}"
    assert report.frames_silenced == expected_silenced
    assert sum(e - s for s, e in report.spans_s) == pytest.approx(expected_silenced / PROPERTY_RATE)
    assert all(0 <= s < e <= 1.0 for s, e in report.spans_s)
    assert all(a[1] < b[0] for a, b in zip(report.spans_s, report.spans_s[1:])), (
        f"spans should be sorted and merged: {report.spans_s}"
    )


# --- exposure times to offsets ----------------------------------------------------------------

START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
END = START + timedelta(minutes=5)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def test_an_exposure_becomes_an_offset_span_with_the_margin_on_both_sides() -> None:
    assert exposure_spans(START, [(at(60), at(90))], END, margin_s=2.0) == [(58.0, 92.0)]


def test_an_open_exposure_runs_to_the_end_of_the_recording() -> None:
    assert exposure_spans(START, [(at(240), None)], END, margin_s=2.0) == [(238.0, 302.0)]


def test_an_open_exposure_opened_after_the_recorded_end_keeps_its_margin() -> None:
    assert exposure_spans(START, [(at(301), None)], END, margin_s=2.0) == [(299.0, 303.0)]


def test_a_margin_before_the_recording_started_is_clamped_to_zero() -> None:
    assert exposure_spans(START, [(at(1), at(10))], END, margin_s=3.0) == [(0.0, 13.0)]
    assert exposure_spans(START, [(at(-30), at(-10))], END, margin_s=3.0) == [], (
        "an exposure over before the recording started does not touch it"
    )


def test_overlapping_exposures_are_merged_and_sorted() -> None:
    exposures = [(at(200), at(210)), (at(10), at(20)), (at(21), at(30))]
    assert exposure_spans(START, exposures, END, margin_s=1.0) == [(9.0, 31.0), (199.0, 211.0)]


def test_exposure_times_in_another_timezone_are_the_same_instants() -> None:
    london = ZoneInfo("Europe/London")
    summer_start = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    exposure = (datetime(2026, 7, 1, 10, 1, tzinfo=london), None)  # 09:01 UTC (BST)
    spans = exposure_spans(summer_start, [exposure], summer_start + timedelta(minutes=2), 0.0)
    assert spans == [(60.0, 120.0)]


@pytest.mark.parametrize(
    ("exposures", "margin"),
    [
        ([(datetime(2026, 11, 28, 10, 1), at(90))], 1.0),  # naive start
        ([(at(60), datetime(2026, 11, 28, 10, 2))], 1.0),  # naive end
        ([(at(90), at(60))], 1.0),  # ends before it starts
        ([(at(60), at(90))], -1.0),
        ([(at(60), at(90))], math.nan),
    ],
)
def test_bad_exposure_input_is_refused(
    exposures: list[tuple[datetime, datetime | None]], margin: float
) -> None:
    with pytest.raises(ValueError):
        exposure_spans(START, exposures, END, margin_s=margin)
