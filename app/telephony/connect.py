"""Amazon Connect: contact events from EventBridge in, contact recording suspend/resume out.

**Which id names a call.** A Connect *contact* is one recgate call, keyed by its ``ContactId``:
the id the flow (``$.ContactId``) or the agent's desktop has at hand when the payment starts.
A transfer gives the customer a new contact (a new ``ContactId``, the same
``InitialContactId``), so each contact of a transferred conversation is a call of its own, with
its own recording, payments and end. That is how Connect itself keeps them: one contact record
and one recording file per contact.

**Control.** Through boto3, in a thread pool of the controller's own (botocore blocks), with
one client made at start-up, connect and read timeouts of
``RECGATE_PROVIDER_REQUEST_TIMEOUT_S`` and no retries inside botocore (the gate retries within
its pause deadline):

- pause: ``SuspendContactRecording(InstanceId, ContactId, InitialContactId[,
  ContactRecordingType])``, resume: ``ResumeContactRecording`` with the same ids. Connect
  sends no event when a recording is suspended or resumed, so its ``200`` (an empty body) is
  the only confirmation there is.
- ``InitialContactId`` comes from the contact events (a transferred contact's recording keeps
  it as its container id); when no event has arrived yet (the flow is faster than
  EventBridge), ``DescribeContact`` says it, and is remembered.
- One suspend covers everything Connect records of the contact (unless
  ``RECGATE_CONNECT_RECORDING_TYPE`` narrows it), so a call-level command covers every recording
  of the call.
- ``pause_behavior``: Connect fills a suspended span with silence. ``silence`` is what it does;
  ``skip`` is refused before any request (the payment fails closed).

**Errors.** ``ResourceNotFoundException`` to a *suspend* is a refusal, never "nothing is
recording": after a transfer Connect has answered "Resource not found" while the customer's
recording carried on (amazon-connect-streams#294), so the IVR is told not to collect. A contact
that ``DescribeContact`` shows ended is refused the same way: the customer may be on a newer
contact. To a *resume*, not found (or ended) means the contact is over and nothing is left to
resume. ``InvalidRequestException``, ``AccessDeniedException`` and other 4xx are refusals;
``InternalServiceException``, throttling, 5xx, connection errors and timeouts are worth
retrying.

**Events.** An EventBridge rule (``source`` ``aws.connect``, ``detail-type`` ``Amazon Connect
Contact Event``) delivers each event through an API destination: ``POST
/v1/webhooks/amazon-connect`` with the connection's API key in ``X-Recgate-Token``
(``RECGATE_CONNECT_WEBHOOK_TOKEN``, compared in constant time). The EventBridge ``id`` is the
event id (a redelivery is a duplicate); ``time`` is when it happened.

- ``INITIATED``, ``QUEUED`` → ``call.started``; ``CONNECTED_TO_SYSTEM`` → ``call.answered``;
  ``DISCONNECTED`` → ``call.ended``.
- ``CONNECTED_TO_AGENT`` → ``recording.started``: the contact's recording, id = ``ContactId``.
  Connect starts recording the agent's conversation when the agent joins, so an agent who
  joins during a payment is a recording that went live during it (paused at once, and an
  exposure unless it provably started before recgate's suspend).
- Other event types, other channels than voice and other instances' contacts are acknowledged
  and ignored. A body that is not such an event is malformed (422, dead-lettered).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final, Protocol

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import CallInfo, EventType, PbxEvent, RecordingInfo
from app.domain.payloads import MalformedJson, load_json
from app.domain.states import PauseBehavior
from app.telephony.base import (
    ConfirmedState,
    ControlOutcome,
    ControlTarget,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RecordingController,
    status_error,
)
from app.telephony.provider import (
    Accepted,
    IncomingWebhook,
    Provider,
    WebhookMalformed,
    WebhookRoute,
    token_checked,
)

PROVIDER: Final = "amazon_connect"
SOURCE: Final = "aws.connect"
DETAIL_TYPE: Final = "Amazon Connect Contact Event"
# The readiness check says how a pause is confirmed, since Connect cannot say it itself.
CONFIRMATION: Final = "confirmation: API success (Connect sends no suspend event)"
_MAX_ID = 255  # recgate's id columns (Connect allows 256; its ids are UUIDs)
_REMEMBERED_CONTACTS = 10_000


# ---- events ---------------------------------------------------------------------------------


class MalformedContactEvent(ValueError):
    """An authenticated body that is not a contact event; the message is safe to store."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.event_id = event_id


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


