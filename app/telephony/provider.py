"""What recgate knows of a provider: one :class:`Provider` per adapter module, listed once in
``app/telephony/registry.py``.

A provider says when it is configured, how to build its recording controller, which webhook
routes it takes (each a plain function of the request's parts, so adapters know nothing of
the web framework), and what it consumes on its own (the ARI event socket). The API mounts the
routes; the services build the controllers and start the consumers; nothing else needs a
provider's name. Adding a provider is one module and one line in the registry.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

import httpx
from pydantic import SecretStr

from app.config import Settings
from app.domain.clock import Clock
from app.domain.events import PbxEvent
from app.telephony.base import RecordingController
from app.telephony.signing import SignatureError, verify


@dataclass(frozen=True, slots=True)
class IncomingWebhook:
    """One webhook request as an adapter sees it: its parts, already read."""

    path: str
    query_string: str
    headers: Mapping[str, str]
    body: bytes
    now: datetime

    @property
    def query(self) -> Mapping[str, str]:
        """The query's parameters (the last value of a repeated one), parsed only for the
        adapters that read any."""
        return dict(parse_qsl(self.query_string, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified, parsed webhook: the event to apply (None: authentic but nothing recgate
    maps, such as a DTMF digit), what to store of it, and the raw bytes it came as."""

    event: PbxEvent | None
    payload: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    ignored_as: str = "unmapped"


class WebhookNotEnabled(Exception):
    """The route's provider, or the secret it checks, is not configured (404)."""


class WebhookRefused(Exception):
    """Authentication failed (401); the message says which check, never the expected value."""


class WebhookMalformed(Exception):
    """Authentic but unusable (422): the message is safe to store and show; ``stored`` is what
    goes to the dead letters (scrubbed there)."""

    def __init__(self, reason: str, *, event_id: str | None = None, stored: bytes = b"") -> None:
        super().__init__(reason)
        self.event_id = event_id
        self.stored = stored


Accept = Callable[[IncomingWebhook, Settings], Accepted]


@dataclass(frozen=True, slots=True)
class WebhookRoute:
    """``POST /v1/webhooks/{path}``: how a request there is authenticated and parsed."""

    path: str
    summary: str
    accept: Accept


class EventSink(Protocol):
    """Where a provider's own event consumer delivers (the services' event intake)."""

    async def accept(self, event: PbxEvent, payload: dict[str, Any], raw: bytes) -> Any: ...


Consumer = Callable[[Settings, EventSink, Clock, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider, as the rest of recgate needs to know it."""

    name: str
    # Its events are accepted (webhooks, consumers); payments on its calls need a controller.
    configured: Callable[[Settings], bool]
    controller: Callable[[Settings, httpx.AsyncClient, Clock], RecordingController | None]
    webhooks: tuple[WebhookRoute, ...] = ()
    # Started with the service when ``consumes(settings)``: runs until cancelled.
    consumer: Consumer | None = None
    consumes: Callable[[Settings], bool] = lambda _settings: False


def signed(key: bytes | None, incoming: IncomingWebhook, settings: Settings) -> str:
    """The ``webhook-id`` of a Standard Webhooks request signed with ``key``; refused (401)
    when the signature does not hold, not enabled (404) when there is no key."""
    if key is None:
        raise WebhookNotEnabled("signed webhooks are not enabled on this route")
    try:
        return verify(
            key, incoming.headers, incoming.body, incoming.now, settings.webhook_tolerance_s
        )
    except SignatureError as exc:
        raise WebhookRefused(str(exc)) from exc


# The header a sender that can set a header but not sign a body (a SIP proxy's routing script,
# an EventBridge API destination) proves itself with.
TOKEN_HEADER: Final = "x-recgate-token"  # noqa: S105 - a header name, not a secret


def token_checked(incoming: IncomingWebhook, expected: SecretStr | None, not_enabled: str) -> None:
    """Refuse (401) a request whose ``X-Recgate-Token`` is missing or not ``expected`` (compared
    in constant time); not enabled (404, saying ``not_enabled``) when there is no token."""
    if expected is None:
        raise WebhookNotEnabled(not_enabled)
    token = incoming.headers.get(TOKEN_HEADER, "")
    if not token:
        raise WebhookRefused("missing header: X-Recgate-Token")
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise WebhookRefused("the X-Recgate-Token does not match")
