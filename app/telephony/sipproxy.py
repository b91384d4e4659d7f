"""Call lifecycle reported by a SIP proxy in front of rtpengine (Kamailio, OpenSIPS).

rtpengine sees media, not calls: it never says when a call starts or ends. The proxy does, and
its routing script can make one synchronous HTTP request per event (Kamailio's ``http_client``
module; ``http_async_client`` is not packaged everywhere). So the report is the simplest
request a routing script can build: a form POST with a shared token in a header.

``POST /v1/webhooks/sip-proxy``, header ``X-Recgate-Token: <RECGATE_SIP_PROXY_TOKEN>``, body
``application/x-www-form-urlencoded``:

- ``event``: ``call.started`` (INVITE), ``call.answered`` (200 OK), ``call.ended`` (BYE or
  CANCEL), ``recording.started`` (rtpengine records the call);
- ``call_id``: the SIP Call-ID, which is also rtpengine's call-id, so these calls are
  ``rtpengine`` calls (``/v1/calls/rtpengine/{Call-ID}``) paused through the ng protocol;
- optional ``from``, ``to`` (user parts), ``direction`` (``inbound`` or ``outbound``),
  ``service_area``, ``at`` (Unix time with a fraction, from the proxy's clock; recgate's
  receipt time when absent).

Each event happens once per call, so the event id is its natural key and a retried report is a
duplicate. The recording the proxy reports is the call's live rtpengine recording (its id is
the Call-ID); each file the recording daemon finishes is reported as a recording of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qs

from app.config import Settings
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.telephony.provider import (
    Accepted,
    IncomingWebhook,
    WebhookMalformed,
    WebhookRoute,
    token_checked,
)

PROVIDER: Final = "rtpengine"
_EVENTS: Final = {
    "call.started": EventType.CALL_STARTED,
    "call.answered": EventType.CALL_ANSWERED,
    "call.ended": EventType.CALL_ENDED,
    "recording.started": EventType.RECORDING_STARTED,
}
_MAX_FIELD = 255


class MalformedReport(ValueError):
    """An authenticated report recgate cannot use; the message is safe to store and show."""


def parse_body(body: bytes) -> dict[str, str]:
    """The form fields of a report, each given at most once."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise MalformedReport("body is not UTF-8") from exc
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:
        raise MalformedReport("fields given more than once: " + ", ".join(repeated))
    return {name: values[0] for name, values in fields.items()}


def parse_report(fields: dict[str, str], now: datetime) -> PbxEvent:
    """One report as a normalised event; :class:`MalformedReport` when it is not one."""
    name = fields.get("event", "").strip()
    kind = _EVENTS.get(name)
    if kind is None:
        raise MalformedReport("event must be one of " + ", ".join(_EVENTS))
    call_id = fields.get("call_id", "").strip()
    if not call_id:
        raise MalformedReport("call_id is missing")
    for field, value in fields.items():
        if len(value) > _MAX_FIELD:
            raise MalformedReport(f"{field} is longer than {_MAX_FIELD} characters")
    occurred = _unix_time(fields.get("at"), now)
    recording = None
    if kind == EventType.RECORDING_STARTED:
        recording = RecordingInfo(provider_recording_id=call_id)
    return PbxEvent(
        provider=PROVIDER,
        event_id=f"sip-proxy:{name}:{call_id}",
        type=kind,
        occurred_at=occurred,
        call=CallInfo(
            provider_call_id=call_id,
            from_number=_optional(fields, "from"),
            to_number=_optional(fields, "to"),
            direction=_direction(fields),
            service_area=_optional(fields, "service_area"),
        ),
        recording=recording,
    )


def _direction(fields: dict[str, str]) -> str | None:
    direction = _optional(fields, "direction")
    if direction not in (None, "inbound", "outbound"):
        raise MalformedReport("direction must be inbound or outbound")
    return direction


def _optional(fields: dict[str, str], name: str) -> str | None:
    value = fields.get(name, "").strip()
    return value or None


def _unix_time(raw: str | None, now: datetime) -> datetime:
    if raw is None or not raw.strip():
        return now
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise MalformedReport("at is not a Unix time") from exc


def _accept(incoming: IncomingWebhook, settings: Settings) -> Accepted:
    # A routing script can set a header but not sign a body: the shared token is the proof.
    token_checked(
        incoming,
        settings.sip_proxy_token,
        "SIP proxy reports are not enabled (RECGATE_SIP_PROXY_TOKEN)",
    )
    try:
        fields = parse_body(incoming.body)
        event = parse_report(fields, incoming.now)
    except MalformedReport as exc:
        raise WebhookMalformed(str(exc), stored=incoming.body) from exc
    return Accepted(event, dict(fields), incoming.body)


ROUTE = WebhookRoute(
    "sip-proxy",
    "Call lifecycle from a SIP proxy in front of rtpengine (Kamailio, OpenSIPS): a form POST "
    "per event with X-Recgate-Token (see deploy/kamailio/). The calls are rtpengine calls, "
    "keyed by SIP Call-ID.",
    _accept,
)