class _AgentInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    agent_arn: str | None = Field(
        default=None, validation_alias=_alias("agentArn", "AgentArn"), max_length=2048
    )


class _Detail(BaseModel):
    # The docs' own sample spells some members in PascalCase; real events use camelCase.
    model_config = ConfigDict(extra="ignore")

    event_type: str = Field(
        validation_alias=_alias("eventType", "EventType"), min_length=1, max_length=64
    )
    contact_id: str = Field(
        validation_alias=_alias("contactId", "ContactId"), min_length=1, max_length=_MAX_ID
    )
    initial_contact_id: str | None = Field(
        default=None,
        validation_alias=_alias("initialContactId", "InitialContactId"),
        min_length=1,
        max_length=_MAX_ID,
    )
    channel: str | None = Field(
        default=None, validation_alias=_alias("channel", "Channel"), max_length=32
    )
    instance_arn: str | None = Field(
        default=None, validation_alias=_alias("instanceArn", "InstanceArn"), max_length=2048
    )
    initiation_method: str | None = Field(
        default=None,
        validation_alias=_alias("initiationMethod", "InitiationMethod"),
        max_length=64,
    )
    agent_info: _AgentInfo | None = Field(
        default=None, validation_alias=_alias("agentInfo", "AgentInfo")
    )


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(min_length=1, max_length=_MAX_ID)
    source: str = Field(max_length=128)
    detail_type: str = Field(alias="detail-type", max_length=128)
    time: datetime
    detail: _Detail


_CALL_EVENTS: Final = {
    "INITIATED": EventType.CALL_STARTED,
    "QUEUED": EventType.CALL_STARTED,
    "CONNECTED_TO_SYSTEM": EventType.CALL_ANSWERED,
    "DISCONNECTED": EventType.CALL_ENDED,
}
# Acknowledged without effect; named in the metrics (anything else counts as "other").
_IGNORED: Final = frozenset({"AMD_DISABLED", "CONTACT_DATA_UPDATED", "COMPLETED"})
_INBOUND: Final = frozenset({"INBOUND"})
_OUTBOUND: Final = frozenset({"OUTBOUND", "CALLBACK", "API", "EXTERNAL_OUTBOUND"})


def _direction(method: str | None) -> str | None:
    if method is None:
        return None
    upper = method.upper()
    return "inbound" if upper in _INBOUND else "outbound" if upper in _OUTBOUND else None


def _agent_id(info: _AgentInfo | None) -> str | None:
    """The agent's id, the last part of ``arn:aws:connect:…:instance/{i}/agent/{id}``."""
    if info is None or not info.agent_arn:
        return None
    _, found, agent = info.agent_arn.rpartition("/agent/")
    return agent[:128] if found and agent else None


def _from_instance(arn: str | None, instance_id: str | None) -> bool:
    if arn is None or instance_id is None:
        return True
    return arn.endswith(f":instance/{instance_id}") or arn.endswith(f"/instance/{instance_id}")


