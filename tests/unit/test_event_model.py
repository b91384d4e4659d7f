"""The normalised event model crosses to the ingest worker pickled: nothing may be lost."""

from __future__ import annotations

import pickle
from dataclasses import fields
from datetime import UTC, datetime

from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo


def test_an_event_with_every_field_set_comes_back_whole_from_a_pickle() -> None:
    call = CallInfo("bridge-1", "+441632960001", "+441632960999", "inbound", "ct", "a-7", True)
    recording = RecordingInfo("rec-1", "https://pbx.example/r", 61.5, "wav", "ab" * 32, "conf-1")
    event = PbxEvent(
        "asterisk",
        "ev-1",
        EventType.RECORDING_STARTED,
        datetime(2026, 12, 7, 18, 0, tzinfo=UTC),
        call,
        recording,
        {"files": "2"},
        ("chan-1", "chan-2"),
    )
    # Every field differs from its default, so a field the pickle dropped would show.
    for value in (call, recording, event):
        assert all(getattr(value, f.name) != f.default for f in fields(value))
    for protocol in (pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL):
        back = pickle.loads(pickle.dumps([event], protocol=protocol))[0]
        assert back == event
        assert type(back.type) is EventType and back.recording is not None
        assert back.recording.sha256 == "ab" * 32 and back.call.via_alias is True
