"""ARI event parsing: timestamps, event ids, and what maps to what (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.domain.events import EventType
from app.jobs.ari_events import events_url
from app.telephony.asterisk import MalformedEvent, parse_event, parse_timestamp

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ARI = "http://127.0.0.1:8088/ari"


def _event(type_: str, **fields: object) -> dict[str, object]:
    return {
        "type": type_,
        "application": "recgate",
        "timestamp": "2026-11-28T10:00:00.123+0000",
        **fields,
    }


def _channel(channel_id: str = "1764322800.42", state: str = "Up") -> dict[str, object]:
    return {
        "id": channel_id,
        "name": "PJSIP/trunk-00000001",
        "state": state,
        "caller": {"name": "", "number": "+441632960001"},
        "connected": {"name": "", "number": ""},
        "dialplan": {"context": "from-trunk", "exten": "01632960999", "priority": 1},
    }


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T10:00:00.123+0000",
        "2026-11-28T10:00:00.123+00:00",
        "2026-11-28T10:00:00.123Z",
        "2026-11-28T11:00:00.123+0100",
    ],
)
def test_ari_timestamps_in_every_offset_form(text: str) -> None:
    assert parse_timestamp(text) == datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-11-28T10:00:00.123", "yesterday", ""])
def test_unreadable_or_naive_timestamps_are_malformed(text: str) -> None:
    with pytest.raises(MalformedEvent):
        parse_timestamp(text)


def test_stasis_start_is_the_callers_call() -> None:
    event = parse_event(_event("StasisStart", args=[], channel=_channel(state="Ring")), now=NOW)
    assert event is not None and event.type == EventType.CALL_STARTED
    assert event.call.provider_call_id == "1764322800.42"
    assert (event.call.from_number, event.call.to_number, event.call.direction) == (
        "+441632960001",
        "01632960999",
        "inbound",
    )
    assert event.occurred_at == datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)


def test_event_id_is_stable_and_distinguishes_type_object_and_time() -> None:
    body = _event("ChannelDestroyed", cause=16, cause_txt="Normal Clearing", channel=_channel())
    first = parse_event(body, now=NOW)
    later_now = parse_event(body, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert first is not None and later_now is not None
    assert first.event_id == later_now.event_id, "the id never depends on when it was received"
    other_time = parse_event({**body, "timestamp": "2026-11-28T10:00:00.124+0000"}, now=NOW)
    other_channel = parse_event({**body, "channel": _channel("1764322800.43")}, now=NOW)
    assert other_time is not None and other_channel is not None
    assert len({first.event_id, other_time.event_id, other_channel.event_id}) == 3
    assert first.extras == {"cause": "16", "cause_txt": "Normal Clearing"}


def test_missing_timestamp_falls_back_to_now_with_a_natural_key() -> None:
    body = _event("ChannelStateChange", channel=_channel())
    del body["timestamp"]
    event = parse_event(body, now=NOW)
    assert event is not None and event.type == EventType.CALL_ANSWERED
    assert event.occurred_at == NOW
    assert event.event_id == parse_event(body, now=datetime(2030, 1, 1, tzinfo=UTC)).event_id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("channels", "linked"),
    [([], None), (["1764322800.42"], "1764322800.42"), (["a", "b"], None)],
)
def test_bridge_created_links_only_an_unambiguous_channel(
    channels: list[str], linked: str | None
) -> None:
    bridge = {"id": "b-1", "technology": "simple_bridge", "bridge_type": "mixing"}
    event = parse_event(_event("BridgeCreated", bridge={**bridge, "channels": channels}), now=NOW)
    if linked is None:
        assert event is None
    else:
        assert event is not None and event.type == EventType.CALL_LINKED
        assert event.call.provider_call_id == linked and event.aliases == ("bridge:b-1",)


def test_recording_events_name_the_recording_and_its_target() -> None:
    def recording(kind: str, state: str, target: str = "bridge:b-1") -> dict[str, object]:
        live = {"name": "q/call-1", "format": "wav", "target_uri": target, "state": state}
        return _event(kind, recording={**live, "duration": 42})

    started = parse_event(recording("RecordingStarted", "recording"), now=NOW, ari_url=ARI)
    assert started is not None and started.type == EventType.RECORDING_STARTED
    assert started.call.provider_call_id == "bridge:b-1"
    assert started.recording is not None and started.recording.container_id == "bridge:b-1"
    assert started.recording.duration_s is None

    done = parse_event(recording("RecordingFinished", "done"), now=NOW, ari_url=ARI)
    assert done is not None and done.type == EventType.RECORDING_COMPLETED
    assert done.recording is not None and done.recording.duration_s == 42
    assert done.recording.media_url == f"{ARI}/recordings/stored/q%2Fcall-1/file"

    canceled = parse_event(recording("RecordingFinished", "canceled"), now=NOW, ari_url=ARI)
    assert canceled is not None and canceled.type == EventType.RECORDING_STOPPED
    assert canceled.recording is not None and canceled.recording.media_url is None

    on_channel = parse_event(recording("RecordingFailed", "failed", "channel:c-9"), now=NOW)
    assert on_channel is not None and on_channel.type == EventType.RECORDING_FAILED
    assert on_channel.call.provider_call_id == "c-9"

    with pytest.raises(MalformedEvent):
        parse_event(recording("RecordingStarted", "recording", "bridge:"), now=NOW)


@pytest.mark.parametrize(
    "body",
    [
        {"type": "ChannelDtmfReceived", "digit": "4", "duration_ms": 90},
        {"type": "ChannelVarset", "variable": "X", "value": "4111 1111 1111 1111"},
        {"type": "PlaybackFinished"},
        {"type": "ApplicationReplaced"},
    ],
)
def test_events_recgate_does_not_need_are_not_even_validated(body: dict[str, object]) -> None:
    assert parse_event(body, now=NOW) is None


def test_an_event_without_a_type_is_malformed() -> None:
    with pytest.raises(MalformedEvent):
        parse_event({"application": "recgate"}, now=NOW)


def test_event_socket_url_from_the_ari_base() -> None:
    assert (
        events_url("http://ari:secret@127.0.0.1:8088/ari/", "recgate")
        == "ws://127.0.0.1:8088/ari/events?app=recgate&subscribeAll=false"
    ), "credentials travel in the Authorization header, never in the URL"
    assert events_url("https://pbx.council.example/ari", "recgate").startswith(
        "wss://pbx.council.example/ari/events?"
    )