def parse_contact_event(
    data: Any, service_area: str | None, instance_id: str | None
) -> tuple[PbxEvent | None, str]:
    """A contact event as a normalised event, or None (with what it was, for the metrics)
    when recgate has nothing to do with it; :class:`MalformedContactEvent` when it is not one."""
    if not isinstance(data, dict):
        raise MalformedContactEvent("body is not a JSON object")
    raw_id = data.get("id")
    event_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= _MAX_ID else None
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "body" for err in exc.errors()})
        raise MalformedContactEvent("invalid fields: " + ", ".join(fields), event_id) from exc
    if envelope.source != SOURCE or envelope.detail_type != DETAIL_TYPE:
        raise MalformedContactEvent(
            f'not an Amazon Connect contact event (source {SOURCE!r}, detail-type "{DETAIL_TYPE}")',
            event_id,
        )
    if envelope.time.tzinfo is None:
        raise MalformedContactEvent("time must carry a time zone", event_id)
    detail = envelope.detail
    kind = detail.event_type.upper()
    if detail.channel is not None and detail.channel.upper() != "VOICE":
        return None, "connect:not-voice"
    if not _from_instance(detail.instance_arn, instance_id):
        return None, "connect:other-instance"
    contact = detail.contact_id
    initial = detail.initial_contact_id
    recording = None
    if kind == "CONNECTED_TO_AGENT":
        event_type = EventType.RECORDING_STARTED
        recording = RecordingInfo(
            provider_recording_id=contact,
            # Kept for the suspend: Connect wants the conversation's first contact too.
            container_id=initial if initial and initial != contact else None,
        )
    elif kind in _CALL_EVENTS:
        event_type = _CALL_EVENTS[kind]
    else:
        return None, f"connect:{kind.lower()}" if kind in _IGNORED else "connect:other"
    event = PbxEvent(
        provider=PROVIDER,
        event_id=envelope.id,
        type=event_type,
        occurred_at=envelope.time,
        call=CallInfo(
            provider_call_id=contact,
            direction=_direction(detail.initiation_method),
            service_area=service_area,
            agent_id=_agent_id(detail.agent_info),
        ),
        recording=recording,
    )
    return event, ""


def _accept(incoming: IncomingWebhook, settings: Settings) -> Accepted:
    # EventBridge API destinations send a connection's API key as a header; they sign nothing.
    token_checked(
        incoming,
        settings.connect_webhook_token,
        "Amazon Connect contact events are not enabled (RECGATE_CONNECT_WEBHOOK_TOKEN)",
    )
    try:
        data = load_json(incoming.body)
        event, ignored_as = parse_contact_event(
            data, incoming.query.get("service_area"), settings.connect_instance_id
        )
    except MalformedJson as exc:
        raise WebhookMalformed(str(exc), stored=incoming.body) from exc
    except MalformedContactEvent as exc:
        raise WebhookMalformed(str(exc), event_id=exc.event_id, stored=incoming.body) from exc
    return Accepted(event, data, incoming.body, ignored_as=ignored_as or "unmapped")


# ---- control --------------------------------------------------------------------------------


class _ConnectClient(Protocol):
    """The calls the controller makes on a boto3 Connect client (boto3 itself is untyped)."""

    def suspend_contact_recording(self, **kwargs: Any) -> dict[str, Any]: ...
    def resume_contact_recording(self, **kwargs: Any) -> dict[str, Any]: ...
    def describe_contact(self, **kwargs: Any) -> dict[str, Any]: ...
    def describe_instance(self, **kwargs: Any) -> dict[str, Any]: ...
    def close(self) -> None: ...


class ContactNotFound(ProviderRejected):
    """Connect answered ``ResourceNotFoundException``: what it means depends on the command."""


