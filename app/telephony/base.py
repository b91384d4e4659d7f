"""The provider control protocol every telephony adapter implements (SPEC §4).

An adapter pauses or resumes a call's recordings and returns the state the provider
*confirmed*, or raises one of the typed errors below. Retrying within the pause deadline is
the gating service's job, not the adapter's.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# The confirmed answers are the gate's own vocabulary (app.domain.gate); adapters return them.
from app.domain.gate import ConfirmedState, ControlOutcome
from app.domain.states import PauseBehavior

__all__ = [
    "ConfirmedState",
    "ControlOutcome",
    "ControlTarget",
    "MediaSource",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RecordingController",
    "RecordingGone",
    "RecordingRef",
    "stream_http_media",
]


class ProviderError(Exception):
    """Base of the errors an adapter raises."""


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or answered with a transient error: retry."""


class ProviderRejected(ProviderError):
    """The provider refused the command: retrying will not help."""


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response's JSON body when it is an object, else ``{}`` (a body that is not JSON,
    or JSON of another shape, says nothing the caller can use)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def status_error(status: int, what: str, detail: str = "") -> ProviderError:
    """The error an unexpected HTTP answer stands for, the same for every provider: 429 and
    5xx are worth retrying (:class:`ProviderUnavailable`), anything else is a refusal."""
    message = f"{what}: HTTP {status}{detail}"
    if status == 429 or status >= 500:
        return ProviderUnavailable(message)
    return ProviderRejected(message)


class RecordingGone(ProviderError):
    """The recording (or call) no longer exists on the provider: nothing is being recorded."""


@dataclass(frozen=True, slots=True)
class RecordingRef:
    """A recording the command is for: recgate's id and the provider's, when known."""

    recording_id: uuid.UUID | None
    provider_recording_id: str | None
    container_id: str | None = None


@dataclass(frozen=True, slots=True)
class ControlTarget:
    """What to pause or resume. With no recordings, whatever the provider records on the call."""

    provider_call_id: str
    recordings: tuple[RecordingRef, ...] = ()

    @property
    def call_level(self) -> bool:
        return not self.recordings


class RecordingController(ABC):
    """One provider's recording control."""

    name: str
    # True when a call-level command (no recording named) pauses every recording of the call;
    # Twilio.CURRENT pauses only one.
    call_level_covers_all: bool = False
    # What a pause does when the IVR does not say (``pause_behavior`` left out): the
    # platform's own behaviour. An explicit one it cannot honour is refused (fails closed).
    default_behavior: PauseBehavior = PauseBehavior.SILENCE

    @abstractmethod
    async def pause(self, target: ControlTarget, behavior: PauseBehavior) -> list[ControlOutcome]:
        """Pause every recording in ``target``; return what the provider confirmed."""

    @abstractmethod
    async def resume(self, target: ControlTarget) -> list[ControlOutcome]:
        """Resume every recording in ``target``; return what the provider confirmed."""

    def describe(self) -> str:
        """A short, secret-free description for the readiness check."""
        return self.name

    @abstractmethod
    async def probe(self, timeout_s: float) -> str:
        """Check, cheaply and within ``timeout_s``, that the provider answers and accepts
        recgate's credentials; return a short, secret-free note of what it answered ("" for
        nothing to add). Raise :class:`ProviderError` when it does not: readiness then fails,
        since a payment on this provider could not be paused."""

    async def aclose(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release what the controller holds (sockets) when the service stops."""


class MediaSource(ABC):
    """A provider that keeps recording media recgate can copy and must delete."""

    @abstractmethod
    def fetch_media(self, media_url: str) -> AsyncIterator[bytes]:
        """Stream the media at ``media_url`` (as the provider reported it)."""

    @abstractmethod
    async def delete_media(self, provider_recording_id: str) -> None:
        """Delete the provider's copy; a copy already gone is not an error."""


async def stream_http_media(
    client: httpx.AsyncClient,
    url: str,
    auth: httpx.Auth,
    provider: str,
    *,
    follow_redirects: bool = False,
) -> AsyncIterator[bytes]:
    """Stream a provider's media over HTTP, with its failures typed like control failures:
    404 gone, 429/5xx/network retryable, anything else refused."""
    try:
        async with client.stream(
            "GET", url, auth=auth, follow_redirects=follow_redirects
        ) as response:
            if response.status_code == 404:
                raise RecordingGone(f"{provider} media not found")
            if response.status_code != 200:
                raise status_error(response.status_code, f"{provider} media")
            async for chunk in response.aiter_bytes():
                yield chunk
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"{provider} media: {type(exc).__name__}") from exc


def combine_outcomes(
    ids: Sequence[str], results: Iterable[ControlOutcome | BaseException]
) -> list[ControlOutcome]:
    """Per-recording answers of a command sent recording by recording, or the error that
    decides the whole command. A recording that is gone is answered per recording (GONE), so
    one finished recording does not make the others read as gone; only when every recording
    is gone is that the answer. Otherwise a refusal outranks a transient error: retrying would
    not change it. Anything that is not a provider answer (a bug, a cancellation) surfaces."""
    outcomes: list[ControlOutcome] = []
    rejected: ProviderRejected | None = None
    unavailable: ProviderUnavailable | None = None
    gone: list[RecordingGone] = []
    for recording_id, result in zip(ids, results, strict=True):
        if isinstance(result, ControlOutcome):
            outcomes.append(result)
        elif isinstance(result, RecordingGone):
            gone.append(result)
            outcomes.append(ControlOutcome(recording_id, ConfirmedState.GONE))
        elif isinstance(result, ProviderRejected):
            rejected = rejected or result
        elif isinstance(result, ProviderUnavailable):
            unavailable = unavailable or result
        elif isinstance(result, ProviderError):
            rejected = rejected or ProviderRejected(str(result))
        else:
            raise result
    if rejected is not None:
        raise rejected
    if unavailable is not None:
        raise unavailable
    if gone and len(gone) == len(ids):
        raise gone[0]
    return outcomes