_RETRYABLE_CODES: Final = frozenset(
    {
        "InternalServiceException",
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def connect_error(exc: Exception, what: str) -> ProviderError:
    """The provider error a botocore failure stands for, in one place. Messages name the
    error code only: AWS's own text can name the caller's IAM principal."""
    from botocore.exceptions import (  # type: ignore[import-untyped]
        ClientError,
        CredentialRetrievalError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")[:64]
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code == "ResourceNotFoundException":
            return ContactNotFound(f"{what}: {code}")
        if code in _RETRYABLE_CODES:
            return ProviderUnavailable(f"{what}: {code}")
        if status:
            return status_error(status, what, f" {code}" if code else "")
        return ProviderRejected(f"{what}: {code or 'error'}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ProviderRejected(f"{what}: no usable AWS credentials ({type(exc).__name__})")
    if isinstance(exc, ParamValidationError):
        return ProviderRejected(f"{what}: request refused by botocore's own validation")
    if isinstance(exc, CredentialRetrievalError):
        return ProviderUnavailable(f"{what}: AWS credentials could not be fetched")
    # Endpoint, connection, timeout and other transport errors.
    return ProviderUnavailable(f"{what}: {type(exc).__name__}")


class ConnectController(RecordingController):
    """Suspends and resumes a Connect contact's recording. One contact is one call."""

    name = PROVIDER
    call_level_covers_all = True

    def __init__(
        self,
        client: _ConnectClient,
        instance_id: str,
        region: str,
        recording_type: str = "ALL",
        *,
        workers: int = 32,
    ) -> None:
        self.client = client
        self.instance_id = instance_id
        self.region = region
        self.recording_type = recording_type
        # A suspend of one recording type leaves the others running: not every recording then.
        self.call_level_covers_all = recording_type == "ALL"
        # Threads of its own: a slow Connect must not take the loop's default pool from others.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="connect")
        # A contact's first contact never changes: what DescribeContact said is kept.
        self._initial: dict[str, str] = {}

    async def _call(self, method: Callable[..., dict[str, Any]], what: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(method, **kwargs))
        except (BotoCoreError, ClientError) as exc:
            raise connect_error(exc, what) from exc

    def _remember(self, contact: str, initial: str) -> None:
        if len(self._initial) >= _REMEMBERED_CONTACTS:
            self._initial.pop(next(iter(self._initial)))
        self._initial[contact] = initial

    async def _initial_contact(self, contact: str, action: str) -> str | None:
        """The contact's ``InitialContactId`` by ``DescribeContact``; None when the contact has
        ended. A contact Connect does not know is :class:`ContactNotFound`: the wrong id, or
        another instance (a refusal for a pause; for a resume, nothing is left to resume)."""
        if (known := self._initial.get(contact)) is not None:
            return known
        try:
            body = await self._call(
                self.client.describe_contact,
                "amazon connect DescribeContact",
                InstanceId=self.instance_id,
                ContactId=contact,
            )
        except ContactNotFound as exc:
            raise ContactNotFound(
                f"amazon connect {action}: no such contact in this instance (the IVR must pass "
                "the flow's $.ContactId)"
            ) from exc
        found = body.get("Contact") if isinstance(body, dict) else None
        if not isinstance(found, dict):
            raise ProviderUnavailable("amazon connect DescribeContact: answer without a Contact")
        if found.get("DisconnectTimestamp") is not None:
            return None
        initial = found.get("InitialContactId")
        initial = initial if isinstance(initial, str) and initial else contact
        self._remember(contact, initial)
        return initial

    def _ids(self, target: ControlTarget) -> tuple[str, str | None]:
        """The contact and, when the events said, its conversation's first contact."""
        contact = target.provider_call_id
        for ref in target.recordings:
            if ref.container_id:
                return contact, ref.container_id
        # A recording learnt from events without a container is its conversation's first.
        return contact, contact if target.recordings else self._initial.get(contact)

    def _body(self, contact: str, initial: str) -> dict[str, str]:
        body = {"InstanceId": self.instance_id, "ContactId": contact, "InitialContactId": initial}
        if self.recording_type != "ALL":
            body["ContactRecordingType"] = self.recording_type
        return body

    def _covered(self, target: ControlTarget) -> None:
        """Refuse a pause a narrowed ``ContactRecordingType`` would not cover: ``AGENT`` leaves
        the IVR's recording running (a pause before any agent has joined is the IVR's), ``IVR``
        leaves the agent's (every recording recgate knows of is an agent's)."""
        if self.recording_type == "AGENT" and target.call_level:
            raise ProviderRejected(
                "amazon connect: RECGATE_CONNECT_RECORDING_TYPE=AGENT would leave the IVR's "
                "recording running while no agent has joined"
            )
        if self.recording_type == "IVR" and not target.call_level:
            raise ProviderRejected(
                "amazon connect: RECGATE_CONNECT_RECORDING_TYPE=IVR would leave the agent's "
                "recording running"
            )

    def _outcomes(self, target: ControlTarget, state: ConfirmedState) -> list[ControlOutcome]:
        if target.call_level:
            return [ControlOutcome(None, state)]
        return [ControlOutcome(ref.provider_recording_id, state) for ref in target.recordings]

    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        """``SuspendContactRecording``; its ``200`` is the confirmation (Connect sends no event)."""
        if behavior != PauseBehavior.SILENCE:
            raise ProviderRejected(
                "amazon connect cannot skip a suspended span: it fills it with silence; the IVR "
                'must ask for "pause_behavior": "silence"'
            )
        self._covered(target)
        contact, initial = self._ids(target)
        if initial is None:
            initial = await self._initial_contact(contact, "suspend")
            if initial is None:
                raise ProviderRejected(
                    "amazon connect suspend: the contact has ended (after a transfer the "
                    "customer is on a new contact: the IVR must pass the flow's current "
                    "$.ContactId)"
                )
        try:
            await self._call(
                self.client.suspend_contact_recording,
                "amazon connect SuspendContactRecording",
                **self._body(contact, initial),
            )
        except ContactNotFound as exc:
            # Not proof that nothing records: after a transfer Connect has said "not found"
            # while the recording went on (amazon-connect-streams#294).
            raise ProviderRejected(
                "amazon connect SuspendContactRecording: ResourceNotFoundException (a "
                "transferred contact? the IVR must pass the flow's current $.ContactId)"
            ) from exc
        return self._outcomes(target, ConfirmedState.PAUSED)

    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        """``ResumeContactRecording``; a contact that is over has nothing left to resume."""
        contact, initial = self._ids(target)
        over = ConfirmedState.NOT_RECORDING if target.call_level else ConfirmedState.GONE
        if initial is None:
            try:
                initial = await self._initial_contact(contact, "resume")
            except ContactNotFound:
                return self._outcomes(target, over)
            if initial is None:
                return self._outcomes(target, over)
        try:
            await self._call(
                self.client.resume_contact_recording,
                "amazon connect ResumeContactRecording",
                **self._body(contact, initial),
            )
        except ContactNotFound:
            return self._outcomes(target, over)
        return self._outcomes(target, ConfirmedState.RECORDING)

    def describe(self) -> str:
        return f"amazon connect instance {self.instance_id[:8]}… in {self.region}"

    async def probe(self, timeout_s: float) -> str:
        """``DescribeInstance``: the API answers, takes the credentials, and the instance is
        active. (Bounded by the client's own timeouts and the caller's ``timeout_s``.)"""
        body = await self._call(
            self.client.describe_instance,
            "amazon connect DescribeInstance",
            InstanceId=self.instance_id,
        )
        instance = body.get("Instance") if isinstance(body, dict) else None
        status = instance.get("InstanceStatus") if isinstance(instance, dict) else None
        if status != "ACTIVE":
            raise ProviderRejected(f"amazon connect instance is {str(status)[:32]!r}, not ACTIVE")
        return f"instance ACTIVE; {CONFIRMATION}"

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def build_client(settings: Settings) -> _ConnectClient:
    """One boto3 Connect client: short timeouts and no retries inside botocore, so the gate's
    deadline holds; credentials from the settings or the standard AWS chain."""
    # Imported here so a deployment without Connect does not pay for loading boto3.
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    timeout = settings.provider_request_timeout_s
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=32,
    )
    secret = settings.connect_aws_secret_access_key
    keys: dict[str, str] = {}
    if settings.connect_aws_access_key_id and secret is not None:
        keys = {
            "aws_access_key_id": settings.connect_aws_access_key_id,
            "aws_secret_access_key": secret.get_secret_value(),
        }
    # A session of its own: boto3's default one is shared and not thread-safe; a client is.
    client: _ConnectClient = boto3.session.Session().client(
        "connect",
        region_name=settings.connect_region,
        endpoint_url=settings.connect_endpoint_url,
        config=config,
        **keys,
    )
    return client


def _controller(
    settings: Settings, client: httpx.AsyncClient, clock: Clock
) -> RecordingController | None:
    if settings.connect_instance_id is None:
        return None
    return ConnectController(
        build_client(settings),
        settings.connect_instance_id,
        settings.connect_region,
        settings.connect_recording_type,
    )


ADAPTER = Provider(
    name=PROVIDER,
    configured=lambda s: s.connect_instance_id is not None or s.connect_webhook_token is not None,
    controller=_controller,
    webhooks=(
        WebhookRoute(
            "amazon-connect",
            "Amazon Connect contact events from an EventBridge API destination, with the "
            "connection's API key in X-Recgate-Token. Add ?service_area=… to the URL.",
            _accept,
        ),
    ),
)
